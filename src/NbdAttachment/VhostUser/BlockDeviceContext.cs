using Microsoft.Extensions.Logging;
using NbdAttachment.Virtualization;

namespace NbdAttachment.VhostUser;

/// <summary>What every request of one backend needs: the device, its geometry, the identifier and the limits.</summary>
internal sealed class BlockDeviceContext
{
    public BlockDeviceContext(IBlockDevice device, VhostUserBlockBackendOptions options, ILogger logger)
    {
        Device = device;
        Capacity = device.Capacity;
        IsReadOnly = device.IsReadOnly;
        Identifier = System.Text.Encoding.ASCII.GetBytes(options.DeviceIdentifier);
        MaxRequestBytes = Math.Min((long)options.MaxSegments * options.MaxSegmentSize, 1L << 30);
        Logger = logger;
    }

    public IBlockDevice Device { get; }

    public long Capacity { get; }

    public bool IsReadOnly { get; }

    public byte[] Identifier { get; }

    /// <summary>The most data bytes one request may carry (seg_max × size_max, at most 1 GiB).</summary>
    public long MaxRequestBytes { get; }

    public ILogger Logger { get; }
}
