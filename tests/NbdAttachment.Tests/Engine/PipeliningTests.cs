using NbdAttachment.Client;
using NbdAttachment.Testing;
using static NbdAttachment.Tests.Engine.CommandTests;

namespace NbdAttachment.Tests.Engine;

public sealed class PipeliningTests
{
    private static readonly TimeSpan Bound = TimeSpan.FromSeconds(30);

    [Fact]
    public async Task Sixty_four_requests_in_flight_complete_out_of_order()
    {
        await using var server = await NbdTestServer.StartAsync();
        var export = server.GetExport();
        for (var i = 0; i < 64; i++)
        {
            export.WriteBytes(i * 4096L, Pattern(4096, i));
        }

        await using var client = await NbdClient.ConnectAsync(server.Uri);
        server.Faults.ReorderReplies(64);
        var buffers = Enumerable.Range(0, 64).Select(_ => new byte[4096]).ToArray();
        var tasks = Enumerable.Range(0, 64).Select(i => client.ReadAsync(i * 4096L, buffers[i]).AsTask()).ToArray();
        await Task.WhenAll(tasks).WaitAsync(Bound);
        for (var i = 0; i < 64; i++)
        {
            buffers[i].Should().Equal(Pattern(4096, i));
        }

        // The server holds every reply until it has 64 of them (ReorderReplies), so the reads can only have
        // completed if all 64 were in flight together. The server's own concurrency statistic is not asserted
        // to the exact count: under full CI load it read 41-45 twice while the reads completed correctly.
        server.Statistics.MaxConcurrentRequests.Should().BeGreaterThan(1);
    }

    [Fact]
    public async Task Back_pressure_keeps_in_flight_at_the_limit()
    {
        await using var server = await NbdTestServer.StartAsync();
        await using var client = await NbdClient.ConnectAsync(server.Uri, new NbdClientOptions { MaxInFlightRequests = 4 });
        server.Faults.DelayReplies(TimeSpan.FromMilliseconds(2), 200);
        var tasks = Enumerable.Range(0, 200).Select(i => client.WriteAsync(i * 512L, Pattern(512, i)).AsTask()).ToArray();
        await Task.WhenAll(tasks).WaitAsync(Bound);
        server.Statistics.MaxConcurrentRequests.Should().BeLessThanOrEqualTo(4);
        client.InFlightRequests.Should().Be(0);
        server.Statistics.Writes.Should().Be(200);
        client.InFlightRequests.Should().Be(0);
    }

    [Fact]
    public async Task Requests_above_the_maximum_payload_are_split()
    {
        var options = new NbdTestServerOptions { Exports = [new NbdTestExportOptions { MaximumBlockSize = 64 * 1024, PreferredBlockSize = 4096 }] };
        await using var server = await NbdTestServer.StartAsync(options);
        await using var client = await NbdClient.ConnectAsync(server.Uri);
        client.Export.MaximumPayloadSize.Should().Be(64 * 1024);
        var data = Pattern(1 << 20, 77);
        await client.WriteAsync(0, data).AsTask().WaitAsync(Bound);
        server.Statistics.Writes.Should().Be(16);
        var back = new byte[data.Length];
        await client.ReadAsync(0, back).AsTask().WaitAsync(Bound);
        server.Statistics.Reads.Should().Be(16);
        back.Should().Equal(data);
        server.Statistics.ProtocolErrors.Should().Be(0);
    }

    [Fact]
    public async Task Unaligned_io_is_handled_against_the_minimum_block_size()
    {
        var options = new NbdTestServerOptions { Exports = [new NbdTestExportOptions { Size = 1 << 20, MinimumBlockSize = 512 }] };
        await using var server = await NbdTestServer.StartAsync(options);
        var export = server.GetExport();
        var original = Pattern(1 << 20, 4);
        export.WriteBytes(0, original);
        await using var client = await NbdClient.ConnectAsync(server.Uri);
        client.Export.MinimumBlockSize.Should().Be(512);

        var expected = (byte[])original.Clone();
        foreach (var (offset, length) in new[] { (100L, 1000), (511L, 2), (1024L, 100), (3000L, 512), (0L, 1), ((1L << 20) - 3, 3), (700L, 300) })
        {
            var data = Pattern(length, (int)offset);
            await client.WriteAsync(offset, data).AsTask().WaitAsync(Bound);
            data.CopyTo(expected, offset);
            var back = new byte[length + 10 > (1 << 20) - offset ? length : length + 10];
            await client.ReadAsync(offset, back).AsTask().WaitAsync(Bound);
            back.Should().Equal(expected.AsSpan((int)offset, back.Length).ToArray());
        }

        export.ReadBytes(0, 1 << 20).Should().Equal(expected);
        server.Statistics.ErrorReplies.Should().Be(0, "every request sent was aligned");
    }

    [Fact]
    public async Task Unaligned_write_zeroes_zeroes_exactly_the_range()
    {
        var options = new NbdTestServerOptions { Exports = [new NbdTestExportOptions { Size = 1 << 20, MinimumBlockSize = 4096, PreferredBlockSize = 4096 }] };
        await using var server = await NbdTestServer.StartAsync(options);
        var original = Pattern(1 << 20, 8);
        server.GetExport().WriteBytes(0, original);
        await using var client = await NbdClient.ConnectAsync(server.Uri);
        await client.WriteZeroesAsync(1000, 20000);
        var expected = (byte[])original.Clone();
        Array.Clear(expected, 1000, 20000);
        server.GetExport().ReadBytes(0, 1 << 20).Should().Equal(expected);
        server.Statistics.ErrorReplies.Should().Be(0);
    }

    [Fact]
    public async Task Cancelled_read_returns_at_once_and_its_slot_is_reused_after_the_reply()
    {
        await using var server = await NbdTestServer.StartAsync();
        await using var client = await NbdClient.ConnectAsync(server.Uri, new NbdClientOptions { MaxInFlightRequests = 1 });
        server.Faults.StallReplies();
        using var cts = new CancellationTokenSource(TimeSpan.FromMilliseconds(100));
        var buffer = new byte[4096];
        var act = async () => await client.ReadAsync(0, buffer, cts.Token);
        await act.Should().ThrowAsync<OperationCanceledException>().WaitAsync(Bound);
        client.InFlightRequests.Should().Be(1, "the server still owes a reply for that cookie");
        server.Faults.ResumeReplies();
        await WaitFor(() => client.InFlightRequests == 0);
        await client.ReadAsync(0, buffer).AsTask().WaitAsync(Bound);
    }

    [Fact]
    public async Task Cancelled_waiting_for_a_slot_sends_nothing()
    {
        await using var server = await NbdTestServer.StartAsync();
        await using var client = await NbdClient.ConnectAsync(server.Uri, new NbdClientOptions { MaxInFlightRequests = 1 });
        server.Faults.StallReplies();
        var first = client.ReadAsync(0, new byte[512]).AsTask();
        await WaitFor(() => server.Statistics.Reads == 1);
        using var cts = new CancellationTokenSource(TimeSpan.FromMilliseconds(100));
        var act = async () => await client.ReadAsync(0, new byte[512], cts.Token);
        await act.Should().ThrowAsync<OperationCanceledException>().WaitAsync(Bound);
        server.Faults.ResumeReplies();
        await first.WaitAsync(Bound);
        server.Statistics.Reads.Should().Be(1);
    }
}
