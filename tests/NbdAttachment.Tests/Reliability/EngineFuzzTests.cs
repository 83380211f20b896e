using System.Diagnostics;
using System.Text;
using Microsoft.Extensions.Logging.Abstractions;
using NbdAttachment.Client;
using NbdAttachment.Engine;
using NbdAttachment.Protocol;
using NbdAttachment.Tests.Support;
using Xunit.Abstractions;

namespace NbdAttachment.Tests.Reliability;

/// <summary>
/// Engine-level fuzzing over an in-memory transport (<see cref="ScriptStream"/>): the real reply reader
/// (<see cref="NbdWire"/>) and the real negotiator (<see cref="NbdNegotiator"/>) consume valid server byte
/// streams and seeded mutations of them. Unmutated cases must give exactly the expected results (so the seeds are
/// known-good); mutated ones must end every operation with a typed error or success, without a hang.
/// </summary>
[Collection(ReliabilityCollection.Name)]
public sealed class EngineFuzzTests
{
    private const long ExportSize = 1 << 20;
    private static readonly TimeSpan CaseBound = TimeSpan.FromSeconds(5);
    private readonly ITestOutputHelper _output;

    public EngineFuzzTests(ITestOutputHelper output) => _output = output;

    internal static NbdExportInfo MakeExport(bool structured, uint minBlock) => new(
        string.Empty,
        null,
        null,
        ExportSize,
        NbdTransmissionFlags.HasFlags | NbdTransmissionFlags.SendFlush | NbdTransmissionFlags.SendFua | NbdTransmissionFlags.SendTrim
            | NbdTransmissionFlags.SendWriteZeroes | NbdTransmissionFlags.SendCache | (structured ? NbdTransmissionFlags.SendDontFragment : 0),
        minBlock,
        4096,
        65536,
        minBlock > 1,
        structured,
        structured ? new Dictionary<string, uint> { ["base:allocation"] = ReplyScript.ContextId } : new Dictionary<string, uint>(),
        NbdHandshakeStyle.FixedNewstyle,
        false);

    [Fact]
    public async Task Reply_reader_survives_mutated_reply_streams_with_only_typed_errors()
    {
        using var tracker = new UnobservedTaskTracker();
        var cases = FuzzSettings.ReplyStreamCases;
        var failures = new List<string>();
        var outcomes = new Dictionary<string, int>();
        var stopwatch = Stopwatch.StartNew();
        var before = GC.GetTotalMemory(true);
        for (var i = 0; i < cases && failures.Count < 10; i++)
        {
            var failure = await RunReplyCaseAsync(i, outcomes);
            if (failure is not null)
            {
                failures.Add(failure);
            }
        }

        var after = GC.GetTotalMemory(true);
        _output.WriteLine($"{cases} reply-stream cases in {stopwatch.Elapsed.TotalSeconds:0.00} s (seed {FuzzSettings.Seed}); memory {before / 1024} KiB -> {after / 1024} KiB");
        foreach (var (outcome, count) in outcomes.OrderByDescending(o => o.Value))
        {
            _output.WriteLine($"  {count,7} x {outcome}");
        }

        failures.Should().BeEmpty();
        tracker.CollectAndGet().Should().BeEmpty("no task may fault unobserved");
        (after - before).Should().BeLessThan(64L << 20, "memory stays bounded across cases");
    }

    [Fact]
    public async Task Negotiator_survives_mutated_handshakes_with_only_typed_errors()
    {
        using var tracker = new UnobservedTaskTracker();
        var cases = FuzzSettings.HandshakeCases;
        var failures = new List<string>();
        var outcomes = new Dictionary<string, int>();
        var stopwatch = Stopwatch.StartNew();
        for (var i = 0; i < cases && failures.Count < 10; i++)
        {
            var failure = await RunNegotiationCaseAsync(i, outcomes);
            if (failure is not null)
            {
                failures.Add(failure);
            }
        }

        _output.WriteLine($"{cases} handshake cases in {stopwatch.Elapsed.TotalSeconds:0.00} s (seed {FuzzSettings.Seed})");
        foreach (var (outcome, count) in outcomes.OrderByDescending(o => o.Value))
        {
            _output.WriteLine($"  {count,7} x {outcome}");
        }

        failures.Should().BeEmpty();
        tracker.CollectAndGet().Should().BeEmpty("no task may fault unobserved");
    }

    /// <summary>One reply-stream case: K concurrent operations, replies released once every request was written.</summary>
    private static async Task<string?> RunReplyCaseAsync(int index, Dictionary<string, int> outcomes)
    {
        var rng = new Random(FuzzSettings.CaseSeed(11, index));
        var structured = rng.Next(4) != 0;
        var minBlock = rng.Next(4) == 0 ? 512u : 1u;
        var mutate = index % 10 != 0;
        var ops = Enumerable.Range(0, rng.Next(1, 7)).Select(_ => FuzzOp.Random(rng, ExportSize, minBlock)).ToList();
        if (!structured)
        {
            ops.RemoveAll(o => o.Kind == FuzzOpKind.BlockStatus);
        }

        var fields = new List<int>();
        var cookies = ops.Select((op, slot) => (op, ReplyScript.CookieFor(slot, 1))).ToList();
        var replies = ReplyScript.Build(cookies, structured, rng, fields);
        var script = mutate ? Mutator.Mutate(replies, rng, fields) : replies;
        using var cancel = new CancellationTokenSource();
        var cancelAt = mutate && rng.Next(8) == 0 ? rng.Next(ops.Count) : -1;
        const bool racyCancel = true;
        var gate = ops.Where((_, i) => racyCancel || i != cancelAt).Sum(o => o.RequestBytes); // a pre-cancelled request is never sent
        var export = MakeExport(structured, minBlock);
        var connection = new NbdConnection(export, 16, NullLogger.Instance);
        var stream = new ScriptStream([(gate, script)], rng.Next());
        var wire = new NbdWire(stream, connection, connection.Export);
        var run = connection.RunWireAsync(wire);
        var buffers = ops.Select(o => o.Kind == FuzzOpKind.Read ? new byte[o.Length] : null).ToArray();
        var extents = ops.Select(_ => new List<NbdExtent>()).ToArray();
        var tasks = new Task[ops.Count];
        if (cancelAt >= 0 && !racyCancel)
        {
            cancel.Cancel();
        }

        for (var i = 0; i < ops.Count; i++)
        {
            tasks[i] = Start(connection, ops[i], buffers[i], extents[i], i == cancelAt ? cancel.Token : default);
        }

        if (cancelAt >= 0 && racyCancel)
        {
            cancel.CancelAfter(rng.Next(0, 2));
        }


        var describe = $"case {index} (seed {FuzzSettings.Seed}, structured={structured}, min={minBlock}, ops={string.Join(",", ops.Select(o => o.Kind))}, mutated={mutate})";
        Exception? ended;
        try
        {
            ended = await run.WaitAsync(CaseBound);
        }
        catch (TimeoutException)
        {
            connection.Fail(new NbdConnectionException("fuzz harness gave up"));
            return $"{describe}: the wire did not end within {CaseBound.TotalSeconds} s after a finite stream (hang)";
        }
        catch (Exception ex)
        {
            connection.Fail(ex);
            return $"{describe}: the wire loop threw {ex.GetType().Name}: {ex.Message}";
        }

        // What the client's supervisor does with reconnect disabled.
        connection.Fail(ended ?? new NbdConnectionException("The server closed the connection."));
        var all = Task.WhenAll(tasks);
        await Task.WhenAny(all, Task.Delay(CaseBound));
        _ = all.Exception; // observed here; each task is inspected below

        string? failure = null;
        for (var i = 0; i < ops.Count; i++)
        {
            var task = tasks[i];
            if (!task.IsCompleted)
            {
                failure ??= $"{describe}: op {i} ({ops[i].Kind}) still pending after the connection failed";
                continue;
            }

            var error = task.Exception?.InnerException ?? (task.IsCanceled ? new OperationCanceledException() : null);
            var outcome = error is null ? "success" : error.GetType().Name;
            outcomes[outcome] = outcomes.GetValueOrDefault(outcome) + 1;
            if (error is not null and not NbdException and not OperationCanceledException)
            {
                failure ??= $"{describe}: op {i} ({ops[i].Kind}) failed with untyped {error.GetType().Name}: {error.Message}";
            }

            if (!mutate)
            {
                if (ops[i].Fails && error is not NbdServerException)
                {
                    failure ??= $"{describe}: op {i} ({ops[i].Kind}) should fail with NbdServerException, got {outcome}";
                }
                else if (!ops[i].Fails && error is not null)
                {
                    failure ??= $"{describe}: op {i} ({ops[i].Kind}) should succeed, got {outcome}: {error.Message}";
                }
                else if (!ops[i].Fails && ops[i].Kind == FuzzOpKind.Read && !buffers[i]!.AsSpan().SequenceEqual(ops[i].Expected))
                {
                    failure ??= $"{describe}: op {i} read wrong data";
                }
                else if (!ops[i].Fails && ops[i].Kind == FuzzOpKind.BlockStatus && extents[i].Count == 0)
                {
                    failure ??= $"{describe}: op {i} block status returned no extents";
                }
            }
        }

        await stream.DisposeAsync();
        return failure;
    }

    private static Task Start(NbdConnection connection, FuzzOp op, byte[]? buffer, List<NbdExtent> extents, CancellationToken token)
    {
        try
        {
            return op.Kind switch
            {
                FuzzOpKind.Read => connection.ReadAsync(op.Offset, buffer, token).AsTask(),
                FuzzOpKind.Write => connection.WriteAsync(op.Offset, op.Data, false, token).AsTask(),
                FuzzOpKind.Flush => connection.FlushAsync(token).AsTask(),
                FuzzOpKind.Trim => connection.TrimAsync(op.Offset, op.Length, false, token).AsTask(),
                FuzzOpKind.WriteZeroes => connection.WriteZeroesAsync(op.Offset, op.Length, false, false, false, token).AsTask(),
                FuzzOpKind.BlockStatus => connection.BlockStatusAsync(op.Offset, op.Length, "base:allocation", false, extents, token).AsTask(),
                _ => connection.CacheAsync(op.Offset, op.Length, token).AsTask(),
            };
        }
        catch (Exception ex)
        {
            return Task.FromException(ex);
        }
    }

    /// <summary>One handshake case against the real negotiator: GO (with fallbacks), INFO or LIST.</summary>
    private static async Task<string?> RunNegotiationCaseAsync(int index, Dictionary<string, int> outcomes)
    {
        var rng = new Random(FuzzSettings.CaseSeed(12, index));
        var mutate = index % 10 != 0;
        var fields = new List<int>();
        var handshake = Handshakes.Build(rng, fields);
        var (script, action, options, expectedSize, exportName) = (handshake.Script, handshake.Action, handshake.Options, handshake.Expected, handshake.ExportName);
        var bytes = mutate ? Mutator.Mutate(script, rng, fields) : script;
        var stream = new ScriptStream([(0, bytes)], rng.Next());
        var negotiator = new NbdNegotiator(stream, NbdUri.Parse("nbd://fuzz/" + exportName), options, NullLogger.Instance);
        using var timeout = new CancellationTokenSource(CaseBound);
        var describe = $"case {index} (seed {FuzzSettings.Seed}, {action}, mutated={mutate})";
        string outcome;
        string? failure = null;
        try
        {
            long size = action switch
            {
                "GO" => (await negotiator.GoAsync(timeout.Token)).Size,
                "INFO" => (await negotiator.InfoAsync(timeout.Token)).Size,
                _ => (await negotiator.ListAsync(timeout.Token)).Count,
            };
            outcome = "success";
            if (!mutate && size != expectedSize)
            {
                failure = $"{describe}: expected {expectedSize}, got {size}";
            }
        }
        catch (Exception ex) when (ex is NbdException)
        {
            outcome = ex.GetType().Name;
            if (!mutate)
            {
                failure = $"{describe}: the unmutated handshake failed: {ex.Message}";
            }
        }
        catch (Exception ex)
        {
            outcome = ex.GetType().Name;
            failure = $"{describe}: untyped {ex.GetType().Name}: {ex.Message}";
        }

        outcomes[outcome] = outcomes.GetValueOrDefault(outcome) + 1;
        await stream.DisposeAsync();
        return failure;
    }
}
