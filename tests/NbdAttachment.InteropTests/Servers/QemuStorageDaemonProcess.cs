using System.Globalization;

namespace NbdAttachment.InteropTests.Servers;

/// <summary>How to run qemu-storage-daemon as the reference vhost-user-blk backend in front of an NBD server.</summary>
public sealed record QemuStorageDaemonOptions
{
    /// <summary>The NBD server to open (Unix socket or TCP).</summary>
    public required ServerEndpoint Nbd { get; init; }

    /// <summary>The NBD export name ("" for the default export).</summary>
    public string ExportName { get; init; } = string.Empty;

    /// <summary>The export's <c>writable=</c>: false makes the guest see a read-only disk (VIRTIO_BLK_F_RO).</summary>
    public bool Writable { get; init; } = true;

    /// <summary>The block node's <c>discard=unmap</c> (pass guest discards to the server as NBD_CMD_TRIM). Default on.</summary>
    public bool PassDiscard { get; init; } = true;

    /// <summary>
    /// The nbd driver's <c>reconnect-delay</c> in seconds: when the NBD connection drops, guest requests wait this
    /// long for a reconnect instead of failing at once. Null (default): fail at once.
    /// </summary>
    public int? ReconnectDelaySeconds { get; init; }

    /// <summary>The export's <c>num-queues</c>. Default 1.</summary>
    public int QueueCount { get; init; } = 1;

    public IReadOnlyList<string> ExtraArguments { get; init; } = [];
}

/// <summary>
/// qemu-storage-daemon (Debian package qemu-system-common) serving an NBD export as vhost-user-blk:
/// <c>--blockdev driver=nbd,... --export type=vhost-user-blk,...</c>. The vhost-user socket is
/// <see cref="VhostUserSocketPath"/> (the base class's Unix <see cref="ServerProcess.Endpoint"/>); StartAsync
/// returns once it listens (polled via /proc/net/unix, bounded by <see cref="ServerProcess.StartTimeout"/>).
/// </summary>
public sealed class QemuStorageDaemonProcess : ServerProcess
{
    private readonly string _binary;

    private QemuStorageDaemonProcess(QemuStorageDaemonOptions options, string binary, TempDirectory? temp)
        : base(ListenKind.Unix, temp)
    {
        Options = options;
        _binary = binary;
    }

    public QemuStorageDaemonOptions Options { get; }

    public override string Name => "qemu-storage-daemon";

    /// <summary>Not an NBD server: there is no NBD export; <see cref="ServerProcess.Uri"/> is meaningless.</summary>
    public override string ExportName => string.Empty;

    public override bool UsesTls => false;

    /// <summary>The vhost-user-blk socket QEMU connects to.</summary>
    public string VhostUserSocketPath => Endpoint.SocketPath!;

    public static async Task<QemuStorageDaemonProcess> StartAsync(
        QemuStorageDaemonOptions options, TempDirectory? temp = null, CancellationToken cancellationToken = default)
    {
        ArgumentNullException.ThrowIfNull(options);
        var binary = ServerBinaries.RequireOrSkip(ServerBinaries.QemuStorageDaemon);
        return await StartOrDisposeAsync(new QemuStorageDaemonProcess(options, binary, temp), cancellationToken).ConfigureAwait(false);
    }

    protected override (string FileName, IReadOnlyList<string> Arguments) BuildCommand()
    {
        var o = Options;
        var server = o.Nbd.IsUnix
            ? $"server.type=unix,server.path={o.Nbd.SocketPath}"
            : $"server.type=inet,server.host={o.Nbd.Host},server.port={o.Nbd.Port.ToString(CultureInfo.InvariantCulture)}";
        var blockdev = $"driver=nbd,{server},node-name=disk0";
        if (o.ExportName.Length > 0)
        {
            blockdev += $",export={o.ExportName}";
        }

        if (o.PassDiscard)
        {
            blockdev += ",discard=unmap";
        }

        if (o.ReconnectDelaySeconds is { } delay)
        {
            blockdev += $",reconnect-delay={delay.ToString(CultureInfo.InvariantCulture)}";
        }

        if (!o.Writable)
        {
            blockdev += ",read-only=on";
        }

        var (fileName, args) = WithParentDeathSignal(_binary);
        args.AddRange(
        [
            "--blockdev", blockdev,
            "--export",
            $"type=vhost-user-blk,id=export0,node-name=disk0,addr.type=unix,addr.path={VhostUserSocketPath}," +
            $"writable={(o.Writable ? "on" : "off")},num-queues={o.QueueCount.ToString(CultureInfo.InvariantCulture)}",
        ]);
        args.AddRange(o.ExtraArguments);
        return (fileName, args);
    }
}
