using System.Collections.ObjectModel;
using System.Globalization;

namespace NbdAttachment.Client;

/// <content>The RFC 3986 splitter and the NBD validation rules.</content>
public sealed partial class NbdUri
{
    private const string ParamSocket = "socket";
    private const string ParamTlsType = "tls-type";
    private const string ParamTlsHostname = "tls-hostname";
    private const string ParamTlsVerifyPeer = "tls-verify-peer";
    private const string ParamTlsCertificates = "tls-certificates";
    private const string ParamTlsPskFile = "tls-psk-file";

    private const string SupportedSchemes = "nbd, nbds, nbd+unix, nbds+unix, nbd+vsock and nbds+vsock";

    private const string SupportedParameters =
        "socket, tls-type, tls-hostname, tls-verify-peer, tls-certificates, tls-psk-file and experimental x-* names";

    /// <summary>Parses <paramref name="text"/>; returns an error sentence, or <see langword="null"/> and the result.</summary>
    private static string? TryParseCore(string text, out NbdUri? result)
    {
        result = null;
        if (text.Length == 0)
        {
            return "the URL is empty";
        }

        for (int i = 0; i < text.Length; i++)
        {
            char c = text[i];
            if (c <= ' ' || c == (char)0x7F)
            {
                return string.Create(
                    CultureInfo.InvariantCulture,
                    $"the URL contains {(c == ' ' ? "a space" : "the control character " + NbdUriSyntax.Describe(c))} at position {i}; percent-encode it as %{(int)c:X2}");
            }

            if (c > (char)0x7E)
            {
                return string.Create(
                    CultureInfo.InvariantCulture,
                    $"the URL contains the non-ASCII character {NbdUriSyntax.Describe(c)} at position {i}; percent-encode it as UTF-8");
            }
        }

        if (text.Contains('#', StringComparison.Ordinal))
        {
            return "the URL has a fragment ('#...'), which NBD URLs do not allow; write a '#' in an export name as %23";
        }

        // scheme ":" — the scheme ends at the first ':' and cannot contain '/' or '?'.
        int colon = text.IndexOf(':', StringComparison.Ordinal);
        int firstDelimiter = text.AsSpan().IndexOfAny('/', '?');
        if (colon < 0 || (firstDelimiter >= 0 && firstDelimiter < colon))
        {
            return text[0] == '/' && !text.StartsWith("//", StringComparison.Ordinal)
                ? $"the URL has no scheme (it is a relative reference); for a Unix socket write nbd+unix:///?socket={text}"
                : "the URL has no scheme (it is a relative reference); write nbd://host[:port]/export or nbd+unix:///export?socket=PATH";
        }

        if (colon == 0)
        {
            return "the URL has an empty scheme before ':'";
        }

        string schemeText = text[..colon];
        if (!NbdUriSyntax.IsAlpha(schemeText[0])
            || !schemeText.All(c => NbdUriSyntax.IsAlpha(c) || NbdUriSyntax.IsDigit(c) || c is '+' or '-' or '.'))
        {
            return $"'{schemeText}' is not a valid URI scheme";
        }

        string scheme = schemeText.ToLowerInvariant();
        (NbdTransportKind transport, bool requiresTls)? kind = scheme switch
        {
            "nbd" => (NbdTransportKind.Tcp, false),
            "nbds" => (NbdTransportKind.Tcp, true),
            "nbd+unix" => (NbdTransportKind.UnixSocket, false),
            "nbds+unix" => (NbdTransportKind.UnixSocket, true),
            "nbd+vsock" => (NbdTransportKind.Vsock, false),
            "nbds+vsock" => (NbdTransportKind.Vsock, true),
            _ => null,
        };
        if (kind is null)
        {
            string after = text[(colon + 1)..];
            string hint = after.Length > 0 && after.All(NbdUriSyntax.IsDigit)
                ? $" (if '{schemeText}' is a host name, write nbd://{text}/)"
                : string.Empty;
            return $"unsupported scheme '{schemeText}'; the supported schemes are {SupportedSchemes}{hint}";
        }

        (NbdTransportKind transport, bool requiresTls) = kind.Value;
        if (string.CompareOrdinal(text, colon + 1, "//", 0, 2) != 0)
        {
            return $"the scheme '{schemeText}:' must be followed by '//' (forms such as '{scheme}:export' are not accepted); write {scheme}://[host[:port]]/export";
        }

        // "//" authority path-abempty [ "?" query ]
        int authorityStart = colon + 3;
        int authorityEnd = text.AsSpan(authorityStart).IndexOfAny('/', '?');
        authorityEnd = authorityEnd < 0 ? text.Length : authorityStart + authorityEnd;
        int queryMark = text.IndexOf('?', authorityEnd);
        string authority = text[authorityStart..authorityEnd];
        string path = text[authorityEnd..(queryMark < 0 ? text.Length : queryMark)];
        string? query = queryMark < 0 ? null : text[(queryMark + 1)..];

        var parts = new Parts { Scheme = scheme, Transport = transport };
        string? error = ParseAuthority(authority, parts)
            ?? ParseExportName(path, parts)
            ?? ParseQuery(query, parts);
        if (error is not null)
        {
            return error;
        }

        result = new NbdUri
        {
            Scheme = scheme,
            Transport = transport,
            RequiresTls = requiresTls,
            Host = parts.Host,
            Port = parts.Port,
            VsockCid = parts.VsockCid,
            SocketPath = parts.SocketPath,
            ExportName = parts.ExportName,
            TlsUsername = parts.TlsUsername,
            TlsHostname = parts.TlsHostname,
            TlsVerifyPeer = parts.TlsVerifyPeer,
            TlsType = parts.TlsType,
            TlsCertificates = parts.TlsCertificates,
            TlsPskFile = parts.TlsPskFile,
            ExperimentalParameters = parts.Experimental is null
                ? NoParameters
                : new ReadOnlyDictionary<string, string>(parts.Experimental),
        };
        result.OriginalString = text;
        return null;
    }

    private static string? ParseAuthority(string authority, Parts parts)
    {
        string hostPort = authority;
        int at = authority.IndexOf('@', StringComparison.Ordinal);
        if (at >= 0)
        {
            string userInfo = authority[..at];
            hostPort = authority[(at + 1)..];
            if (hostPort.Contains('@', StringComparison.Ordinal))
            {
                return "the authority contains more than one '@'; write an '@' inside the user name as %40";
            }

            if (userInfo.Length == 0)
            {
                return "the user name (TLS username) before '@' is empty";
            }

            if (userInfo.Contains(':', StringComparison.Ordinal))
            {
                return "the userinfo contains ':'; passwords ('user:password@') are not supported because the userinfo is only the TLS username (write a ':' in the name as %3A)";
            }

            string? userError = NbdUriSyntax.TryDecode(userInfo, NbdUriSyntax.Component.UserInfo, "the user name (TLS username)", out string user, out _);
            if (userError is not null)
            {
                return userError;
            }

            if (user.Contains('\0', StringComparison.Ordinal))
            {
                return "the user name (TLS username) contains a NUL character";
            }

            parts.TlsUsername = user;
        }

        string hostText;
        string? portText = null;
        bool isIPv6 = false;
        if (hostPort.StartsWith('['))
        {
            int close = hostPort.IndexOf(']', StringComparison.Ordinal);
            if (close < 0)
            {
                return $"the IPv6 literal '{hostPort}' has no closing ']'";
            }

            string rest = hostPort[(close + 1)..];
            if (rest.Length > 0)
            {
                if (rest[0] != ':')
                {
                    return $"unexpected text '{rest}' after the IPv6 literal '{hostPort[..(close + 1)]}'; only ':port' may follow it";
                }

                portText = rest[1..];
            }

            string? literalError = ParseIPv6Literal(hostPort[1..close], parts.Transport, out hostText);
            if (literalError is not null)
            {
                return literalError;
            }

            isIPv6 = true;
        }
        else
        {
            if (hostPort.Contains('[', StringComparison.Ordinal) || hostPort.Contains(']', StringComparison.Ordinal))
            {
                return $"the host '{hostPort}' contains '[' or ']' outside an IPv6 literal";
            }

            int portColon = hostPort.IndexOf(':', StringComparison.Ordinal);
            hostText = hostPort;
            if (portColon >= 0)
            {
                if (hostPort.IndexOf(':', portColon + 1) >= 0)
                {
                    return $"the host '{hostPort}' looks like an IPv6 address; IPv6 literals must be enclosed in brackets, e.g. nbd://[::1]:10809/export";
                }

                hostText = hostPort[..portColon];
                portText = hostPort[(portColon + 1)..];
            }
        }

        if (parts.Transport == NbdTransportKind.UnixSocket)
        {
            if (hostText.Length > 0)
            {
                return $"an {parts.Scheme} URL must not name a host ('{hostText}'); the authority must be empty and the socket goes in the socket= parameter, e.g. {parts.Scheme}:///export?socket=/run/nbd.sock";
            }

            if (portText is not null)
            {
                return $"an {parts.Scheme} URL must not have a port (':{portText}'); the socket goes in the socket= parameter";
            }

            if (parts.TlsUsername is not null)
            {
                return $"an {parts.Scheme} URL must have an empty authority, so it cannot carry a user name ('{authority[..at]}@')";
            }

            return null;
        }

        int port = DefaultPort;
        if (portText is not null)
        {
            const int maximum = 65535;
            if (portText.Length == 0)
            {
                return "the port after ':' is empty; omit the ':' to use the default port 10809";
            }

            if (!NbdUriSyntax.TryParseDigits(portText, out ulong portValue))
            {
                return $"the port '{portText}' is not a decimal number";
            }

            if (portValue < 1 || portValue > (ulong)maximum)
            {
                return string.Create(CultureInfo.InvariantCulture, $"the port '{portText}' is out of range (1 to {maximum})");
            }

            port = (int)portValue;
        }

        parts.Port = port;
        if (parts.Transport == NbdTransportKind.Vsock)
        {
            if (isIPv6)
            {
                return "the host of a vsock URL must be a numeric CID, not an IPv6 literal";
            }

            uint cid = DefaultVsockCid;
            if (hostText.Length > 0)
            {
                if (!NbdUriSyntax.TryParseDigits(hostText, out ulong cidValue))
                {
                    return $"the vsock host '{hostText}' is not a numeric CID (a decimal number such as 2 for the host or 3 and above for guests)";
                }

                if (cidValue >= uint.MaxValue)
                {
                    return $"the vsock CID '{hostText}' is out of range (0 to 4294967294)";
                }

                cid = (uint)cidValue;
            }

            parts.VsockCid = cid;
            parts.Host = cid.ToString(CultureInfo.InvariantCulture);
            return null;
        }

        if (isIPv6)
        {
            parts.Host = hostText;
            return null;
        }

        if (hostText.Length == 0)
        {
            parts.Host = "localhost";
            return null;
        }

        string? hostError = NbdUriSyntax.ValidateHostName(hostText, "the host", allowUnderscore: true);
        if (hostError is not null)
        {
            return hostError;
        }

        parts.Host = hostText;
        return null;
    }

    /// <summary>Validates <c>IPv6address [ "%25" ZoneID ]</c> (RFC 3986 / RFC 6874) and returns it as <c>addr[%zone]</c>.</summary>
    private static string? ParseIPv6Literal(string literal, NbdTransportKind transport, out string host)
    {
        host = string.Empty;
        if (literal.Length > 0 && literal[0] is 'v' or 'V')
        {
            return $"the IPvFuture literal '[{literal}]' is not supported";
        }

        if (transport != NbdTransportKind.Tcp)
        {
            return transport == NbdTransportKind.Vsock
                ? "the host of a vsock URL must be a numeric CID, not an IPv6 literal"
                : $"a Unix-socket URL must not name a host ('[{literal}]'); the authority must be empty";
        }

        int percent = literal.IndexOf('%', StringComparison.Ordinal);
        string address = percent < 0 ? literal : literal[..percent];
        string? error = NbdUriSyntax.ValidateIPv6(address, "the IPv6 literal");
        if (error is not null)
        {
            return error;
        }

        if (percent < 0)
        {
            host = address;
            return null;
        }

        if (string.CompareOrdinal(literal, percent, "%25", 0, 3) != 0)
        {
            return $"the zone identifier in the IPv6 literal '[{literal}]' must be introduced by '%25' (an encoded '%'), e.g. [fe80::1%25eth0]";
        }

        string rawZone = literal[(percent + 3)..];
        if (rawZone.Length == 0)
        {
            return $"the zone identifier in the IPv6 literal '[{literal}]' is empty";
        }

        error = NbdUriSyntax.TryDecode(rawZone, NbdUriSyntax.Component.ZoneId, "the IPv6 zone identifier", out string zone, out _);
        if (error is not null)
        {
            return error;
        }

        if (zone.Contains('\0', StringComparison.Ordinal))
        {
            return "the IPv6 zone identifier contains a NUL character";
        }

        host = address + "%" + zone;
        return null;
    }

    private static string? ParseExportName(string path, Parts parts)
    {
        // path-abempty: empty, or starts with '/'. Exactly one '/' is removed; nothing is normalised.
        string raw = path.Length == 0 ? path : path[1..];
        string? error = NbdUriSyntax.TryDecode(raw, NbdUriSyntax.Component.Path, "the export name (URL path)", out string name, out int bytes);
        error ??= ValidateExportName(name, bytes);
        if (error is not null)
        {
            return error;
        }

        parts.ExportName = name;
        return null;
    }

    private static string? ValidateExportName(string name, int utf8Bytes)
    {
        if (name.Contains('\0', StringComparison.Ordinal))
        {
            return "the export name contains a NUL character, which NBD export names may not contain";
        }

        if (utf8Bytes > MaxExportNameBytes)
        {
            return string.Create(
                CultureInfo.InvariantCulture,
                $"the export name is {utf8Bytes} bytes of UTF-8, longer than the NBD protocol limit of {MaxExportNameBytes} bytes");
        }

        return null;
    }

    private static string? ValidateSocketPath(string socketPath)
    {
        if (socketPath.Length == 0)
        {
            return "the socket= parameter is empty; it must name the Unix socket path";
        }

        if (socketPath.IndexOf('\0', 1) >= 0)
        {
            return "the socket path contains a NUL character after its start (only a leading NUL, selecting the Linux abstract namespace, is allowed)";
        }

        if (socketPath == "\0")
        {
            return "the abstract socket name after the leading NUL is empty";
        }

        return null;
    }

    private static string? ParseQuery(string? query, Parts parts)
    {
        if (!string.IsNullOrEmpty(query))
        {
            char separator = query.Contains('&', StringComparison.Ordinal) ? '&' : ';';
            var seen = new HashSet<string>(StringComparer.OrdinalIgnoreCase);
            foreach (string pair in query.Split(separator))
            {
                if (pair.Length == 0)
                {
                    continue;
                }

                int equals = pair.IndexOf('=', StringComparison.Ordinal);
                string rawName = equals < 0 ? pair : pair[..equals];
                string rawValue = equals < 0 ? string.Empty : pair[(equals + 1)..];
                if (rawName.Length == 0)
                {
                    return $"the query contains a parameter with an empty name ('{pair}')";
                }

                string? error = NbdUriSyntax.TryDecode(rawName, NbdUriSyntax.Component.Query, "a query parameter name", out string name, out _);
                if (error is not null)
                {
                    return error;
                }

                error = NbdUriSyntax.TryDecode(rawValue, NbdUriSyntax.Component.Query, $"the value of the query parameter '{name}'", out string value, out _);
                if (error is not null)
                {
                    return error;
                }

                if (!seen.Add(name))
                {
                    return $"the query parameter '{name}' appears more than once";
                }

                error = ApplyParameter(name, value, parts);
                if (error is not null)
                {
                    return error;
                }
            }
        }

        if (parts.Transport == NbdTransportKind.UnixSocket && parts.SocketPath is null)
        {
            return $"an {parts.Scheme} URL requires the socket= query parameter naming the Unix socket, e.g. {parts.Scheme}:///export?socket=/run/nbd.sock";
        }

        if (parts.TlsType is not null)
        {
            if (parts.TlsCertificates is not null && parts.TlsType != "x509")
            {
                return $"tls-certificates is an X.509 setting, but tls-type is '{parts.TlsType}'";
            }

            if (parts.TlsPskFile is not null && parts.TlsType != "psk")
            {
                return $"tls-psk-file is a PSK setting, but tls-type is '{parts.TlsType}'";
            }
        }
        else if (parts.TlsCertificates is not null && parts.TlsPskFile is not null)
        {
            return "both tls-certificates (X.509) and tls-psk-file (PSK) are given; add tls-type=x509 or tls-type=psk, or drop one";
        }

        return null;
    }

    private static string? ApplyParameter(string name, string value, Parts parts)
    {
        string key = name.ToLowerInvariant();
        if (key != ParamSocket && value.Contains('\0', StringComparison.Ordinal))
        {
            return $"the value of the query parameter '{name}' contains a NUL character";
        }

        switch (key)
        {
            case ParamSocket:
                if (parts.Transport != NbdTransportKind.UnixSocket)
                {
                    return $"the socket= query parameter is only allowed with nbd+unix and nbds+unix URLs, not with {parts.Scheme}";
                }

                string? socketError = ValidateSocketPath(value);
                if (socketError is not null)
                {
                    return socketError;
                }

                parts.SocketPath = value;
                return null;

            case ParamTlsType:
                string type = value.ToLowerInvariant();
                if (type is not ("anon" or "x509" or "psk"))
                {
                    return $"tls-type '{value}' is not valid; use anon, x509 or psk";
                }

                parts.TlsType = type;
                return null;

            case ParamTlsHostname:
                if (value.Length == 0)
                {
                    return "tls-hostname is empty; it must be a DNS host name";
                }

                string? hostError = NbdUriSyntax.ValidateHostName(value, "tls-hostname", allowUnderscore: false);
                if (hostError is not null)
                {
                    return hostError;
                }

                parts.TlsHostname = value;
                return null;

            case ParamTlsVerifyPeer:
                bool? verify = value.ToLowerInvariant() switch
                {
                    "1" or "true" or "t" or "yes" or "y" or "on" => true,
                    "0" or "false" or "f" or "no" or "n" or "off" => false,
                    _ => null,
                };
                if (verify is null)
                {
                    return $"tls-verify-peer '{value}' is not a boolean; use 1/true/t/yes/y/on or 0/false/f/no/n/off";
                }

                parts.TlsVerifyPeer = verify;
                return null;

            case ParamTlsCertificates:
                if (value.Length == 0)
                {
                    return "tls-certificates is empty; it must name a directory";
                }

                parts.TlsCertificates = value;
                return null;

            case ParamTlsPskFile:
                if (value.Length == 0)
                {
                    return "tls-psk-file is empty; it must name a file";
                }

                parts.TlsPskFile = value;
                return null;

            default:
                if (key.Length > 2 && key.StartsWith("x-", StringComparison.Ordinal))
                {
                    parts.Experimental ??= new Dictionary<string, string>(StringComparer.OrdinalIgnoreCase);
                    parts.Experimental.Add(name, value);
                    return null;
                }

                return $"unknown query parameter '{name}'; the supported parameters are {SupportedParameters}";
        }
    }

    /// <summary>The components gathered while parsing.</summary>
    private sealed class Parts
    {
        public required string Scheme { get; init; }

        public required NbdTransportKind Transport { get; init; }

        public string? Host { get; set; }

        public int Port { get; set; }

        public uint? VsockCid { get; set; }

        public string? SocketPath { get; set; }

        public string ExportName { get; set; } = string.Empty;

        public string? TlsUsername { get; set; }

        public string? TlsHostname { get; set; }

        public bool? TlsVerifyPeer { get; set; }

        public string? TlsType { get; set; }

        public string? TlsCertificates { get; set; }

        public string? TlsPskFile { get; set; }

        public Dictionary<string, string>? Experimental { get; set; }
    }
}
