using System.Globalization;

namespace NbdAttachment.InteropTests.Servers;

/// <summary>How to run qemu-nbd.</summary>
public sealed record QemuNbdOptions
{
    /// <summary>Image to export. When null an image of <see cref="ImageSize"/> is created in the temp directory.</summary>
    public string? ImagePath { get; init; }

    /// <summary>-f: "raw" or "qcow2".</summary>
    public string Format { get; init; } = "raw";

    /// <summary>Size of the image created when <see cref="ImagePath"/> is null.</summary>
    public long ImageSize { get; init; } = 1024 * 1024;

    /// <summary>-x: export name.</summary>
    public string ExportName { get; init; } = "disk";

    public ListenKind Listen { get; init; } = ListenKind.Tcp;

    /// <summary>-r</summary>
    public bool ReadOnly { get; init; }

    /// <summary>-t / --persistent: keep serving after the last client disconnects (default on).</summary>
    public bool Persistent { get; init; } = true;

    /// <summary>-e / --shared=N: concurrent clients (qemu default 1).</summary>
    public int? Shared { get; init; }

    /// <summary>
    /// -B NAME: persistent dirty bitmaps to expose as qemu:dirty-bitmap:NAME (qcow2 only).
    /// If the image is created by the fixture these bitmaps are added to it with qemu-img.
    /// </summary>
    public IReadOnlyList<string> Bitmaps { get; init; } = [];

    /// <summary>-A: expose qemu:allocation-depth.</summary>
    public bool AllocationDepth { get; init; }

    /// <summary>--discard=ignore|unmap</summary>
    public string? Discard { get; init; }

    /// <summary>--detect-zeroes=off|on|unmap</summary>
    public string? DetectZeroes { get; init; }

    /// <summary>--cache=none|writeback|writethrough|directsync|unsafe</summary>
    public string? Cache { get; init; }

    /// <summary>TLS: --object tls-creds-x509,id=tls0,dir=DIR,endpoint=server --tls-creds tls0.</summary>
    public string? TlsCertificatesDirectory { get; init; }

    /// <summary>verify-peer of the tls-creds object (qemu's own default is on; the fixture default is off, like nbdkit).</summary>
    public bool TlsVerifyPeer { get; init; }

    public IReadOnlyList<string> ExtraArguments { get; init; } = [];
}

/// <summary>qemu-nbd in the foreground on 127.0.0.1:PORT (-p -b), ::1 or a Unix socket (-k).</summary>
public sealed class QemuNbdProcess : ServerProcess
{
    private readonly string _binary;
    private bool _imageCreated;

    private QemuNbdProcess(QemuNbdOptions options, string binary, TempDirectory? temp)
        : base(options.Listen, temp)
    {
        Options = options;
        _binary = binary;
        ImagePath = options.ImagePath ?? Temp.Combine("image." + options.Format);
    }

    public QemuNbdOptions Options { get; }

    /// <summary>The exported image (created by the fixture when not given).</summary>
    public string ImagePath { get; }

    public override string Name => "qemu-nbd";

    public override string ExportName => Options.ExportName;

    public override bool UsesTls => Options.TlsCertificatesDirectory is not null;

    public static async Task<QemuNbdProcess> StartAsync(
        QemuNbdOptions options, TempDirectory? temp = null, CancellationToken cancellationToken = default)
    {
        ArgumentNullException.ThrowIfNull(options);
        var binary = ServerBinaries.RequireOrSkip(ServerBinaries.QemuNbd);
        return await StartOrDisposeAsync(new QemuNbdProcess(options, binary, temp), cancellationToken).ConfigureAwait(false);
    }

    protected override async Task PrepareAsync(CancellationToken cancellationToken)
    {
        if (Options.ImagePath is not null || _imageCreated)
        {
            return;
        }

        await QemuImg.CreateAsync(ImagePath, Options.Format, Options.ImageSize, cancellationToken).ConfigureAwait(false);
        foreach (var bitmap in Options.Bitmaps)
        {
            await QemuImg.AddBitmapAsync(ImagePath, bitmap, cancellationToken).ConfigureAwait(false);
        }

        _imageCreated = true;
    }

    protected override (string FileName, IReadOnlyList<string> Arguments) BuildCommand()
    {
        var o = Options;
        var (fileName, args) = WithParentDeathSignal(_binary);
        args.AddRange(["-f", o.Format, "-x", o.ExportName]);
        switch (Endpoint.Kind)
        {
            case ListenKind.Unix:
                args.AddRange(["-k", Endpoint.SocketPath!]);
                break;
            default:
                args.AddRange(["-p", Endpoint.Port.ToString(CultureInfo.InvariantCulture), "-b", Endpoint.Host!]);
                break;
        }

        if (o.ReadOnly)
        {
            args.Add("-r");
        }

        if (o.Persistent)
        {
            args.Add("-t");
        }

        if (o.Shared is { } shared)
        {
            args.Add($"--shared={shared.ToString(CultureInfo.InvariantCulture)}");
        }

        foreach (var bitmap in o.Bitmaps)
        {
            args.AddRange(["-B", bitmap]);
        }

        if (o.AllocationDepth)
        {
            args.Add("-A");
        }

        if (o.Discard is not null)
        {
            args.Add($"--discard={o.Discard}");
        }

        if (o.DetectZeroes is not null)
        {
            args.Add($"--detect-zeroes={o.DetectZeroes}");
        }

        if (o.Cache is not null)
        {
            args.Add($"--cache={o.Cache}");
        }

        if (o.TlsCertificatesDirectory is not null)
        {
            args.AddRange([
                "--object",
                $"tls-creds-x509,id=tls0,dir={o.TlsCertificatesDirectory},endpoint=server,verify-peer={(o.TlsVerifyPeer ? "on" : "off")}",
                "--tls-creds", "tls0",
            ]);
        }

        args.AddRange(o.ExtraArguments);
        args.Add(ImagePath);
        return (fileName, args);
    }
}

/// <summary>qemu-img helpers for preparing images.</summary>
public static class QemuImg
{
    private static readonly TimeSpan Timeout = TimeSpan.FromSeconds(30);

    public static async Task CreateAsync(string path, string format, long size, CancellationToken cancellationToken = default)
    {
        if (format == "raw")
        {
            // No need for qemu-img: a sparse file is a raw image.
            await using var f = new FileStream(path, FileMode.Create, FileAccess.Write);
            f.SetLength(size);
            return;
        }

        await RunAsync(["create", "-q", "-f", format, path, size.ToString(CultureInfo.InvariantCulture)], cancellationToken).ConfigureAwait(false);
    }

    public static Task AddBitmapAsync(string path, string bitmap, CancellationToken cancellationToken = default) =>
        RunAsync(["bitmap", "--add", path, bitmap], cancellationToken);

    public static async Task<ToolResult> RunAsync(IEnumerable<string> arguments, CancellationToken cancellationToken = default)
    {
        var binary = ServerBinaries.RequireOrSkip(ServerBinaries.QemuImg);
        var result = await ProcessUtilities.RunToolAsync(binary, arguments, Timeout, cancellationToken: cancellationToken).ConfigureAwait(false);
        return result.EnsureSuccess();
    }
}
