using System.Globalization;
using System.Security.Cryptography.X509Certificates;

namespace NbdAttachment.InteropTests.Servers;

/// <summary>Which program generates the test certificates.</summary>
public enum CertificateTool
{
    /// <summary>certtool (GnuTLS, like the servers) if present, else openssl.</summary>
    Auto,
    Certtool,
    Openssl,
}

/// <summary>
/// One directory in the layout nbdkit (--tls-certificates), qemu (tls-creds-x509 dir=) and
/// libnbd (tls-certificates=) all expect: ca-cert.pem, server-cert.pem, server-key.pem,
/// client-cert.pem, client-key.pem (plus ca-key.pem, which no server reads).
/// </summary>
public sealed record CertificateSet(string Directory)
{
    public string CaCertificatePath => Path.Combine(Directory, "ca-cert.pem");

    public string CaKeyPath => Path.Combine(Directory, "ca-key.pem");

    public string ServerCertificatePath => Path.Combine(Directory, "server-cert.pem");

    public string ServerKeyPath => Path.Combine(Directory, "server-key.pem");

    public string ClientCertificatePath => Path.Combine(Directory, "client-cert.pem");

    public string ClientKeyPath => Path.Combine(Directory, "client-key.pem");

    public X509Certificate2 LoadCaCertificate() => X509CertificateLoader.LoadCertificateFromFile(CaCertificatePath);

    public X509Certificate2 LoadServerCertificate() => X509Certificate2.CreateFromPemFile(ServerCertificatePath, ServerKeyPath);

    /// <summary>Client certificate with its private key (for SslClientAuthenticationOptions.ClientCertificates).</summary>
    public X509Certificate2 LoadClientCertificate() => X509Certificate2.CreateFromPemFile(ClientCertificatePath, ClientKeyPath);
}

/// <summary>
/// Test PKI generated at test time (never checked in), valid for two days; RSA 2048 keys with
/// certtool, ECDSA P-256 keys with openssl:
/// <list type="bullet">
/// <item><see cref="Trusted"/>: CA, server cert (CN=localhost, SAN localhost/127.0.0.1/::1), client cert.</item>
/// <item><see cref="Unrelated"/>: a second, unrelated CA with its own server and client certs.</item>
/// <item><see cref="WrongHost"/>: trusted CA, server cert only for "wrong-host.invalid" (+ the trusted client cert).</item>
/// <item><see cref="CaOnlyDirectory"/>: only the trusted ca-cert.pem (a libnbd client without a client cert).</item>
/// <item><see cref="Expired"/>: trusted CA, expired server cert (certtool only; null with openssl).</item>
/// </list>
/// </summary>
public sealed class TestCertificateAuthority : IDisposable
{
    private static readonly TimeSpan ToolTimeout = TimeSpan.FromSeconds(30);
    private readonly TempDirectory _temp;
    private readonly string _tool;
    private readonly bool _certtool;

    private TestCertificateAuthority(TempDirectory temp, string tool, bool certtool)
    {
        _temp = temp;
        _tool = tool;
        _certtool = certtool;
        Trusted = new CertificateSet(Dir("trusted"));
        Unrelated = new CertificateSet(Dir("unrelated"));
        WrongHost = new CertificateSet(Dir("wrong-host"));
        CaOnlyDirectory = Dir("ca-only");
    }

    public CertificateSet Trusted { get; }

    public CertificateSet Unrelated { get; }

    public CertificateSet WrongHost { get; }

    public CertificateSet? Expired { get; private set; }

    public string CaOnlyDirectory { get; }

    /// <summary>The trusted directory (what servers and clients normally get).</summary>
    public string Directory => Trusted.Directory;

    public string RootDirectory => _temp.Path;

    /// <summary>"certtool" or "openssl".</summary>
    public string ToolName => _certtool ? "certtool" : "openssl";

    /// <summary>Generates everything (a few hundred ms); skips the test if neither tool is installed.</summary>
    public static async Task<TestCertificateAuthority> CreateAsync(
        CertificateTool tool = CertificateTool.Auto, CancellationToken cancellationToken = default)
    {
        string path;
        bool certtool;
        switch (tool)
        {
            case CertificateTool.Certtool:
                path = ServerBinaries.RequireOrSkip(ServerBinaries.Certtool);
                certtool = true;
                break;
            case CertificateTool.Openssl:
                path = ServerBinaries.RequireOrSkip(ServerBinaries.Openssl);
                certtool = false;
                break;
            default:
                path = ServerBinaries.RequireAnyOrSkip(ServerBinaries.Certtool, ServerBinaries.Openssl);
                certtool = Path.GetFileName(path) == ServerBinaries.Certtool;
                break;
        }

        var ca = new TestCertificateAuthority(new TempDirectory("nbd-pki-"), path, certtool);
        try
        {
            await ca.GenerateAsync(cancellationToken).ConfigureAwait(false);
            return ca;
        }
        catch
        {
            ca.Dispose();
            throw;
        }
    }

    private string Dir(string name) => System.IO.Directory.CreateDirectory(_temp.Combine(name)).FullName;

    private async Task GenerateAsync(CancellationToken ct)
    {
        var t = Trusted;
        await CaAsync(t, "NbdAttachment Test CA", ct).ConfigureAwait(false);
        await LeafAsync(t, t.ServerCertificatePath, t.ServerKeyPath, "localhost", server: true, ["localhost"], ["127.0.0.1", "::1"], expired: false, ct).ConfigureAwait(false);
        await LeafAsync(t, t.ClientCertificatePath, t.ClientKeyPath, "nbd-test-client", server: false, [], [], expired: false, ct).ConfigureAwait(false);

        var u = Unrelated;
        await CaAsync(u, "Unrelated Test CA", ct).ConfigureAwait(false);
        await LeafAsync(u, u.ServerCertificatePath, u.ServerKeyPath, "localhost", server: true, ["localhost"], ["127.0.0.1", "::1"], expired: false, ct).ConfigureAwait(false);
        await LeafAsync(u, u.ClientCertificatePath, u.ClientKeyPath, "nbd-test-client", server: false, [], [], expired: false, ct).ConfigureAwait(false);

        var w = WrongHost;
        CopyTrusted(w.Directory, "ca-cert.pem", "client-cert.pem", "client-key.pem");
        await LeafAsync(t, w.ServerCertificatePath, w.ServerKeyPath, "wrong-host.invalid", server: true, ["wrong-host.invalid"], [], expired: false, ct).ConfigureAwait(false);

        CopyTrusted(CaOnlyDirectory, "ca-cert.pem");

        if (_certtool)
        {
            var e = new CertificateSet(Dir("expired"));
            CopyTrusted(e.Directory, "ca-cert.pem", "client-cert.pem", "client-key.pem");
            await LeafAsync(t, e.ServerCertificatePath, e.ServerKeyPath, "localhost", server: true, ["localhost"], ["127.0.0.1", "::1"], expired: true, ct).ConfigureAwait(false);
            Expired = e;
        }

        foreach (var file in System.IO.Directory.EnumerateFiles(_temp.Path, "*.tmpl", SearchOption.AllDirectories)
                     .Concat(System.IO.Directory.EnumerateFiles(_temp.Path, "*.csr", SearchOption.AllDirectories))
                     .Concat(System.IO.Directory.EnumerateFiles(_temp.Path, "*.ext", SearchOption.AllDirectories)))
        {
            File.Delete(file);
        }
    }

    private void CopyTrusted(string directory, params string[] files)
    {
        foreach (var f in files)
        {
            File.Copy(Path.Combine(Trusted.Directory, f), Path.Combine(directory, f), overwrite: true);
        }
    }

    private async Task CaAsync(CertificateSet set, string commonName, CancellationToken ct)
    {
        if (_certtool)
        {
            await KeyAsync(set.CaKeyPath, ct).ConfigureAwait(false);
            var template = Template(set.Directory, "ca",
                $"cn = \"{commonName}\"", "ca", "cert_signing_key", "crl_signing_key", "expiration_days = 2");
            await RunAsync(["--generate-self-signed", "--no-text", "--load-privkey", set.CaKeyPath,
                "--template", template, "--outfile", set.CaCertificatePath], ct).ConfigureAwait(false);
        }
        else
        {
            await RunAsync(["req", "-x509", "-new", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1", "-nodes",
                "-keyout", set.CaKeyPath, "-out", set.CaCertificatePath, "-days", "2", "-subj", $"/CN={commonName}",
                "-addext", "basicConstraints=critical,CA:TRUE",
                "-addext", "keyUsage=critical,keyCertSign,cRLSign"], ct).ConfigureAwait(false);
        }
    }

    private async Task LeafAsync(
        CertificateSet issuer, string certPath, string keyPath, string commonName, bool server,
        string[] dnsNames, string[] ipAddresses, bool expired, CancellationToken ct)
    {
        var name = Path.GetFileNameWithoutExtension(certPath);
        var dir = Path.GetDirectoryName(certPath)!;
        if (_certtool)
        {
            await KeyAsync(keyPath, ct).ConfigureAwait(false);
            var lines = new List<string> { "organization = \"NbdAttachment tests\"", $"cn = \"{commonName}\"" };
            lines.AddRange(dnsNames.Select(d => $"dns_name = \"{d}\""));
            lines.AddRange(ipAddresses.Select(ip => $"ip_address = \"{ip}\""));
            lines.Add(server ? "tls_www_server" : "tls_www_client");
            lines.Add("signing_key");
            lines.Add("encryption_key");
            if (expired)
            {
                lines.Add("activation_date = \"2020-01-01 00:00:00 UTC\"");
                lines.Add("expiration_date = \"2020-01-02 00:00:00 UTC\"");
            }
            else
            {
                lines.Add("expiration_days = 2");
            }

            var template = Template(dir, name, [.. lines]);
            await RunAsync(["--generate-certificate", "--no-text", "--load-privkey", keyPath,
                "--load-ca-certificate", issuer.CaCertificatePath, "--load-ca-privkey", issuer.CaKeyPath,
                "--template", template, "--outfile", certPath], ct).ConfigureAwait(false);
        }
        else
        {
            var csr = Path.Combine(dir, name + ".csr");
            await RunAsync(["req", "-new", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1", "-nodes",
                "-keyout", keyPath, "-out", csr, "-subj", $"/O=NbdAttachment tests/CN={commonName}"], ct).ConfigureAwait(false);
            var ext = new List<string>
            {
                "basicConstraints = CA:FALSE",
                "keyUsage = critical, digitalSignature, keyEncipherment",
                $"extendedKeyUsage = {(server ? "serverAuth" : "clientAuth")}",
            };
            var san = dnsNames.Select(d => "DNS:" + d).Concat(ipAddresses.Select(ip => "IP:" + ip)).ToList();
            if (san.Count > 0)
            {
                ext.Add("subjectAltName = " + string.Join(", ", san));
            }

            var extFile = Path.Combine(dir, name + ".ext");
            await File.WriteAllLinesAsync(extFile, ext, ct).ConfigureAwait(false);
            var serial = "0x" + Convert.ToHexString(Guid.NewGuid().ToByteArray().AsSpan(0, 8)).ToLowerInvariant();
            await RunAsync(["x509", "-req", "-in", csr, "-CA", issuer.CaCertificatePath, "-CAkey", issuer.CaKeyPath,
                "-set_serial", serial, "-days", "2", "-extfile", extFile, "-out", certPath], ct).ConfigureAwait(false);
        }
    }

    // certtool: RSA 2048. GnuTLS writes ECDSA private keys with a 33-byte scalar (a leading
    // zero when the top bit is set), which .NET rejects ("ASN1 corrupted data") about half the time.
    private Task KeyAsync(string keyPath, CancellationToken ct) =>
        RunAsync(["--generate-privkey", "--no-text", "--key-type=rsa", "--bits=2048", "--outfile", keyPath], ct);

    private static string Template(string dir, string name, params string[] lines)
    {
        var path = Path.Combine(dir, name + ".tmpl");
        File.WriteAllLines(path, lines);
        return path;
    }

    private async Task RunAsync(string[] args, CancellationToken ct)
    {
        var result = await ProcessUtilities.RunToolAsync(_tool, args, ToolTimeout, _temp.Path, ct).ConfigureAwait(false);
        result.EnsureSuccess();
    }

    public void Dispose() => _temp.Dispose();

    public override string ToString() => string.Create(CultureInfo.InvariantCulture, $"Test CA ({ToolName}) in {RootDirectory}");
}

/// <summary>
/// xunit class fixture giving access to one process-wide <see cref="TestCertificateAuthority"/>
/// (generated once, deleted when the test host exits); tests must not dispose it.
/// </summary>
public sealed class CertificateAuthorityFixture : IAsyncLifetime
{
    private static readonly SemaphoreSlim Gate = new(1, 1);
    private static TestCertificateAuthority? s_shared;
    private TestCertificateAuthority? _ca;

    /// <summary>The CA, or null when no certificate tool is installed (tests then skip via <see cref="Get"/>).</summary>
    public TestCertificateAuthority? Authority => _ca;

    /// <summary>The CA; skips (or fails when interop is required) when no tool is installed.</summary>
    public TestCertificateAuthority Get()
    {
        if (_ca is null)
        {
            ServerBinaries.RequireAnyOrSkip(ServerBinaries.Certtool, ServerBinaries.Openssl);
            throw new InvalidOperationException("Certificate authority generation failed; see the fixture's error.");
        }

        return _ca;
    }

    public async Task InitializeAsync()
    {
        if (!ServerBinaries.IsAvailable(ServerBinaries.Certtool) && !ServerBinaries.IsAvailable(ServerBinaries.Openssl))
        {
            return;
        }

        await Gate.WaitAsync().ConfigureAwait(false);
        try
        {
            if (s_shared is null)
            {
                s_shared = await TestCertificateAuthority.CreateAsync().ConfigureAwait(false);
                var created = s_shared;
                AppDomain.CurrentDomain.ProcessExit += (_, _) => created.Dispose();
            }

            _ca = s_shared;
        }
        finally
        {
            Gate.Release();
        }
    }

    public Task DisposeAsync() => Task.CompletedTask;
}
