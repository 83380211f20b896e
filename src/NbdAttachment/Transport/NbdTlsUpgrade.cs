using System.Net.Security;
using System.Security.Authentication;
using System.Security.Cryptography;
using System.Security.Cryptography.X509Certificates;
using NbdAttachment.Client;

namespace NbdAttachment.Transport;

/// <summary>Runs the TLS client handshake after <c>NBD_OPT_STARTTLS</c> was acknowledged.</summary>
internal static class NbdTlsUpgrade
{
    public static async ValueTask<SslStream> AuthenticateAsync(Stream inner, NbdUri uri, NbdTlsOptions tls, CancellationToken cancellationToken)
    {
        var material = LoadMaterial(uri, tls);
        var verify = tls.VerifyPeer ?? uri.TlsVerifyPeer ?? true;
        var targetHost = tls.TargetHost ?? uri.TlsHostname ?? (uri.Transport == NbdTransportKind.Tcp ? uri.Host : null) ?? "localhost";
        var options = new SslClientAuthenticationOptions
        {
            TargetHost = targetHost,
            EnabledSslProtocols = tls.EnabledProtocols,
            ClientCertificates = material.ClientCertificates,
            CertificateRevocationCheckMode = X509RevocationMode.NoCheck,
            RemoteCertificateValidationCallback = (sender, certificate, chain, errors) =>
                Validate(sender, certificate, chain, errors, verify, material.TrustedAuthorities, tls.CertificateValidationCallback),
        };

        var ssl = new SslStream(inner, leaveInnerStreamOpen: false);
        try
        {
            await ssl.AuthenticateAsClientAsync(options, cancellationToken).ConfigureAwait(false);
            return ssl;
        }
        catch (Exception ex) when (ex is AuthenticationException or IOException)
        {
            await ssl.DisposeAsync().ConfigureAwait(false);
            throw new NbdNegotiationException(
                NbdNegotiationError.TlsFailed,
                "NBD_OPT_STARTTLS",
                $"The TLS handshake with the server failed (expected host name '{targetHost}'): {ex.Message}",
                innerException: ex);
        }
    }

    private static bool Validate(
        object sender,
        X509Certificate? certificate,
        X509Chain? chain,
        SslPolicyErrors errors,
        bool verify,
        X509Certificate2Collection? trusted,
        RemoteCertificateValidationCallback? extra)
    {
        if (!verify)
        {
            return extra?.Invoke(sender, certificate, chain, errors) ?? true;
        }

        if (certificate is null || (errors & SslPolicyErrors.RemoteCertificateNameMismatch) != 0 || (errors & SslPolicyErrors.RemoteCertificateNotAvailable) != 0)
        {
            return false;
        }

        if (trusted is not null && (errors & SslPolicyErrors.RemoteCertificateChainErrors) != 0)
        {
            using var custom = new X509Chain();
            custom.ChainPolicy.TrustMode = X509ChainTrustMode.CustomRootTrust;
            custom.ChainPolicy.CustomTrustStore.AddRange(trusted);
            custom.ChainPolicy.RevocationMode = X509RevocationMode.NoCheck;
            if (chain is not null)
            {
                foreach (var element in chain.ChainElements)
                {
                    custom.ChainPolicy.ExtraStore.Add(element.Certificate);
                }
            }

            using var leaf = new X509Certificate2(certificate);
            if (!custom.Build(leaf))
            {
                return false;
            }

            errors &= ~SslPolicyErrors.RemoteCertificateChainErrors;
        }

        return errors == SslPolicyErrors.None && (extra?.Invoke(sender, certificate, chain, errors) ?? true);
    }

    private static (X509Certificate2Collection? TrustedAuthorities, X509CertificateCollection? ClientCertificates) LoadMaterial(NbdUri uri, NbdTlsOptions tls)
    {
        if (uri.TlsPskFile is not null || uri.TlsType is "psk" or "anon")
        {
            throw new NbdNegotiationException(
                NbdNegotiationError.Platform,
                "NBD_OPT_STARTTLS",
                $"TLS type '{uri.TlsType ?? "psk"}' is not supported by this client; only X.509 certificates are.");
        }

        var trusted = tls.TrustedCertificateAuthorities;
        X509CertificateCollection? clients = tls.ClientCertificates;
        if (uri.TlsCertificates is { } directory)
        {
            if (!tls.AllowLocalFileParameters)
            {
                throw new NbdNegotiationException(
                    NbdNegotiationError.Policy,
                    "NBD_OPT_STARTTLS",
                    "The URL names a local certificate directory (tls-certificates) but NbdTlsOptions.AllowLocalFileParameters is false.");
            }

            try
            {
                var caFile = Path.Combine(directory, "ca-cert.pem");
                if (trusted is null && File.Exists(caFile))
                {
                    trusted = [];
                    trusted.ImportFromPemFile(caFile);
                }

                var certFile = Path.Combine(directory, "client-cert.pem");
                var keyFile = Path.Combine(directory, "client-key.pem");
                if (clients is null && File.Exists(certFile) && File.Exists(keyFile))
                {
                    clients = [X509Certificate2.CreateFromPemFile(certFile, keyFile)];
                }
            }
            catch (Exception ex) when (ex is IOException or CryptographicException or UnauthorizedAccessException)
            {
                throw new NbdNegotiationException(
                    NbdNegotiationError.TlsFailed,
                    "NBD_OPT_STARTTLS",
                    $"Cannot load TLS certificates from '{directory}': {ex.Message}",
                    innerException: ex);
            }
        }

        return (trusted, clients);
    }
}
