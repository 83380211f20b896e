using NbdAttachment.InteropTests.Servers;

namespace NbdAttachment.InteropTests.Smoke;

/// <summary>Proves the nbd-server (reference server) fixture, using libnbd's nbdinfo as the client.</summary>
public sealed class NbdServerSmokeTests(CertificateAuthorityFixture pki) : IClassFixture<CertificateAuthorityFixture>
{
    private static readonly NbdServerOptions TwoExports = new()
    {
        Exports =
        [
            new NbdServerExport { Name = "disk", Size = 1024 * 1024 },
            new NbdServerExport { Name = "ro", Size = 2 * 1024 * 1024, ReadOnly = true },
        ],
    };

    [SkippableTheory]
    [InlineData(ListenKind.Tcp)]
    [InlineData(ListenKind.TcpIPv6)]
    [InlineData(ListenKind.Unix)]
    public async Task Named_exports_answer_on_each_endpoint_kind(ListenKind listen)
    {
        await using var server = await NbdServerProcess.StartAsync(TwoExports with { Listen = listen });

        (await Nbdinfo.ListAsync(server.UriFor(string.Empty))).Should().BeEquivalentTo(["disk", "ro"]);
        (await Nbdinfo.SizeAsync(server.Uri)).Should().Be(1024 * 1024);
        (await Nbdinfo.SizeAsync(server.UriFor("ro"))).Should().Be(2 * 1024 * 1024);
        var ro = await Nbdinfo.JsonAsync(server.UriFor("ro"));
        ro.ReadOnly.Should().BeTrue();
        ro.Protocol.Should().Be("newstyle-fixed");
        (await Nbdinfo.RunAsync(["--size", server.UriFor("missing").OriginalString])).ExitCode.Should().NotBe(0);
    }

    [SkippableFact]
    public async Task Serves_concurrent_clients()
    {
        await using var server = await NbdServerProcess.StartAsync(TwoExports);

        var sizes = await Task.WhenAll(Enumerable.Range(0, 4).Select(_ => Nbdinfo.SizeAsync(server.Uri)));

        sizes.Should().AllBeEquivalentTo(1024 * 1024);
        server.IsRunning.Should().BeTrue();
    }

    [SkippableFact]
    public async Task Tls_forced_with_generated_certificates_requires_a_client_certificate()
    {
        var ca = pki.Get();
        await using var server = await NbdServerProcess.StartAsync(TwoExports with
        {
            TlsCertificatesDirectory = ca.Directory,
            ForceTls = true,
        });

        server.Uri.Scheme.Should().Be("nbds");
        (await Nbdinfo.SizeAsync(Nbdinfo.WithTlsCertificates(server.Uri, ca.Directory))).Should().Be(1024 * 1024);
        (await Nbdinfo.JsonAsync(Nbdinfo.WithTlsCertificates(server.Uri, ca.Directory))).Tls.Should().BeTrue();
        (await Nbdinfo.RunAsync(["--size", server.Endpoint.UriFor("disk").OriginalString])).ExitCode.Should().NotBe(0);
        var noClientCert = await Nbdinfo.RunAsync(["--size", Nbdinfo.WithTlsCertificates(server.Uri, ca.CaOnlyDirectory).OriginalString]);
        noClientCert.ExitCode.Should().NotBe(0, "nbd-server always verifies client certificates");
    }

    [SkippableFact]
    public async Task Restart_keeps_endpoint_and_files_and_kills_client_children()
    {
        var server = await NbdServerProcess.StartAsync(TwoExports);
        var uri = server.Uri;
        var daemon = server.ProcessId!.Value;

        await server.RestartAsync();

        ProcessUtilities.IsAlive(daemon).Should().BeFalse();
        server.Uri.Should().Be(uri);
        File.Exists(server.FileOf("disk")).Should().BeTrue();
        (await Nbdinfo.SizeAsync(server.Uri)).Should().Be(1024 * 1024);
        server.ConfigText.Should().Contain("[disk]").And.Contain("[ro]");

        var pid = server.ProcessId!.Value;
        var temp = server.Temp.Path;
        await server.DisposeAsync();
        ProcessUtilities.IsAlive(pid).Should().BeFalse();
        Directory.Exists(temp).Should().BeFalse();
    }
}
