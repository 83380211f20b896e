using System.Net.Security;
using System.Security.Authentication;
using System.Security.Cryptography.X509Certificates;

namespace NbdAttachment.Client;

/// <summary>TLS settings for <c>nbds://</c> URLs (and for opportunistic TLS on <c>nbd://</c>). Immutable.</summary>
public sealed record NbdTlsOptions
{
    /// <summary>The defaults: verify the server against the system trust store, no client certificate.</summary>
    public static NbdTlsOptions Default { get; } = new();

    /// <summary>
    /// Certificate authorities to trust instead of the system store. When set, the server's chain must end in one of these.
    /// Default: <see langword="null"/> (system store, or <c>ca-cert.pem</c> from a <c>tls-certificates</c> URL directory).
    /// </summary>
    public X509Certificate2Collection? TrustedCertificateAuthorities { get; init; }

    /// <summary>Client certificates (with private keys) offered to servers that ask for one. Default: none.</summary>
    public X509Certificate2Collection? ClientCertificates { get; init; }

    /// <summary>
    /// The host name the server certificate must match. Default: the URL's <c>tls-hostname</c>, else its host
    /// (for Unix sockets: <c>localhost</c>).
    /// </summary>
    public string? TargetHost { get; init; }

    /// <summary>
    /// Whether the server certificate is verified. Default: <see langword="null"/>, meaning the URL's
    /// <c>tls-verify-peer</c>, else <see langword="true"/>.
    /// </summary>
    public bool? VerifyPeer { get; init; }

    /// <summary>An extra check run after the built-in validation; return <see langword="false"/> to refuse. Default: none.</summary>
    public RemoteCertificateValidationCallback? CertificateValidationCallback { get; init; }

    /// <summary>The TLS versions allowed. Default: <see cref="SslProtocols.None"/>, the operating system's choice (TLS 1.2 and later).</summary>
    public SslProtocols EnabledProtocols { get; init; } = SslProtocols.None;

    /// <summary>
    /// Allow the URL parameters <c>tls-certificates</c> and <c>tls-psk-file</c>, which name local files.
    /// Default: <see langword="false"/>, so a URL from an untrusted source cannot make the client read local files.
    /// </summary>
    public bool AllowLocalFileParameters { get; init; }

    /// <summary>
    /// For <c>nbd://</c> and <c>nbd+unix://</c> URLs: try STARTTLS and continue in plain text if the server refuses.
    /// Default: <see langword="false"/> (plain text). <c>nbds</c> URLs always require TLS and never downgrade.
    /// </summary>
    public bool Opportunistic { get; init; }
}
