using System.Runtime.CompilerServices;
using NbdAttachment.Client;
using NbdAttachment.Testing;
using NbdAttachment.Tests.Support;
using static NbdAttachment.Tests.Engine.CommandTests;

namespace NbdAttachment.Tests.Engine;

public sealed class ReconnectTests
{
    private static readonly TimeSpan Bound = TimeSpan.FromSeconds(30);

    private static readonly NbdClientOptions Fast = new()
    {
        Reconnect = NbdReconnectPolicy.Default with { InitialDelay = TimeSpan.FromMilliseconds(10), MaxDelay = TimeSpan.FromMilliseconds(100), MaxDuration = TimeSpan.FromSeconds(10) },
    };

    [Fact]
    public async Task Drop_mid_write_with_64_in_flight_loses_nothing()
    {
        await using var server = await NbdTestServer.StartAsync();
        await using var client = await NbdClient.ConnectAsync(server.Uri, Fast);
        var states = new List<NbdClientState>();
        client.StateChanged += (_, e) => { lock (states) { states.Add(e.Current); } };
        server.Faults.DelayReplies(TimeSpan.FromMilliseconds(1), 40);
        server.Faults.DropConnectionAfterRequests(30);
        var writes = Enumerable.Range(0, 256).Select(i => client.WriteAsync(i * 8192L, Pattern(8192, i)).AsTask()).ToArray();
        await Task.WhenAll(writes).WaitAsync(Bound);
        client.ReconnectCount.Should().BeGreaterThanOrEqualTo(1);
        client.State.Should().Be(NbdClientState.Connected);
        var back = new byte[8192];
        for (var i = 0; i < 256; i++)
        {
            await client.ReadAsync(i * 8192L, back);
            back.Should().Equal(Pattern(8192, i), $"block {i} was acknowledged");
        }

        await WaitFor(() => { lock (states) { return states.Count == 2; } });
        states.Should().Equal([NbdClientState.Reconnecting, NbdClientState.Connected], "state changes are raised one at a time, in order");
    }

    [Fact]
    public async Task Reads_in_flight_are_resent_after_a_drop()
    {
        await using var server = await NbdTestServer.StartAsync();
        var data = Pattern(64 * 4096, 1);
        server.GetExport().WriteBytes(0, data);
        await using var client = await NbdClient.ConnectAsync(server.Uri, Fast);
        server.Faults.DropConnectionAfterRequests(10);
        var buffers = Enumerable.Range(0, 64).Select(_ => new byte[4096]).ToArray();
        await Task.WhenAll(Enumerable.Range(0, 64).Select(i => client.ReadAsync(i * 4096L, buffers[i]).AsTask())).WaitAsync(Bound);
        for (var i = 0; i < 64; i++)
        {
            buffers[i].Should().Equal(data.AsSpan(i * 4096, 4096).ToArray());
        }
    }

    [Fact]
    public async Task Server_refusing_for_a_while_is_retried()
    {
        await using var server = await NbdTestServer.StartAsync();
        await using var client = await NbdClient.ConnectAsync(server.Uri, Fast);
        server.Faults.RefuseNextConnections(3);
        server.Faults.DropConnectionAfterRequests(1);
        await client.WriteAsync(0, new byte[] { 1 }).AsTask().WaitAsync(Bound);
        client.ReconnectCount.Should().Be(1);
        server.Statistics.ConnectionsRefused.Should().Be(3);
    }

    [Fact]
    public async Task Server_refusing_forever_fails_the_client_and_its_io()
    {
        await using var server = await NbdTestServer.StartAsync();
        var options = Fast with { Reconnect = Fast.Reconnect with { MaxAttempts = 3 } };
        await using var client = await NbdClient.ConnectAsync(server.Uri, options);
        server.Faults.RefuseNextConnections(1000);
        server.Faults.DropConnectionAfterRequests(1);
        var act = async () => await client.WriteAsync(0, new byte[] { 1 });
        var error = (await act.Should().ThrowAsync<NbdConnectionException>().WaitAsync(Bound)).Which;
        error.Message.Should().Contain("3 reconnect attempts");
        client.State.Should().Be(NbdClientState.Failed);
        var again = async () => await client.ReadAsync(0, new byte[1]);
        await again.Should().ThrowAsync<NbdConnectionException>().WaitAsync(Bound);
    }

    [Fact]
    public async Task Without_reconnect_a_drop_fails_requests_in_flight()
    {
        await using var server = await NbdTestServer.StartAsync();
        await using var client = await NbdClient.ConnectAsync(server.Uri, new NbdClientOptions { Reconnect = NbdReconnectPolicy.Disabled });
        server.Faults.DropConnectionAfterRequests(1);
        var act = async () => await client.WriteAsync(0, new byte[] { 1 });
        await act.Should().ThrowAsync<NbdConnectionException>().WaitAsync(Bound);
        client.State.Should().Be(NbdClientState.Failed);
    }

    [Fact]
    public async Task A_stalled_server_is_detected_by_the_request_timeout_and_requests_are_resent()
    {
        await using var server = await NbdTestServer.StartAsync();
        await using var client = await NbdClient.ConnectAsync(server.Uri, Fast with { RequestTimeout = TimeSpan.FromMilliseconds(300) });
        server.Faults.StallReplies();
        var write = client.WriteAsync(0, new byte[] { 7 }).AsTask();
        await WaitFor(() => client.ReconnectCount >= 1 || client.State == NbdClientState.Reconnecting);
        server.Faults.ResumeReplies();
        await write.WaitAsync(Bound);
        server.GetExport().ReadBytes(0, 1).Should().Equal(7);
    }

    [Fact]
    public async Task A_changed_export_after_reconnect_is_fatal()
    {
        // The first connection serves 1 MiB and drops at the first request; every later one serves 2 MiB.
        var connections = 0;
        await using var server = ScriptedServer.Start(async c =>
        {
            var first = Interlocked.Increment(ref connections) == 1;
            await c.NegotiateAsync(size: first ? 1UL << 20 : 2UL << 20);
            await c.ReadRequestAsync();
        });
        await using var client = await NbdClient.ConnectAsync(server.Uri, Fast);
        client.Export.Size.Should().Be(1 << 20);
        var act = async () => await client.ReadAsync(0, new byte[1]);
        var error = (await act.Should().ThrowAsync<NbdNegotiationException>().WaitAsync(Bound)).Which;
        error.Error.Should().Be(NbdNegotiationError.UnusableExport);
        error.Message.Should().Contain("changed");
        client.State.Should().Be(NbdClientState.Failed);
    }

    [Fact]
    public void Backoff_grows_with_jitter_and_stops_at_the_limits()
    {
        var policy = new NbdReconnectPolicy { InitialDelay = TimeSpan.FromMilliseconds(100), MaxDelay = TimeSpan.FromSeconds(1), Jitter = 0, MaxAttempts = 5 };
        policy.GetDelay(1, TimeSpan.Zero).Should().Be(TimeSpan.FromMilliseconds(100));
        policy.GetDelay(2, TimeSpan.Zero).Should().Be(TimeSpan.FromMilliseconds(200));
        policy.GetDelay(5, TimeSpan.Zero).Should().Be(TimeSpan.FromSeconds(1));
        policy.GetDelay(6, TimeSpan.Zero).Should().BeNull();
        policy.GetDelay(2, TimeSpan.FromMinutes(2)).Should().BeNull();
        var jittered = NbdReconnectPolicy.Default;
        for (var i = 0; i < 100; i++)
        {
            jittered.GetDelay(1, TimeSpan.Zero)!.Value.TotalMilliseconds.Should().BeInRange(80, 120);
        }

        NbdReconnectPolicy.Disabled.GetDelay(1, TimeSpan.Zero).Should().BeNull();
    }

    [Fact]
    public async Task A_reply_cut_short_by_a_lost_connection_is_forgotten_when_the_read_is_replayed()
    {
        // First connection: half of the read's data, then the connection drops. Second: the whole reply. The
        // replay must count only the second reply (it once added both and failed as over-covered).
        var connections = new StrongBox<int>();
        await using var server = FirstReplyCutShort(connections, async (c, r, first) =>
        {
            var half = (int)r.Length / 2;
            await c.SendChunkAsync(r.Cookie, 1, Bytes.U64(r.Offset).Raw(Enumerable.Repeat((byte)7, half).ToArray()).Build(), done: false);
            if (!first)
            {
                await c.SendChunkAsync(r.Cookie, 1, Bytes.U64(r.Offset + (ulong)half).Raw(Enumerable.Repeat((byte)7, (int)r.Length - half).ToArray()).Build());
            }
        });
        await using var client = await NbdClient.ConnectAsync(server.Uri, Fast);
        var buffer = new byte[8192];
        await client.ReadAsync(0, buffer).AsTask().WaitAsync(TimeSpan.FromSeconds(10));
        buffer.Should().AllBeEquivalentTo((byte)7);
        connections.Value.Should().Be(2);
    }

    [Fact]
    public async Task Block_status_replayed_after_a_cut_reply_lists_each_extent_once()
    {
        // First connection: the extents chunk without the final flag, then the connection drops; second: the
        // whole reply. The caller's list must hold the second reply's extents only.
        var connections = new StrongBox<int>();
        await using var server = FirstReplyCutShort(connections, (c, r, first) =>
            c.SendChunkAsync(r.Cookie, 5, Bytes.U32(1).U32(r.Length / 2).U32(0).U32(r.Length / 2).U32(3).Build(), done: !first));
        await using var client = await NbdClient.ConnectAsync(server.Uri, Fast);
        var status = await client.GetBlockStatusAsync(0, 65536).AsTask().WaitAsync(TimeSpan.FromSeconds(10));
        status.Select(e => (e.Offset, e.Length)).Should().Equal((0L, 32768L), (32768L, 32768L));
        connections.Value.Should().Be(2);
    }

    /// <summary>
    /// A server that answers each connection's first request with <paramref name="reply"/> (told whether this is
    /// the first connection, which then closes with the reply unfinished); later connections wait for NBD_CMD_DISC.
    /// </summary>
    private static ScriptedServer FirstReplyCutShort(StrongBox<int> connections, Func<RawConnection, RawRequest, bool, Task> reply) =>
        ScriptedServer.Start(async c =>
        {
            var first = Interlocked.Increment(ref connections.Value) == 1;
            await c.NegotiateAsync(size: 1 << 20);
            var request = await c.ReadRequestAsync();
            await reply(c, request, first);
            if (!first)
            {
                await c.ReadRequestAsync(); // NBD_CMD_DISC
            }
        });
}
