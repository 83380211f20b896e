using System.Globalization;
using System.Net;
using System.Net.Sockets;
using System.Text;
using System.Text.Unicode;

namespace NbdAttachment.Client;

/// <summary>RFC 3986 character classes, percent-encoding and host-name checks used by <see cref="NbdUri"/>.</summary>
internal static class NbdUriSyntax
{
    private static readonly UTF8Encoding StrictUtf8 = new(encoderShouldEmitUTF8Identifier: false, throwOnInvalidBytes: true);

    /// <summary>Which characters a component may contain literally (besides percent-encoded octets).</summary>
    internal enum Component
    {
        UserInfo,
        Path,
        Query,
        QueryValueOut,
        ZoneId,
    }

    internal static bool IsAlpha(char c) => c is (>= 'A' and <= 'Z') or (>= 'a' and <= 'z');

    internal static bool IsDigit(char c) => c is >= '0' and <= '9';

    internal static bool IsHexDigit(char c) => IsDigit(c) || c is (>= 'A' and <= 'F') or (>= 'a' and <= 'f');

    internal static bool IsUnreserved(char c) => IsAlpha(c) || IsDigit(c) || c is '-' or '.' or '_' or '~';

    internal static bool IsSubDelim(char c) => c is '!' or '$' or '&' or '\'' or '(' or ')' or '*' or '+' or ',' or ';' or '=';

    /// <summary>Whether <paramref name="c"/> may appear unencoded in <paramref name="component"/> of a URI we parse.</summary>
    internal static bool IsAllowed(char c, Component component) => component switch
    {
        Component.UserInfo => IsUnreserved(c) || IsSubDelim(c) || c == ':',
        Component.Path => IsUnreserved(c) || IsSubDelim(c) || c is ':' or '@' or '/',
        Component.Query => IsUnreserved(c) || IsSubDelim(c) || c is ':' or '@' or '/' or '?',

        // What we leave unencoded when writing a query value: no '&', ';', '=' (separators) and no '+'
        // (form decoders would turn it into a space).
        Component.QueryValueOut => IsUnreserved(c) || c is '!' or '$' or '\'' or '(' or ')' or '*' or ',' or ':' or '@' or '/' or '?',
        Component.ZoneId => IsUnreserved(c),
        _ => false,
    };

    /// <summary>Describes a character for an error message, e.g. <c>'"' (U+0022)</c>.</summary>
    internal static string Describe(char c) =>
        c is > ' ' and < (char)0x7F
            ? string.Create(CultureInfo.InvariantCulture, $"'{c}' (U+{(int)c:X4})")
            : string.Create(CultureInfo.InvariantCulture, $"U+{(int)c:X4}");

    /// <summary>
    /// Checks that <paramref name="raw"/> uses only characters allowed in <paramref name="component"/> and well-formed
    /// <c>%XX</c> escapes, then decodes it as UTF-8. Returns an error sentence, or <see langword="null"/> on success.
    /// </summary>
    /// <param name="raw">The component as written in the URL.</param>
    /// <param name="component">Which character class applies.</param>
    /// <param name="what">The component's name for error messages, e.g. "the export name".</param>
    /// <param name="decoded">The decoded text.</param>
    /// <param name="byteCount">The number of UTF-8 bytes the decoded text has.</param>
    internal static string? TryDecode(string raw, Component component, string what, out string decoded, out int byteCount)
    {
        decoded = string.Empty;
        byteCount = 0;
        if (raw.Length == 0)
        {
            return null;
        }

        byte[] bytes = new byte[raw.Length];
        int count = 0;
        for (int i = 0; i < raw.Length; i++)
        {
            char c = raw[i];
            if (c == '%')
            {
                if (i + 2 >= raw.Length || !IsHexDigit(raw[i + 1]) || !IsHexDigit(raw[i + 2]))
                {
                    string bad = raw.Substring(i, Math.Min(3, raw.Length - i));
                    return $"{what} contains the invalid percent-encoding '{bad}'; '%' must be followed by two hexadecimal digits (write a literal '%' as %25)";
                }

                bytes[count++] = (byte)((HexValue(raw[i + 1]) << 4) | HexValue(raw[i + 2]));
                i += 2;
            }
            else if (IsAllowed(c, component))
            {
                bytes[count++] = (byte)c;
            }
            else
            {
                return $"{what} contains the character {Describe(c)}, which must be percent-encoded";
            }
        }

        ReadOnlySpan<byte> span = bytes.AsSpan(0, count);
        if (!Utf8.IsValid(span))
        {
            return $"{what} is not valid UTF-8 after percent-decoding";
        }

        decoded = Encoding.UTF8.GetString(span);
        byteCount = count;
        return null;
    }

    /// <summary>Appends <paramref name="text"/> percent-encoding every UTF-8 byte not allowed literally in <paramref name="component"/>.</summary>
    internal static void AppendEncoded(StringBuilder builder, string text, Component component)
    {
        foreach (char c in text)
        {
            if (c < 0x80 && IsAllowed(c, component))
            {
                continue;
            }

            // Something needs encoding: fall through to the slow path.
            AppendEncodedSlow(builder, text, component);
            return;
        }

        builder.Append(text);
    }

    private static void AppendEncodedSlow(StringBuilder builder, string text, Component component)
    {
        byte[] bytes = StrictUtf8.GetBytes(text);
        foreach (byte b in bytes)
        {
            if (b < 0x80 && IsAllowed((char)b, component))
            {
                builder.Append((char)b);
            }
            else
            {
                builder.Append('%').Append(ToHexUpper(b >> 4)).Append(ToHexUpper(b & 0xF));
            }
        }
    }

    /// <summary>Counts the UTF-8 bytes of <paramref name="text"/>; <see langword="null"/> if it has unpaired surrogates.</summary>
    internal static int? StrictUtf8ByteCount(string text)
    {
        try
        {
            return StrictUtf8.GetByteCount(text);
        }
        catch (EncoderFallbackException)
        {
            return null;
        }
    }

    /// <summary>
    /// Validates a host name or dotted-quad IPv4 address. Returns an error sentence, or <see langword="null"/>.
    /// </summary>
    /// <param name="host">The host, without port.</param>
    /// <param name="what">Its name for error messages, e.g. "the host".</param>
    /// <param name="allowUnderscore">Whether '_' is allowed in labels (resolvers accept it; certificate names do not).</param>
    internal static string? ValidateHostName(string host, string what, bool allowUnderscore)
    {
        if (host.Length == 0)
        {
            return $"{what} is empty";
        }

        string prefix = $"{what} '{host}' is not a valid host name or IPv4 address";
        foreach (char c in host)
        {
            bool ok = IsAlpha(c) || IsDigit(c) || c is '-' or '.' || (allowUnderscore && c == '_');
            if (!ok)
            {
                return $"{prefix}: the character {Describe(c)} is not allowed (host names use letters, digits, '-' and '.'; IPv6 literals go in brackets)";
            }
        }

        string name = host.EndsWith('.') ? host[..^1] : host;
        if (name.Length == 0)
        {
            return $"{prefix}: it has no labels";
        }

        if (name.Length > 253)
        {
            return $"{prefix}: it is longer than 253 characters";
        }

        string[] labels = name.Split('.');
        foreach (string label in labels)
        {
            if (label.Length == 0)
            {
                return $"{prefix}: it has an empty label ('..' or a leading '.')";
            }

            if (label.Length > 63)
            {
                return $"{prefix}: the label '{label}' is longer than 63 characters";
            }

            if (label[0] == '-' || label[^1] == '-')
            {
                return $"{prefix}: the label '{label}' starts or ends with '-'";
            }
        }

        // A name whose last label is all digits is an IPv4 address (RFC 1123 §2.1); insist on strict dotted-quad form,
        // because resolvers read forms like "10.1" or "010.0.0.1" (octal) in surprising ways.
        if (labels[^1].All(IsDigit))
        {
            if (labels.Length != 4 || host.EndsWith('.'))
            {
                return $"{prefix}: an IPv4 address must have exactly four dot-separated decimal parts";
            }

            foreach (string part in labels)
            {
                if (!part.All(IsDigit) || part.Length > 3 || int.Parse(part, NumberStyles.None, CultureInfo.InvariantCulture) > 255)
                {
                    return $"{prefix}: '{part}' is not a decimal number from 0 to 255";
                }

                if (part.Length > 1 && part[0] == '0')
                {
                    return $"{prefix}: '{part}' has a leading zero, which some resolvers read as octal";
                }
            }
        }

        return null;
    }

    /// <summary>
    /// Validates an IPv6 address (without brackets and zone). Returns an error sentence, or <see langword="null"/>.
    /// </summary>
    internal static string? ValidateIPv6(string address, string what)
    {
        bool charsOk = address.Length > 0 && address.Contains(':', StringComparison.Ordinal)
            && address.All(c => IsHexDigit(c) || c is ':' or '.');
        if (!charsOk
            || !IPAddress.TryParse(address, out IPAddress? parsed)
            || parsed.AddressFamily != AddressFamily.InterNetworkV6)
        {
            return $"{what} '{address}' is not a valid IPv6 address";
        }

        return null;
    }

    /// <summary>Parses a non-empty run of ASCII decimal digits into a <see cref="ulong"/>, saturating on overflow.</summary>
    internal static bool TryParseDigits(string text, out ulong value)
    {
        value = 0;
        if (text.Length == 0)
        {
            return false;
        }

        foreach (char c in text)
        {
            if (!IsDigit(c))
            {
                return false;
            }

            value = value > (ulong.MaxValue / 10) - 10 ? ulong.MaxValue : (value * 10) + (ulong)(c - '0');
        }

        return true;
    }

    private static int HexValue(char c) => c switch
    {
        >= '0' and <= '9' => c - '0',
        >= 'a' and <= 'f' => c - 'a' + 10,
        _ => c - 'A' + 10,
    };

    private static char ToHexUpper(int nibble) => (char)(nibble < 10 ? '0' + nibble : 'A' + nibble - 10);
}
