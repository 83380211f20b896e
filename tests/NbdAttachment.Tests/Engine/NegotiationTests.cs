using NbdAttachment.Client;
using NbdAttachment.Testing;

namespace NbdAttachment.Tests.Engine;

public sealed class NegotiationTests
{
    [Fact]
    public async Task Go_reports_export_details_and_block_sizes()
    {
        var export = new NbdTestExportOptions("disk", 8 << 20) { Description = "a disk", MinimumBlockSize = 512, PreferredBlockSize = 4096, MaximumBlockSize = 1 << 20 };
        await using var server = await NbdTestServer.StartAsync(new NbdTestServerOptions { Exports = [export] });
        await using var client = await NbdClient.ConnectAsync(server.GetUri("disk"));
        var info = client.Export;
        info.ExportName.Should().Be("disk");
        info.Size.Should().Be(8 << 20);
        info.Description.Should().Be("a disk");
        info.BlockSizesAdvertised.Should().BeTrue();
        info.MinimumBlockSize.Should().Be(512);
        info.PreferredBlockSize.Should().Be(4096);
        info.MaximumPayloadSize.Should().Be(1 << 20);
        info.HandshakeStyle.Should().Be(NbdHandshakeStyle.FixedNewstyle);
        info.CanFlush.Should().BeTrue();
        info.CanFua.Should().BeTrue();
        info.CanTrim.Should().BeTrue();
        info.CanWriteZeroes.Should().BeTrue();
        info.CanCache.Should().BeTrue();
    }

    [Theory]
    [InlineData(true)]
    [InlineData(false)]
    public async Task Without_go_the_client_falls_back_to_export_name(bool noZeroes)
    {
        await using var server = await NbdTestServer.StartAsync(new NbdTestServerOptions
        {
            SupportGo = false,
            AdvertiseNoZeroes = noZeroes,
            Exports = [new NbdTestExportOptions("x", 1 << 20)],
        });
        await using var client = await NbdClient.ConnectAsync(server.GetUri("x"));
        client.Export.Size.Should().Be(1 << 20);
        client.Export.BlockSizesAdvertised.Should().BeFalse();
        await client.WriteAsync(0, new byte[] { 1, 2, 3 });
        var back = new byte[3];
        await client.ReadAsync(0, back);
        back.Should().Equal(1, 2, 3);
    }

    [Fact]
    public async Task Non_fixed_newstyle_server_works()
    {
        await using var server = await NbdTestServer.StartAsync(new NbdTestServerOptions { FixedNewstyle = false });
        await using var client = await NbdClient.ConnectAsync(server.Uri);
        client.Export.HandshakeStyle.Should().Be(NbdHandshakeStyle.Newstyle);
        await client.ReadAsync(0, new byte[512]);
    }

    [Fact]
    public async Task Oldstyle_server_works()
    {
        await using var server = await NbdTestServer.StartAsync(new NbdTestServerOptions { Oldstyle = true });
        await using var client = await NbdClient.ConnectAsync(server.Uri);
        client.Export.HandshakeStyle.Should().Be(NbdHandshakeStyle.Oldstyle);
        await client.WriteAsync(0, new byte[] { 9 });
    }

    [Fact]
    public async Task Tls_url_against_oldstyle_or_non_fixed_server_is_refused()
    {
        foreach (var options in new[] { new NbdTestServerOptions { Oldstyle = true }, new NbdTestServerOptions { FixedNewstyle = false } })
        {
            await using var server = await NbdTestServer.StartAsync(options);
            var act = async () => await NbdClient.ConnectAsync(new Uri($"nbds://127.0.0.1:{server.Port}/"));
            (await act.Should().ThrowAsync<NbdNegotiationException>()).Which.Error.Should().Be(NbdNegotiationError.TlsFailed);
        }
    }

    [Fact]
    public async Task Tls_url_against_server_refusing_starttls_never_downgrades()
    {
        await using var server = await NbdTestServer.StartAsync();
        var act = async () => await NbdClient.ConnectAsync(new Uri($"nbds://127.0.0.1:{server.Port}/"));
        var error = (await act.Should().ThrowAsync<NbdNegotiationException>()).Which;
        error.Error.Should().Be(NbdNegotiationError.TlsFailed);
        error.Message.Should().Contain("STARTTLS");
        server.Statistics.GetOptionCount(7).Should().Be(0, "no GO may be sent in plain text after TLS was refused");
    }

    [Fact]
    public async Task Opportunistic_tls_continues_in_plain_text_when_refused()
    {
        await using var server = await NbdTestServer.StartAsync();
        var options = new NbdClientOptions { Tls = new NbdTlsOptions { Opportunistic = true } };
        await using var client = await NbdClient.ConnectAsync(server.Uri, options);
        client.Export.IsTlsActive.Should().BeFalse();
        server.Statistics.GetOptionCount(5).Should().Be(1);
    }

    [Fact]
    public async Task Unknown_export_is_a_typed_error()
    {
        await using var server = await NbdTestServer.StartAsync();
        var act = async () => await NbdClient.ConnectAsync(server.GetUri("nope"));
        (await act.Should().ThrowAsync<NbdNegotiationException>()).Which.Error.Should().Be(NbdNegotiationError.UnknownExport);
    }

    [Fact]
    public async Task Exports_are_listed()
    {
        await using var server = await NbdTestServer.StartAsync(new NbdTestServerOptions
        {
            Exports = [new NbdTestExportOptions("a", 4096) { Description = "first" }, new NbdTestExportOptions("b", 8192)],
        });
        var list = await NbdClient.ListExportsAsync(NbdUri.Parse(server.Uri));
        list.Select(e => e.Name).Should().BeEquivalentTo("a", "b");
        list.Single(e => e.Name == "a").Description.Should().Be("first");
    }

    [Fact]
    public async Task List_meta_contexts_names_what_the_server_offers_and_enters_no_transmission()
    {
        await using var server = await NbdTestServer.StartAsync(new NbdTestServerOptions { Exports = [new NbdTestExportOptions("a", 4096)] });
        (await NbdClient.ListMetaContextsAsync(NbdUri.Parse(server.GetUri("a")))).Should().Equal("base:allocation");
        (await NbdClient.ListMetaContextsAsync(NbdUri.Parse(server.GetUri("a")), "base:")).Should().Equal("base:allocation");
        (await NbdClient.ListMetaContextsAsync(NbdUri.Parse(server.GetUri("a")), "qemu:")).Should().BeEmpty();
        server.Statistics.GetOptionCount(9).Should().Be(3, "one NBD_OPT_LIST_META_CONTEXT per call");
    }

    [Fact]
    public async Task List_meta_contexts_of_an_unknown_export_or_without_support_is_a_typed_error()
    {
        await using var server = await NbdTestServer.StartAsync(new NbdTestServerOptions { Exports = [new NbdTestExportOptions("a", 4096)] });
        var unknown = async () => await NbdClient.ListMetaContextsAsync(NbdUri.Parse(server.GetUri("nope")));
        await unknown.Should().ThrowAsync<NbdNegotiationException>();

        await using var bare = await NbdTestServer.StartAsync(new NbdTestServerOptions { SupportMetaContexts = false });
        var unsupported = async () => await NbdClient.ListMetaContextsAsync(NbdUri.Parse(bare.Uri));
        await unsupported.Should().ThrowAsync<NbdNegotiationException>();
    }

    [Fact]
    public async Task List_refused_is_a_typed_error()
    {
        await using var server = await NbdTestServer.StartAsync(new NbdTestServerOptions { SupportList = false });
        var act = async () => await NbdClient.ListExportsAsync(NbdUri.Parse(server.Uri));
        await act.Should().ThrowAsync<NbdNegotiationException>();
    }

    [Fact]
    public async Task Info_reports_without_entering_transmission()
    {
        await using var server = await NbdTestServer.StartAsync(new NbdTestServerOptions { Exports = [new NbdTestExportOptions("b", 8192)] });
        var info = await NbdClient.GetExportInfoAsync(NbdUri.Parse(server.GetUri("b")));
        info.Size.Should().Be(8192);
        server.Statistics.GetOptionCount(6).Should().Be(1);
        server.Statistics.GetOptionCount(7).Should().Be(0);
        await CommandTests.WaitFor(() => server.Statistics.GetOptionCount(2) == 1);
    }

    [Fact]
    public async Task Block_size_required_server_accepts_the_client_because_it_always_asks()
    {
        await using var server = await NbdTestServer.StartAsync(new NbdTestServerOptions { RequireBlockSizeInfo = true });
        await using var client = await NbdClient.ConnectAsync(server.Uri);
        client.Export.BlockSizesAdvertised.Should().BeTrue();
    }

    [Fact]
    public async Task Unix_socket_transport_works()
    {
        await using var server = await NbdTestServer.StartAsync(new NbdTestServerOptions { ListenOnUnixSocket = true });
        var uri = server.GetUri(unixSocket: true);
        uri.Scheme.Should().Be("nbd+unix");
        await using var client = await NbdClient.ConnectAsync(uri);
        await client.WriteAsync(0, new byte[] { 4, 2 });
        server.GetExport().ReadBytes(0, 2).Should().Equal(4, 2);
    }

    [Fact]
    public async Task Connection_refused_is_a_transient_connection_error()
    {
        var port = FreePort();
        var act = async () => await NbdClient.ConnectAsync(new Uri($"nbd://127.0.0.1:{port}/"));
        (await act.Should().ThrowAsync<NbdConnectionException>()).Which.IsTransient.Should().BeTrue();
    }

    [Fact]
    public async Task Missing_unix_socket_is_a_connection_error()
    {
        var act = async () => await NbdClient.ConnectAsync(new Uri($"nbd+unix:///?socket={Path.Combine(Path.GetTempPath(), Guid.NewGuid().ToString("N"))}"));
        await act.Should().ThrowAsync<NbdConnectionException>();
    }

    [Fact]
    public async Task Vsock_is_reported_as_unsupported_at_connect_time()
    {
        var act = async () => await NbdClient.ConnectAsync(new Uri("nbd+vsock://2:10809/"));
        (await act.Should().ThrowAsync<NbdNegotiationException>()).Which.Error.Should().Be(NbdNegotiationError.Platform);
    }

    [Fact]
    public async Task Local_certificate_directory_in_url_is_refused_unless_allowed()
    {
        await using var server = await NbdTestServer.StartAsync();
        var act = async () => await NbdClient.ConnectAsync(new Uri($"nbd://127.0.0.1:{server.Port}/?tls-certificates=/etc"), new NbdClientOptions { Tls = new NbdTlsOptions { Opportunistic = true } });
        await act.Should().NotThrowAsync("STARTTLS is refused by this server, so no file is read");
    }

    [Fact]
    public void Options_are_validated()
    {
        var bad = new[]
        {
            NbdClientOptions.Default with { MaxInFlightRequests = 0 },
            NbdClientOptions.Default with { ConnectTimeout = TimeSpan.Zero },
            NbdClientOptions.Default with { MetaContexts = ["nocolon"] },
            NbdClientOptions.Default with { Reconnect = NbdReconnectPolicy.Default with { Jitter = 2 } },
            NbdClientOptions.Default with { RequestTimeout = TimeSpan.FromSeconds(-1) },
        };
        foreach (var options in bad)
        {
            options.Invoking(o => o.Validate()).Should().Throw<ArgumentException>();
        }
    }

    private static int FreePort()
    {
        var listener = new System.Net.Sockets.TcpListener(System.Net.IPAddress.Loopback, 0);
        listener.Start();
        var port = ((System.Net.IPEndPoint)listener.LocalEndpoint).Port;
        listener.Stop();
        return port;
    }
}
