using System.Diagnostics;
using NbdAttachment.Client;
using NbdAttachment.Testing;
using NbdAttachment.Virtualization;
using Xunit.Abstractions;

namespace NbdAttachment.Tests.Reliability;

/// <summary>
/// Cancellation at every stage (waiting for a slot, on the wire, during a reconnect, at random points) and disposal
/// with I/O pending: everything completes quickly, every task ends (success, cancelled or faulted), nothing faults
/// unobserved.
/// </summary>
[Collection(ReliabilityCollection.Name)]
public sealed class CancellationDisposalTests
{
    private static readonly TimeSpan Quick = TimeSpan.FromSeconds(2);
    private static readonly TimeSpan Bound = TimeSpan.FromSeconds(15);
    private readonly ITestOutputHelper _output;

    public CancellationDisposalTests(ITestOutputHelper output) => _output = output;

    private static NbdClientOptions Fast => new()
    {
        Reconnect = NbdReconnectPolicy.Default with { InitialDelay = TimeSpan.FromMilliseconds(5), MaxDelay = TimeSpan.FromMilliseconds(50), MaxDuration = TimeSpan.FromSeconds(30) },
        DrainTimeout = TimeSpan.FromMilliseconds(200),
    };

    [Fact]
    public async Task Requests_waiting_for_a_slot_are_cancelled_at_once()
    {
        using var tracker = new UnobservedTaskTracker();
        await using var server = await NbdTestServer.StartAsync();
        await using var client = await NbdClient.ConnectAsync(server.Uri, Fast with { MaxInFlightRequests = 4 });
        server.Faults.StallReplies();
        var holding = Enumerable.Range(0, 4).Select(i => client.ReadAsync(i * 4096L, new byte[4096]).AsTask()).ToArray();
        await WaitFor(() => client.InFlightRequests == 4);
        using var cancel = new CancellationTokenSource();
        var queued = Enumerable.Range(0, 20).Select(i => client.WriteAsync(i * 4096L, new byte[4096], NbdCommandOptions.None, cancel.Token).AsTask()).ToArray();
        await Task.Delay(20);
        queued.Should().OnlyContain(t => !t.IsCompleted, "they wait for a slot (back-pressure)");

        var stopwatch = Stopwatch.StartNew();
        cancel.Cancel();
        await Task.WhenAll(queued.Select(t => t.ContinueWith(_ => { }, TaskScheduler.Default))).WaitAsync(Quick);
        stopwatch.Elapsed.Should().BeLessThan(Quick);
        queued.Should().OnlyContain(t => t.IsCanceled || t.Exception!.InnerException is OperationCanceledException);
        server.Statistics.Writes.Should().Be(0, "requests cancelled before they had a slot are never sent");

        server.Faults.ResumeReplies();
        await Task.WhenAll(holding).WaitAsync(Bound);
        await WaitFor(() => client.InFlightRequests == 0);
        tracker.CollectAndGet().Should().BeEmpty();
    }

    [Fact]
    public async Task Requests_on_the_wire_are_cancelled_at_once_and_their_buffers_are_not_written_afterwards()
    {
        using var tracker = new UnobservedTaskTracker();
        await using var server = await NbdTestServer.StartAsync();
        server.GetExport().WriteBytes(0, Enumerable.Repeat((byte)0x55, 65536).ToArray());
        await using var client = await NbdClient.ConnectAsync(server.Uri, Fast);
        server.Faults.StallReplies();
        using var cancel = new CancellationTokenSource();
        var buffers = Enumerable.Range(0, 10).Select(_ => Enumerable.Repeat((byte)0xAA, 4096).ToArray()).ToArray();
        var reads = buffers.Select((b, i) => client.ReadAsync(i * 4096L, b, cancel.Token).AsTask()).ToArray();
        await WaitFor(() => server.Statistics.Reads == 10);

        cancel.Cancel();
        await Task.WhenAll(reads.Select(t => t.ContinueWith(_ => { }, TaskScheduler.Default))).WaitAsync(Quick);
        reads.Should().OnlyContain(t => t.IsCanceled || t.Exception!.InnerException is OperationCanceledException);
        client.InFlightRequests.Should().Be(10, "a sent request keeps its slot until the server answers");

        server.Faults.ResumeReplies();
        await WaitFor(() => client.InFlightRequests == 0);
        buffers.Should().OnlyContain(b => b.All(x => x == 0xAA), "the buffer is not written after cancellation returns");
        await client.ReadAsync(0, new byte[4096]).AsTask().WaitAsync(Bound); // the client is still healthy
        tracker.CollectAndGet().Should().BeEmpty();
    }

    [Fact]
    public async Task Requests_are_cancelled_at_once_while_the_client_reconnects()
    {
        using var tracker = new UnobservedTaskTracker();
        await using var server = await NbdTestServer.StartAsync();
        await using var client = await NbdClient.ConnectAsync(server.Uri, Fast);
        server.Faults.RefuseNextConnections(int.MaxValue);
        server.Faults.DropConnectionAfterRequests(1);
        var write = client.WriteAsync(0, new byte[] { 7 }).AsTask(); // executed, then the connection drops
        await WaitFor(() => client.State == NbdClientState.Reconnecting);

        using var cancel = new CancellationTokenSource();
        var reads = Enumerable.Range(0, 10).Select(i => client.ReadAsync(i * 512L, new byte[512], cancel.Token).AsTask()).ToArray();
        await Task.Delay(20);
        reads.Should().OnlyContain(t => !t.IsCompleted, "I/O waits while the client reconnects");
        cancel.Cancel();
        await Task.WhenAll(reads.Select(t => t.ContinueWith(_ => { }, TaskScheduler.Default))).WaitAsync(Quick);
        reads.Should().OnlyContain(t => t.IsCanceled || t.Exception!.InnerException is OperationCanceledException);

        server.Faults.Reset(); // accept connections again
        await write.WaitAsync(Bound);
        client.State.Should().Be(NbdClientState.Connected);
        await WaitFor(() => client.InFlightRequests == 0);
        tracker.CollectAndGet().Should().BeEmpty();
    }

    [Fact]
    public async Task Cancellation_at_random_points_under_faults_always_completes_and_leaks_no_slot()
    {
        using var tracker = new UnobservedTaskTracker();
        await using var server = await NbdTestServer.StartAsync(new NbdTestServerOptions { SplitReads = true, MaxChunkSize = 4096 });
        await using var client = await NbdClient.ConnectAsync(server.Uri, Fast with { MaxInFlightRequests = 16, RequestTimeout = TimeSpan.FromSeconds(1) });
        var rng = new Random(FuzzSettings.Seed);
        var outcomes = new Dictionary<string, int>();
        for (var round = 0; round < 100; round++)
        {
            switch (rng.Next(6))
            {
                case 0:
                    server.Faults.DropConnectionAfterRequests(rng.Next(1, 30));
                    break;
                case 1:
                    server.Faults.DelayReplies(TimeSpan.FromMilliseconds(rng.Next(1, 5)), 20);
                    break;
                case 2:
                    server.Faults.RefuseNextConnections(rng.Next(1, 3));
                    server.Faults.DropConnectionAfterRequests(rng.Next(1, 10));
                    break;
            }

            var sources = new List<CancellationTokenSource>();
            var tasks = new List<Task>();
            for (var i = 0; i < 20; i++)
            {
                var cts = new CancellationTokenSource();
                sources.Add(cts);
                var offset = rng.Next(0, 1 << 20) * 16L;
                tasks.Add(rng.Next(3) switch
                {
                    0 => client.WriteAsync(offset, new byte[rng.Next(1, 70000)], NbdCommandOptions.None, cts.Token).AsTask(),
                    1 => client.FlushAsync(cts.Token).AsTask(),
                    _ => client.ReadAsync(offset, new byte[rng.Next(1, 70000)], cts.Token).AsTask(),
                });
                var when = rng.Next(4);
                if (when == 0)
                {
                    _ = Task.Run(cts.Cancel); // never block the test thread in a cancellation callback
                }
                else if (when < 3)
                {
                    cts.CancelAfter(rng.Next(1, 6));
                }
            }

            var all = Task.WhenAll(tasks);
            (await Task.WhenAny(all, Task.Delay(Bound))).Should().BeSameAs(all, $"round {round} must complete");
            _ = all.Exception;
            foreach (var task in tasks)
            {
                var error = task.Exception?.InnerException ?? (task.IsCanceled ? new OperationCanceledException() : null);
                var name = error?.GetType().Name ?? "success";
                outcomes[name] = outcomes.GetValueOrDefault(name) + 1;
                (error is null or OperationCanceledException).Should().BeTrue($"only success or cancellation is expected, got {error}");
            }

            sources.ForEach(s => s.Dispose());
        }

        server.Faults.Reset();
        await WaitFor(() => client.InFlightRequests == 0);
        client.State.Should().Be(NbdClientState.Connected);
        _output.WriteLine($"{client.ReconnectCount} reconnects; " + string.Join(", ", outcomes.Select(o => $"{o.Value} x {o.Key}")));
        tracker.CollectAndGet().Should().BeEmpty();
    }

    [Fact]
    public async Task Dispose_with_io_in_flight_completes_quickly_and_ends_every_pending_task()
    {
        using var tracker = new UnobservedTaskTracker();
        await using var server = await NbdTestServer.StartAsync();
        var client = await NbdClient.ConnectAsync(server.Uri, Fast with { MaxInFlightRequests = 8 });
        server.Faults.StallReplies();
        // Three times as many operations as slots: most wait for a slot when the client is disposed.
        var pending = Enumerable.Range(0, 24).Select(i => i % 2 == 0
            ? client.ReadAsync(i * 4096L, new byte[4096]).AsTask()
            : client.WriteAsync(i * 4096L, new byte[4096]).AsTask()).ToArray();
        await WaitFor(() => client.InFlightRequests == 8);

        var stopwatch = Stopwatch.StartNew();
        await client.DisposeAsync().AsTask().WaitAsync(Bound);
        _output.WriteLine($"dispose took {stopwatch.ElapsedMilliseconds} ms (DrainTimeout 200 ms)");
        stopwatch.Elapsed.Should().BeLessThan(TimeSpan.FromSeconds(3));
        await Task.WhenAny(Task.WhenAll(pending.Select(t => t.ContinueWith(_ => { }, TaskScheduler.Default))), Task.Delay(Quick));
        _output.WriteLine($"{pending.Count(t => !t.IsCompleted)} of {pending.Length} still pending; first pending index {Array.FindIndex(pending, t => !t.IsCompleted)}; faults: {string.Join(",", pending.Where(t => t.IsFaulted).Select(t => t.Exception!.InnerException!.GetType().Name).Distinct())}");
        pending.Should().OnlyContain(t => t.IsCompleted);
        pending.Where(t => t.IsFaulted).Select(t => t.Exception!.InnerException).Should().AllBeOfType<ObjectDisposedException>();
        client.State.Should().Be(NbdClientState.Closed);
        var after = async () => await client.ReadAsync(0, new byte[1]);
        await after.Should().ThrowAsync<ObjectDisposedException>();
        server.Faults.ResumeReplies();
        tracker.CollectAndGet().Should().BeEmpty();
    }

    [Fact]
    public async Task Dispose_during_a_reconnect_to_a_refusing_server_completes_quickly()
    {
        using var tracker = new UnobservedTaskTracker();
        await using var server = await NbdTestServer.StartAsync();
        var client = await NbdClient.ConnectAsync(server.Uri, Fast);
        server.Faults.RefuseNextConnections(int.MaxValue);
        server.Faults.DropConnectionAfterRequests(1);
        var pending = new List<Task> { client.WriteAsync(0, new byte[] { 1 }).AsTask() };
        await WaitFor(() => client.State == NbdClientState.Reconnecting);
        pending.AddRange(Enumerable.Range(0, 20).Select(i => client.ReadAsync(i * 512L, new byte[512]).AsTask()));

        var stopwatch = Stopwatch.StartNew();
        await client.DisposeAsync().AsTask().WaitAsync(Bound);
        _output.WriteLine($"dispose during reconnect took {stopwatch.ElapsedMilliseconds} ms (DrainTimeout 200 ms)");
        stopwatch.Elapsed.Should().BeLessThan(TimeSpan.FromSeconds(3));
        await Task.WhenAll(pending.Select(t => t.ContinueWith(_ => { }, TaskScheduler.Default))).WaitAsync(Quick);
        pending.Should().OnlyContain(t => t.IsFaulted);
        tracker.CollectAndGet().Should().BeEmpty();
    }

    [Fact]
    public async Task Concurrent_disposes_with_io_racing_all_complete()
    {
        using var tracker = new UnobservedTaskTracker();
        await using var server = await NbdTestServer.StartAsync();
        for (var iteration = 0; iteration < 20; iteration++)
        {
            var client = await NbdClient.ConnectAsync(server.Uri, Fast);
            var io = Enumerable.Range(0, 30).Select(i => Task.Run(async () =>
            {
                try
                {
                    await client.WriteAsync(i * 4096L, new byte[4096]);
                    await client.ReadAsync(i * 4096L, new byte[4096]);
                }
                catch (ObjectDisposedException)
                {
                }
            })).ToArray();
            var disposes = Enumerable.Range(0, 3).Select(_ => Task.Run(async () => await client.DisposeAsync())).ToArray();
            await Task.WhenAll(disposes.Concat(io)).WaitAsync(Bound);
            client.State.Should().Be(NbdClientState.Closed);
        }

        tracker.CollectAndGet().Should().BeEmpty();
    }

    [Fact]
    public async Task Stopping_a_virtual_machine_while_its_nbd_device_reconnects_completes_and_ends_guest_io()
    {
        using var tracker = new UnobservedTaskTracker();
        await using var server = await NbdTestServer.StartAsync();
        var attachment = new NetworkBlockDeviceStorageDeviceAttachment(
            server.Uri,
            TimeSpan.FromSeconds(1),
            false,
            DiskSynchronizationMode.Full,
            new NbdAttachmentOptions { Reconnect = Fast.Reconnect });
        var vm = new VirtualMachine(new VirtualMachineConfiguration { StorageDevices = { new VirtioBlockDeviceConfiguration(attachment) } });
        await vm.StartAsync().WaitAsync(Bound);
        var device = vm.BlockDevices[0];
        server.Faults.RefuseNextConnections(int.MaxValue);
        server.Faults.DropConnectionAfterRequests(1);
        var pending = new List<Task> { device.WriteAsync(0, new byte[512]).AsTask() };
        await WaitFor(() => attachment.State == NbdAttachmentState.Reconnecting);
        pending.AddRange(Enumerable.Range(0, 10).Select(i => device.ReadAsync(i * 512L, new byte[512]).AsTask()));

        var stopwatch = Stopwatch.StartNew();
        await vm.StopAsync().WaitAsync(Bound);
        _output.WriteLine($"VM stop during reconnect took {stopwatch.ElapsedMilliseconds} ms (the attachment drains for up to the client's default DrainTimeout, 5 s)");
        vm.State.Should().Be(VirtualMachineState.Stopped);
        attachment.State.Should().Be(NbdAttachmentState.Closed);
        await Task.WhenAll(pending.Select(t => t.ContinueWith(_ => { }, TaskScheduler.Default))).WaitAsync(Quick);
        pending.Should().OnlyContain(t => t.IsCompleted);
        stopwatch.Elapsed.Should().BeLessThan(TimeSpan.FromSeconds(8));
        tracker.CollectAndGet().Should().BeEmpty();
    }

    internal static async Task WaitFor(Func<bool> condition)
    {
        var stopwatch = Stopwatch.StartNew();
        while (!condition())
        {
            if (stopwatch.Elapsed > Bound)
            {
                throw new TimeoutException("condition not reached");
            }

            await Task.Delay(5);
        }
    }
}
