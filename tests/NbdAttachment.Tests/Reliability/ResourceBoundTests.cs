using System.Diagnostics;
using NbdAttachment.Client;
using NbdAttachment.Testing;
using NbdAttachment.Tests.Support;
using Xunit.Abstractions;

namespace NbdAttachment.Tests.Reliability;

/// <summary>Back-pressure and memory: a server that never answers cannot make the client hold more than its limit.</summary>
[Collection(ReliabilityCollection.Name)]
public sealed class ResourceBoundTests
{
    private static readonly TimeSpan Bound = TimeSpan.FromSeconds(20);
    private readonly ITestOutputHelper _output;

    public ResourceBoundTests(ITestOutputHelper output) => _output = output;

    [Fact]
    public async Task Ten_thousand_submissions_to_a_silent_server_hold_at_most_MaxInFlightRequests_and_bounded_memory()
    {
        using var tracker = new UnobservedTaskTracker();
        await using var server = await NbdTestServer.StartAsync(new NbdTestServerOptions { MaxInFlightRequestsPerConnection = 4096 });
        await using var client = await NbdClient.ConnectAsync(server.Uri, new NbdClientOptions { MaxInFlightRequests = 64 });
        var payload = new byte[4096]; // one caller buffer shared by every write, so only the client's own cost is measured
        server.Faults.StallReplies();
        using var cancelHalf = new CancellationTokenSource();

        var before = GC.GetTotalMemory(true);
        var stopwatch = Stopwatch.StartNew();
        var tasks = new Task[10_000];
        var maxInFlight = 0;
        for (var i = 0; i < tasks.Length; i++)
        {
            tasks[i] = client.WriteAsync((i % 4096) * 4096L, payload, NbdCommandOptions.None, i % 2 == 0 ? cancelHalf.Token : default).AsTask();
            maxInFlight = Math.Max(maxInFlight, client.InFlightRequests);
        }

        var submitTime = stopwatch.Elapsed;
        await Task.Delay(200); // let the writer send whatever it may
        maxInFlight = Math.Max(maxInFlight, client.InFlightRequests);
        var after = GC.GetTotalMemory(true);
        _output.WriteLine($"10,000 submissions in {submitTime.TotalMilliseconds:0} ms; client in flight max {maxInFlight}; server saw max {server.Statistics.MaxConcurrentRequests} concurrent, {server.Statistics.Writes} writes; memory growth {(after - before) / 1024} KiB");

        maxInFlight.Should().BeLessThanOrEqualTo(64);
        server.Statistics.MaxConcurrentRequests.Should().BeLessThanOrEqualTo(65);
        server.Statistics.Writes.Should().BeLessThanOrEqualTo(64, "the rest wait for a slot (back-pressure)");
        tasks.Count(t => t.IsCompleted).Should().Be(0);
        (after - before).Should().BeLessThan(50L << 20);

        // Cancel half: the waiting ones leave at once, the sent ones are abandoned (their slots stay until answered).
        cancelHalf.Cancel();
        var cancelled = tasks.Where((_, i) => i % 2 == 0).ToArray();
        await Task.WhenAll(cancelled.Select(t => t.ContinueWith(_ => { }, TaskScheduler.Default))).WaitAsync(TimeSpan.FromSeconds(5));
        cancelled.Should().OnlyContain(t => t.IsCanceled || t.Exception!.InnerException is OperationCanceledException);

        // Resume: the other half completes.
        server.Faults.ResumeReplies();
        await Task.WhenAll(tasks.Where((_, i) => i % 2 == 1)).WaitAsync(Bound);
        client.InFlightRequests.Should().BeLessThanOrEqualTo(64);
        var deadline = Stopwatch.StartNew();
        while (client.InFlightRequests > 0 && deadline.Elapsed < Bound)
        {
            await Task.Delay(5);
        }

        client.InFlightRequests.Should().Be(0);
        server.Statistics.MaxConcurrentRequests.Should().BeLessThanOrEqualTo(65);
        tracker.CollectAndGet().Should().BeEmpty();
    }

    [Fact]
    public async Task Hostile_length_fields_do_not_make_the_client_allocate()
    {
        // A structured chunk claiming 4 GiB of payload for an unknown cookie, then a huge option reply length: the
        // client refuses both by their declared lengths (see also SocketFuzzTests' memory bound).
        var before = GC.GetTotalMemory(true);
        for (var i = 0; i < 200; i++)
        {
            var stream = new ScriptStream([(0, Bytes.U64(RawConnection.NbdMagic).U64(RawConnection.IHaveOpt).U16(3)
                .U64(RawConnection.OptReplyMagic).U32(8).U32(1).U32(0xFFFFFFF0).Build())], i);
            var negotiator = new NbdAttachment.Engine.NbdNegotiator(stream, NbdUri.Parse("nbd://x/"), new NbdClientOptions(), Microsoft.Extensions.Logging.Abstractions.NullLogger.Instance);
            var act = async () => await negotiator.GoAsync(CancellationToken.None);
            await act.Should().ThrowAsync<NbdProtocolException>();
        }

        (GC.GetTotalMemory(true) - before).Should().BeLessThan(16L << 20);
    }
}
