using Microsoft.Extensions.Logging;
using Microsoft.Extensions.Logging.Abstractions;

namespace NbdAttachment.VhostUser;

/// <summary>Settings of a <see cref="VhostUserBlockBackend"/>. Immutable; start from <see cref="Default"/>.</summary>
public sealed record VhostUserBlockBackendOptions
{
    /// <summary>The largest number of queues a front-end may use.</summary>
    public const int MaxQueueCount = 64;

    /// <summary>The defaults: up to 8 queues, no identifier, 126 segments of at most 1 MiB.</summary>
    public static VhostUserBlockBackendOptions Default { get; } = new();

    /// <summary>
    /// The most queues a front-end may use (virtio-blk <c>num_queues</c>), 1 to <see cref="MaxQueueCount"/>. Default: 8.
    /// QEMU uses one per vCPU unless told otherwise (<c>num-queues</c>) and refuses a backend with fewer. A queue
    /// costs a thread only while the front-end has it started.
    /// </summary>
    public int QueueCount { get; init; } = 8;

    /// <summary>
    /// The serial the guest reads with <c>VIRTIO_BLK_T_GET_ID</c>: at most 20 printable ASCII characters. Default: empty.
    /// </summary>
    public string DeviceIdentifier { get; init; } = string.Empty;

    /// <summary>Data segments per request the guest may use (virtio-blk <c>seg_max</c>), 1 to 1024. Default: 126.</summary>
    public int MaxSegments { get; init; } = 126;

    /// <summary>Bytes per data segment the guest may use (virtio-blk <c>size_max</c>), 4 KiB to 16 MiB. Default: 1 MiB.</summary>
    public int MaxSegmentSize { get; init; } = 1 << 20;

    /// <summary>Where the backend logs. Default: <see cref="NullLoggerFactory.Instance"/>.</summary>
    public ILoggerFactory LoggerFactory { get; init; } = NullLoggerFactory.Instance;

    /// <summary>Checks the settings.</summary>
    /// <exception cref="ArgumentException">A setting is out of range; the message says which.</exception>
    public void Validate()
    {
        if (QueueCount is < 1 or > MaxQueueCount)
        {
            throw new ArgumentException($"QueueCount is {QueueCount}; it must be 1 to {MaxQueueCount}.", nameof(QueueCount));
        }

        if (MaxSegments is < 1 or > 1024)
        {
            throw new ArgumentException($"MaxSegments is {MaxSegments}; it must be 1 to 1024.", nameof(MaxSegments));
        }

        if (MaxSegmentSize is < 4096 or > (16 << 20))
        {
            throw new ArgumentException($"MaxSegmentSize is {MaxSegmentSize}; it must be 4096 to 16777216.", nameof(MaxSegmentSize));
        }

        ArgumentNullException.ThrowIfNull(LoggerFactory, nameof(LoggerFactory));
        Virtualization.VirtioBlockDeviceConfiguration.ValidateBlockDeviceIdentifier(DeviceIdentifier ?? throw new ArgumentNullException(nameof(DeviceIdentifier)));
    }
}
