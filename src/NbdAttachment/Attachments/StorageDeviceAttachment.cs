using NbdAttachment.Virtualization;

namespace NbdAttachment;

/// <summary>The backing store of a virtual storage device: a network block device, a disk image, and so on.</summary>
public abstract class StorageDeviceAttachment
{
    /// <summary>Creates the attachment (for subclasses in this library).</summary>
    private protected StorageDeviceAttachment()
    {
    }

    /// <summary>Opens the backing store for guest I/O. Called by <see cref="VirtualMachine.StartAsync"/>.</summary>
    /// <param name="cancellationToken">Cancels the open.</param>
    /// <returns>The block device the guest's device emulation uses.</returns>
    internal abstract ValueTask<IBlockDevice> OpenAsync(CancellationToken cancellationToken = default);
}
