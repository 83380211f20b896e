using Microsoft.Extensions.Logging;
using NbdAttachment.VhostUser.Native;
using NbdAttachment.Virtualization;

namespace NbdAttachment.VhostUser;

/// <summary>
/// A vhost-user-blk backend: serves one <see cref="IBlockDevice"/> to a virtual machine monitor (QEMU,
/// cloud-hypervisor) that connects to a Unix socket, so a real guest's virtio-blk I/O reaches the device. One
/// front-end at a time (another that connects meanwhile is refused); when it disconnects, the backend waits for the
/// next. Linux only.
/// </summary>
public sealed class VhostUserBlockBackend : IAsyncDisposable
{
    private readonly ILogger _logger;
    private readonly object _gate = new();
    private readonly TaskCompletionSource _stopped = new(TaskCreationOptions.RunContinuationsAsynchronously);
    private UnixSocket? _listener;
    private Thread? _acceptThread;
    private VhostUserSession? _session;
    private bool _started;
    private bool _stopping;
    private bool _acceptEnded;

    /// <summary>Creates a backend. Does no I/O until <see cref="Start"/>.</summary>
    /// <param name="socketPath">The Unix socket path to listen on (at most 107 bytes); a stale socket file there is replaced.</param>
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
        _logger = options.LoggerFactory.CreateLogger("NbdAttachment.VhostUser");
    }

    /// <summary>The Unix socket path the backend listens on.</summary>
    public string SocketPath { get; }

    /// <summary>The device served.</summary>
    public IBlockDevice Device { get; }

    /// <summary>The settings.</summary>
    public VhostUserBlockBackendOptions Options { get; }

    /// <summary>Whether a front-end is connected now.</summary>
    public bool IsConnected => Volatile.Read(ref _session) is not null;

    /// <summary>Raised (on a thread-pool thread) when a front-end has connected.</summary>
    public event EventHandler? FrontEndConnected;

    /// <summary>Raised (on a thread-pool thread) when a front-end session has ended, with the reason.</summary>
    public event EventHandler<VhostUserSessionEndedEventArgs>? FrontEndDisconnected;

    /// <summary>Binds the socket and starts accepting front-ends.</summary>
    /// <exception cref="PlatformNotSupportedException">Not on Linux.</exception>
    /// <exception cref="InvalidOperationException">Already started, or stopped.</exception>
    /// <exception cref="IOException">The socket path cannot be bound.</exception>
    public void Start()
    {
        if (!OperatingSystem.IsLinux())
        {
            throw new PlatformNotSupportedException("The vhost-user-blk backend runs on Linux only: it maps guest memory shared by the VMM through Unix-socket file descriptors.");
        }

        lock (_gate)
        {
            if (_started || _stopping)
            {
                throw new InvalidOperationException(_stopping ? "The backend was stopped; create a new one." : "The backend is already started.");
            }

            _listener = UnixSocket.Listen(SocketPath);
            _started = true;
            _acceptThread = new Thread(AcceptLoop) { IsBackground = true, Name = "vhost-user-blk accept" };
            _acceptThread.Start();
        }

        VhostUserLog.Listening(_logger, SocketPath);
    }

    /// <summary>
    /// Stops accepting, disconnects the front-end once the requests in flight complete (each queue waits at most 30 s),
    /// and removes the socket file. Idempotent.
    /// </summary>
    /// <param name="cancellationToken">Stops waiting for requests in flight: the device calls are cancelled and the guest's requests dropped.</param>
    public async Task StopAsync(CancellationToken cancellationToken = default)
    {
        VhostUserSession? session;
        lock (_gate)
        {
            if (!_started)
            {
                _stopping = true;
                return;
            }

            if (!_stopping)
            {
                _stopping = true;
                _listener!.Wake();
            }

            session = _session;
        }

        session?.Fail(null);
        using (cancellationToken.Register(static s => ((VhostUserSession?)s)?.Abandon(), session))
        {
            await _stopped.Task.WaitAsync(cancellationToken).ConfigureAwait(false);
        }
    }

    /// <summary>Stops the backend.</summary>
    public async ValueTask DisposeAsync() => await StopAsync().ConfigureAwait(false);

    private void AcceptLoop()
    {
        var listener = _listener!;
        try
        {
            while (true)
            {
                UnixSocket? client;
                try
                {
                    client = listener.Accept();
                }
                catch (IOException ex)
                {
                    VhostUserLog.SessionFailed(_logger, ex);
                    return;
                }

                if (client is null)
                {
                    return;
                }

                lock (_gate)
                {
                    if (_stopping)
                    {
                        client.Dispose();
                        return;
                    }

                    if (_session is not null)
                    {
                        VhostUserLog.FrontEndRefused(_logger, SocketPath);
                        client.Dispose();
                        continue;
                    }

                    var context = new BlockDeviceContext(Device, Options, _logger);
                    var session = new VhostUserSession(client, context, Options);
                    _session = session;
                    var thread = new Thread(() => RunSession(session)) { IsBackground = true, Name = "vhost-user-blk session" };
                    thread.Start();
                }
            }
        }
        finally
        {
            listener.Dispose();
            try
            {
                File.Delete(SocketPath);
            }
            catch (IOException)
            {
            }
            catch (UnauthorizedAccessException)
            {
            }

            lock (_gate)
            {
                _acceptEnded = true;
            }

            FinishIfIdle();
        }
    }

    private void RunSession(VhostUserSession session)
    {
        VhostUserLog.FrontEndConnected(_logger, SocketPath);
        Raise(static b => b.FrontEndConnected?.Invoke(b, EventArgs.Empty));
        var error = session.Run();
        lock (_gate)
        {
            _session = null;
        }

        VhostUserLog.FrontEndDisconnected(_logger, SocketPath, error);
        var ended = new VhostUserSessionEndedEventArgs(error);
        Raise(b => b.FrontEndDisconnected?.Invoke(b, ended));
        FinishIfIdle();
    }

    /// <summary>Completes <see cref="StopAsync"/> once stopping, the accept loop has ended and no session runs.</summary>
    private void FinishIfIdle()
    {
        lock (_gate)
        {
            if (!_stopping || _session is not null || !_acceptEnded)
            {
                return;
            }
        }

        if (_stopped.TrySetResult())
        {
            VhostUserLog.Stopped(_logger, SocketPath);
        }
    }

    private void Raise(Action<VhostUserBlockBackend> invoke) =>
        ThreadPool.UnsafeQueueUserWorkItem(
            static state =>
            {
                var (backend, invoke) = state;
                try
                {
                    invoke(backend);
                }
                catch (Exception ex)
                {
                    VhostUserLog.HandlerFailed(backend._logger, ex);
                }
            },
            (this, invoke),
            preferLocal: false);
}
