using System.Diagnostics;
using BenchmarkDotNet.Attributes;
using NbdAttachment.Client;
using NbdAttachment.Testing;

namespace NbdAttachment.Benchmarks;

/// <summary>Transport of a round-trip benchmark.</summary>
public enum Transport
{
    /// <summary>TCP on 127.0.0.1.</summary>
    Tcp,

    /// <summary>A Unix domain socket.</summary>
    Unix,
}

/// <summary>
/// One request's round trip through <see cref="NbdClient"/>: the server is started and the client connected once in
/// <see cref="SetupAsync"/>. The single-request benchmarks return the client's <see cref="ValueTask"/> directly, so no
/// benchmark-side async state machine is allocated; the batch benchmark is an async method (its state machine box,
/// allocated once per 32 reads, is counted).
/// </summary>
public abstract class RoundTripBenchmarks
{
    public const int BatchSize = 32;
    private const int SmallSize = 4096;
    private const int LargeSize = 256 * 1024;
    private const long WriteOffset = 4L << 20;

    private readonly byte[] _small = new byte[SmallSize];
    private readonly byte[] _write = new byte[SmallSize];
    private readonly byte[] _large = new byte[LargeSize];
    private readonly byte[][] _batchBuffers = Enumerable.Range(0, BatchSize).Select(_ => new byte[SmallSize]).ToArray();
    private readonly ValueTask[] _batch = new ValueTask[BatchSize];
    private NbdClient? _client;

    private NbdClient Client => _client ?? throw new InvalidOperationException("GlobalSetup has not run.");

    [GlobalSetup]
    public async Task SetupAsync()
    {
        var uri = await StartServerAsync();
        _client = await NbdClient.ConnectAsync(uri, new NbdClientOptions { MaxInFlightRequests = 64 });

        // Fill the region the reads touch with real data, so no server returns a hole or a sparse zero page.
        var data = new byte[1 << 20];
        new Random(42).NextBytes(data);
        await _client.WriteAsync(0, data);
        new Random(7).NextBytes(_write);
    }

    [GlobalCleanup]
    public async Task CleanupAsync()
    {
        if (_client is not null)
        {
            await _client.DisposeAsync();
            _client = null;
        }

        await StopServerAsync();
    }

    [Benchmark(Description = "Read 4 KiB")]
    public ValueTask Read4K() => Client.ReadAsync(8192, _small);

    [Benchmark(Description = "Write 4 KiB")]
    public ValueTask Write4K() => Client.WriteAsync(WriteOffset, _write);

    [Benchmark(Description = "Read 4 KiB x32 concurrent (per op)", OperationsPerInvoke = BatchSize)]
    public async ValueTask Read4KBatch32()
    {
        var client = Client;
        for (var i = 0; i < BatchSize; i++)
        {
            _batch[i] = client.ReadAsync(i * (long)SmallSize, _batchBuffers[i]);
        }

        for (var i = 0; i < BatchSize; i++)
        {
            await _batch[i];
        }
    }

    [Benchmark(Description = "Read 256 KiB")]
    public ValueTask Read256K() => Client.ReadAsync(0, _large);

    protected abstract Task<Uri> StartServerAsync();

    protected abstract ValueTask StopServerAsync();
}

/// <summary>
/// Against <see cref="NbdTestServer"/> in the same process: the memory diagnoser counts the server's allocations too.
/// </summary>
[MemoryDiagnoser]
public class InProcessServerRoundTripBenchmarks : RoundTripBenchmarks
{
    private NbdTestServer? _server;

    [Params(Transport.Tcp, Transport.Unix)]
    public Transport Transport { get; set; }

    protected override async Task<Uri> StartServerAsync()
    {
        _server = await NbdTestServer.StartAsync(new NbdTestServerOptions
        {
            Exports = [new NbdTestExportOptions { Size = 64L << 20 }],
            ListenOnUnixSocket = Transport == Transport.Unix,
        });
        return _server.GetUri(unixSocket: Transport == Transport.Unix);
    }

    protected override async ValueTask StopServerAsync()
    {
        if (_server is not null)
        {
            await _server.DisposeAsync();
            _server = null;
        }
    }
}

/// <summary>
/// Against an external <c>nbdkit memory</c> over a Unix socket: only the client's allocations are in this process.
/// Left out of the suite when <c>nbdkit</c> is not on PATH.
/// </summary>
[MemoryDiagnoser]
public class NbdkitRoundTripBenchmarks : RoundTripBenchmarks
{
    private Process? _nbdkit;
    private string? _socket;

    public static bool IsNbdkitAvailable() => FindNbdkit() is not null;

    protected override async Task<Uri> StartServerAsync()
    {
        var nbdkit = FindNbdkit() ?? throw new InvalidOperationException("nbdkit is not on PATH.");
        _socket = Path.Combine(Path.GetTempPath(), $"nbdbench-{Guid.NewGuid():N}.sock");
        var start = new ProcessStartInfo(nbdkit) { UseShellExecute = false };
        foreach (var arg in new[] { "-f", "-U", _socket, "memory", "size=256M" })
        {
            start.ArgumentList.Add(arg);
        }

        _nbdkit = Process.Start(start) ?? throw new InvalidOperationException("nbdkit did not start.");
        var deadline = Stopwatch.GetTimestamp() + (10 * Stopwatch.Frequency);
        while (!File.Exists(_socket))
        {
            if (_nbdkit.HasExited || Stopwatch.GetTimestamp() > deadline)
            {
                throw new InvalidOperationException($"nbdkit did not create {_socket}.");
            }

            await Task.Delay(20);
        }

        return new Uri($"nbd+unix:///?socket={_socket}");
    }

    protected override ValueTask StopServerAsync()
    {
        if (_nbdkit is not null)
        {
            if (!_nbdkit.HasExited)
            {
                _nbdkit.Kill();
                _nbdkit.WaitForExit();
            }

            _nbdkit.Dispose();
            _nbdkit = null;
        }

        if (_socket is not null)
        {
            File.Delete(_socket);
            _socket = null;
        }

        return ValueTask.CompletedTask;
    }

    private static string? FindNbdkit() =>
        (Environment.GetEnvironmentVariable("PATH") ?? string.Empty)
            .Split(Path.PathSeparator, StringSplitOptions.RemoveEmptyEntries)
            .Select(dir => Path.Combine(dir, "nbdkit"))
            .FirstOrDefault(File.Exists);
}
