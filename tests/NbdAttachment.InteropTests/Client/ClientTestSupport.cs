using System.Buffers.Binary;
using System.Security.Cryptography;
using System.Security.Cryptography.X509Certificates;
using NbdAttachment.Client;
using NbdAttachment.InteropTests.Servers;

namespace NbdAttachment.InteropTests.Client;

/// <summary>Shared helpers for the tests that drive NbdAttachment's own <see cref="NbdClient"/> against real servers.</summary>
internal static class ClientTestSupport
{
    /// <summary>Default bound of one test body: generous for 2 slow cores, far below the suite budget.</summary>
    public static readonly TimeSpan TestTimeout = TimeSpan.FromSeconds(60);

    /// <summary>Options for a plain connection: no reconnect (a failure surfaces at once), bounded connect.</summary>
    public static NbdClientOptions Plain { get; } = new()
    {
        Reconnect = NbdReconnectPolicy.Disabled,
        ConnectTimeout = TimeSpan.FromSeconds(10),
    };

    /// <summary>Runs <paramref name="body"/> bounded by <paramref name="timeout"/> (default <see cref="TestTimeout"/>).</summary>
    public static Task Bounded(Func<Task> body, TimeSpan? timeout = null) => body().WaitAsync(timeout ?? TestTimeout);

    public static ValueTask<NbdClient> ConnectAsync(Uri uri, NbdClientOptions? options = null) =>
        NbdClient.ConnectAsync(uri, options ?? Plain);

    public static NbdUri Parse(Uri uri) => NbdUri.Parse(uri);

    /// <summary>TLS options trusting the CA in <paramref name="set"/>, optionally presenting its client certificate.</summary>
    public static NbdClientOptions Tls(CertificateSet set, bool clientCertificate = false, string? targetHost = null) => Plain with
    {
        Tls = new NbdTlsOptions
        {
            TrustedCertificateAuthorities = [set.LoadCaCertificate()],
            ClientCertificates = clientCertificate ? [LoadClientCertificate(set)] : null,
            TargetHost = targetHost,
        },
    };

    /// <summary>
    /// The client certificate with its private key, round-tripped through PKCS#12 so SslStream gets a
    /// certificate with a persisted (not ephemeral PEM-loaded) key, which works on every platform.
    /// </summary>
    public static X509Certificate2 LoadClientCertificate(CertificateSet set)
    {
        using var pem = set.LoadClientCertificate();
        return X509CertificateLoader.LoadPkcs12(pem.Export(X509ContentType.Pkcs12), null);
    }

    /// <summary>nbdkit pattern plugin: every 8-byte big-endian word at offset o holds o.</summary>
    public static void VerifyPattern(long offset, ReadOnlySpan<byte> data)
    {
        Span<byte> expected = stackalloc byte[8];
        for (var i = 0; i < data.Length; i++)
        {
            var position = offset + i;
            var word = position & ~7L;
            BinaryPrimitives.WriteInt64BigEndian(expected, word);
            var b = expected[(int)(position - word)];
            if (data[i] != b)
            {
                throw new Xunit.Sdk.XunitException($"pattern mismatch at offset {position}: got 0x{data[i]:x2}, expected 0x{b:x2}");
            }
        }
    }

    public static byte[] RandomBytes(int length, int seed)
    {
        var data = new byte[length];
        new Random(seed).NextBytes(data);
        return data;
    }

    public static void ShouldEqualBytes(this byte[] actual, ReadOnlySpan<byte> expected, string because = "")
    {
        actual.Length.Should().Be(expected.Length);
        if (!actual.AsSpan().SequenceEqual(expected))
        {
            var first = actual.AsSpan().CommonPrefixLength(expected);
            throw new Xunit.Sdk.XunitException($"data differs first at byte {first} of {actual.Length} {because}");
        }
    }

    public static byte[] Sha256(ReadOnlySpan<byte> data) => SHA256.HashData(data);

    /// <summary>Walks BLOCK_STATUS from 0 to <paramref name="length"/>, asserting extents are contiguous and cover the range.</summary>
    public static async Task<List<NbdExtent>> AllExtentsAsync(NbdClient client, long length, string context = "base:allocation")
    {
        var all = new List<NbdExtent>();
        var offset = 0L;
        var rounds = 0;
        while (offset < length)
        {
            var extents = await client.GetBlockStatusAsync(offset, length - offset, context);
            extents.Should().NotBeEmpty("the server must describe at least one extent at {0}", offset);
            foreach (var e in extents)
            {
                e.Offset.Should().Be(offset, "extents must be contiguous");
                e.Length.Should().BePositive();
                all.Add(e);
                offset += e.Length;
            }

            (++rounds).Should().BeLessThan(100_000);
        }

        offset.Should().BeGreaterThanOrEqualTo(length);
        return all;
    }
}
