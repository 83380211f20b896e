using NbdAttachment.Client;
using NbdAttachment.Testing;

namespace NbdAttachment.Tests.Reliability;

/// <summary>Regression tests for client bugs the reliability suite found (all fixed).</summary>
[Collection(ReliabilityCollection.Name)]
public sealed class ReliabilityBugReproTests
{
    private static readonly TimeSpan Bound = TimeSpan.FromSeconds(10);

    [Fact]
    public async Task Block_status_works_after_a_reconnect_that_granted_a_different_context_id()
    {
        await using var server = await NbdTestServer.StartAsync();
        var options = new NbdClientOptions
        {
            Reconnect = NbdReconnectPolicy.Default with { InitialDelay = TimeSpan.FromMilliseconds(5), MaxDelay = TimeSpan.FromMilliseconds(20) },
        };
        await using var client = await NbdClient.ConnectAsync(server.Uri, options);
        (await client.GetBlockStatusAsync(0, 65536).AsTask().WaitAsync(Bound)).Should().NotBeEmpty();

        server.Faults.DropConnectionAfterRequests(1);
        await client.WriteAsync(0, new byte[] { 1 }).AsTask().WaitAsync(Bound); // executed, dropped, replayed on connection 2
        client.ReconnectCount.Should().Be(1);

        // Connection 2 granted base:allocation under another (random) id.
        var extents = await client.GetBlockStatusAsync(0, 65536).AsTask().WaitAsync(Bound);
        extents.Should().NotBeEmpty();
    }

    [Fact]
    public async Task Dispose_ends_callers_waiting_for_a_slot()
    {
        await using var server = await NbdTestServer.StartAsync();
        var client = await NbdClient.ConnectAsync(server.Uri, new NbdClientOptions { MaxInFlightRequests = 8, DrainTimeout = TimeSpan.FromMilliseconds(200) });
        server.Faults.StallReplies();
        var pending = Enumerable.Range(0, 100).Select(i => client.WriteAsync(i * 4096L, new byte[4096]).AsTask()).ToArray();
        while (client.InFlightRequests < 8)
        {
            await Task.Delay(5);
        }

        await client.DisposeAsync().AsTask().WaitAsync(Bound);

        // Observed: the 8 requests holding slots fail with ObjectDisposedException; the other 92 stay
        // WaitingForActivation forever in NbdConnection.SubmitSlowAsync (RentSlowAsync on a disposed SemaphoreSlim).
        await Task.WhenAll(pending.Select(t => t.ContinueWith(_ => { }, TaskScheduler.Default))).WaitAsync(Bound);
        pending.Should().OnlyContain(t => t.IsFaulted && t.Exception!.InnerException is ObjectDisposedException);
        server.Faults.ResumeReplies();
    }

    [Fact]
    public async Task Cancelling_requests_while_their_replies_arrive_never_deadlocks()
    {
        await using var server = await NbdTestServer.StartAsync();
        await using var client = await NbdClient.ConnectAsync(server.Uri, new NbdClientOptions { MaxInFlightRequests = 64 });
        var rng = new Random(1);
        var work = Task.Run(async () =>
        {
            for (var i = 0; i < 20_000; i++)
            {
                using var cts = new CancellationTokenSource();
                var read = client.ReadAsync(rng.Next(0, 1000) * 512L, new byte[512], cts.Token).AsTask();
                var cancel = Task.Run(cts.Cancel); // races with the reply
                try
                {
                    await read;
                }
                catch (OperationCanceledException)
                {
                }

                await cancel;
            }
        });

        // Observed: within a few thousand iterations a thread-pool thread blocks in CancellationTokenRegistration.Dispose
        // (NbdRequest.Signal, under lock(this)) and another in NbdRequest.Abandon waiting for that lock.
        await work.WaitAsync(TimeSpan.FromSeconds(60));
    }
}
