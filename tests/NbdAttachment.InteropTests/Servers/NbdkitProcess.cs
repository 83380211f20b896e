using System.Globalization;

namespace NbdAttachment.InteropTests.Servers;

/// <summary>nbdkit --tls mode.</summary>
public enum NbdkitTls
{
    Off,

    /// <summary>--tls=on: TLS offered, plaintext allowed.</summary>
    On,

    /// <summary>--tls=require.</summary>
    Require,
}

/// <summary>How to run nbdkit. Plugin and filter arguments are nbdkit's own KEY=VALUE strings.</summary>
public sealed record NbdkitOptions
{
    /// <summary>Plugin name or path, e.g. "memory", "pattern", "file", "sparse-random", "null".</summary>
    public required string Plugin { get; init; }

    /// <summary>Plugin and filter parameters, e.g. ["size=1M"] or ["error-rate=10%", "error=EIO"].</summary>
    public IReadOnlyList<string> PluginArguments { get; init; } = [];

    /// <summary>Filters in nbdkit order (first is outermost), e.g. ["delay", "error"].</summary>
    public IReadOnlyList<string> Filters { get; init; } = [];

    public ListenKind Listen { get; init; } = ListenKind.Tcp;

    /// <summary>-e: the export name nbdkit advertises (nbdkit serves any name by default).</summary>
    public string? ExportName { get; init; }

    public bool ReadOnly { get; init; }

    /// <summary>--no-sr: do not advertise structured replies.</summary>
    public bool NoStructuredReplies { get; init; }

    /// <summary>--no-mc: do not advertise meta contexts (nbdkit ≥ 1.34; check <see cref="NbdkitProcess.SupportsOption"/>).</summary>
    public bool NoMetaContexts { get; init; }

    /// <summary>--mask-handshake=MASK: global handshake flags to advertise (bit0 fixed newstyle, bit1 no zeroes).</summary>
    public int? MaskHandshake { get; init; }

    /// <summary>-o: oldstyle protocol (no export names, no options, no TLS).</summary>
    public bool Oldstyle { get; init; }

    public NbdkitTls Tls { get; init; }

    /// <summary>--tls-certificates=DIR (ca-cert.pem, server-cert.pem, server-key.pem).</summary>
    public string? TlsCertificatesDirectory { get; init; }

    /// <summary>--tls-verify-peer: require a client certificate signed by the CA.</summary>
    public bool TlsVerifyPeer { get; init; }

    /// <summary>-t: worker threads.</summary>
    public int? Threads { get; init; }

    /// <summary>-v (very chatty; goes to <see cref="ServerProcess.Log"/>).</summary>
    public bool Verbose { get; init; }

    /// <summary>Extra nbdkit options placed before the plugin name.</summary>
    public IReadOnlyList<string> ExtraArguments { get; init; } = [];
}

/// <summary>
/// nbdkit in the foreground (-f, --exit-with-parent) on 127.0.0.1:PORT (-p -i), ::1 or a Unix
/// socket (-U). Every plugin and filter the tests use ships in Debian's <c>nbdkit</c> package.
/// </summary>
public sealed class NbdkitProcess : ServerProcess
{
    private static readonly Lazy<string> HelpText = new(() => RunNbdkit("--help").StandardOutput);
    private static readonly Lazy<Dictionary<string, string>> Config = new(() =>
        RunNbdkit("--dump-config").StandardOutput
            .Split('\n', StringSplitOptions.RemoveEmptyEntries)
            .Select(l => l.Split('=', 2))
            .Where(kv => kv.Length == 2)
            .GroupBy(kv => kv[0], StringComparer.Ordinal)
            .ToDictionary(g => g.Key, g => g.First()[1].Trim(), StringComparer.Ordinal));

    private readonly string _binary;

    private NbdkitProcess(NbdkitOptions options, string binary, TempDirectory? temp)
        : base(options.Listen, temp)
    {
        Options = options;
        _binary = binary;
    }

    public NbdkitOptions Options { get; }

    public override string Name => "nbdkit";

    public override string ExportName => Options.Oldstyle ? string.Empty : Options.ExportName ?? string.Empty;

    public override bool UsesTls => Options.Tls != NbdkitTls.Off;

    /// <summary>Starts nbdkit (skipping the test if nbdkit is missing) and waits until it listens.</summary>
    public static async Task<NbdkitProcess> StartAsync(
        NbdkitOptions options, TempDirectory? temp = null, CancellationToken cancellationToken = default)
    {
        ArgumentNullException.ThrowIfNull(options);
        var binary = ServerBinaries.RequireOrSkip(ServerBinaries.Nbdkit);
        if (options.NoMetaContexts)
        {
            ServerBinaries.SkipUnlessSupported(SupportsOption("--no-mc"), $"nbdkit {Version} has no --no-mc option.");
        }

        foreach (var filter in options.Filters)
        {
            ServerBinaries.SkipUnlessSupported(HasFilter(filter), $"nbdkit {Version} has no '{filter}' filter.");
        }

        return await StartOrDisposeAsync(new NbdkitProcess(options, binary, temp), cancellationToken).ConfigureAwait(false);
    }

    /// <summary>Convenience: nbdkit memory plugin of <paramref name="size"/> (nbdkit size syntax, e.g. "1M").</summary>
    public static Task<NbdkitProcess> StartMemoryAsync(
        string size = "1M", ListenKind listen = ListenKind.Tcp, CancellationToken cancellationToken = default) =>
        StartAsync(new NbdkitOptions { Plugin = "memory", PluginArguments = [$"size={size}"], Listen = listen },
            cancellationToken: cancellationToken);

    /// <summary>nbdkit version, e.g. "1.32.5".</summary>
    public static string Version => Config.Value.TryGetValue("version", out var v) ? v : "?";

    /// <summary>True when this nbdkit's --help lists <paramref name="option"/> (e.g. "--no-mc").</summary>
    public static bool SupportsOption(string option) =>
        ServerBinaries.IsAvailable(ServerBinaries.Nbdkit) && HelpText.Value.Contains(option, StringComparison.Ordinal);

    public static bool HasPlugin(string name) => HasModule("plugindir", $"nbdkit-{name}-plugin.so");

    public static bool HasFilter(string name) => HasModule("filterdir", $"nbdkit-{name}-filter.so");

    private static bool HasModule(string dirKey, string file) =>
        ServerBinaries.IsAvailable(ServerBinaries.Nbdkit) &&
        Config.Value.TryGetValue(dirKey, out var dir) && File.Exists(Path.Combine(dir, file));

    protected override (string FileName, IReadOnlyList<string> Arguments) BuildCommand()
    {
        var o = Options;
        var args = new List<string> { "-f" };
        if (Config.Value.TryGetValue("exit_with_parent", out var ewp) && ewp == "yes")
        {
            args.Add("--exit-with-parent");
        }

        switch (Endpoint.Kind)
        {
            case ListenKind.Unix:
                args.Add("-U");
                args.Add(Endpoint.SocketPath!);
                break;
            default:
                args.Add("-p");
                args.Add(Endpoint.Port.ToString(CultureInfo.InvariantCulture));
                args.Add("-i");
                args.Add(Endpoint.Host!);
                break;
        }

        if (o.Oldstyle)
        {
            args.Add("-o");
        }

        if (o.ExportName is not null && !o.Oldstyle)
        {
            args.Add("-e");
            args.Add(o.ExportName);
        }

        if (o.ReadOnly)
        {
            args.Add("-r");
        }

        if (o.NoStructuredReplies)
        {
            args.Add("--no-sr");
        }

        if (o.NoMetaContexts)
        {
            args.Add("--no-mc");
        }

        if (o.MaskHandshake is { } mask)
        {
            args.Add($"--mask-handshake={mask.ToString(CultureInfo.InvariantCulture)}");
        }

        if (o.Tls != NbdkitTls.Off)
        {
            args.Add(o.Tls == NbdkitTls.Require ? "--tls=require" : "--tls=on");
            if (o.TlsCertificatesDirectory is not null)
            {
                args.Add($"--tls-certificates={o.TlsCertificatesDirectory}");
            }

            if (o.TlsVerifyPeer)
            {
                args.Add("--tls-verify-peer");
            }
        }

        if (o.Threads is { } t)
        {
            args.Add("-t");
            args.Add(t.ToString(CultureInfo.InvariantCulture));
        }

        if (o.Verbose)
        {
            args.Add("-v");
        }

        args.AddRange(o.Filters.Select(f => $"--filter={f}"));
        args.AddRange(o.ExtraArguments);
        args.Add(o.Plugin);
        args.AddRange(o.PluginArguments);
        return (_binary, args);
    }

    private static ToolResult RunNbdkit(string argument) =>
        ProcessUtilities.RunToolAsync(ServerBinaries.TryFind(ServerBinaries.Nbdkit) ?? ServerBinaries.Nbdkit, [argument], TimeSpan.FromSeconds(10))
            .GetAwaiter().GetResult();
}
