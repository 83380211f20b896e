using NbdAttachment.InteropTests.Servers;

namespace NbdAttachment.InteropTests.Smoke;

/// <summary>Proves the nbdkit fixture in every mode, using libnbd's nbdinfo as the client.</summary>
public sealed class NbdkitSmokeTests(CertificateAuthorityFixture pki) : IClassFixture<CertificateAuthorityFixture>
{
    private static NbdkitOptions Memory(ListenKind listen = ListenKind.Tcp) =>
        new() { Plugin = "memory", PluginArguments = ["size=1M"], Listen = listen };

    [SkippableTheory]
    [InlineData(ListenKind.Tcp)]
    [InlineData(ListenKind.TcpIPv6)]
    [InlineData(ListenKind.Unix)]
    public async Task Memory_plugin_answers_on_each_endpoint_kind(ListenKind listen)
    {
        await using var server = await NbdkitProcess.StartAsync(Memory(listen));

        var info = await Nbdinfo.JsonAsync(server.Uri);

        info.Size.Should().Be(1024 * 1024);
        info.Protocol.Should().Be("newstyle-fixed");
        info.Tls.Should().BeFalse();
        info.StructuredReplies.Should().BeTrue();
        info.MetaContexts.Should().Contain("base:allocation");
        server.Uri.Scheme.Should().Be(listen == ListenKind.Unix ? "nbd+unix" : "nbd");
    }

    [SkippableTheory]
    [InlineData("memory", "size=1M")]
    [InlineData("file", null)]
    [InlineData("pattern", "size=1M")]
    [InlineData("sparse-random", "size=1M")]
    [InlineData("null", "size=1M")]
    public async Task Required_plugins_are_installed_and_serve(string plugin, string? argument)
    {
        ServerBinaries.RequireOrSkip(ServerBinaries.Nbdkit);
        NbdkitProcess.HasPlugin(plugin).Should().BeTrue($"the nbdkit {plugin} plugin is needed by the interop tests");
        using var temp = new TempDirectory();
        if (plugin == "file")
        {
            var image = temp.Combine("disk.img");
            await using (var f = File.Create(image))
            {
                f.SetLength(1024 * 1024);
            }

            argument = $"file={image}";
        }

        await using var server = await NbdkitProcess.StartAsync(
            new NbdkitOptions { Plugin = plugin, PluginArguments = [argument!] }, temp);

        (await Nbdinfo.JsonAsync(server.Uri)).Size.Should().Be(1024 * 1024);
    }

    [SkippableFact]
    public async Task Required_filters_are_installed_and_stack()
    {
        ServerBinaries.RequireOrSkip(ServerBinaries.Nbdkit);
        string[] filters = ["error", "delay", "blocksize-policy", "noextents", "nozero", "pause"];
        filters.Where(f => !NbdkitProcess.HasFilter(f)).Should().BeEmpty("all these nbdkit filters are used by the interop tests");
        using var temp = new TempDirectory();

        await using var server = await NbdkitProcess.StartAsync(
            new NbdkitOptions
            {
                Plugin = "memory",
                Filters = filters,
                PluginArguments =
                [
                    "size=1M", "error-rate=0", "delay-read=0", "blocksize-minimum=4096",
                    "blocksize-preferred=65536", "blocksize-maximum=1M", $"pause-control={temp.Combine("pause.sock")}",
                ],
            },
            temp);

        var info = await Nbdinfo.JsonAsync(server.Uri);
        info.Size.Should().Be(1024 * 1024);
        info.Raw.GetProperty("exports")[0].GetProperty("block_size_minimum").GetInt64().Should().Be(4096);
        info.Raw.GetProperty("exports")[0].GetProperty("can_zero").GetBoolean().Should().BeFalse("nozero filter");
    }

    [SkippableFact]
    public async Task Oldstyle_handshake()
    {
        await using var server = await NbdkitProcess.StartAsync(Memory() with { Oldstyle = true });

        var info = await Nbdinfo.JsonAsync(server.Uri);

        info.Protocol.Should().Be("oldstyle");
        info.Size.Should().Be(1024 * 1024);
    }

    [SkippableFact]
    public async Task Unfixed_newstyle_with_mask_handshake_zero()
    {
        await using var server = await NbdkitProcess.StartAsync(Memory() with { MaskHandshake = 0 });

        (await Nbdinfo.JsonAsync(server.Uri)).Protocol.Should().Be("newstyle");
    }

    [SkippableFact]
    public async Task No_structured_replies()
    {
        await using var server = await NbdkitProcess.StartAsync(Memory() with { NoStructuredReplies = true });

        (await Nbdinfo.JsonAsync(server.Uri)).StructuredReplies.Should().BeFalse();
    }

    [SkippableFact]
    public async Task No_meta_contexts_needs_a_newer_nbdkit()
    {
        await using var server = await NbdkitProcess.StartAsync(Memory() with { NoMetaContexts = true });

        (await Nbdinfo.JsonAsync(server.Uri)).MetaContexts.Should().BeEmpty();
    }

    [SkippableFact]
    public async Task Export_name_and_read_only()
    {
        await using var server = await NbdkitProcess.StartAsync(Memory() with { ExportName = "named", ReadOnly = true });

        var info = await Nbdinfo.JsonAsync(server.Uri);

        server.Uri.AbsolutePath.Should().Be("/named");
        info.ExportName.Should().Be("named");
        info.ReadOnly.Should().BeTrue();
    }

    [SkippableTheory]
    [InlineData(ListenKind.Tcp)]
    [InlineData(ListenKind.Unix)]
    public async Task Tls_required_with_generated_certificates(ListenKind listen)
    {
        var ca = pki.Get();
        await using var server = await NbdkitProcess.StartAsync(Memory(listen) with
        {
            Tls = NbdkitTls.Require,
            TlsCertificatesDirectory = ca.Directory,
        });

        server.Uri.Scheme.Should().StartWith("nbds");
        var info = await Nbdinfo.JsonAsync(Nbdinfo.WithTlsCertificates(server.Uri, ca.Directory));
        info.Tls.Should().BeTrue();
        info.Size.Should().Be(1024 * 1024);

        var plain = await Nbdinfo.RunAsync(["--size", server.Endpoint.UriFor(string.Empty).OriginalString]);
        plain.ExitCode.Should().NotBe(0, "the server requires TLS");

        // libnbd 1.14 only verifies the server certificate over TCP (it checks it against the
        // host name; over a Unix socket there is none and any certificate is accepted).
        if (listen != ListenKind.Unix)
        {
            var untrusted = await Nbdinfo.RunAsync(["--size", Nbdinfo.WithTlsCertificates(server.Uri, ca.Unrelated.Directory).OriginalString]);
            untrusted.ExitCode.Should().NotBe(0, "the server certificate is not signed by the unrelated CA");
        }
    }

    [SkippableFact]
    public async Task Tls_verify_peer_requires_a_client_certificate()
    {
        var ca = pki.Get();
        await using var server = await NbdkitProcess.StartAsync(Memory() with
        {
            Tls = NbdkitTls.Require,
            TlsCertificatesDirectory = ca.Directory,
            TlsVerifyPeer = true,
        });

        (await Nbdinfo.JsonAsync(Nbdinfo.WithTlsCertificates(server.Uri, ca.Directory))).Tls.Should().BeTrue();
        var noClientCert = await Nbdinfo.RunAsync(["--size", Nbdinfo.WithTlsCertificates(server.Uri, ca.CaOnlyDirectory).OriginalString]);
        noClientCert.ExitCode.Should().NotBe(0);
        server.StandardError.Should().Contain("certificate");
    }

    [SkippableFact]
    public async Task Restart_keeps_the_endpoint_and_dispose_cleans_up()
    {
        var server = await NbdkitProcess.StartAsync(Memory());
        var uri = server.Uri;
        var firstPid = server.ProcessId!.Value;

        await server.RestartAsync();

        server.Uri.Should().Be(uri);
        server.StartCount.Should().Be(2);
        server.ProcessId.Should().NotBe(firstPid);
        ProcessUtilities.IsAlive(firstPid).Should().BeFalse();
        (await Nbdinfo.JsonAsync(server.Uri)).Size.Should().Be(1024 * 1024);

        var pid = server.ProcessId!.Value;
        var temp = server.Temp.Path;
        await server.DisposeAsync();

        ProcessUtilities.IsAlive(pid).Should().BeFalse();
        Directory.Exists(temp).Should().BeFalse();
    }

    [SkippableFact]
    public async Task Start_failure_reports_stderr()
    {
        ServerBinaries.RequireOrSkip(ServerBinaries.Nbdkit);

        var act = () => NbdkitProcess.StartAsync(new NbdkitOptions { Plugin = "memory", PluginArguments = ["no-such-key=1"] });

        (await act.Should().ThrowAsync<ServerStartException>()).Which.Message.Should().Contain("no-such-key");
    }
}
