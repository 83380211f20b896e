using NbdAttachment.Client;
using NbdAttachment.Testing;
using static NbdAttachment.Tests.Engine.CommandTests;

namespace NbdAttachment.Tests.Engine;

public sealed class MultiConnTests
{
    private static readonly TimeSpan Bound = TimeSpan.FromSeconds(30);

    private static Task<NbdTestServer> ServerAsync(bool multiConn) =>
        NbdTestServer.StartAsync(new NbdTestServerOptions { Exports = [new NbdTestExportOptions { Size = 8 << 20, MultiConn = multiConn }] });

    [Fact]
    public async Task Requests_are_spread_over_several_connections_when_the_server_offers_multi_conn()
    {
        await using var server = await ServerAsync(multiConn: true);
        await using var client = await NbdClient.ConnectAsync(server.Uri, new NbdClientOptions { Connections = 4 });
        client.ConnectionCount.Should().Be(4);
        server.Statistics.ConnectionsAccepted.Should().Be(4);
        var writes = Enumerable.Range(0, 256).Select(i => client.WriteAsync(i * 16384L, Pattern(16384, i)).AsTask());
        await Task.WhenAll(writes).WaitAsync(Bound);
        await client.FlushAsync();
        server.Statistics.Flushes.Should().Be(4, "each connection flushes its own journal");
        var back = new byte[16384];
        for (var i = 0; i < 256; i += 17)
        {
            await client.ReadAsync(i * 16384L, back);
            back.Should().Equal(Pattern(16384, i));
        }
    }

    [Fact]
    public async Task Without_multi_conn_one_connection_is_used()
    {
        await using var server = await ServerAsync(multiConn: false);
        await using var client = await NbdClient.ConnectAsync(server.Uri, new NbdClientOptions { Connections = 4 });
        client.ConnectionCount.Should().Be(1);
        server.Statistics.ConnectionsAccepted.Should().Be(1);
    }

    [Fact]
    public async Task One_connection_dropping_reconnects_alone_and_loses_nothing()
    {
        await using var server = await ServerAsync(multiConn: true);
        await using var client = await NbdClient.ConnectAsync(server.Uri, new NbdClientOptions
        {
            Connections = 3,
            Reconnect = NbdReconnectPolicy.Default with { InitialDelay = TimeSpan.FromMilliseconds(10) },
        });
        server.Faults.DropConnectionAfterRequests(20);
        var writes = Enumerable.Range(0, 200).Select(i => client.WriteAsync(i * 4096L, Pattern(4096, i)).AsTask());
        await Task.WhenAll(writes).WaitAsync(Bound);
        client.ReconnectCount.Should().Be(1);
        await WaitFor(() => client.State == NbdClientState.Connected);
        server.GetExport().ReadBytes(0, 200 * 4096).Should().Equal(Enumerable.Range(0, 200).SelectMany(i => Pattern(4096, i)).ToArray());
    }

    [Fact]
    public async Task Disposal_disconnects_every_connection()
    {
        await using var server = await ServerAsync(multiConn: true);
        var client = await NbdClient.ConnectAsync(server.Uri, new NbdClientOptions { Connections = 2 });
        await client.DisposeAsync();
        await WaitFor(() => server.Statistics.Disconnects == 2);
    }

    [Fact]
    public void Connection_count_is_validated()
    {
        var act = () => (NbdClientOptions.Default with { Connections = 17 }).Validate();
        act.Should().Throw<ArgumentOutOfRangeException>().WithMessage("*Connections*");
    }
}
