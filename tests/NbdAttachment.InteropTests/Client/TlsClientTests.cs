using NbdAttachment.Client;
using NbdAttachment.InteropTests.Servers;
using static NbdAttachment.InteropTests.Client.ClientTestSupport;

namespace NbdAttachment.InteropTests.Client;

/// <summary>NbdAttachment's client over TLS with the generated test CA.</summary>
public sealed class TlsClientTests(CertificateAuthorityFixture pki) : IClassFixture<CertificateAuthorityFixture>
{
    private static async Task ReadWriteRoundTripAsync(NbdClient client)
    {
        var data = RandomBytes(300_000, 77);
        await client.WriteAsync(1, data);
        var back = new byte[data.Length];
        await client.ReadAsync(1, back);
        back.ShouldEqualBytes(data);
    }

    private static async Task<NbdNegotiationError> NegotiationErrorAsync(Uri uri, NbdClientOptions options) =>
        (await FluentActions.Awaiting(async () => await ConnectAsync(uri, options))
            .Should().ThrowAsync<NbdNegotiationException>()).Which.Error;

    [SkippableTheory]
    [InlineData(ListenKind.Tcp)]
    [InlineData(ListenKind.Unix)]
    public Task Nbdkit_verified_server_certificate(ListenKind listen) => Bounded(async () =>
    {
        var ca = pki.Get();
        await using var server = await NbdkitProcess.StartAsync(new NbdkitOptions
        {
            Plugin = "memory", PluginArguments = ["size=1M"], Listen = listen, Tls = NbdkitTls.Require, TlsCertificatesDirectory = ca.Directory,
        });

        server.Uri.Scheme.Should().StartWith("nbds");
        await using var client = await ConnectAsync(server.Uri, Tls(ca.Trusted));
        client.Export.IsTlsActive.Should().BeTrue();
        await ReadWriteRoundTripAsync(client);

        var listing = await NbdClient.ListExportsAsync(Parse(server.Uri), Tls(ca.Trusted));
        listing.Should().NotBeEmpty();
    });

    [SkippableFact]
    public Task Wrong_host_name_is_refused() => Bounded(async () =>
    {
        var ca = pki.Get();
        await using var server = await NbdkitProcess.StartAsync(new NbdkitOptions
        {
            Plugin = "memory", PluginArguments = ["size=1M"], Tls = NbdkitTls.Require, TlsCertificatesDirectory = ca.WrongHost.Directory,
        });

        (await NegotiationErrorAsync(server.Uri, Tls(ca.Trusted))).Should().Be(NbdNegotiationError.TlsFailed);
    });

    [SkippableFact]
    public Task Target_host_mismatch_is_refused() => Bounded(async () =>
    {
        var ca = pki.Get();
        await using var server = await NbdkitProcess.StartAsync(new NbdkitOptions
        {
            Plugin = "memory", PluginArguments = ["size=1M"], Tls = NbdkitTls.Require, TlsCertificatesDirectory = ca.Directory,
        });

        (await NegotiationErrorAsync(server.Uri, Tls(ca.Trusted, targetHost: "not-localhost.invalid"))).Should().Be(NbdNegotiationError.TlsFailed);
    });

    [SkippableFact]
    public Task Untrusted_ca_is_refused() => Bounded(async () =>
    {
        var ca = pki.Get();
        await using var server = await NbdkitProcess.StartAsync(new NbdkitOptions
        {
            Plugin = "memory", PluginArguments = ["size=1M"], Tls = NbdkitTls.Require, TlsCertificatesDirectory = ca.Unrelated.Directory,
        });

        (await NegotiationErrorAsync(server.Uri, Tls(ca.Trusted))).Should().Be(NbdNegotiationError.TlsFailed);
    });

    [SkippableFact]
    public Task Plain_client_against_tls_require_gets_tls_required() => Bounded(async () =>
    {
        var ca = pki.Get();
        await using var server = await NbdkitProcess.StartAsync(new NbdkitOptions
        {
            Plugin = "memory", PluginArguments = ["size=1M"], Tls = NbdkitTls.Require, TlsCertificatesDirectory = ca.Directory,
        });

        var ex = (await FluentActions.Awaiting(async () => await ConnectAsync(server.Endpoint.UriFor(string.Empty, tls: false)))
            .Should().ThrowAsync<NbdNegotiationException>()).Which;
        ex.Error.Should().Be(NbdNegotiationError.TlsRequired);
        ex.Message.Should().NotBeNullOrWhiteSpace();
    });

    [SkippableFact]
    public Task Opportunistic_tls_upgrades_when_offered() => Bounded(async () =>
    {
        var ca = pki.Get();
        await using var server = await NbdkitProcess.StartAsync(new NbdkitOptions
        {
            Plugin = "memory", PluginArguments = ["size=1M"], Tls = NbdkitTls.On, TlsCertificatesDirectory = ca.Directory,
        });

        var options = Tls(ca.Trusted) with { Tls = Tls(ca.Trusted).Tls with { Opportunistic = true } };
        await using var client = await ConnectAsync(server.Endpoint.UriFor(string.Empty, tls: false), options);
        client.Export.IsTlsActive.Should().BeTrue();

        // Plain nbd:// without opportunistic TLS stays plain against --tls=on.
        await using var plain = await ConnectAsync(server.Endpoint.UriFor(string.Empty, tls: false));
        plain.Export.IsTlsActive.Should().BeFalse();
    });

    [SkippableFact]
    public Task No_downgrade_nbds_against_a_plain_server_fails() => Bounded(async () =>
    {
        var ca = pki.Get();
        await using var server = await NbdkitProcess.StartAsync(new NbdkitOptions { Plugin = "memory", PluginArguments = ["size=1M"] });

        (await NegotiationErrorAsync(server.Endpoint.UriFor(string.Empty, tls: true), Tls(ca.Trusted))).Should().Be(NbdNegotiationError.TlsFailed);
    });

    [SkippableFact]
    public Task Nbdkit_verify_peer_requires_a_client_certificate() => Bounded(async () =>
    {
        var ca = pki.Get();
        await using var server = await NbdkitProcess.StartAsync(new NbdkitOptions
        {
            Plugin = "memory", PluginArguments = ["size=1M"], Tls = NbdkitTls.Require, TlsCertificatesDirectory = ca.Directory, TlsVerifyPeer = true,
        });

        await using (var client = await ConnectAsync(server.Uri, Tls(ca.Trusted, clientCertificate: true)))
        {
            client.Export.IsTlsActive.Should().BeTrue();
            await ReadWriteRoundTripAsync(client);
        }

        await FluentActions.Awaiting(async () => await ConnectAsync(server.Uri, Tls(ca.Trusted)))
            .Should().ThrowAsync<NbdException>();
    });

    [SkippableFact]
    public Task Qemu_nbd_tls_with_and_without_client_certificate() => Bounded(async () =>
    {
        var ca = pki.Get();
        await using (var server = await QemuNbdProcess.StartAsync(new QemuNbdOptions { TlsCertificatesDirectory = ca.Directory }))
        {
            // qemu-nbd serves one client at a time by default: close the TLS client before the plain attempt.
            await using (var client = await ConnectAsync(server.Uri, Tls(ca.Trusted)))
            {
                client.Export.IsTlsActive.Should().BeTrue();
                await ReadWriteRoundTripAsync(client);
            }

            (await NegotiationErrorAsync(server.Endpoint.UriFor("disk"), Plain)).Should().Be(NbdNegotiationError.TlsRequired);
        }

        await using var verifying = await QemuNbdProcess.StartAsync(new QemuNbdOptions
        {
            TlsCertificatesDirectory = ca.Directory, TlsVerifyPeer = true, Listen = ListenKind.Unix,
        });
        await using (var client = await ConnectAsync(verifying.Uri, Tls(ca.Trusted, clientCertificate: true)))
        {
            client.Export.IsTlsActive.Should().BeTrue();
            await ReadWriteRoundTripAsync(client);
        }

        await FluentActions.Awaiting(async () => await ConnectAsync(verifying.Uri, Tls(ca.Trusted)))
            .Should().ThrowAsync<NbdException>("verify-peer=on needs a client certificate");
    });

    [SkippableFact]
    public Task Nbd_server_tls_with_client_certificate() => Bounded(async () =>
    {
        var ca = pki.Get();
        await using var server = await NbdServerProcess.StartAsync(new NbdServerOptions
        {
            Exports = [new NbdServerExport { Name = "disk", Size = 1024 * 1024 }],
            TlsCertificatesDirectory = ca.Directory,
            ForceTls = true,
        });

        await using (var client = await ConnectAsync(server.Uri, Tls(ca.Trusted, clientCertificate: true)))
        {
            client.Export.IsTlsActive.Should().BeTrue();
            await ReadWriteRoundTripAsync(client);
        }

        (await NegotiationErrorAsync(server.Endpoint.UriFor("disk"), Plain)).Should().Be(NbdNegotiationError.TlsRequired);
        await FluentActions.Awaiting(async () => await ConnectAsync(server.Uri, Tls(ca.Trusted)))
            .Should().ThrowAsync<NbdException>("nbd-server always verifies the client certificate");
    });

    [SkippableFact]
    public Task Expired_server_certificate_is_refused() => Bounded(async () =>
    {
        var ca = pki.Get();
        Skip.If(ca.Expired is null, "an expired certificate needs certtool");
        await using var server = await NbdkitProcess.StartAsync(new NbdkitOptions
        {
            Plugin = "memory", PluginArguments = ["size=1M"], Tls = NbdkitTls.Require, TlsCertificatesDirectory = ca.Expired!.Directory,
        });

        (await NegotiationErrorAsync(server.Uri, Tls(ca.Trusted))).Should().Be(NbdNegotiationError.TlsFailed);
    });

    [SkippableFact]
    public Task Tls_certificates_url_parameter_needs_opt_in() => Bounded(async () =>
    {
        var ca = pki.Get();
        await using var server = await NbdkitProcess.StartAsync(new NbdkitOptions
        {
            Plugin = "memory", PluginArguments = ["size=1M"], Tls = NbdkitTls.Require, TlsCertificatesDirectory = ca.Directory, TlsVerifyPeer = true,
        });
        var uri = server.UriFor(string.Empty, "tls-certificates=" + ca.Directory);

        // The libnbd-style directory supplies both the CA and the client certificate.
        await using (var client = await ConnectAsync(uri, Plain with { Tls = new NbdTlsOptions { AllowLocalFileParameters = true } }))
        {
            client.Export.IsTlsActive.Should().BeTrue();
            await ReadWriteRoundTripAsync(client);
        }

        // Without the opt-in a URL may not make the client read local files.
        await FluentActions.Awaiting(async () => await ConnectAsync(uri, Plain)).Should().ThrowAsync<Exception>();
    });
}
