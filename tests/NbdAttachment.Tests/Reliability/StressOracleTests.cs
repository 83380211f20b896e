using System.Diagnostics;
using NbdAttachment.Client;
using NbdAttachment.Testing;
using Xunit.Abstractions;

namespace NbdAttachment.Tests.Reliability;

/// <summary>
/// Randomized workload (fixed seed) over <see cref="NbdClient"/> against <see cref="NbdTestServer"/> while the fault
/// injector drops connections, refuses reconnects, delays, reorders and fails replies, and callers cancel requests.
/// A shadow model of the export is the oracle: every completed read must match it, and at each barrier (and at the
/// end) the export must hold every acknowledged write.
/// </summary>
/// <remarks>
/// Concurrent overlapping writes are undefined in NBD, so the harness runs operations in rounds whose ranges
/// (widened to the minimum block, because unaligned writes are read-modify-write) do not overlap. A cancelled or
/// failed write may or may not have happened, and a cancelled request that was already sent stays on the wire
/// (and is replayed after a reconnect) until the server answers it: its range is "tainted", unknown to the model
/// even if later rewritten, until a barrier where no request is in flight and the model adopts the export's bytes.
/// </remarks>
[Collection(ReliabilityCollection.Name)]
public sealed class StressOracleTests
{
    private const int ExportSize = 4 << 20;
    private static readonly TimeSpan RoundBound = TimeSpan.FromSeconds(15);
    private readonly ITestOutputHelper _output;

    public StressOracleTests(ITestOutputHelper output) => _output = output;

    private enum Kind
    {
        Read,
        Write,
        FuaWrite,
        Flush,
        Trim,
        WriteZeroes,
        BlockStatus,
        Cache,
    }

    [Theory]
    [InlineData(1u, 32u << 20, 1)]
    [InlineData(512u, 128u << 10, 2)]
    public async Task Randomized_workload_under_faults_matches_the_shadow_model(uint minBlock, uint maxPayload, int seed)
    {
        using var tracker = new UnobservedTaskTracker();
        var server = await NbdTestServer.StartAsync(new NbdTestServerOptions
        {
            Exports = [new NbdTestExportOptions(string.Empty, ExportSize) { MinimumBlockSize = minBlock, MaximumBlockSize = maxPayload }],
            SplitReads = true,
            MaxChunkSize = 8192,
        });
        var options = new NbdClientOptions
        {
            Reconnect = NbdReconnectPolicy.Default with { InitialDelay = TimeSpan.FromMilliseconds(5), MaxDelay = TimeSpan.FromMilliseconds(50), MaxDuration = TimeSpan.FromSeconds(30) },
            RequestTimeout = TimeSpan.FromSeconds(1),
            MaxInFlightRequests = 16,
        };
        var client = await NbdClient.ConnectAsync(server.Uri, options);
        try
        {
            await RunWorkloadAsync(server, client, minBlock, seed);
        }
        finally
        {
            // Bounded, so a hang in disposal fails the test instead of stalling the suite.
            await client.DisposeAsync().AsTask().WaitAsync(TimeSpan.FromSeconds(15));
            await server.DisposeAsync().AsTask().WaitAsync(TimeSpan.FromSeconds(15));
        }

        tracker.CollectAndGet().Should().BeEmpty("no task may fault unobserved");
    }

    private async Task RunWorkloadAsync(NbdTestServer server, NbdClient client, uint minBlock, int seed)
    {
        var rng = new Random(HashCode.Combine(FuzzSettings.Seed, seed));
        var model = new byte[ExportSize];
        var known = new bool[ExportSize];
        var tainted = new bool[ExportSize];
        Array.Fill(known, true);
        var failures = new List<string>();
        var stats = new Dictionary<string, int>();
        void Count(string what) => stats[what] = stats.GetValueOrDefault(what) + 1;

        var stopwatch = Stopwatch.StartNew();
        var ops = 0;
        var rounds = 0;
        const int TargetOps = 3000;
        while (ops < TargetOps && stopwatch.Elapsed < TimeSpan.FromSeconds(20) && failures.Count < 5)
        {
            rounds++;
            var round = PlanRound(rng, minBlock);
            ArmFaults(server.Faults, rng, round, Count);
            var tasks = round.Select(op => Start(client, op)).ToArray();
            var all = Task.WhenAll(tasks);
            if (await Task.WhenAny(all, Task.Delay(RoundBound)) != all)
            {
                failures.Add($"round {rounds}: operations did not complete within {RoundBound.TotalSeconds} s ({string.Join(",", round.Select(o => o.Kind))}); client {client.State}, in flight {client.InFlightRequests}");
                break;
            }

            _ = all.Exception;
            for (var i = 0; i < round.Count; i++)
            {
                ops++;
                Apply(round[i], tasks[i], model, known, tainted, minBlock, failures, Count);
            }

            if (client.State == NbdClientState.Failed)
            {
                failures.Add($"round {rounds}: the client failed: {client.Failure}");
                break;
            }

            if (rounds % 25 == 0)
            {
                await BarrierAsync(client, server, model, known, tainted, failures, $"barrier after round {rounds}");
            }
        }

        await BarrierAsync(client, server, model, known, tainted, failures, "final barrier");

        // Read the whole export back through the client (reconnects included) and compare.
        var back = new byte[ExportSize];
        for (var at = 0; at < ExportSize; at += 1 << 20)
        {
            await client.ReadAsync(at, back.AsMemory(at, 1 << 20)).AsTask().WaitAsync(RoundBound);
        }

        var mismatch = FirstMismatch(back, model, null);
        if (mismatch >= 0)
        {
            failures.Add($"final read-back differs from the model at byte {mismatch}");
        }

        _output.WriteLine($"{ops} ops in {rounds} rounds, {stopwatch.Elapsed.TotalSeconds:0.0} s; {client.ReconnectCount} reconnects; server saw {server.Statistics.ConnectionsAccepted} connections, max {server.Statistics.MaxConcurrentRequests} concurrent requests");
        foreach (var (what, count) in stats.OrderBy(s => s.Key))
        {
            _output.WriteLine($"  {count,6} x {what}");
        }

        failures.Should().BeEmpty();
        ops.Should().BeGreaterThan(500);
        client.ReconnectCount.Should().BeGreaterThan(0, "the workload must have survived connection drops");
    }

    private sealed class Op
    {
        public Kind Kind { get; init; }

        public long Offset { get; init; }

        public int Length { get; init; }

        public byte[]? Data { get; init; }

        public byte[]? Buffer { get; init; }

        public List<NbdExtent>? Extents { get; set; }

        public CancellationTokenSource? Cancel { get; init; }

        public long LockStart { get; init; }

        public long LockEnd { get; init; }
    }

    private static List<Op> PlanRound(Random rng, uint minBlock)
    {
        var count = rng.Next(1, 13);
        var ops = new List<Op>();
        var attempts = 0;
        while (ops.Count < count && attempts++ < 50)
        {
            var roll = rng.Next(100);
            var kind = roll switch
            {
                < 35 => Kind.Read,
                < 60 => Kind.Write,
                < 68 => Kind.FuaWrite,
                < 73 => Kind.Flush,
                < 78 => Kind.Trim,
                < 88 => Kind.WriteZeroes,
                < 96 => Kind.BlockStatus,
                _ => Kind.Cache,
            };
            var length = rng.Next(4) == 0 ? rng.Next(1, 300_000) : rng.Next(1, 16384);
            var offset = rng.Next(8) == 0 ? ExportSize - length : rng.NextInt64(0, ExportSize - length);
            if (rng.Next(3) == 0)
            {
                // Hot spot: many rounds touch the same area, so ranges overlap across rounds.
                offset = rng.NextInt64(0, 65536);
                length = Math.Min(length, 65536);
            }

            if (kind == Kind.Flush)
            {
                offset = 0;
                length = 0;
            }

            var lockStart = offset - (offset % minBlock);
            var lockEnd = Math.Min(ExportSize, (offset + length + minBlock - 1) / minBlock * minBlock);
            if (kind != Kind.Flush && ops.Any(o => o.Kind != Kind.Flush && o.LockStart < lockEnd && lockStart < o.LockEnd))
            {
                continue; // overlapping operations go to a later round
            }

            byte[]? data = null;
            if (kind is Kind.Write or Kind.FuaWrite)
            {
                data = new byte[length];
                rng.NextBytes(data);
            }

            CancellationTokenSource? cancel = null;
            var cancelRoll = rng.Next(100);
            if (cancelRoll < 8)
            {
                cancel = new CancellationTokenSource();
                cancel.CancelAfter(rng.Next(0, 4));
            }
            else if (cancelRoll < 9)
            {
                cancel = new CancellationTokenSource();
                cancel.Cancel();
            }

            ops.Add(new Op
            {
                Kind = kind,
                Offset = offset,
                Length = length,
                Data = data,
                Buffer = kind == Kind.Read ? new byte[length] : null,
                Cancel = cancel,
                LockStart = lockStart,
                LockEnd = lockEnd,
            });
        }

        return ops;
    }

    private static void ArmFaults(NbdFaultInjector faults, Random rng, List<Op> round, Action<string> count)
    {
        var roll = rng.Next(100);
        if (roll < 10)
        {
            faults.DropConnectionAfterRequests(rng.Next(1, (round.Count * 2) + 2));
            count("fault: drop connection");
            if (rng.Next(4) == 0)
            {
                faults.RefuseNextConnections(rng.Next(1, 3));
                count("fault: refuse reconnects");
            }
        }
        else if (roll < 22)
        {
            faults.DelayReplies(TimeSpan.FromMilliseconds(rng.Next(1, 4)), rng.Next(1, 20));
            count("fault: delay replies");
        }
        else if (roll < 28 && round.Count >= 4)
        {
            faults.ReorderReplies(rng.Next(2, 4));
            count("fault: reorder replies");
        }
        else if (roll < 33)
        {
            faults.FailNextCommands(1, 5, NbdTestCommand.Read);
            count("fault: fail a read");
        }
        else if (roll < 36)
        {
            faults.FailNextCommands(1, 5, NbdTestCommand.Write);
            count("fault: fail a write");
        }
    }

    private static Task Start(NbdClient client, Op op)
    {
        var token = op.Cancel?.Token ?? default;
        try
        {
            switch (op.Kind)
            {
                case Kind.Read:
                    return client.ReadAsync(op.Offset, op.Buffer, token).AsTask();
                case Kind.Write:
                    return client.WriteAsync(op.Offset, op.Data, NbdCommandOptions.None, token).AsTask();
                case Kind.FuaWrite:
                    return client.WriteAsync(op.Offset, op.Data, NbdCommandOptions.ForceUnitAccess, token).AsTask();
                case Kind.Flush:
                    return client.FlushAsync(token).AsTask();
                case Kind.Trim:
                    return client.TrimAsync(op.Offset, op.Length, NbdCommandOptions.None, token).AsTask();
                case Kind.WriteZeroes:
                    return client.WriteZeroesAsync(op.Offset, op.Length, NbdCommandOptions.None, token).AsTask();
                case Kind.Cache:
                    return client.CacheAsync(op.Offset, op.Length, token).AsTask();
                default:
                    return BlockStatusAsync(client, op, token);
            }
        }
        catch (Exception ex)
        {
            return Task.FromException(ex);
        }
    }

    private static async Task BlockStatusAsync(NbdClient client, Op op, CancellationToken token) =>
        op.Extents = [.. await client.GetBlockStatusAsync(op.Offset, op.Length, cancellationToken: token)];

    private static void Apply(Op op, Task task, byte[] model, bool[] known, bool[] tainted, uint minBlock, List<string> failures, Action<string> count)
    {
        var error = task.Exception?.InnerException ?? (task.IsCanceled ? new OperationCanceledException() : null);
        op.Cancel?.Dispose();
        count($"{op.Kind}: {(error is null ? "ok" : error.GetType().Name)}");
        if (error is not null and not OperationCanceledException and not NbdServerException)
        {
            failures.Add($"{op.Kind} of {op.Length} at {op.Offset} failed with {error.GetType().Name}: {error.Message}");
            return;
        }

        var start = (int)op.Offset;
        var end = (int)op.Offset + op.Length;
        switch (op.Kind)
        {
            case Kind.Read when error is null:
                for (var i = start; i < end; i++)
                {
                    if (known[i] && op.Buffer![i - start] != model[i])
                    {
                        failures.Add($"read of {op.Length} at {op.Offset}: byte {i} is {op.Buffer[i - start]}, the model says {model[i]}");
                        return;
                    }
                }

                break;
            case Kind.Write or Kind.FuaWrite or Kind.WriteZeroes when error is null:
                for (var i = start; i < end; i++)
                {
                    model[i] = op.Kind == Kind.WriteZeroes ? (byte)0 : op.Data![i - start];
                    known[i] = !tainted[i];
                }

                break;
            case Kind.Write or Kind.FuaWrite or Kind.WriteZeroes or Kind.Trim:
                // Cancelled or failed: may or may not have happened, possibly later (a sent request stays on the wire).
                for (var i = (int)op.LockStart; i < op.LockEnd; i++)
                {
                    known[i] = false;
                    tainted[i] = true;
                }

                break;
            case Kind.BlockStatus when error is null:
                foreach (var extent in op.Extents!)
                {
                    if ((extent.Flags & 2) == 0)
                    {
                        continue; // only NBD_STATE_ZERO is a statement about contents
                    }

                    var from = Math.Max(start, extent.Offset);
                    var to = Math.Min(Math.Min(end, ExportSize), extent.Offset + extent.Length);
                    for (var i = from; i < to; i++)
                    {
                        if (known[i] && model[i] != 0)
                        {
                            failures.Add($"block status says [{extent.Offset}, +{extent.Length}) reads as zeroes, but the model has {model[i]} at {i}");
                            return;
                        }
                    }
                }

                break;
        }

        if (op.Kind == Kind.Trim && error is null)
        {
            // A trimmed range reads as unspecified data (stable, not pending): unknown until the next barrier.
            var min = (long)minBlock;
            var from = (op.Offset + min - 1) / min * min;
            var to = (op.Offset + op.Length) / min * min;
            for (var i = from; i < to; i++)
            {
                known[i] = false;
            }
        }
    }

    /// <summary>Waits until nothing is in flight, checks every known byte against the export, then adopts the export's bytes.</summary>
    private static async Task BarrierAsync(NbdClient client, NbdTestServer server, byte[] model, bool[] known, bool[] tainted, List<string> failures, string where)
    {
        server.Faults.Reset();
        var deadline = Stopwatch.StartNew();
        while (client.InFlightRequests > 0 && deadline.Elapsed < RoundBound)
        {
            await Task.Delay(5);
        }

        if (client.InFlightRequests > 0)
        {
            failures.Add($"{where}: {client.InFlightRequests} requests still in flight after {RoundBound.TotalSeconds} s");
            return;
        }

        var truth = server.GetExport().ReadBytes(0, ExportSize);
        var mismatch = FirstMismatch(truth, model, known);
        if (mismatch >= 0)
        {
            failures.Add($"{where}: the export has {truth[mismatch]} at byte {mismatch}, the model (an acknowledged write) says {model[mismatch]}");
        }

        truth.CopyTo(model, 0);
        Array.Fill(known, true);
        Array.Clear(tainted);
    }

    private static int FirstMismatch(byte[] actual, byte[] model, bool[]? known)
    {
        for (var i = 0; i < actual.Length; i++)
        {
            if (actual[i] != model[i] && (known is null || known[i]))
            {
                return i;
            }
        }

        return -1;
    }
}
