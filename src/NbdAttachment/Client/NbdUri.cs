using System.Collections.ObjectModel;
using System.Diagnostics.CodeAnalysis;
using System.Globalization;
using System.Text;

namespace NbdAttachment.Client;

/// <summary>
/// A parsed and validated NBD URL (<c>nbd://</c>, <c>nbds://</c>, <c>nbd+unix://</c>, <c>nbds+unix://</c>,
/// <c>nbd+vsock://</c>, <c>nbds+vsock://</c>) as described by the NBD URI specification. Immutable.
/// </summary>
/// <remarks>
/// <para>
/// The URL is split by this class according to RFC 3986, from the text exactly as written: the export name is the path
/// minus exactly one leading <c>/</c>, percent-decoded as UTF-8 and never normalised (no dot-segment removal, no
/// collapsing of <c>//</c>). Query parameters are split on <c>&amp;</c> (or on <c>;</c> when there is no <c>&amp;</c>);
/// <c>+</c> is a literal plus, not a space. Parameter names are case-insensitive and may appear only once.
/// </para>
/// <para>
/// The <c>tls-*</c> parameters are accepted on the non-TLS schemes too (<c>nbd://</c>, <c>nbd+unix://</c>,
/// <c>nbd+vsock://</c>), where they configure opportunistic TLS; only the <c>nbds*</c> schemes make TLS mandatory.
/// <c>tls-certificates</c> and <c>tls-psk-file</c> name local files; the parser only records them, and the client
/// decides whether to honour them.
/// </para>
/// <para>Equality compares the parsed components (host names case-insensitively), not <see cref="OriginalString"/>.</para>
/// </remarks>
public sealed partial class NbdUri : IEquatable<NbdUri>
{
    /// <summary>The IANA-assigned NBD port, used when a TCP or vsock URL names none.</summary>
    public const int DefaultPort = 10809;

    /// <summary>The longest export name the NBD protocol allows, in UTF-8 bytes.</summary>
    public const int MaxExportNameBytes = 4096;

    /// <summary>The vsock CID used when an <c>nbd+vsock</c> URL has an empty host: 2, the hypervisor host.</summary>
    public const uint DefaultVsockCid = 2;

    private static readonly IReadOnlyDictionary<string, string> NoParameters =
        new ReadOnlyDictionary<string, string>(new Dictionary<string, string>(StringComparer.OrdinalIgnoreCase));

    private string? canonical;

    private NbdUri()
    {
    }

    /// <summary>The URL text as given to <see cref="Parse(string)"/>, or the canonical form for URLs built by the factories.</summary>
    public string OriginalString { get; private set; } = string.Empty;

    /// <summary>The scheme in lower case: <c>nbd</c>, <c>nbds</c>, <c>nbd+unix</c>, <c>nbds+unix</c>, <c>nbd+vsock</c> or <c>nbds+vsock</c>.</summary>
    public string Scheme { get; private init; } = "nbd";

    /// <summary>How the server is reached.</summary>
    public NbdTransportKind Transport { get; private init; }

    /// <summary><see langword="true"/> for the <c>nbds*</c> schemes: the connection must fail if TLS cannot be negotiated.</summary>
    public bool RequiresTls { get; private init; }

    /// <summary>
    /// For TCP, the host name or IP address (IPv6 without brackets, with a zone as <c>fe80::1%eth0</c>;
    /// <c>localhost</c> when the URL has no host). For vsock, the CID in decimal. <see langword="null"/> for Unix sockets.
    /// </summary>
    public string? Host { get; private init; }

    /// <summary>The TCP or vsock port, 1 to 65535 (default <see cref="DefaultPort"/>); 0 for Unix sockets.</summary>
    public int Port { get; private init; }

    /// <summary>For vsock, the numeric context id (an empty host means <see cref="DefaultVsockCid"/>); otherwise <see langword="null"/>.</summary>
    public uint? VsockCid { get; private init; }

    /// <summary>
    /// For Unix sockets, the percent-decoded <c>socket=</c> path; a leading NUL character selects the Linux abstract
    /// namespace. <see langword="null"/> for other transports.
    /// </summary>
    public string? SocketPath { get; private init; }

    /// <summary>The export name: the path minus one leading <c>/</c>, percent-decoded; empty means the server's default export.</summary>
    public string ExportName { get; private init; } = string.Empty;

    /// <summary>
    /// The TLS (PSK) user name from the URL's userinfo (<c>user@host</c>), percent-decoded; <see langword="null"/> if absent.
    /// Unix-socket URLs have an empty authority and so never carry one.
    /// </summary>
    public string? TlsUsername { get; private init; }

    /// <summary>The <c>tls-hostname</c> parameter: the name to check the server certificate against; <see langword="null"/> if absent.</summary>
    public string? TlsHostname { get; private init; }

    /// <summary>The <c>tls-verify-peer</c> parameter; <see langword="null"/> if absent (verification then defaults to on).</summary>
    public bool? TlsVerifyPeer { get; private init; }

    /// <summary>The <c>tls-type</c> parameter in lower case (<c>anon</c>, <c>x509</c> or <c>psk</c>); <see langword="null"/> if absent.</summary>
    public string? TlsType { get; private init; }

    /// <summary>The <c>tls-certificates</c> parameter: a local directory of X.509 files; <see langword="null"/> if absent.</summary>
    public string? TlsCertificates { get; private init; }

    /// <summary>The <c>tls-psk-file</c> parameter: a local PSK key file; <see langword="null"/> if absent.</summary>
    public string? TlsPskFile { get; private init; }

    /// <summary>The experimental <c>x-*</c> parameters, names as written (looked up case-insensitively), values percent-decoded.</summary>
    public IReadOnlyDictionary<string, string> ExperimentalParameters { get; private init; } = NoParameters;

    /// <summary>Compares two URLs by their parsed components.</summary>
    /// <param name="left">The first URL.</param>
    /// <param name="right">The second URL.</param>
    /// <returns><see langword="true"/> if both are <see langword="null"/> or equal.</returns>
    public static bool operator ==(NbdUri? left, NbdUri? right) => left is null ? right is null : left.Equals(right);

    /// <summary>Compares two URLs by their parsed components.</summary>
    /// <param name="left">The first URL.</param>
    /// <param name="right">The second URL.</param>
    /// <returns><see langword="true"/> if they differ.</returns>
    public static bool operator !=(NbdUri? left, NbdUri? right) => !(left == right);

    /// <summary>Parses and validates an NBD URL, using the text exactly as written (<see cref="Uri.OriginalString"/>).</summary>
    /// <param name="uri">The URL.</param>
    /// <returns>The parsed URL.</returns>
    /// <exception cref="ArgumentNullException"><paramref name="uri"/> is <see langword="null"/>.</exception>
    /// <exception cref="NbdUriFormatException">The URL is not a valid NBD URL; the exception's reason says why.</exception>
    public static NbdUri Parse(Uri uri)
    {
        ArgumentNullException.ThrowIfNull(uri);
        return Parse(uri.OriginalString);
    }

    /// <summary>Parses and validates an NBD URL.</summary>
    /// <param name="uriText">The URL text.</param>
    /// <returns>The parsed URL.</returns>
    /// <exception cref="ArgumentNullException"><paramref name="uriText"/> is <see langword="null"/>.</exception>
    /// <exception cref="NbdUriFormatException">The URL is not a valid NBD URL; the exception's reason says why.</exception>
    public static NbdUri Parse(string uriText)
    {
        ArgumentNullException.ThrowIfNull(uriText);
        string? error = TryParseCore(uriText, out NbdUri? result);
        if (error is not null)
        {
            throw new NbdUriFormatException(uriText, error);
        }

        return result!;
    }

    /// <summary>Parses and validates an NBD URL without throwing.</summary>
    /// <param name="uri">The URL, or <see langword="null"/>.</param>
    /// <param name="result">The parsed URL on success.</param>
    /// <param name="error">On failure, what is wrong, as a sentence.</param>
    /// <returns><see langword="true"/> if the URL is valid.</returns>
    public static bool TryParse(Uri? uri, [NotNullWhen(true)] out NbdUri? result, [NotNullWhen(false)] out string? error) =>
        TryParse(uri?.OriginalString, out result, out error);

    /// <summary>Parses and validates an NBD URL without throwing.</summary>
    /// <param name="uriText">The URL text, or <see langword="null"/>.</param>
    /// <param name="result">The parsed URL on success.</param>
    /// <param name="error">On failure, what is wrong, as a sentence.</param>
    /// <returns><see langword="true"/> if the URL is valid.</returns>
    public static bool TryParse(string? uriText, [NotNullWhen(true)] out NbdUri? result, [NotNullWhen(false)] out string? error)
    {
        if (uriText is null)
        {
            result = null;
            error = "the URL is null";
            return false;
        }

        error = TryParseCore(uriText, out result);
        return error is null;
    }

    /// <summary>Builds a TCP URL (<c>nbd://</c>, or <c>nbds://</c> when <paramref name="requireTls"/> is set).</summary>
    /// <param name="host">A host name, IPv4 address, or IPv6 address (with or without brackets; a zone as <c>%eth0</c>).</param>
    /// <param name="port">The TCP port, 1 to 65535.</param>
    /// <param name="exportName">The export name; empty for the default export.</param>
    /// <param name="requireTls">Whether TLS is mandatory.</param>
    /// <returns>The URL.</returns>
    /// <exception cref="ArgumentNullException">An argument is <see langword="null"/>.</exception>
    /// <exception cref="ArgumentOutOfRangeException"><paramref name="port"/> is outside 1 to 65535.</exception>
    /// <exception cref="ArgumentException"><paramref name="host"/> or <paramref name="exportName"/> is not valid.</exception>
    public static NbdUri ForTcp(string host, int port = DefaultPort, string exportName = "", bool requireTls = false)
    {
        ArgumentException.ThrowIfNullOrEmpty(host);
        ArgumentNullException.ThrowIfNull(exportName);
        ArgumentOutOfRangeException.ThrowIfLessThan(port, 1);
        ArgumentOutOfRangeException.ThrowIfGreaterThan(port, 65535);

        string normalizedHost = host;
        if (host.StartsWith('[') && host.EndsWith(']'))
        {
            normalizedHost = host[1..^1];
        }

        string? hostError;
        if (normalizedHost.Contains(':', StringComparison.Ordinal))
        {
            int percent = normalizedHost.IndexOf('%', StringComparison.Ordinal);
            string address = percent < 0 ? normalizedHost : normalizedHost[..percent];
            hostError = NbdUriSyntax.ValidateIPv6(address, "the host");
            if (hostError is null && percent >= 0)
            {
                string zone = normalizedHost[(percent + 1)..];
                if (zone.Length == 0 || zone.Contains('\0', StringComparison.Ordinal) || NbdUriSyntax.StrictUtf8ByteCount(zone) is null)
                {
                    hostError = $"the IPv6 zone identifier in '{host}' is empty or not valid text";
                }
            }
        }
        else
        {
            hostError = NbdUriSyntax.ValidateHostName(normalizedHost, "the host", allowUnderscore: true);
        }

        if (hostError is not null)
        {
            throw new ArgumentException(hostError, nameof(host));
        }

        ThrowIfInvalidExportName(exportName, nameof(exportName));
        return Finish(new NbdUri
        {
            Scheme = requireTls ? "nbds" : "nbd",
            Transport = NbdTransportKind.Tcp,
            RequiresTls = requireTls,
            Host = normalizedHost,
            Port = port,
            ExportName = exportName,
        });
    }

    /// <summary>Builds a Unix-socket URL (<c>nbd+unix://</c>, or <c>nbds+unix://</c> when <paramref name="requireTls"/> is set).</summary>
    /// <param name="socketPath">The socket path; a leading NUL character selects the Linux abstract namespace.</param>
    /// <param name="exportName">The export name; empty for the default export.</param>
    /// <param name="requireTls">Whether TLS is mandatory.</param>
    /// <returns>The URL.</returns>
    /// <exception cref="ArgumentNullException">An argument is <see langword="null"/>.</exception>
    /// <exception cref="ArgumentException"><paramref name="socketPath"/> or <paramref name="exportName"/> is not valid.</exception>
    public static NbdUri ForUnixSocket(string socketPath, string exportName = "", bool requireTls = false)
    {
        ArgumentException.ThrowIfNullOrEmpty(socketPath);
        ArgumentNullException.ThrowIfNull(exportName);
        string? socketError = NbdUriSyntax.StrictUtf8ByteCount(socketPath) is null
            ? "the socket path is not valid UTF-16 text (it has an unpaired surrogate)"
            : ValidateSocketPath(socketPath);
        if (socketError is not null)
        {
            throw new ArgumentException(socketError, nameof(socketPath));
        }

        ThrowIfInvalidExportName(exportName, nameof(exportName));
        return Finish(new NbdUri
        {
            Scheme = requireTls ? "nbds+unix" : "nbd+unix",
            Transport = NbdTransportKind.UnixSocket,
            RequiresTls = requireTls,
            SocketPath = socketPath,
            ExportName = exportName,
        });
    }

    /// <summary>Returns the canonical form of this URL as a <see cref="Uri"/>.</summary>
    /// <returns>An absolute <see cref="Uri"/> whose <see cref="Uri.OriginalString"/> is <see cref="ToString"/>.</returns>
    public Uri ToUri() => new(ToString(), UriKind.Absolute);

    /// <summary>
    /// Returns the canonical form of this URL: lower-case scheme, IPv6 hosts in brackets, the port only when it is not
    /// the default, every parameter percent-encoded, known parameters first, then <c>x-*</c> parameters by name.
    /// </summary>
    /// <returns>The canonical URL text; <see cref="Parse(string)"/> of it yields an equal <see cref="NbdUri"/>.</returns>
    public override string ToString() => canonical ??= BuildCanonical();

    /// <summary>Compares the parsed components of two URLs (host names case-insensitively).</summary>
    /// <param name="other">The other URL.</param>
    /// <returns><see langword="true"/> if every component is equal.</returns>
    public bool Equals(NbdUri? other)
    {
        if (other is null)
        {
            return false;
        }

        if (ReferenceEquals(this, other))
        {
            return true;
        }

        return Scheme == other.Scheme
            && string.Equals(Host, other.Host, StringComparison.OrdinalIgnoreCase)
            && Port == other.Port
            && VsockCid == other.VsockCid
            && SocketPath == other.SocketPath
            && ExportName == other.ExportName
            && TlsUsername == other.TlsUsername
            && string.Equals(TlsHostname, other.TlsHostname, StringComparison.OrdinalIgnoreCase)
            && TlsVerifyPeer == other.TlsVerifyPeer
            && TlsType == other.TlsType
            && TlsCertificates == other.TlsCertificates
            && TlsPskFile == other.TlsPskFile
            && ExperimentalParameters.Count == other.ExperimentalParameters.Count
            && ExperimentalParameters.All(p => other.ExperimentalParameters.TryGetValue(p.Key, out string? v) && v == p.Value);
    }

    /// <inheritdoc/>
    public override bool Equals(object? obj) => obj is NbdUri other && Equals(other);

    /// <inheritdoc/>
    public override int GetHashCode()
    {
        var hash = default(HashCode);
        hash.Add(Scheme);
        hash.Add(Host, StringComparer.OrdinalIgnoreCase);
        hash.Add(Port);
        hash.Add(VsockCid);
        hash.Add(SocketPath);
        hash.Add(ExportName);
        hash.Add(TlsUsername);
        hash.Add(TlsHostname, StringComparer.OrdinalIgnoreCase);
        hash.Add(TlsVerifyPeer);
        hash.Add(TlsType);
        hash.Add(TlsCertificates);
        hash.Add(TlsPskFile);
        hash.Add(ExperimentalParameters.Count);
        return hash.ToHashCode();
    }

    private static NbdUri Finish(NbdUri uri)
    {
        uri.OriginalString = uri.ToString();
        return uri;
    }

    private static void ThrowIfInvalidExportName(string exportName, string paramName)
    {
        int? bytes = NbdUriSyntax.StrictUtf8ByteCount(exportName);
        string? error = bytes is null
            ? "the export name is not valid UTF-16 text (it has an unpaired surrogate)"
            : ValidateExportName(exportName, bytes.Value);
        if (error is not null)
        {
            throw new ArgumentException(error, paramName);
        }
    }

    private string BuildCanonical()
    {
        var builder = new StringBuilder(64);
        builder.Append(Scheme).Append("://");
        if (TlsUsername is not null)
        {
            NbdUriSyntax.AppendEncoded(builder, TlsUsername, NbdUriSyntax.Component.ZoneId);
            builder.Append('@');
        }

        switch (Transport)
        {
            case NbdTransportKind.Tcp:
                string host = Host!;
                if (host.Contains(':', StringComparison.Ordinal))
                {
                    int percent = host.IndexOf('%', StringComparison.Ordinal);
                    builder.Append('[').Append(percent < 0 ? host : host[..percent]);
                    if (percent >= 0)
                    {
                        builder.Append("%25");
                        NbdUriSyntax.AppendEncoded(builder, host[(percent + 1)..], NbdUriSyntax.Component.ZoneId);
                    }

                    builder.Append(']');
                }
                else
                {
                    builder.Append(host);
                }

                AppendPort(builder);
                break;
            case NbdTransportKind.Vsock:
                builder.Append(VsockCid!.Value.ToString(CultureInfo.InvariantCulture));
                AppendPort(builder);
                break;
            default:
                break;
        }

        builder.Append('/');
        NbdUriSyntax.AppendEncoded(builder, ExportName, NbdUriSyntax.Component.Path);

        char separator = '?';
        void AppendParameter(string name, string? value)
        {
            if (value is null)
            {
                return;
            }

            builder.Append(separator).Append(name).Append('=');
            NbdUriSyntax.AppendEncoded(builder, value, NbdUriSyntax.Component.QueryValueOut);
            separator = '&';
        }

        AppendParameter(ParamSocket, SocketPath);
        AppendParameter(ParamTlsType, TlsType);
        AppendParameter(ParamTlsHostname, TlsHostname);
        AppendParameter(ParamTlsVerifyPeer, TlsVerifyPeer switch { true => "true", false => "false", null => null });
        AppendParameter(ParamTlsCertificates, TlsCertificates);
        AppendParameter(ParamTlsPskFile, TlsPskFile);
        foreach (KeyValuePair<string, string> parameter in ExperimentalParameters.OrderBy(p => p.Key, StringComparer.Ordinal))
        {
            builder.Append(separator);
            NbdUriSyntax.AppendEncoded(builder, parameter.Key, NbdUriSyntax.Component.QueryValueOut);
            builder.Append('=');
            NbdUriSyntax.AppendEncoded(builder, parameter.Value, NbdUriSyntax.Component.QueryValueOut);
            separator = '&';
        }

        return builder.ToString();
    }

    private void AppendPort(StringBuilder builder)
    {
        if (Port != DefaultPort)
        {
            builder.Append(':').Append(Port.ToString(CultureInfo.InvariantCulture));
        }
    }
}
