using NbdAttachment.InteropTests.Servers;

namespace NbdAttachment.InteropTests.Smoke;

/// <summary>Proves the qemu-nbd fixture, using libnbd's nbdinfo as the client.</summary>
public sealed class QemuNbdSmokeTests(CertificateAuthorityFixture pki) : IClassFixture<CertificateAuthorityFixture>
{
    [SkippableTheory]
    [InlineData(ListenKind.Tcp)]
    [InlineData(ListenKind.TcpIPv6)]
    [InlineData(ListenKind.Unix)]
    public async Task Raw_image_answers_on_each_endpoint_kind(ListenKind listen)
    {
        await using var server = await QemuNbdProcess.StartAsync(new QemuNbdOptions { Listen = listen, ImageSize = 2 * 1024 * 1024 });

        var info = await Nbdinfo.JsonAsync(server.Uri);

        info.ExportName.Should().Be("disk");
        info.Size.Should().Be(2 * 1024 * 1024);
        info.Protocol.Should().Be("newstyle-fixed");
        info.StructuredReplies.Should().BeTrue();
        info.ReadOnly.Should().BeFalse();
    }

    [SkippableFact]
    public async Task Qcow2_with_dirty_bitmap_and_allocation_depth_read_only()
    {
        await using var server = await QemuNbdProcess.StartAsync(new QemuNbdOptions
        {
            Format = "qcow2",
            ImageSize = 4 * 1024 * 1024,
            Bitmaps = ["b0"],
            AllocationDepth = true,
            ReadOnly = true,
            Listen = ListenKind.Unix,
            ExportName = "qcow",
        });

        var info = await Nbdinfo.JsonAsync(server.Uri);

        info.Size.Should().Be(4 * 1024 * 1024);
        info.ReadOnly.Should().BeTrue();
        info.MetaContexts.Should().Contain(["base:allocation", "qemu:dirty-bitmap:b0", "qemu:allocation-depth"]);
    }

    [SkippableFact]
    public async Task Tls_with_generated_certificates()
    {
        var ca = pki.Get();
        await using var server = await QemuNbdProcess.StartAsync(new QemuNbdOptions { TlsCertificatesDirectory = ca.Directory });

        server.Uri.Scheme.Should().Be("nbds");
        (await Nbdinfo.JsonAsync(Nbdinfo.WithTlsCertificates(server.Uri, ca.Directory))).Tls.Should().BeTrue();
        (await Nbdinfo.RunAsync(["--size", server.Endpoint.UriFor("disk").OriginalString])).ExitCode.Should().NotBe(0);
    }

    [SkippableFact]
    public async Task Tls_verify_peer_requires_a_client_certificate()
    {
        var ca = pki.Get();
        await using var server = await QemuNbdProcess.StartAsync(new QemuNbdOptions
        {
            TlsCertificatesDirectory = ca.Directory,
            TlsVerifyPeer = true,
            Listen = ListenKind.Unix,
        });

        (await Nbdinfo.JsonAsync(Nbdinfo.WithTlsCertificates(server.Uri, ca.Directory))).Tls.Should().BeTrue();
        (await Nbdinfo.RunAsync(["--size", Nbdinfo.WithTlsCertificates(server.Uri, ca.CaOnlyDirectory).OriginalString]))
            .ExitCode.Should().NotBe(0);
    }

    [SkippableFact]
    public async Task Restart_keeps_endpoint_and_image()
    {
        await using var server = await QemuNbdProcess.StartAsync(new QemuNbdOptions { Shared = 4 });
        var uri = server.Uri;

        await server.RestartAsync(TimeSpan.FromMilliseconds(50));
        await server.RestartAsync();

        server.Uri.Should().Be(uri);
        server.StartCount.Should().Be(3);
        File.Exists(server.ImagePath).Should().BeTrue();
        (await Nbdinfo.JsonAsync(server.Uri)).Size.Should().Be(1024 * 1024);
    }
}
