using NbdAttachment.Client;

namespace NbdAttachment.Tests.Client;

public sealed class NbdUriTests
{
    private const NbdTransportKind Tcp = NbdTransportKind.Tcp;
    private const NbdTransportKind Unix = NbdTransportKind.UnixSocket;
    private const NbdTransportKind Vsock = NbdTransportKind.Vsock;

    /// <summary>What a valid URL must parse to. <c>Experimental</c> is "name=value" pairs joined by '&amp;', sorted by name.</summary>
    public sealed record Expected(
        string Scheme,
        NbdTransportKind Transport,
        bool Tls,
        string? Host,
        int Port,
        uint? Cid,
        string? Socket,
        string Export,
        string? User = null,
        string? TlsHostname = null,
        bool? Verify = null,
        string? TlsType = null,
        string? Certificates = null,
        string? PskFile = null,
        string Experimental = "");

    private static readonly Dictionary<string, Expected> ValidCases = new()
    {
        // Export names: exactly one '/' stripped, percent-decoded, never normalised.
        ["nbd://example.com/disk"] = new("nbd", Tcp, false, "example.com", 10809, null, null, "disk"),
        ["nbd://example.com/"] = new("nbd", Tcp, false, "example.com", 10809, null, null, ""),
        ["nbd://example.com"] = new("nbd", Tcp, false, "example.com", 10809, null, null, ""),
        ["nbd://example.com//disk"] = new("nbd", Tcp, false, "example.com", 10809, null, null, "/disk"),
        ["nbd://example.com/hello%20world"] = new("nbd", Tcp, false, "example.com", 10809, null, null, "hello world"),
        ["nbd://h/a/../b"] = new("nbd", Tcp, false, "h", 10809, null, null, "a/../b"),
        ["nbd://h/./name//with//..//slashes/"] = new("nbd", Tcp, false, "h", 10809, null, null, "./name//with//..//slashes/"),
        ["nbd://h/a+b"] = new("nbd", Tcp, false, "h", 10809, null, null, "a+b"),
        ["nbd://h/a%2Fb"] = new("nbd", Tcp, false, "h", 10809, null, null, "a/b"),
        ["nbd://h/%2525"] = new("nbd", Tcp, false, "h", 10809, null, null, "%25"),
        ["nbd://h/!$&'()*+,;=:@"] = new("nbd", Tcp, false, "h", 10809, null, null, "!$&'()*+,;=:@"),
        ["nbd://h/%C3%A9t%C3%A9"] = new("nbd", Tcp, false, "h", 10809, null, null, "\u00e9t\u00e9"),
        ["nbd://h/%E6%97%A5%E6%9C%AC/%e8%aa%9e"] = new("nbd", Tcp, false, "h", 10809, null, null, "\u65e5\u672c/\u8a9e"),
        ["nbd://h/%F0%9F%98%80"] = new("nbd", Tcp, false, "h", 10809, null, null, "\U0001F600"),

        // TCP authority.
        ["nbd://example.com:1234/disk"] = new("nbd", Tcp, false, "example.com", 1234, null, null, "disk"),
        ["nbd://h:00080/"] = new("nbd", Tcp, false, "h", 80, null, null, ""),
        ["nbd://h:65535/"] = new("nbd", Tcp, false, "h", 65535, null, null, ""),
        ["nbd://:1234/"] = new("nbd", Tcp, false, "localhost", 1234, null, null, ""),
        ["nbd:///"] = new("nbd", Tcp, false, "localhost", 10809, null, null, ""),
        ["nbd://"] = new("nbd", Tcp, false, "localhost", 10809, null, null, ""),
        ["nbds://example.com/disk"] = new("nbds", Tcp, true, "example.com", 10809, null, null, "disk"),
        ["NBD://Example.COM/Disk"] = new("nbd", Tcp, false, "Example.COM", 10809, null, null, "Disk"),
        ["nbd://192.0.2.1:10810/x"] = new("nbd", Tcp, false, "192.0.2.1", 10810, null, null, "x"),
        ["nbd://[::1]:10809/x"] = new("nbd", Tcp, false, "::1", 10809, null, null, "x"),
        ["nbd://[fe80::1%25eth0]/"] = new("nbd", Tcp, false, "fe80::1%eth0", 10809, null, null, ""),
        ["nbd://[2001:DB8::1]:99/e"] = new("nbd", Tcp, false, "2001:DB8::1", 99, null, null, "e"),
        ["nbd://[::ffff:192.0.2.1]/e"] = new("nbd", Tcp, false, "::ffff:192.0.2.1", 10809, null, null, "e"),
        ["nbd://my_vm.local/"] = new("nbd", Tcp, false, "my_vm.local", 10809, null, null, ""),
        ["nbd://host.example.com./"] = new("nbd", Tcp, false, "host.example.com.", 10809, null, null, ""),
        ["nbd://alice@example.com/disk"] = new("nbd", Tcp, false, "example.com", 10809, null, null, "disk", User: "alice"),
        ["nbds://al%40ice@[::1]:1/"] = new("nbds", Tcp, true, "::1", 1, null, null, "", User: "al@ice"),

        // Unix sockets.
        ["nbd+unix:///disk?socket=sock"] = new("nbd+unix", Unix, false, null, 0, null, "sock", "disk"),
        ["nbd+unix:///?socket=/run/nbd.sock"] = new("nbd+unix", Unix, false, null, 0, null, "/run/nbd.sock", ""),
        ["nbd+unix://?socket=/tmp/s"] = new("nbd+unix", Unix, false, null, 0, null, "/tmp/s", ""),
        ["nbd+unix:///?socket=%00/abstract"] = new("nbd+unix", Unix, false, null, 0, null, "\0/abstract", ""),
        ["nbd+unix:///e?socket=/tmp/my%20dir/s.sock"] = new("nbd+unix", Unix, false, null, 0, null, "/tmp/my dir/s.sock", "e"),
        ["nbds+unix:///e?socket=/s&tls-type=psk&tls-psk-file=/k"] =
            new("nbds+unix", Unix, true, null, 0, null, "/s", "e", TlsType: "psk", PskFile: "/k"),
        ["NbDs+UnIx:///x?SOCKET=/s"] = new("nbds+unix", Unix, true, null, 0, null, "/s", "x"),
        ["nbd+unix:///e?socket=/s;tls-hostname=example.org"] =
            new("nbd+unix", Unix, false, null, 0, null, "/s", "e", TlsHostname: "example.org"),

        // Vsock.
        ["nbd+vsock:///"] = new("nbd+vsock", Vsock, false, "2", 10809, 2u, null, ""),
        ["nbd+vsock://2:10809/export"] = new("nbd+vsock", Vsock, false, "2", 10809, 2u, null, "export"),
        ["nbds+vsock://3:5000/e"] = new("nbds+vsock", Vsock, true, "3", 5000, 3u, null, "e"),
        ["nbd+vsock://4294967294:65535/"] = new("nbd+vsock", Vsock, false, "4294967294", 65535, 4294967294u, null, ""),
        ["nbds+vsock://bob@/"] = new("nbds+vsock", Vsock, true, "2", 10809, 2u, null, "", User: "bob"),

        // TLS parameters (also allowed on non-TLS schemes: opportunistic TLS configuration).
        ["nbds://h/e?tls-type=x509&tls-certificates=/etc/pki/nbd"] =
            new("nbds", Tcp, true, "h", 10809, null, null, "e", TlsType: "x509", Certificates: "/etc/pki/nbd"),
        ["nbds://h/e?tls-type=PSK&tls-psk-file=/k.psk"] =
            new("nbds", Tcp, true, "h", 10809, null, null, "e", TlsType: "psk", PskFile: "/k.psk"),
        ["nbd://h/e?tls-verify-peer=false&TLS-Hostname=server.example.com"] =
            new("nbd", Tcp, false, "h", 10809, null, null, "e", TlsHostname: "server.example.com", Verify: false),
        ["nbds://h/?tls-verify-peer=YES"] = new("nbds", Tcp, true, "h", 10809, null, null, "", Verify: true),
        ["nbds://h/?tls-verify-peer=0"] = new("nbds", Tcp, true, "h", 10809, null, null, "", Verify: false),
        ["nbd://h/?tls-verify-peer=On"] = new("nbd", Tcp, false, "h", 10809, null, null, "", Verify: true),
        ["nbd://h/?tls-verify-peer=n"] = new("nbd", Tcp, false, "h", 10809, null, null, "", Verify: false),
        ["nbd://h/?tls-type=anon"] = new("nbd", Tcp, false, "h", 10809, null, null, "", TlsType: "anon"),
        ["nbds://h/?tls-certificates=/d%20ir"] = new("nbds", Tcp, true, "h", 10809, null, null, "", Certificates: "/d ir"),

        // Query syntax and experimental parameters.
        ["nbd://h/?"] = new("nbd", Tcp, false, "h", 10809, null, null, ""),
        ["nbd://h/?x-foo=1&x-Bar=two%20words"] =
            new("nbd", Tcp, false, "h", 10809, null, null, "", Experimental: "x-Bar=two words&x-foo=1"),
        ["nbd://h/?x-flag"] = new("nbd", Tcp, false, "h", 10809, null, null, "", Experimental: "x-flag="),
        ["nbd://h/e?&&x-a=1&"] = new("nbd", Tcp, false, "h", 10809, null, null, "e", Experimental: "x-a=1"),
        ["nbd://h/?x-a=1;2&x-b=a+b"] = new("nbd", Tcp, false, "h", 10809, null, null, "", Experimental: "x-a=1;2&x-b=a+b"),
        ["nbd://h/?x-a=1;x-b=2"] = new("nbd", Tcp, false, "h", 10809, null, null, "", Experimental: "x-a=1&x-b=2"),
        ["nbd://h/?x-path=/a?b=c"] = new("nbd", Tcp, false, "h", 10809, null, null, "", Experimental: "x-path=/a?b=c"),
    };

    public static TheoryData<string> ValidUris => [.. ValidCases.Keys];

    public static TheoryData<string, string> InvalidUris => new()
    {
        // Overall shape.
        { "", "empty" },
        { "disk", "no scheme" },
        { "/tmp/sock", "nbd+unix:///?socket=/tmp/sock" },
        { "//host/disk", "no scheme" },
        { ":disk", "empty scheme" },
        { "1nbd://h/", "not a valid URI scheme" },
        { "http://h/", "unsupported scheme 'http'" },
        { "nbd+ssh://h/", "unsupported scheme 'nbd+ssh'; the supported schemes are nbd, nbds, nbd+unix" },
        { "nbd+tcp://h/", "unsupported scheme 'nbd+tcp'" },
        { "localhost:10809", "write nbd://localhost:10809/" },
        { "nbd:disk", "must be followed by '//'" },
        { "nbd:/disk", "must be followed by '//'" },
        { "nbd://h/disk#frag", "fragment" },
        { " nbd://h/", "a space at position 0" },
        { "nbd://h/dis k", "a space" },
        { "nbd://h/a\tb", "control character U+0009 at position 9; percent-encode it as %09" },
        { "nbd://h/d\u00e9", "non-ASCII character" },

        // Export name.
        { "nbd://h/a%2", "invalid percent-encoding '%2'" },
        { "nbd://h/a%zz", "invalid percent-encoding '%zz'" },
        { "nbd://h/%C3", "export name (URL path) is not valid UTF-8" },
        { "nbd://h/%FF%FE", "not valid UTF-8" },
        { "nbd://h/%ED%A0%80", "not valid UTF-8" },
        { "nbd://h/a%00b", "export name contains a NUL" },
        { "nbd://h/a<b", "'<' (U+003C), which must be percent-encoded" },
        { "nbd://h/a[1]", "'[' (U+005B)" },
        { "nbd://h/a\"b", "'\"' (U+0022)" },

        // TCP authority.
        { "nbd://h:0/", "port '0' is out of range" },
        { "nbd://h:65536/", "port '65536' is out of range" },
        { "nbd://h:99999999999999999999999/", "out of range" },
        { "nbd://h:abc/", "port 'abc' is not a decimal number" },
        { "nbd://h:-1/", "not a decimal number" },
        { "nbd://h:/", "port after ':' is empty" },
        { "nbd://::1/", "must be enclosed in brackets" },
        { "nbd://[::1/", "has no closing ']'" },
        { "nbd://[::1]x/", "unexpected text 'x'" },
        { "nbd://[zz::1]/", "'zz::1' is not a valid IPv6 address" },
        { "nbd://[192.0.2.1]/", "not a valid IPv6 address" },
        { "nbd://[fe80::1%eth0]/", "must be introduced by '%25'" },
        { "nbd://[fe80::1%25]/", "zone identifier in the IPv6 literal '[fe80::1%25]' is empty" },
        { "nbd://[v1.fe]/", "IPvFuture" },
        { "nbd://h]/", "outside an IPv6 literal" },
        { "nbd://ex*ample/", "host 'ex*ample' is not a valid host name" },
        { "nbd://h%41/", "'%' (U+0025) is not allowed" },
        { "nbd://-bad.example/", "starts or ends with '-'" },
        { "nbd://a..b/", "empty label" },
        { "nbd://256.1.1.1/", "'256' is not a decimal number from 0 to 255" },
        { "nbd://10.1/", "exactly four" },
        { "nbd://010.0.0.1/", "leading zero" },
        { "nbd://a@b@h/", "more than one '@'" },
        { "nbd://@h/", "before '@' is empty" },
        { "nbd://user:pw@h/", "passwords" },
        { "nbd://us%ZZer@h/", "invalid percent-encoding '%ZZ'" },

        // Unix sockets.
        { "nbd+unix:///disk", "an nbd+unix URL requires the socket= query parameter" },
        { "nbds+unix:///disk?tls-type=psk", "an nbds+unix URL requires the socket=" },
        { "nbd+unix:///disk?socket=", "socket= parameter is empty" },
        { "nbd+unix://host/disk?socket=/s", "must not name a host ('host')" },
        { "nbd+unix://:1234/?socket=/s", "must not have a port" },
        { "nbd+unix://[::1]/?socket=/s", "must not name a host ('[::1]')" },
        { "nbds+unix://alice@/e?socket=/s", "cannot carry a user name ('alice@')" },
        { "nbd+unix:///?socket=%00", "abstract socket name after the leading NUL is empty" },
        { "nbd+unix:///?socket=/a%00b", "NUL character after its start" },
        { "nbd+unix:///?socket=/a&socket=/b", "'socket' appears more than once" },
        { "nbd://h/?socket=/s", "only allowed with nbd+unix and nbds+unix URLs, not with nbd" },
        { "nbds+vsock:///?socket=/s", "not with nbds+vsock" },

        // Vsock.
        { "nbd+vsock://host/", "vsock host 'host' is not a numeric CID" },
        { "nbd+vsock://-1/", "not a numeric CID" },
        { "nbd+vsock://4294967295/", "CID '4294967295' is out of range" },
        { "nbd+vsock://[::1]/", "numeric CID, not an IPv6 literal" },
        { "nbd+vsock://2:0/", "out of range" },
        { "nbd+vsock://3:70000/", "port '70000' is out of range (1 to 65535)" },

        // Query parameters.
        { "nbd://h/?foo=bar", "unknown query parameter 'foo'" },
        { "nbd://h/?tls-username=bob", "unknown query parameter 'tls-username'" },
        { "nbd://h/?x-=1", "unknown query parameter 'x-'" },
        { "nbd://h/?x-a=1&X-A=2", "'X-A' appears more than once" },
        { "nbd://h/?tls-type=x509&TLS-TYPE=x509", "appears more than once" },
        { "nbd://h/?=v", "empty name ('=v')" },
        { "nbd://h/?tls-type=dtls", "tls-type 'dtls' is not valid" },
        { "nbd://h/?tls-type=", "tls-type '' is not valid" },
        { "nbd://h/?tls-verify-peer=maybe", "tls-verify-peer 'maybe' is not a boolean" },
        { "nbd://h/?tls-verify-peer", "not a boolean" },
        { "nbd://h/?tls-hostname=bad_name", "tls-hostname 'bad_name' is not a valid host name" },
        { "nbd://h/?tls-hostname=[::1]", "must be percent-encoded" },
        { "nbd://h/?tls-hostname=", "tls-hostname is empty" },
        { "nbd://h/?tls-certificates=", "tls-certificates is empty" },
        { "nbd://h/?tls-psk-file=", "tls-psk-file is empty" },
        { "nbds://h/?tls-type=psk&tls-certificates=/d", "tls-certificates is an X.509 setting" },
        { "nbds://h/?tls-type=anon&tls-psk-file=/k", "tls-psk-file is a PSK setting" },
        { "nbds://h/?tls-certificates=/d&tls-psk-file=/k", "both tls-certificates" },
        { "nbd://h/?x-a=%00", "contains a NUL character" },
        { "nbd://h/?x-a=%G1", "invalid percent-encoding '%G1'" },
        { "nbd://h/?x-a=[1]", "'[' (U+005B), which must be percent-encoded" },
        { "nbd://h/?x-a=%FF", "not valid UTF-8" },
    };

    [Theory]
    [MemberData(nameof(ValidUris))]
    public void Parse_ValidUri_YieldsExpectedComponents(string text)
    {
        Expected expected = ValidCases[text];

        NbdUri uri = NbdUri.Parse(text);

        uri.OriginalString.Should().Be(text);
        uri.Scheme.Should().Be(expected.Scheme);
        uri.Transport.Should().Be(expected.Transport);
        uri.RequiresTls.Should().Be(expected.Tls);
        uri.Host.Should().Be(expected.Host);
        uri.Port.Should().Be(expected.Port);
        uri.VsockCid.Should().Be(expected.Cid);
        uri.SocketPath.Should().Be(expected.Socket);
        uri.ExportName.Should().Be(expected.Export);
        uri.TlsUsername.Should().Be(expected.User);
        uri.TlsHostname.Should().Be(expected.TlsHostname);
        uri.TlsVerifyPeer.Should().Be(expected.Verify);
        uri.TlsType.Should().Be(expected.TlsType);
        uri.TlsCertificates.Should().Be(expected.Certificates);
        uri.TlsPskFile.Should().Be(expected.PskFile);
        string.Join('&', uri.ExperimentalParameters.OrderBy(p => p.Key, StringComparer.Ordinal).Select(p => $"{p.Key}={p.Value}"))
            .Should().Be(expected.Experimental);
    }

    [Theory]
    [MemberData(nameof(ValidUris))]
    public void TryParse_ValidUri_Succeeds(string text)
    {
        NbdUri.TryParse(text, out NbdUri? uri, out string? error).Should().BeTrue();
        error.Should().BeNull();
        uri.Should().Be(NbdUri.Parse(text));
    }

    [Theory]
    [MemberData(nameof(ValidUris))]
    public void ToString_RoundTripsThroughParse(string text)
    {
        NbdUri uri = NbdUri.Parse(text);
        string canonical = uri.ToString();

        NbdUri reparsed = NbdUri.Parse(canonical);

        reparsed.Should().Be(uri);
        reparsed.GetHashCode().Should().Be(uri.GetHashCode());
        reparsed.ToString().Should().Be(canonical, "the canonical form is a fixed point");
        (reparsed == uri).Should().BeTrue();
    }

    [Theory]
    [MemberData(nameof(ValidUris))]
    public void ToUri_IsAcceptedBySystemUriAndParsesBack(string text)
    {
        NbdUri uri = NbdUri.Parse(text);

        Uri systemUri = uri.ToUri();

        systemUri.IsAbsoluteUri.Should().BeTrue();
        systemUri.OriginalString.Should().Be(uri.ToString());
        NbdUri.Parse(systemUri).Should().Be(uri);
    }

    [Theory]
    [MemberData(nameof(InvalidUris))]
    public void Parse_InvalidUri_ThrowsWithReason(string text, string reasonFragment)
    {
        Action act = () => NbdUri.Parse(text);

        NbdUriFormatException ex = act.Should().Throw<NbdUriFormatException>().Which;
        ex.Reason.Should().Contain(reasonFragment);
        ex.UriText.Should().Be(text);
        ex.Message.Should().Contain(ex.Reason);
    }

    [Theory]
    [MemberData(nameof(InvalidUris))]
    public void TryParse_InvalidUri_ReturnsFalseWithError(string text, string reasonFragment)
    {
        NbdUri.TryParse(text, out NbdUri? uri, out string? error).Should().BeFalse();
        uri.Should().BeNull();
        error.Should().Contain(reasonFragment);
    }

    [Theory]
    [InlineData("NBD://Example.COM:10809/hello%20world", "nbd://Example.COM/hello%20world")]
    [InlineData("nbd://[fe80::1%25eth0]/", "nbd://[fe80::1%25eth0]/")]
    [InlineData("nbd://[::1]:10809/x", "nbd://[::1]/x")]
    [InlineData("nbd+unix:///?socket=%00/abstract", "nbd+unix:///?socket=%00/abstract")]
    [InlineData("nbd+vsock:///", "nbd+vsock://2/")]
    [InlineData("nbd://", "nbd://localhost/")]
    [InlineData("nbd+unix:///e?tls-verify-peer=0;socket=/s", "nbd+unix:///e?socket=/s&tls-verify-peer=false")]
    [InlineData("nbd://h/a+b?x-q=a+b", "nbd://h/a+b?x-q=a%2Bb")]
    [InlineData("nbd://h/%41%2f", "nbd://h/A/")]
    [InlineData("nbd://h//disk", "nbd://h//disk")]
    [InlineData("nbd://h/%C3%a9", "nbd://h/%C3%A9")]
    [InlineData("nbds://al%40ice@h:1/?x-b=2&x-a=1&tls-type=x509", "nbds://al%40ice@h:1/?tls-type=x509&x-a=1&x-b=2")]
    public void ToString_IsCanonical(string text, string canonical)
    {
        NbdUri.Parse(text).ToString().Should().Be(canonical);
    }

    [Fact]
    public void Parse_SystemUri_UsesOriginalStringWithoutNormalisation()
    {
        var dotSegments = new Uri("nbd://h/a/../b");
        var doubleSlash = new Uri("nbd://h//disk");
        var escaped = new Uri("nbd://h/hello%20world");

        NbdUri.Parse(dotSegments).ExportName.Should().Be("a/../b");
        NbdUri.Parse(doubleSlash).ExportName.Should().Be("/disk");
        NbdUri.Parse(escaped).ExportName.Should().Be("hello world");
    }

    [Fact]
    public void Parse_RelativeSystemUri_IsRejected()
    {
        var relative = new Uri("disk/export", UriKind.Relative);

        Action act = () => NbdUri.Parse(relative);

        act.Should().Throw<NbdUriFormatException>().Which.Reason.Should().Contain("no scheme");
        NbdUri.TryParse(relative, out _, out string? error).Should().BeFalse();
        error.Should().Contain("relative");
    }

    [Fact]
    public void Parse_Null_ThrowsArgumentNullException()
    {
        FluentActions.Invoking(() => NbdUri.Parse((string)null!)).Should().Throw<ArgumentNullException>();
        FluentActions.Invoking(() => NbdUri.Parse((Uri)null!)).Should().Throw<ArgumentNullException>();
    }

    [Fact]
    public void TryParse_Null_ReturnsFalseWithError()
    {
        NbdUri.TryParse((string?)null, out NbdUri? fromString, out string? stringError).Should().BeFalse();
        fromString.Should().BeNull();
        stringError.Should().Contain("null");

        NbdUri.TryParse((Uri?)null, out NbdUri? fromUri, out string? uriError).Should().BeFalse();
        fromUri.Should().BeNull();
        uriError.Should().Contain("null");
    }

    [Fact]
    public void ExportName_AtTheLimit_IsAccepted_AndOneByteMore_IsRejected()
    {
        string atLimit = new('a', NbdUri.MaxExportNameBytes);

        NbdUri.Parse("nbd://h/" + atLimit).ExportName.Should().Be(atLimit);

        Action tooLong = () => NbdUri.Parse("nbd://h/" + atLimit + "a");
        tooLong.Should().Throw<NbdUriFormatException>().Which.Reason.Should().Contain("4097 bytes").And.Contain("4096");
    }

    [Fact]
    public void ExportName_Limit_CountsUtf8BytesNotCharacters()
    {
        // 2048 x U+00E9 is 2048 characters but 4096 UTF-8 bytes.
        string encodedAtLimit = string.Concat(Enumerable.Repeat("%C3%A9", 2048));

        NbdUri.Parse("nbd://h/" + encodedAtLimit).ExportName.Should().Be(new string('\u00e9', 2048));

        Action tooLong = () => NbdUri.Parse("nbd://h/" + encodedAtLimit + "x");
        tooLong.Should().Throw<NbdUriFormatException>().Which.Reason.Should().Contain("4097 bytes");

        // A 4-byte character: 1024 of them is exactly the limit.
        string emoji = string.Concat(Enumerable.Repeat("%F0%9F%98%80", 1024));
        NbdUri.Parse("nbd://h/" + emoji).ExportName.Length.Should().Be(2048);
    }

    [Fact]
    public void ExportName_Multibyte_RoundTripsAsPercentEncodedUtf8()
    {
        NbdUri uri = NbdUri.ForTcp("h", exportName: "\u65e5\u672c\u8a9e \U0001F600");

        uri.ToString().Should().Be("nbd://h/%E6%97%A5%E6%9C%AC%E8%AA%9E%20%F0%9F%98%80");
        NbdUri.Parse(uri.ToString()).ExportName.Should().Be("\u65e5\u672c\u8a9e \U0001F600");
    }

    [Fact]
    public void AbstractSocket_KeepsLeadingNul()
    {
        NbdUri uri = NbdUri.Parse("nbd+unix:///?socket=%00/abstract");

        uri.SocketPath.Should().Be("\0/abstract");
        uri.SocketPath![0].Should().Be('\0');
        uri.Host.Should().BeNull();
        uri.Port.Should().Be(0);
    }

    [Fact]
    public void ExperimentalParameters_AreLookedUpCaseInsensitively()
    {
        NbdUri uri = NbdUri.Parse("nbd://h/?X-Trace=on");

        uri.ExperimentalParameters.Should().ContainKey("x-trace");
        uri.ExperimentalParameters["x-trace"].Should().Be("on");
        uri.ExperimentalParameters.Keys.Should().Equal("X-Trace");
    }

    [Fact]
    public void Equality_ComparesComponents_NotText()
    {
        NbdUri a = NbdUri.Parse("NBD://EXAMPLE.com:10809/disk");
        NbdUri b = NbdUri.Parse("nbd://example.COM/disk");
        NbdUri c = NbdUri.Parse("nbd://example.com/Disk");

        a.Should().Be(b);
        a.GetHashCode().Should().Be(b.GetHashCode());
        (a == b).Should().BeTrue();
        (a != c).Should().BeTrue();
        a.Equals((object?)null).Should().BeFalse();
        NbdUri.Parse("nbd://h/?x-a=1").Should().NotBe(NbdUri.Parse("nbd://h/?x-a=2"));
        NbdUri.Parse("nbd://h/").Should().NotBe(NbdUri.Parse("nbds://h/"));
    }

    [Fact]
    public void ForTcp_BuildsCanonicalUri()
    {
        NbdUri plain = NbdUri.ForTcp("example.com");
        plain.ToString().Should().Be("nbd://example.com/");
        plain.OriginalString.Should().Be("nbd://example.com/");
        plain.Port.Should().Be(NbdUri.DefaultPort);
        plain.RequiresTls.Should().BeFalse();
        plain.Should().Be(NbdUri.Parse("nbd://example.com"));

        NbdUri secure = NbdUri.ForTcp("example.com", 1234, "a b/c", requireTls: true);
        secure.ToString().Should().Be("nbds://example.com:1234/a%20b/c");
        secure.Should().Be(NbdUri.Parse("nbds://example.com:1234/a%20b/c"));
        secure.Transport.Should().Be(NbdTransportKind.Tcp);
    }

    [Theory]
    [InlineData("::1", "nbd://[::1]/x")]
    [InlineData("[::1]", "nbd://[::1]/x")]
    [InlineData("fe80::1%eth0", "nbd://[fe80::1%25eth0]/x")]
    [InlineData("192.0.2.7", "nbd://192.0.2.7/x")]
    public void ForTcp_BracketsIPv6Hosts(string host, string expected)
    {
        NbdUri uri = NbdUri.ForTcp(host, exportName: "x");

        uri.ToString().Should().Be(expected);
        uri.Host.Should().Be(host.Trim('[', ']'));
        NbdUri.Parse(expected).Should().Be(uri);
    }

    [Fact]
    public void ForTcp_RejectsInvalidArguments()
    {
        FluentActions.Invoking(() => NbdUri.ForTcp(null!)).Should().Throw<ArgumentNullException>();
        FluentActions.Invoking(() => NbdUri.ForTcp("")).Should().Throw<ArgumentException>();
        FluentActions.Invoking(() => NbdUri.ForTcp("h", 0)).Should().Throw<ArgumentOutOfRangeException>();
        FluentActions.Invoking(() => NbdUri.ForTcp("h", 65536)).Should().Throw<ArgumentOutOfRangeException>();
        FluentActions.Invoking(() => NbdUri.ForTcp("bad host")).Should().Throw<ArgumentException>().Which.ParamName.Should().Be("host");
        FluentActions.Invoking(() => NbdUri.ForTcp("zz::1")).Should().Throw<ArgumentException>().Which.ParamName.Should().Be("host");
        FluentActions.Invoking(() => NbdUri.ForTcp("h", exportName: null!)).Should().Throw<ArgumentNullException>();
        FluentActions.Invoking(() => NbdUri.ForTcp("h", exportName: "a\0b")).Should().Throw<ArgumentException>().Which.ParamName.Should().Be("exportName");
        FluentActions.Invoking(() => NbdUri.ForTcp("h", exportName: new string('x', 4097))).Should().Throw<ArgumentException>().WithMessage("*4096*");
        FluentActions.Invoking(() => NbdUri.ForTcp("h", exportName: "\ud800")).Should().Throw<ArgumentException>().WithMessage("*surrogate*");
    }

    [Fact]
    public void ForUnixSocket_BuildsCanonicalUri()
    {
        NbdUri uri = NbdUri.ForUnixSocket("/run/nbd.sock", "disk");

        uri.ToString().Should().Be("nbd+unix:///disk?socket=/run/nbd.sock");
        uri.Transport.Should().Be(NbdTransportKind.UnixSocket);
        uri.SocketPath.Should().Be("/run/nbd.sock");
        uri.Host.Should().BeNull();
        uri.Port.Should().Be(0);
        uri.Should().Be(NbdUri.Parse("nbd+unix:///disk?socket=/run/nbd.sock"));

        NbdUri secure = NbdUri.ForUnixSocket("/tmp/a&b=c d", requireTls: true);
        secure.ToString().Should().Be("nbds+unix:///?socket=/tmp/a%26b%3Dc%20d");
        NbdUri.Parse(secure.ToString()).SocketPath.Should().Be("/tmp/a&b=c d");

        NbdUri abstractSocket = NbdUri.ForUnixSocket("\0/abstract");
        abstractSocket.ToString().Should().Be("nbd+unix:///?socket=%00/abstract");
        abstractSocket.Should().Be(NbdUri.Parse("nbd+unix:///?socket=%00/abstract"));
    }

    [Fact]
    public void ForUnixSocket_RejectsInvalidArguments()
    {
        FluentActions.Invoking(() => NbdUri.ForUnixSocket(null!)).Should().Throw<ArgumentNullException>();
        FluentActions.Invoking(() => NbdUri.ForUnixSocket("")).Should().Throw<ArgumentException>();
        FluentActions.Invoking(() => NbdUri.ForUnixSocket("\0")).Should().Throw<ArgumentException>().Which.ParamName.Should().Be("socketPath");
        FluentActions.Invoking(() => NbdUri.ForUnixSocket("/a\0b")).Should().Throw<ArgumentException>().Which.ParamName.Should().Be("socketPath");
        FluentActions.Invoking(() => NbdUri.ForUnixSocket("/s", "a\0")).Should().Throw<ArgumentException>().Which.ParamName.Should().Be("exportName");
    }

    [Fact]
    public void TableSizes_MeetTheMinimum()
    {
        ValidCases.Count.Should().BeGreaterThanOrEqualTo(30);
        InvalidUris.Count.Should().BeGreaterThanOrEqualTo(30);
    }
}
