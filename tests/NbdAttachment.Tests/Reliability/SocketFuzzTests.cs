using System.Buffers.Binary;
using System.Collections.Concurrent;
using System.Diagnostics;
using System.Net;
using System.Net.Sockets;
using NbdAttachment.Client;
using Xunit.Abstractions;

namespace NbdAttachment.Tests.Reliability;

/// <summary>
/// Socket-level fuzzing of the whole client (<see cref="NbdClient"/>: connect, negotiate, transmission, heartbeat,
/// dispose) over loopback TCP. A raw server plays a valid capture (handshake, then one reply per request it
/// receives) with one part mutated, then either closes or goes silent. Every case must end within its bound in
/// success or a typed error; nothing may fault unobserved; memory stays bounded. Time-bounded (NBD_FUZZ_SECONDS).
/// </summary>
[Collection(ReliabilityCollection.Name)]
public sealed class SocketFuzzTests
{
    private const long ExportSize = 1 << 20;
    private const int Workers = 8;
    private static readonly TimeSpan CaseBound = TimeSpan.FromSeconds(5);
    private readonly ITestOutputHelper _output;

    public SocketFuzzTests(ITestOutputHelper output) => _output = output;

    [Fact]
    public async Task Client_survives_mutated_server_streams_over_tcp_with_only_typed_errors_and_no_hang()
    {
        using var tracker = new UnobservedTaskTracker();
        var budget = FuzzSettings.SocketBudget;
        var cap = FuzzSettings.SocketCases;
        var failures = new ConcurrentQueue<string>();
        var outcomes = new ConcurrentDictionary<string, int>();
        var next = -1;
        var done = 0;
        var stopwatch = Stopwatch.StartNew();
        var before = GC.GetTotalMemory(true);
        var workers = Enumerable.Range(0, Workers).Select(_ => Task.Run(async () =>
        {
            using var listener = new TcpListener(IPAddress.Loopback, 0);
            listener.Start();
            while (stopwatch.Elapsed < budget && failures.Count < 10)
            {
                var index = Interlocked.Increment(ref next);
                if (index >= cap)
                {
                    return;
                }

                var failure = await RunCaseAsync(listener, index, outcomes);
                Interlocked.Increment(ref done);
                if (failure is not null)
                {
                    failures.Enqueue(failure);
                }
            }
        })).ToArray();
        await Task.WhenAll(workers);
        var after = GC.GetTotalMemory(true);
        _output.WriteLine($"{done} socket cases in {stopwatch.Elapsed.TotalSeconds:0.0} s with {Workers} workers (seed {FuzzSettings.Seed}); memory {before / 1024} KiB -> {after / 1024} KiB");
        foreach (var (outcome, count) in outcomes.OrderByDescending(o => o.Value))
        {
            _output.WriteLine($"  {count,6} x {outcome}");
        }

        failures.Should().BeEmpty();
        done.Should().BeGreaterThan(100, "the budget must allow a meaningful number of cases");
        tracker.CollectAndGet().Should().BeEmpty("no task may fault unobserved");
        (after - before).Should().BeLessThan(64L << 20, "memory stays bounded across cases");
    }

    private static async Task<string?> RunCaseAsync(TcpListener listener, int index, ConcurrentDictionary<string, int> outcomes)
    {
        var rng = new Random(FuzzSettings.CaseSeed(21, index));
        var fields = new List<int>();
        var handshake = Handshakes.Build(rng, fields, ExportSize, Handshakes.AllFeatures, goOnly: true);
        var ops = Enumerable.Range(0, rng.Next(1, 5)).Select(_ => FuzzOp.Random(rng, ExportSize, handshake.MinBlock)).ToList();
        if (!handshake.MetaContext)
        {
            ops.RemoveAll(o => o.Kind == FuzzOpKind.BlockStatus);
        }

        // One reply segment per request; with one in-flight slot, op k is cookie (k+1) << 32.
        var segments = ops.Select((op, k) =>
        {
            var segmentFields = new List<int>();
            var bytes = ReplyScript.Build([(op, ReplyScript.CookieFor(0, (uint)k + 1))], handshake.Structured, rng, segmentFields);
            return (Bytes: bytes, Fields: segmentFields);
        }).ToList();

        var mode = rng.Next(10);
        var mutated = index % 10 != 0;
        var head = handshake.Script;
        if (mutated)
        {
            if (mode == 0)
            {
                head = new byte[rng.Next(0, 200)];
                rng.NextBytes(head); // pure garbage
            }
            else if (mode < 5 || segments.Count == 0)
            {
                head = Mutator.Mutate(head, rng, fields);
            }
            else
            {
                var k = rng.Next(segments.Count);
                segments[k] = (Mutator.Mutate(segments[k].Bytes, rng, segments[k].Fields), segments[k].Fields);
            }
        }

        var closeAtEnd = !mutated || rng.Next(3) != 0;
        var describe = $"socket case {index} (seed {FuzzSettings.Seed}, ops={string.Join(",", ops.Select(o => o.Kind))}, structured={handshake.Structured}, min={handshake.MinBlock}, mutated={mutated}, close={closeAtEnd})";
        using var serverStop = new CancellationTokenSource();
        var server = ServeOneAsync(listener, handshake, head, segments.Select(s => s.Bytes).ToList(), closeAtEnd, serverStop.Token);

        var options = handshake.Options with
        {
            ConnectTimeout = TimeSpan.FromMilliseconds(300),
            RequestTimeout = TimeSpan.FromMilliseconds(200),
            Reconnect = NbdReconnectPolicy.Disabled,
            MaxInFlightRequests = 1,
            DrainTimeout = TimeSpan.FromMilliseconds(100),
        };
        var port = ((IPEndPoint)listener.LocalEndpoint).Port;
        var uri = new Uri($"nbd://127.0.0.1:{port}/{handshake.ExportName}");
        string? failure = null;
        void Record(string outcome) => outcomes.AddOrUpdate(outcome, 1, static (_, n) => n + 1);
        bool Check(Exception? error, string what)
        {
            var outcome = error is null ? "success" : error.GetType().Name;
            Record(what + ": " + outcome);
            if (error is TimeoutException)
            {
                failure ??= $"{describe}: {what} did not finish within {CaseBound.TotalSeconds} s (hang)";
                return false;
            }

            if (error is not null and not NbdException and not OperationCanceledException)
            {
                failure ??= $"{describe}: {what} failed with untyped {error.GetType().Name}: {error}";
            }

            if (!mutated && error is not null && !(error is NbdServerException && what.StartsWith("op", StringComparison.Ordinal)))
            {
                failure ??= $"{describe}: unmutated {what} failed: {error.GetType().Name}: {error.Message}";
            }

            return true;
        }

        NbdClient? client = null;
        try
        {
            client = await NbdClient.ConnectAsync(uri, options).AsTask().WaitAsync(CaseBound);
            Check(null, "connect");
        }
        catch (Exception ex)
        {
            Check(ex, "connect");
        }

        if (client is not null)
        {
            for (var k = 0; k < ops.Count; k++)
            {
                var op = ops[k];
                var buffer = op.Kind == FuzzOpKind.Read ? new byte[op.Length] : null;
                try
                {
                    await StartAsync(client, op, buffer).WaitAsync(CaseBound);
                    Check(null, "op");
                    if (!mutated && op.Fails)
                    {
                        failure ??= $"{describe}: op {k} should have failed";
                    }
                    else if (!mutated && buffer is not null && !buffer.AsSpan().SequenceEqual(op.Expected))
                    {
                        failure ??= $"{describe}: op {k} read wrong data";
                    }
                }
                catch (Exception ex)
                {
                    if (!Check(ex, "op"))
                    {
                        break;
                    }
                }
            }

            try
            {
                await client.DisposeAsync().AsTask().WaitAsync(CaseBound);
            }
            catch (Exception ex)
            {
                failure ??= $"{describe}: dispose failed or hung: {ex.GetType().Name}: {ex.Message}";
            }
        }

        serverStop.CancelAfter(CaseBound);
        try
        {
            await server;
        }
        catch (Exception ex)
        {
            failure ??= $"{describe}: the fuzz server failed: {ex}";
        }

        return failure;
    }

    private static Task StartAsync(NbdClient client, FuzzOp op, byte[]? buffer) => op.Kind switch
    {
        FuzzOpKind.Read => client.ReadAsync(op.Offset, buffer).AsTask(),
        FuzzOpKind.Write => client.WriteAsync(op.Offset, op.Data).AsTask(),
        FuzzOpKind.Flush => client.FlushAsync().AsTask(),
        FuzzOpKind.Trim => client.TrimAsync(op.Offset, op.Length).AsTask(),
        FuzzOpKind.WriteZeroes => client.WriteZeroesAsync(op.Offset, op.Length).AsTask(),
        FuzzOpKind.BlockStatus => client.GetBlockStatusAsync(op.Offset, op.Length).AsTask(),
        _ => client.CacheAsync(op.Offset, op.Length).AsTask(),
    };

    /// <summary>
    /// Accepts one connection, writes the handshake, skips the client's options up to the last one, then answers each
    /// request with the next segment. Then closes (EOF) or stays silent until the client leaves.
    /// </summary>
    private static async Task ServeOneAsync(TcpListener listener, HandshakeScript handshake, byte[] head, List<byte[]> segments, bool closeAtEnd, CancellationToken stop)
    {
        Socket socket;
        try
        {
            socket = await listener.AcceptSocketAsync(stop);
        }
        catch (OperationCanceledException)
        {
            return; // the client never connected (it failed before)
        }

        using var _ = socket;
        await using var stream = new NetworkStream(socket, ownsSocket: false);
        try
        {
            await stream.WriteAsync(head, stop);
            if (await SkipNegotiationAsync(stream, handshake, stop))
            {
                foreach (var segment in segments)
                {
                    var header = new byte[28];
                    await stream.ReadExactlyAsync(header, stop);
                    if (BinaryPrimitives.ReadUInt32BigEndian(header) != 0x25609513)
                    {
                        break;
                    }

                    var type = BinaryPrimitives.ReadUInt16BigEndian(header.AsSpan(6));
                    if (type == 1)
                    {
                        await stream.ReadExactlyAsync(new byte[BinaryPrimitives.ReadUInt32BigEndian(header.AsSpan(24))], stop);
                    }
                    else if (type == 2)
                    {
                        break;
                    }

                    await stream.WriteAsync(segment, stop);
                }
            }

            if (closeAtEnd)
            {
                socket.Shutdown(SocketShutdown.Send);
            }

            var sink = new byte[65536];
            while (await stream.ReadAsync(sink, stop) > 0)
            {
            }
        }
        catch (Exception ex) when (ex is IOException or SocketException or EndOfStreamException or OperationCanceledException or ObjectDisposedException)
        {
            // The client went away or the case ended.
        }
    }

    /// <summary>Reads the client's flags and options up to the one that ends negotiation. False if the client strays.</summary>
    private static async Task<bool> SkipNegotiationAsync(NetworkStream stream, HandshakeScript handshake, CancellationToken stop)
    {
        if (handshake.Oldstyle)
        {
            return true;
        }

        await stream.ReadExactlyAsync(new byte[4], stop);
        var header = new byte[16];
        while (true)
        {
            await stream.ReadExactlyAsync(header, stop);
            if (BinaryPrimitives.ReadUInt64BigEndian(header) != 0x49484156454F5054UL)
            {
                return false;
            }

            var option = BinaryPrimitives.ReadUInt32BigEndian(header.AsSpan(8));
            var length = BinaryPrimitives.ReadUInt32BigEndian(header.AsSpan(12));
            if (length > 1 << 20)
            {
                return false;
            }

            await stream.ReadExactlyAsync(new byte[length], stop);
            if (option == handshake.LastOption || option == 1)
            {
                return true;
            }

            if (option == 2)
            {
                return false;
            }
        }
    }
}
