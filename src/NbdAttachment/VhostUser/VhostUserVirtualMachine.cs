using NbdAttachment.Virtualization;

namespace NbdAttachment.VhostUser;

/// <summary>
/// A <see cref="VirtualMachine"/> whose virtio block devices are served to a real VMM over vhost-user-blk:
/// <see cref="StartAsync"/> opens the attachments (the first network I/O happens here) and listens on one socket per
/// device; <see cref="StopAsync"/> disconnects the VMM and closes the attachments. Linux only.
/// </summary>
public sealed class VhostUserVirtualMachine : IAsyncDisposable
{
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
    public IReadOnlyList<VhostUserBlockBackend> Backends => throw new NotImplementedException();

    /// <summary>Opens every attachment, then listens on every socket.</summary>
    /// <param name="cancellationToken">Cancels the start.</param>
    /// <exception cref="InvalidOperationException">The configuration is invalid (a device that is not virtio-blk, or a socket path count that differs).</exception>
    /// <exception cref="PlatformNotSupportedException">Not on Linux.</exception>
    public Task StartAsync(CancellationToken cancellationToken = default) => throw new NotImplementedException();

    /// <summary>Disconnects the VMM from every socket, then drains and closes the attachments.</summary>
    /// <param name="cancellationToken">Cancels waiting for guest requests in flight.</param>
    public Task StopAsync(CancellationToken cancellationToken = default) => throw new NotImplementedException();

    /// <summary>Stops the machine.</summary>
    public async ValueTask DisposeAsync() => await StopAsync().ConfigureAwait(false);
}
