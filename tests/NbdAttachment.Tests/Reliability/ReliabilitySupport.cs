using System.Buffers.Binary;
using System.Collections.Concurrent;
using System.Globalization;

namespace NbdAttachment.Tests.Reliability;

/// <summary>
/// The reliability tests run alone (not in parallel with other test classes): they measure memory, time and
/// in-flight counts, and the fuzzers use every core.
/// </summary>
[CollectionDefinition(Name, DisableParallelization = true)]
public sealed class ReliabilityCollection
{
    public const string Name = "Reliability";
}

/// <summary>Knobs for running the fuzzers longer (see docs/reliability.md). Defaults keep CI fast.</summary>
internal static class FuzzSettings
{
    /// <summary>Codec-level cases per parser family group (NBD_FUZZ_CASES, default 100,000 in total).</summary>
    public static int CodecCases => ReadInt("NBD_FUZZ_CASES", 100_000);

    /// <summary>In-memory reply-stream cases (each runs the real reader and writer loops): NBD_FUZZ_CASES / 20.</summary>
    public static int ReplyStreamCases => Math.Max(500, CodecCases / 20);

    /// <summary>In-memory handshake cases (the real negotiator): NBD_FUZZ_CASES / 10.</summary>
    public static int HandshakeCases => Math.Max(500, CodecCases / 10);

    /// <summary>Time budget of the socket-level fuzzer (NBD_FUZZ_SECONDS, default 8 s).</summary>
    public static TimeSpan SocketBudget => TimeSpan.FromSeconds(ReadDouble("NBD_FUZZ_SECONDS", 8));

    /// <summary>Case cap of the socket-level fuzzer (NBD_FUZZ_SOCKET_CASES, default 3,000).</summary>
    public static int SocketCases => ReadInt("NBD_FUZZ_SOCKET_CASES", 3000);

    /// <summary>Base seed of every fuzzer (NBD_FUZZ_SEED); case i uses a seed derived from it and i.</summary>
    public static int Seed => ReadInt("NBD_FUZZ_SEED", 20250601);

    public static int CaseSeed(int salt, int index) => HashCode.Combine(Seed, salt, index) & 0x7fffffff;

    private static int ReadInt(string name, int fallback) =>
        int.TryParse(Environment.GetEnvironmentVariable(name), NumberStyles.Integer, CultureInfo.InvariantCulture, out var value) && value > 0 ? value : fallback;

    private static double ReadDouble(string name, double fallback) =>
        double.TryParse(Environment.GetEnvironmentVariable(name), NumberStyles.Float, CultureInfo.InvariantCulture, out var value) && value > 0 ? value : fallback;
}

/// <summary>Records every <see cref="TaskScheduler.UnobservedTaskException"/> raised while it is alive.</summary>
internal sealed class UnobservedTaskTracker : IDisposable
{
    private readonly ConcurrentQueue<Exception> _seen = new();

    public UnobservedTaskTracker()
    {
        // Flush garbage left by earlier tests so their tasks are not blamed on this one.
        Collect();
        TaskScheduler.UnobservedTaskException += OnUnobserved;
    }

    /// <summary>Forces collection and finalization, then returns what was reported.</summary>
    public IReadOnlyList<Exception> CollectAndGet()
    {
        Collect();
        return [.. _seen];
    }

    public void Dispose() => TaskScheduler.UnobservedTaskException -= OnUnobserved;

    private static void Collect()
    {
        for (var i = 0; i < 3; i++)
        {
            GC.Collect();
            GC.WaitForPendingFinalizers();
        }
    }

    private void OnUnobserved(object? sender, UnobservedTaskExceptionEventArgs e) => _seen.Enqueue(e.Exception);
}

/// <summary>Seeded mutations of byte streams: bit flips, inserts, deletes, truncation, duplicated chunks, field extremes, garbage.</summary>
internal static class Mutator
{
    private static readonly uint[] Extremes32 = [0, 1, 2, 0x7FFFFFFF, 0x80000000, 0xFFFFFFFF, 0xFFFFFFF0, 4095, 4096, 4097, 65536, 0x04000000, 0x04000001];

    /// <summary>Applies one to three mutations. <paramref name="fields"/> are offsets of interesting 16/32/64-bit fields (lengths, types).</summary>
    public static byte[] Mutate(byte[] input, Random rng, IReadOnlyList<int>? fields = null)
    {
        var data = new List<byte>(input);
        var count = rng.Next(1, 4);
        for (var i = 0; i < count; i++)
        {
            MutateOnce(data, rng, fields);
        }

        return [.. data];
    }

    private static void MutateOnce(List<byte> data, Random rng, IReadOnlyList<int>? fields)
    {
        var kind = rng.Next(10);
        if (data.Count == 0)
        {
            kind = 3;
        }

        switch (kind)
        {
            case 0: // bit flips
            case 1:
                for (var n = rng.Next(1, 5); n > 0; n--)
                {
                    var at = rng.Next(data.Count);
                    data[at] ^= (byte)(1 << rng.Next(8));
                }

                break;
            case 2: // random byte values
                for (var n = rng.Next(1, 4); n > 0; n--)
                {
                    data[rng.Next(data.Count)] = (byte)rng.Next(256);
                }

                break;
            case 3: // insert random bytes
                {
                    var at = rng.Next(data.Count + 1);
                    var bytes = new byte[rng.Next(1, rng.Next(2) == 0 ? 8 : 64)];
                    rng.NextBytes(bytes);
                    data.InsertRange(at, bytes);
                    break;
                }

            case 4: // delete a range
                {
                    var at = rng.Next(data.Count);
                    data.RemoveRange(at, Math.Min(data.Count - at, rng.Next(1, 32)));
                    break;
                }

            case 5: // truncate
                TruncateAt(data, rng.Next(data.Count));
                break;
            case 6: // duplicate a chunk somewhere else
                {
                    var at = rng.Next(data.Count);
                    var length = Math.Min(data.Count - at, rng.Next(1, 64));
                    var chunk = data.GetRange(at, length);
                    data.InsertRange(rng.Next(data.Count + 1), chunk);
                    break;
                }

            case 7: // length or type field set to an extreme
            case 8:
                {
                    var at = fields is { Count: > 0 } && rng.Next(4) != 0 ? fields[rng.Next(fields.Count)] : rng.Next(data.Count);
                    var width = rng.Next(3) switch { 0 => 2, 1 => 4, _ => 8 };
                    if (at < 0 || at + width > data.Count)
                    {
                        at = Math.Max(0, data.Count - width);
                    }

                    Span<byte> field = stackalloc byte[8];
                    var value = (ulong)Extremes32[rng.Next(Extremes32.Length)];
                    if (width == 8 && rng.Next(2) == 0)
                    {
                        value = rng.Next(3) switch { 0 => ulong.MaxValue, 1 => 1UL << 63, _ => (ulong)long.MaxValue };
                    }

                    BinaryPrimitives.WriteUInt64BigEndian(field, value);
                    for (var j = 0; j < width && at + j < data.Count; j++)
                    {
                        data[at + j] = field[8 - width + j];
                    }

                    break;
                }

            default: // replace a run with garbage
                {
                    var at = rng.Next(data.Count);
                    var length = Math.Min(data.Count - at, rng.Next(1, 48));
                    for (var j = 0; j < length; j++)
                    {
                        data[at + j] = (byte)rng.Next(256);
                    }

                    break;
                }
        }
    }

    private static void TruncateAt(List<byte> data, int length)
    {
        if (length < data.Count)
        {
            data.RemoveRange(length, data.Count - length);
        }
    }
}
