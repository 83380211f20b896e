using Microsoft.Extensions.Logging;
using Microsoft.Extensions.Logging.Abstractions;

namespace NbdAttachment.Virtualization;

/// <summary>The storage part of a virtual machine's configuration.</summary>
public sealed class VirtualMachineConfiguration
{
    /// <summary>The storage devices, in the order the guest sees them. Default: empty.</summary>
    public IList<StorageDeviceConfiguration> StorageDevices { get; set; } = new List<StorageDeviceConfiguration>();

    /// <summary>Where the virtual machine logs. Default: <see cref="NullLoggerFactory.Instance"/>.</summary>
    public ILoggerFactory LoggerFactory { get; set; } = NullLoggerFactory.Instance;

    /// <summary>
    /// Checks the configuration: at least one storage device, no null entries, no attachment used twice, and
    /// virtio block device identifiers valid and unique. Does no I/O.
    /// </summary>
    /// <exception cref="InvalidOperationException">The configuration is not valid; the message says why.</exception>
    public void Validate()
    {
        if (StorageDevices is null || StorageDevices.Count == 0)
        {
            throw new InvalidOperationException("The virtual machine configuration needs at least one storage device.");
        }

        var attachments = new HashSet<StorageDeviceAttachment>(ReferenceEqualityComparer.Instance);
        var identifiers = new HashSet<string>(StringComparer.Ordinal);
        for (var i = 0; i < StorageDevices.Count; i++)
        {
            var device = StorageDevices[i] ?? throw new InvalidOperationException($"Storage device {i} is null.");
            if (!attachments.Add(device.Attachment))
            {
                throw new InvalidOperationException($"Storage device {i} uses an attachment that another device already uses; each attachment backs one device.");
            }

            if (device is VirtioBlockDeviceConfiguration { BlockDeviceIdentifier: { Length: > 0 } id })
            {
                try
                {
                    VirtioBlockDeviceConfiguration.ValidateBlockDeviceIdentifier(id);
                }
                catch (ArgumentException ex)
                {
                    throw new InvalidOperationException($"Storage device {i}: {ex.Message}", ex);
                }

                if (!identifiers.Add(id))
                {
                    throw new InvalidOperationException($"Storage device {i} repeats the block device identifier '{id}'; identifiers must be unique.");
                }
            }
        }
    }
}
