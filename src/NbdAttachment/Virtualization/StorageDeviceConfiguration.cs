namespace NbdAttachment.Virtualization;

/// <summary>A virtual storage device of a virtual machine, backed by an attachment.</summary>
public abstract class StorageDeviceConfiguration
{
    /// <summary>Creates the configuration.</summary>
    /// <param name="attachment">The backing store.</param>
    private protected StorageDeviceConfiguration(StorageDeviceAttachment attachment)
    {
        ArgumentNullException.ThrowIfNull(attachment);
        Attachment = attachment;
    }

    /// <summary>The backing store of the device.</summary>
    public StorageDeviceAttachment Attachment { get; }
}

/// <summary>A virtio block device (virtio-blk).</summary>
public sealed class VirtioBlockDeviceConfiguration : StorageDeviceConfiguration
{
    /// <summary>The largest identifier, in bytes.</summary>
    public const int MaxBlockDeviceIdentifierLength = 20;

    private string _blockDeviceIdentifier = string.Empty;

    /// <summary>Creates a virtio block device backed by <paramref name="attachment"/>.</summary>
    /// <param name="attachment">The backing store.</param>
    public VirtioBlockDeviceConfiguration(StorageDeviceAttachment attachment)
        : base(attachment)
    {
    }

    /// <summary>
    /// The serial the guest sees (Linux: <c>/dev/disk/by-id/virtio-ID</c>): at most 20 printable ASCII characters;
    /// empty for none (the default). Setting an invalid value throws <see cref="ArgumentException"/>.
    /// </summary>
    public string BlockDeviceIdentifier
    {
        get => _blockDeviceIdentifier;
        set
        {
            ValidateBlockDeviceIdentifier(value);
            _blockDeviceIdentifier = value;
        }
    }

    /// <summary>Checks a block device identifier: at most 20 bytes of printable ASCII (space to tilde).</summary>
    /// <param name="blockDeviceIdentifier">The identifier.</param>
    /// <exception cref="ArgumentNullException">The identifier is <see langword="null"/>.</exception>
    /// <exception cref="ArgumentException">The identifier is too long or has a character outside printable ASCII.</exception>
    public static void ValidateBlockDeviceIdentifier(string blockDeviceIdentifier)
    {
        ArgumentNullException.ThrowIfNull(blockDeviceIdentifier);
        for (var i = 0; i < blockDeviceIdentifier.Length; i++)
        {
            var c = blockDeviceIdentifier[i];
            if (c is < ' ' or > '~')
            {
                throw new ArgumentException(
                    $"The block device identifier has a character U+{(int)c:X4} at index {i}; only printable ASCII (U+0020 to U+007E) is allowed.",
                    nameof(blockDeviceIdentifier));
            }
        }

        if (blockDeviceIdentifier.Length > MaxBlockDeviceIdentifierLength)
        {
            throw new ArgumentException(
                $"The block device identifier is {blockDeviceIdentifier.Length} bytes long; at most {MaxBlockDeviceIdentifierLength} are allowed.",
                nameof(blockDeviceIdentifier));
        }
    }
}

/// <summary>A USB mass storage device.</summary>
public sealed class UsbMassStorageDeviceConfiguration : StorageDeviceConfiguration
{
    /// <summary>Creates a USB mass storage device backed by <paramref name="attachment"/>.</summary>
    /// <param name="attachment">The backing store.</param>
    public UsbMassStorageDeviceConfiguration(StorageDeviceAttachment attachment)
        : base(attachment)
    {
    }
}

/// <summary>An NVM Express controller with one namespace.</summary>
public sealed class NvmeControllerDeviceConfiguration : StorageDeviceConfiguration
{
    /// <summary>Creates an NVMe controller backed by <paramref name="attachment"/>.</summary>
    /// <param name="attachment">The backing store.</param>
    public NvmeControllerDeviceConfiguration(StorageDeviceAttachment attachment)
        : base(attachment)
    {
    }
}
