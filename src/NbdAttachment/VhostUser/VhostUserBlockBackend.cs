using NbdAttachment.Virtualization;

namespace NbdAttachment.VhostUser;

/// <summary>
/// A vhost-user-blk backend: serves one <see cref="IBlockDevice"/> to a virtual machine monitor (QEMU,
/// cloud-hypervisor) that connects to a Unix socket, so a real guest's virtio-blk I/O reaches the device. One
/// front-end at a time; when it disconnects, the backend waits for the next. Linux only.
/// </summary>
public sealed class VhostUserBlockBackend : IAsyncDisposable
{
    /// <summary>Creates a backend. Does no I/O until <see cref="Start"/>.</summary>
    /// <param name="socketPath">The Unix socket path to listen on; must not exist yet (a stale socket file is replaced).</param>
    /// <param name="device">The device to serve; the backend does not dispose it.</param>
    /// <param name="options">Settings; <see langword="null"/> for <see cref="VhostUserBlockBackendOptions.Default"/>.</param>
    /// <exception cref="ArgumentException">The path is empty or an option is out of range.</exception>
    public VhostUserBlockBackend(string socketPath, IBlockDevice device, VhostUserBlockBackendOptions? options = null)
    {
        ArgumentException.ThrowIfNullOrEmpty(socketPath);
        ArgumentNullException.ThrowIfNull(device);
        options ??= VhostUserBlockBackendOptions.Default;
        options.Validate();
        SocketPath = socketPath;
        Device = device;
        Options = options;
    }

    /// <summary>The Unix socket path the backend listens on.</summary>
    public string SocketPath { get; }

    /// <summary>The device served.</summary>
    public IBlockDevice Device { get; }

    /// <summary>The settings.</summary>
    public VhostUserBlockBackendOptions Options { get; }

    /// <summary>Whether a front-end is connected now.</summary>
    public bool IsConnected => throw new NotImplementedException();

    /// <summary>Raised (on a thread-pool thread) when a front-end has connected.</summary>
    public event EventHandler? FrontEndConnected { add { } remove { } }

    /// <summary>Raised (on a thread-pool thread) when a front-end session has ended, with the reason.</summary>
    public event EventHandler<VhostUserSessionEndedEventArgs>? FrontEndDisconnected { add { } remove { } }

    /// <summary>Binds the socket and starts accepting front-ends.</summary>
    /// <exception cref="PlatformNotSupportedException">Not on Linux.</exception>
    /// <exception cref="InvalidOperationException">Already started, or disposed.</exception>
    /// <exception cref="IOException">The socket path cannot be bound.</exception>
    public void Start() => throw new NotImplementedException();

    /// <summary>Stops accepting, disconnects the front-end after the requests in flight complete, and removes the socket file.</summary>
    /// <param name="cancellationToken">Cancels waiting for requests in flight; they are then abandoned.</param>
    public Task StopAsync(CancellationToken cancellationToken = default) => throw new NotImplementedException();

    /// <summary>Stops the backend.</summary>
    public async ValueTask DisposeAsync() => await StopAsync().ConfigureAwait(false);
}
