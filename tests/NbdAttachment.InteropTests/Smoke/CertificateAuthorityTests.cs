using System.Security.Cryptography.X509Certificates;
using NbdAttachment.InteropTests.Servers;

namespace NbdAttachment.InteropTests.Smoke;

public sealed class CertificateAuthorityTests
{
    [SkippableTheory]
    [InlineData(CertificateTool.Certtool)]
    [InlineData(CertificateTool.Openssl)]
    public async Task Generated_certificates_chain_to_their_own_CA_only(CertificateTool tool)
    {
        using var ca = await TestCertificateAuthority.CreateAsync(tool);
        var root = ca.RootDirectory;

        foreach (var f in new[] { "ca-cert.pem", "server-cert.pem", "server-key.pem", "client-cert.pem", "client-key.pem" })
        {
            File.Exists(Path.Combine(ca.Directory, f)).Should().BeTrue(f);
            File.Exists(Path.Combine(ca.Unrelated.Directory, f)).Should().BeTrue(f);
        }

        using var trustedRoot = ca.Trusted.LoadCaCertificate();
        using var otherRoot = ca.Unrelated.LoadCaCertificate();
        using var server = ca.Trusted.LoadServerCertificate();
        using var client = ca.Trusted.LoadClientCertificate();
        using var wrongHost = ca.WrongHost.LoadServerCertificate();
        server.HasPrivateKey.Should().BeTrue();
        client.HasPrivateKey.Should().BeTrue();

        Chains(server, trustedRoot).Should().BeTrue();
        Chains(client, trustedRoot).Should().BeTrue();
        Chains(wrongHost, trustedRoot).Should().BeTrue();
        Chains(server, otherRoot).Should().BeFalse();
        server.MatchesHostname("localhost").Should().BeTrue();
        server.MatchesHostname("127.0.0.1").Should().BeTrue();
        wrongHost.MatchesHostname("localhost").Should().BeFalse();
        if (ca.Expired is { } expired)
        {
            using var old = expired.LoadServerCertificate();
            old.NotAfter.Should().BeBefore(DateTime.Now);
        }

        ca.Dispose();
        Directory.Exists(root).Should().BeFalse();
    }

    private static bool Chains(X509Certificate2 leaf, X509Certificate2 root)
    {
        using var chain = new X509Chain();
        chain.ChainPolicy.TrustMode = X509ChainTrustMode.CustomRootTrust;
        chain.ChainPolicy.CustomTrustStore.Add(root);
        chain.ChainPolicy.RevocationMode = X509RevocationMode.NoCheck;
        return chain.Build(leaf);
    }
}
