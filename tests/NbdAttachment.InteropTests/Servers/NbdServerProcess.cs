using System.Globalization;
using System.Text;

namespace NbdAttachment.InteropTests.Servers;

/// <summary>One export section of nbd-server's config (the section name is the NBD export name).</summary>
public sealed record NbdServerExport
{
    /// <summary>Export name (config section name). Must not be "generic".</summary>
    public required string Name { get; init; }

    /// <summary>Backing file ("exportname" in the config). When null a sparse file of <see cref="Size"/> is created.</summary>
    public string? FilePath { get; init; }

    /// <summary>Size of the file created when <see cref="FilePath"/> is null.</summary>
    public long Size { get; init; } = 1024 * 1024;

    public bool ReadOnly { get; init; }

    /// <summary>Advertise NBD_FLAG_SEND_FLUSH (default on).</summary>
    public bool Flush { get; init; } = true;

    /// <summary>Advertise NBD_FLAG_SEND_FUA (default on).</summary>
    public bool Fua { get; init; } = true;

    /// <summary>Advertise NBD_FLAG_SEND_TRIM (default on).</summary>
    public bool Trim { get; init; } = true;

    public bool Rotational { get; init; }

    /// <summary>Per-export force_tls.</summary>
    public bool ForceTls { get; init; }

    /// <summary>Copy-on-write: writes go to a diff file discarded on disconnect.</summary>
    public bool CopyOnWrite { get; init; }

    public int? MaxConnections { get; init; }

    /// <summary>Idle timeout in seconds (server disconnects idle clients).</summary>
    public int? Timeout { get; init; }

    /// <summary>Further "key = value" lines for this section.</summary>
    public IReadOnlyDictionary<string, string> Extra { get; init; } = new Dictionary<string, string>();
}

/// <summary>How to run nbd-server.</summary>
public sealed record NbdServerOptions
{
    public IReadOnlyList<NbdServerExport> Exports { get; init; } = [new NbdServerExport { Name = "disk" }];

    public ListenKind Listen { get; init; } = ListenKind.Tcp;

    /// <summary>allowlist: let clients list exports (NBD_OPT_LIST). Default on.</summary>
    public bool AllowList { get; init; } = true;

    /// <summary>
    /// TLS: certfile/keyfile/cacertfile = DIR/server-cert.pem, server-key.pem, ca-cert.pem; the
    /// URI becomes nbds. nbd-server 3.24 always verifies the client: a client must present a
    /// certificate signed by the CA (without cacertfile every handshake fails with "Error in
    /// the certificate"), so there is no option to turn peer verification off.
    /// </summary>
    public string? TlsCertificatesDirectory { get; init; }

    /// <summary>Generic force_tls (FORCEDTLS mode: nothing but STARTTLS before TLS).</summary>
    public bool ForceTls { get; init; }

    public int? MaxThreads { get; init; }

    /// <summary>Further "key = value" lines for [generic].</summary>
    public IReadOnlyDictionary<string, string> ExtraGeneric { get; init; } = new Dictionary<string, string>();
}

/// <summary>
/// nbd-server, the reference server. It only serves several clients when it daemonizes (-d,
/// "do not fork", serves exactly one connection and exits), so it runs as a daemon with
/// -C CONFIG -p PIDFILE; the fixture tracks the daemon by its pid file and kills it and its
/// per-client children. The daemon's stderr goes to /dev/null (it logs to syslog).
/// </summary>
public sealed class NbdServerProcess : ServerProcess
{
    private readonly string _binary;
    private bool _prepared;

    private NbdServerProcess(NbdServerOptions options, string binary, TempDirectory? temp)
        : base(options.Listen, temp)
    {
        if (options.Exports.Count == 0)
        {
            throw new ArgumentException("nbd-server needs at least one export.", nameof(options));
        }

        Options = options;
        _binary = binary;
        ConfigPath = Temp.Combine("nbd-server.conf");
    }

    public NbdServerOptions Options { get; }

    public string ConfigPath { get; }

    /// <summary>The generated configuration file text.</summary>
    public string ConfigText { get; private set; } = string.Empty;

    public override string Name => "nbd-server";

    public override string ExportName => Options.Exports[0].Name;

    public override bool UsesTls => Options.TlsCertificatesDirectory is not null;

    protected override bool Daemonizes => true;

    /// <summary>Backing file of an export.</summary>
    public string FileOf(string exportName) =>
        Options.Exports.Single(e => e.Name == exportName).FilePath ?? Temp.Combine(exportName + ".img");

    public static async Task<NbdServerProcess> StartAsync(
        NbdServerOptions options, TempDirectory? temp = null, CancellationToken cancellationToken = default)
    {
        ArgumentNullException.ThrowIfNull(options);
        var binary = ServerBinaries.RequireOrSkip(ServerBinaries.NbdServer);
        return await StartOrDisposeAsync(new NbdServerProcess(options, binary, temp), cancellationToken).ConfigureAwait(false);
    }

    protected override async Task PrepareAsync(CancellationToken cancellationToken)
    {
        if (_prepared)
        {
            return;
        }

        foreach (var export in Options.Exports.Where(e => e.FilePath is null))
        {
            await using var f = new FileStream(FileOf(export.Name), FileMode.Create, FileAccess.Write);
            f.SetLength(export.Size);
        }

        ConfigText = BuildConfig();
        await File.WriteAllTextAsync(ConfigPath, ConfigText, cancellationToken).ConfigureAwait(false);
        _prepared = true;
    }

    private string BuildConfig()
    {
        var o = Options;
        var sb = new StringBuilder();
        sb.AppendLine("[generic]");
        switch (Endpoint.Kind)
        {
            case ListenKind.Unix:
                // With unixsock (and no duallisten) nbd-server does not listen on TCP at all.
                Line("unixsock", Endpoint.SocketPath!);
                break;
            default:
                Line("port", Endpoint.Port.ToString(CultureInfo.InvariantCulture));
                Line("listenaddr", Endpoint.Host!);
                break;
        }

        Line("allowlist", o.AllowList ? "true" : "false");
        if (o.TlsCertificatesDirectory is { } dir)
        {
            Line("certfile", Path.Combine(dir, "server-cert.pem"));
            Line("keyfile", Path.Combine(dir, "server-key.pem"));
            Line("cacertfile", Path.Combine(dir, "ca-cert.pem"));
        }

        if (o.ForceTls)
        {
            Line("force_tls", "true");
        }

        if (o.MaxThreads is { } threads)
        {
            Line("max_threads", threads.ToString(CultureInfo.InvariantCulture));
        }

        foreach (var (k, v) in o.ExtraGeneric)
        {
            Line(k, v);
        }

        foreach (var e in o.Exports)
        {
            sb.AppendLine().Append('[').Append(e.Name).AppendLine("]");
            Line("exportname", FileOf(e.Name));
            Bool("readonly", e.ReadOnly);
            Bool("flush", e.Flush);
            Bool("fua", e.Fua);
            Bool("trim", e.Trim);
            Bool("rotational", e.Rotational);
            Bool("force_tls", e.ForceTls);
            Bool("copyonwrite", e.CopyOnWrite);
            if (e.MaxConnections is { } max)
            {
                Line("maxconnections", max.ToString(CultureInfo.InvariantCulture));
            }

            if (e.Timeout is { } timeout)
            {
                Line("timeout", timeout.ToString(CultureInfo.InvariantCulture));
            }

            foreach (var (k, v) in e.Extra)
            {
                Line(k, v);
            }
        }

        return sb.ToString();

        void Line(string key, string value) => sb.Append(key).Append(" = ").AppendLine(value);

        void Bool(string key, bool value)
        {
            if (value)
            {
                Line(key, "true");
            }
        }
    }

    protected override (string FileName, IReadOnlyList<string> Arguments) BuildCommand() =>
        (_binary, ["-C", ConfigPath, "-p", PidFile]);
}
