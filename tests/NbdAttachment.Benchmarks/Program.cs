using System.Diagnostics;
using System.Text.Json;
using NbdAttachment.Client;
using NbdAttachment.Testing;

// A fio-style load tool for the NBD client. Every loop is bounded by --runtime and by a request cap.
// Usage: dotnet run -c Release --project tests/NbdAttachment.Benchmarks -- [--uri URI] --rw randread --bs 4k [--connections N] [--no-journal]
//        --iodepth 32 --runtime 10 [--size 1g] [--json]
// Micro-benchmarks (BenchmarkDotNet): dotnet run -c Release --project tests/NbdAttachment.Benchmarks -- micro [--filter *]
if (args.Length > 0 && args[0] == "micro")
{
    NbdAttachment.Benchmarks.MicroBenchmarks.Run(args[1..]);
    return;
}

var settings = LoadSettings.Parse(args);
NbdTestServer? embedded = null;
if (settings.Uri is null)
{
    embedded = await NbdTestServer.StartAsync(new NbdTestServerOptions { Exports = [new NbdTestExportOptions { Size = settings.Size }] });
    settings = settings with { Uri = embedded.Uri.ToString() };
}

using var sampler = settings.AllocationProfile ? new AllocationSampler() : null;
try
{
    var result = await LoadRunner.RunAsync(settings);
    Console.WriteLine(settings.Json ? JsonSerializer.Serialize(result) : result.ToString());
    foreach (var (type, samples) in sampler?.Top(15) ?? [])
    {
        Console.WriteLine($"  alloc samples {samples,6}  {type}");
    }
}
finally
{
    if (embedded is not null)
    {
        await embedded.DisposeAsync();
    }
}

internal sealed record LoadSettings(string? Uri, string Rw, int BlockSize, int IoDepth, TimeSpan Runtime, long Size, bool Json, long MaxRequests, bool AllocationProfile = false, int Connections = 1, bool Journal = true)
{
    public static LoadSettings Parse(string[] args)
    {
        var s = new LoadSettings(null, "randread", 4096, 32, TimeSpan.FromSeconds(10), 1L << 30, false, 50_000_000);
        for (var i = 0; i < args.Length; i++)
        {
            string Next() => i + 1 < args.Length ? args[++i] : throw new ArgumentException($"{args[i]} needs a value");
            s = args[i] switch
            {
                "--uri" => s with { Uri = Next() },
                "--rw" => s with { Rw = Next() },
                "--bs" => s with { BlockSize = (int)ParseSize(Next()) },
                "--iodepth" => s with { IoDepth = int.Parse(Next(), System.Globalization.CultureInfo.InvariantCulture) },
                "--runtime" => s with { Runtime = TimeSpan.FromSeconds(double.Parse(Next(), System.Globalization.CultureInfo.InvariantCulture)) },
                "--size" => s with { Size = ParseSize(Next()) },
                "--max-requests" => s with { MaxRequests = long.Parse(Next(), System.Globalization.CultureInfo.InvariantCulture) },
                "--json" => s with { Json = true },
                "--connections" => s with { Connections = int.Parse(Next(), System.Globalization.CultureInfo.InvariantCulture) },
                "--no-journal" => s with { Journal = false },
                "--alloc-profile" => s with { AllocationProfile = true },
                _ => throw new ArgumentException($"unknown argument {args[i]}"),
            };
        }

        if (s.Rw is not ("read" or "write" or "randread" or "randwrite"))
        {
            throw new ArgumentException("--rw must be read, write, randread or randwrite");
        }

        return s;
    }

    private static long ParseSize(string text)
    {
        var unit = char.ToLowerInvariant(text[^1]);
        var factor = unit switch { 'k' => 1L << 10, 'm' => 1L << 20, 'g' => 1L << 30, _ => 1L };
        var number = factor == 1 ? text : text[..^1];
        return long.Parse(number, System.Globalization.CultureInfo.InvariantCulture) * factor;
    }
}

internal sealed record LoadResult(string Rw, int BlockSize, int IoDepth, long Operations, double Seconds, double Iops, double MiBPerSecond, double P50Microseconds, double P99Microseconds, double AllocatedBytesPerOperation)
{
    public override string ToString() =>
        $"{Rw} bs={BlockSize} iodepth={IoDepth}: {Operations} ops in {Seconds:0.00} s, {Iops:0} IOPS, {MiBPerSecond:0.0} MiB/s, " +
        $"p50 {P50Microseconds:0} us, p99 {P99Microseconds:0} us, {AllocatedBytesPerOperation:0.00} bytes allocated/op";
}

internal static class LoadRunner
{
    public static async Task<LoadResult> RunAsync(LoadSettings settings)
    {
        await using var client = await NbdClient.ConnectAsync(new Uri(settings.Uri!), new NbdClientOptions
        {
            // The in-flight limit is per connection; the workers share them.
            MaxInFlightRequests = Math.Max((settings.IoDepth + settings.Connections - 1) / settings.Connections, 1),
            Connections = settings.Connections,
            WriteJournalCapacity = settings.Journal ? NbdClientOptions.Default.WriteJournalCapacity : 0,
        });
        var blocks = client.Export.Size / settings.BlockSize;
        var write = settings.Rw.Contains("write", StringComparison.Ordinal);
        var random = settings.Rw.StartsWith("rand", StringComparison.Ordinal);

        // One buffer per worker, made before measuring so the tool's own allocations stay out of the figure.
        var buffers = new byte[settings.IoDepth][];
        for (var w = 0; w < buffers.Length; w++)
        {
            buffers[w] = new byte[settings.BlockSize];
            new Random(w).NextBytes(buffers[w]);
        }

        // Warm up (JIT, pools), then measure.
        await RunPhaseAsync(client, settings, buffers, blocks, write, random, TimeSpan.FromSeconds(Math.Min(2, settings.Runtime.TotalSeconds / 5)), null);
        var latencies = new long[settings.IoDepth][];
        for (var i = 0; i < latencies.Length; i++)
        {
            latencies[i] = new long[1 << 20];
        }

        GC.Collect();
        var allocatedBefore = GC.GetTotalAllocatedBytes(precise: true);
        AllocationSampler.Measuring = true;
        var stopwatch = Stopwatch.StartNew();
        var counts = await RunPhaseAsync(client, settings, buffers, blocks, write, random, settings.Runtime, latencies);
        var seconds = stopwatch.Elapsed.TotalSeconds;
        var allocated = GC.GetTotalAllocatedBytes(precise: true) - allocatedBefore;
        AllocationSampler.Measuring = false;

        var operations = counts.Sum();
        var all = new List<long>((int)Math.Min(operations, int.MaxValue));
        for (var w = 0; w < counts.Length; w++)
        {
            all.AddRange(latencies[w].AsSpan(0, (int)Math.Min(counts[w], latencies[w].Length)).ToArray());
        }

        all.Sort();
        double Percentile(double p) => all.Count == 0 ? 0 : all[(int)Math.Min(all.Count - 1, p * all.Count)] * 1e6 / Stopwatch.Frequency;
        return new LoadResult(settings.Rw, settings.BlockSize, settings.IoDepth, operations, seconds, operations / seconds,
            operations * (double)settings.BlockSize / seconds / (1 << 20), Percentile(0.50), Percentile(0.99), (double)allocated / Math.Max(operations, 1));
    }

    private static async Task<long[]> RunPhaseAsync(NbdClient client, LoadSettings settings, byte[][] buffers, long blocks, bool write, bool random, TimeSpan duration, long[][]? latencies)
    {
        var counts = new long[settings.IoDepth];
        var deadline = Stopwatch.GetTimestamp() + (long)(duration.TotalSeconds * Stopwatch.Frequency);
        var perWorkerCap = settings.MaxRequests / settings.IoDepth;
        var workers = new Task[settings.IoDepth];
        for (var w = 0; w < workers.Length; w++)
        {
            var worker = w;
            workers[w] = Task.Run(async () =>
            {
                var buffer = buffers[worker];
                var rng = new Random(worker * 7919);
                var next = worker * (blocks / settings.IoDepth);
                long done = 0;
                while (done < perWorkerCap && Stopwatch.GetTimestamp() < deadline)
                {
                    var block = random ? rng.NextInt64(blocks) : next++ % blocks;
                    var start = Stopwatch.GetTimestamp();
                    if (write)
                    {
                        await client.WriteAsync(block * settings.BlockSize, buffer);
                    }
                    else
                    {
                        await client.ReadAsync(block * settings.BlockSize, buffer);
                    }

                    if (latencies is not null && done < latencies[worker].Length)
                    {
                        latencies[worker][done] = Stopwatch.GetTimestamp() - start;
                    }

                    done++;
                }

                counts[worker] = done;
            });
        }

        await Task.WhenAll(workers);
        return counts;
    }
}
