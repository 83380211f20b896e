using NbdAttachment.Virtualization;

namespace NbdAttachment.VhostUser;

/// <summary>
/// A <see cref="VirtualMachine"/> whose virtio block devices are served to a real VMM over vhost-user-blk:
/// <see cref="StartAsync"/> opens the attachments (the first network I/O happens here) and listens on one socket per
/// device; <see cref="StopAsync"/> disconnects the VMM and closes the attachments. Linux only.
/// </summary>
public sealed class VhostUserVirtualMachine : IAsyncDisposable
{
    private readonly SemaphoreSlim _lifecycle = new(1, 1);
    private VhostUserBlockBackend[] _backends = [];

    /// <summary>Creates a stopped machine. Does no I/O.</summary>
    /// <param name="configuration">The configuration: every storage device must be a <see cref="VirtioBlockDeviceConfiguration"/>.</param>
    /// <param name="socketPaths">One socket path per storage device, in configuration order.</param>
    /// <param name="options">Backend settings shared by every device (each device's identifier comes from its configuration).</param>
    public VhostUserVirtualMachine(VirtualMachineConfiguration configuration, IReadOnlyList<string> socketPaths, VhostUserBlockBackendOptions? options = null)
    {
        ArgumentNullException.ThrowIfNull(configuration);
        ArgumentNullException.ThrowIfNull(socketPaths);
        Machine = new VirtualMachine(configuration);
        SocketPaths = socketPaths.ToArray();
        Options = options ?? VhostUserBlockBackendOptions.Default;
        Options.Validate();
    }

    /// <summary>The storage side of the machine: state and opened devices.</summary>
    public VirtualMachine Machine { get; }

    /// <summary>The socket paths, one per device.</summary>
    public IReadOnlyList<string> SocketPaths { get; }

    /// <summary>The backend settings.</summary>
    public VhostUserBlockBackendOptions Options { get; }

    /// <summary>The backends while running, one per device in configuration order; empty otherwise.</summary>
    public IReadOnlyList<VhostUserBlockBackend> Backends => Volatile.Read(ref _backends);

    /// <summary>Opens every attachment, then listens on every socket. A stopped machine can start again.</summary>
    /// <param name="cancellationToken">Cancels the start.</param>
    /// <exception cref="InvalidOperationException">The configuration is invalid (a device that is not virtio-blk, or a socket path count that differs), or the machine is running.</exception>
    /// <exception cref="PlatformNotSupportedException">Not on Linux.</exception>
    /// <exception cref="NbdAttachmentException">A network block device could not be connected.</exception>
    public async Task StartAsync(CancellationToken cancellationToken = default)
    {
        if (!OperatingSystem.IsLinux())
        {
            throw new PlatformNotSupportedException("vhost-user-blk runs on Linux only.");
        }

        await _lifecycle.WaitAsync(cancellationToken).ConfigureAwait(false);
        try
        {
            var devices = Machine.Configuration.StorageDevices;
            if (devices.Count != SocketPaths.Count)
            {
                throw new InvalidOperationException($"The configuration has {devices.Count} storage devices but {SocketPaths.Count} socket paths were given; one per device is needed.");
            }

            for (var i = 0; i < devices.Count; i++)
            {
                if (devices[i] is not VirtioBlockDeviceConfiguration)
                {
                    throw new InvalidOperationException($"Storage device {i} is a {devices[i]?.GetType().Name ?? "null"}; vhost-user-blk serves only virtio block devices.");
                }
            }

            await Machine.StartAsync(cancellationToken).ConfigureAwait(false);
            var backends = new List<VhostUserBlockBackend>();
            try
            {
                for (var i = 0; i < devices.Count; i++)
                {
                    var identifier = ((VirtioBlockDeviceConfiguration)devices[i]).BlockDeviceIdentifier;
                    var options = identifier.Length > 0 ? Options with { DeviceIdentifier = identifier } : Options;
                    var backend = new VhostUserBlockBackend(SocketPaths[i], Machine.BlockDevices[i], options);
                    backends.Add(backend);
                    backend.Start();
                }
            }
            catch
            {
                foreach (var backend in backends)
                {
                    await backend.StopAsync(CancellationToken.None).ConfigureAwait(false);
                }

                await Machine.StopAsync(CancellationToken.None).ConfigureAwait(false);
                throw;
            }

            Volatile.Write(ref _backends, backends.ToArray());
        }
        finally
        {
            _lifecycle.Release();
        }
    }

    /// <summary>Disconnects the VMM from every socket (after the guest requests in flight complete), then drains and closes the attachments.</summary>
    /// <param name="cancellationToken">Cancels waiting for guest requests in flight: they are dropped.</param>
    public async Task StopAsync(CancellationToken cancellationToken = default)
    {
        await _lifecycle.WaitAsync(CancellationToken.None).ConfigureAwait(false);
        try
        {
            var backends = Volatile.Read(ref _backends);
            Volatile.Write(ref _backends, []);
            await Task.WhenAll(backends.Select(b => b.StopAsync(cancellationToken))).ConfigureAwait(false);
            await Machine.StopAsync(CancellationToken.None).ConfigureAwait(false);
        }
        finally
        {
            _lifecycle.Release();
        }
    }

    /// <summary>Stops the machine.</summary>
    public async ValueTask DisposeAsync() => await StopAsync().ConfigureAwait(false);
}
