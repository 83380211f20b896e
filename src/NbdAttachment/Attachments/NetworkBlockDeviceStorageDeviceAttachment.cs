using System.Diagnostics;
using System.Diagnostics.CodeAnalysis;
using Microsoft.Extensions.Logging;
using NbdAttachment.Client;
using NbdAttachment.Diagnostics;
using NbdAttachment.Engine;
using NbdAttachment.Virtualization;

namespace NbdAttachment;

/// <summary>
/// A storage device attachment backed by an NBD server. Constructing it only validates the URL; the connection is
/// made when the owning virtual machine starts. Transport failures are recovered by reconnecting (guest I/O waits);
/// non-recoverable errors are reported once through <see cref="Delegate"/> and <see cref="ErrorEncountered"/>.
/// </summary>
public sealed class NetworkBlockDeviceStorageDeviceAttachment : StorageDeviceAttachment, IAsyncDisposable
{
    /// <summary>The timeout used by <see cref="NetworkBlockDeviceStorageDeviceAttachment(Uri)"/>: 5 seconds.</summary>
    public static readonly TimeSpan DefaultTimeout = TimeSpan.FromSeconds(5);

    private readonly NbdClientOptions _clientOptions;
    private readonly NbdUri _nbdUri;
    private readonly ILogger _logger;
    private readonly Lock _gate = new();
    private readonly OrderedCallbackQueue _callbacks;
    private NbdAttachmentState _state;
    private NbdClient? _client;
    private NbdAttachmentException? _lastError;
    private NbdExportInfo? _exportInfo;

    /// <summary>Creates an attachment with the defaults: <see cref="Timeout"/> 5 s, not forced read-only, <see cref="DiskSynchronizationMode.Full"/>.</summary>
    /// <param name="url">The NBD URL (<c>nbd://</c>, <c>nbds://</c>, <c>nbd+unix://</c>, <c>nbds+unix://</c>).</param>
    /// <exception cref="NbdUriFormatException">The URL is not a valid NBD URL.</exception>
    public NetworkBlockDeviceStorageDeviceAttachment(Uri url)
        : this(url, DefaultTimeout, false, DiskSynchronizationMode.Full, NbdAttachmentOptions.Default)
    {
    }

    /// <summary>Creates an attachment. No network I/O happens until the virtual machine starts.</summary>
    /// <param name="url">The NBD URL.</param>
    /// <param name="timeout">Connect timeout and dead-connection timeout; must be positive.</param>
    /// <param name="forcedReadOnly">Present the disk as read-only whatever the server says.</param>
    /// <param name="synchronizationMode">How guest flushes and FUA writes are passed to the server.</param>
    /// <exception cref="NbdUriFormatException">The URL is not a valid NBD URL.</exception>
    /// <exception cref="ArgumentOutOfRangeException"><paramref name="timeout"/> is not positive.</exception>
    public NetworkBlockDeviceStorageDeviceAttachment(Uri url, TimeSpan timeout, bool forcedReadOnly, DiskSynchronizationMode synchronizationMode)
        : this(url, timeout, forcedReadOnly, synchronizationMode, NbdAttachmentOptions.Default)
    {
    }

    /// <summary>Creates an attachment with advanced settings. No network I/O happens until the virtual machine starts.</summary>
    /// <param name="url">The NBD URL.</param>
    /// <param name="timeout">Default connect timeout and dead-connection timeout; must be positive.</param>
    /// <param name="forcedReadOnly">Present the disk as read-only whatever the server says.</param>
    /// <param name="synchronizationMode">How guest flushes and FUA writes are passed to the server.</param>
    /// <param name="options">Reconnect policy, TLS, queue depth, logging.</param>
    /// <exception cref="NbdUriFormatException">The URL is not a valid NBD URL.</exception>
    /// <exception cref="ArgumentException">The timeout, mode or an option is out of range.</exception>
    public NetworkBlockDeviceStorageDeviceAttachment(Uri url, TimeSpan timeout, bool forcedReadOnly, DiskSynchronizationMode synchronizationMode, NbdAttachmentOptions options)
    {
        ArgumentNullException.ThrowIfNull(url);
        ArgumentNullException.ThrowIfNull(options);
        if (timeout <= TimeSpan.Zero)
        {
            throw new ArgumentOutOfRangeException(nameof(timeout), timeout, "The timeout must be positive.");
        }

        if (!Enum.IsDefined(synchronizationMode))
        {
            throw new ArgumentOutOfRangeException(nameof(synchronizationMode), synchronizationMode, "Unknown synchronization mode.");
        }

        _nbdUri = NbdUri.Parse(url);
        _clientOptions = options.ToClientOptions(timeout);
        _logger = options.LoggerFactory.CreateLogger("NbdAttachment.Attachment");
        Url = url;
        Timeout = timeout;
        IsForcedReadOnly = forcedReadOnly;
        SynchronizationMode = synchronizationMode;
        Options = options;
        _callbacks = new OrderedCallbackQueue(ex => AttachmentLog.HandlerFailed(_logger, url.ToString(), ex));
    }

    /// <summary>Raised after every state change (on the thread pool, in order).</summary>
    public event EventHandler<NbdAttachmentStateChangedEventArgs>? StateChanged;

    /// <summary>Raised after the first connect and after every reconnect (on the thread pool, in order).</summary>
    public event EventHandler? Connected;

    /// <summary>Raised once, when the attachment fails for good (on the thread pool, in order).</summary>
    public event EventHandler<NbdAttachmentErrorEventArgs>? ErrorEncountered;

    /// <summary>The URL of the server.</summary>
    public Uri Url { get; }

    /// <summary>The connect and dead-connection timeout (default 5 s).</summary>
    public TimeSpan Timeout { get; }

    /// <summary>Whether the guest sees a read-only disk regardless of the server (default <see langword="false"/>).</summary>
    public bool IsForcedReadOnly { get; }

    /// <summary>How guest flushes are passed to the server (default <see cref="DiskSynchronizationMode.Full"/>).</summary>
    public DiskSynchronizationMode SynchronizationMode { get; }

    /// <summary>The advanced settings.</summary>
    public NbdAttachmentOptions Options { get; }

    /// <summary>The callbacks object; held strongly. Callbacks run on the thread pool, one at a time, in order.</summary>
    public INetworkBlockDeviceStorageDeviceAttachmentDelegate? Delegate { get; set; }

    /// <summary>The current life-cycle state.</summary>
    public NbdAttachmentState State
    {
        get
        {
            lock (_gate)
            {
                return _state;
            }
        }
    }

    /// <summary>What was negotiated for the export; <see langword="null"/> before the first connect.</summary>
    public NbdExportInfo? ExportInfo => Volatile.Read(ref _exportInfo);

    /// <summary>The error that failed the attachment, or <see langword="null"/>.</summary>
    public NbdAttachmentException? LastError => Volatile.Read(ref _lastError);

    /// <summary>How many times the attachment has reconnected.</summary>
    public int ReconnectCount => _client?.ReconnectCount ?? 0;

    /// <summary>Checks that <paramref name="url"/> is a well-formed NBD URL. Does no network I/O.</summary>
    /// <param name="url">The URL.</param>
    /// <exception cref="ArgumentNullException"><paramref name="url"/> is <see langword="null"/>.</exception>
    /// <exception cref="NbdUriFormatException">The URL is not valid; the message says why.</exception>
    public static void Validate(Uri url) => NbdUri.Parse(url);

    /// <summary>Checks that <paramref name="url"/> is a well-formed NBD URL without throwing. Does no network I/O.</summary>
    /// <param name="url">The URL.</param>
    /// <param name="error">On failure, what is wrong.</param>
    /// <returns><see langword="true"/> if the URL is valid.</returns>
    public static bool TryValidate([NotNullWhen(true)] Uri? url, [NotNullWhen(false)] out string? error)
    {
        if (NbdUri.TryParse(url, out _, out error))
        {
            error = null;
            return true;
        }

        return false;
    }

    /// <summary>Closes the connection (draining I/O in flight and sending <c>NBD_CMD_DISC</c>). The attachment becomes <see cref="NbdAttachmentState.Closed"/>.</summary>
    public async ValueTask DisposeAsync()
    {
        NbdClient? client;
        lock (_gate)
        {
            if (_state == NbdAttachmentState.Closed)
            {
                return;
            }

            client = _client;
            SetStateLocked(NbdAttachmentState.Closed, null);
        }

        if (client is not null)
        {
            client.StateChanged -= OnClientStateChanged;
            await client.DisposeAsync().ConfigureAwait(false);
        }

        AttachmentLog.Closed(_logger, Url.ToString());

        // Let callbacks already queued finish, so none runs after disposal returns (unless disposal is called from one).
        await Task.WhenAny(_callbacks.Drained, Task.Delay(TimeSpan.FromSeconds(1))).ConfigureAwait(false);
    }

    /// <inheritdoc/>
    public override string ToString() => $"NBD attachment {Url} ({State})";

    /// <inheritdoc/>
    internal override async ValueTask<IBlockDevice> OpenAsync(CancellationToken cancellationToken = default)
    {
        var client = await ConnectAsync(cancellationToken).ConfigureAwait(false);
        return new NbdBlockDevice(this, client);
    }

    /// <summary>Connects (retrying transient failures under the policy) and returns the client.</summary>
    internal async ValueTask<NbdClient> ConnectAsync(CancellationToken cancellationToken)
    {
        lock (_gate)
        {
            if (_state != NbdAttachmentState.Created)
            {
                throw new InvalidOperationException($"The attachment is {_state}; an attachment can be opened once.");
            }

            SetStateLocked(NbdAttachmentState.Connecting, null);
        }

        AttachmentLog.Connecting(_logger, Url.ToString());
        var started = Stopwatch.GetTimestamp();
        for (var attempt = 1; ; attempt++)
        {
            NbdClient client;
            try
            {
                client = await NbdClient.ConnectAsync(_nbdUri, _clientOptions, cancellationToken).ConfigureAwait(false);
            }
            catch (OperationCanceledException) when (cancellationToken.IsCancellationRequested)
            {
                lock (_gate)
                {
                    if (_state == NbdAttachmentState.Connecting)
                    {
                        SetStateLocked(NbdAttachmentState.Created, null);
                    }
                }

                throw;
            }
            catch (Exception ex) when (ex is NbdException { IsTransient: true } or IOException or System.Net.Sockets.SocketException)
            {
                var delay = _clientOptions.Reconnect.GetDelay(attempt, Stopwatch.GetElapsedTime(started));
                if (delay is null)
                {
                    throw FailStart(new NbdAttachmentException(
                        NbdAttachmentErrorCode.Disconnected,
                        $"Could not connect to the NBD server at {Url} after {attempt} attempts: {ex.Message}",
                        ex));
                }

                AttachmentLog.ConnectRetry(_logger, attempt, Url.ToString(), delay.Value, ex);
                try
                {
                    await Task.Delay(delay.Value, cancellationToken).ConfigureAwait(false);
                }
                catch (OperationCanceledException)
                {
                    lock (_gate)
                    {
                        if (_state == NbdAttachmentState.Connecting)
                        {
                            SetStateLocked(NbdAttachmentState.Created, null);
                        }
                    }

                    throw;
                }

                continue;
            }
            catch (Exception ex)
            {
                throw FailStart(NbdAttachmentException.From(Url, ex));
            }

            lock (_gate)
            {
                if (_state != NbdAttachmentState.Connecting)
                {
                    // Disposed while connecting.
                    _ = client.DisposeAsync().AsTask();
                    throw new ObjectDisposedException(nameof(NetworkBlockDeviceStorageDeviceAttachment));
                }

                _client = client;
                Volatile.Write(ref _exportInfo, client.Export);
                client.StateChanged += OnClientStateChanged;
                SetStateLocked(NbdAttachmentState.Connected, null);
            }

            return client;
        }
    }

    /// <summary>Marks the attachment closed when its block device is disposed.</summary>
    internal ValueTask CloseAsync() => DisposeAsync();

    private NbdAttachmentException FailStart(NbdAttachmentException error)
    {
        lock (_gate)
        {
            if (_state == NbdAttachmentState.Connecting)
            {
                SetStateLocked(NbdAttachmentState.Failed, error);
            }
        }

        return error;
    }

    private void OnClientStateChanged(object? sender, NbdClientStateChangedEventArgs e)
    {
        var client = (NbdClient)sender!;
        lock (_gate)
        {
            if (_state is NbdAttachmentState.Closed or NbdAttachmentState.Failed || !ReferenceEquals(client, _client))
            {
                return;
            }

            // The client raises its state changes in order, so they map one to one.
            switch (e.Current)
            {
                case NbdClientState.Reconnecting when _state == NbdAttachmentState.Connected:
                    SetStateLocked(NbdAttachmentState.Reconnecting, e.Error);
                    break;
                case NbdClientState.Connected when _state == NbdAttachmentState.Reconnecting:
                    SetStateLocked(NbdAttachmentState.Connected, null);
                    break;
                case NbdClientState.Failed:
                    var failure = e.Error ?? client.Failure ?? new NbdConnectionException("The NBD client failed.");
                    SetStateLocked(NbdAttachmentState.Failed, NbdAttachmentException.From(Url, failure));
                    break;
                default:
                    break;
            }
        }
    }

    /// <summary>Changes the state and queues the matching callbacks. Must hold <see cref="_gate"/>.</summary>
    private void SetStateLocked(NbdAttachmentState state, Exception? error)
    {
        var previous = _state;
        if (previous == state)
        {
            return;
        }

        _state = state;
        var args = new NbdAttachmentStateChangedEventArgs(previous, state, error);
        Post(() => StateChanged?.Invoke(this, args));
        if (state == NbdAttachmentState.Connected)
        {
            AttachmentLog.Connected(_logger, Url.ToString(), _client?.ReconnectCount ?? 0);
            Post(() =>
            {
                Delegate?.AttachmentWasConnected(this);
                Connected?.Invoke(this, EventArgs.Empty);
            });
        }
        else if (state == NbdAttachmentState.Failed)
        {
            var failure = error as NbdAttachmentException ?? NbdAttachmentException.From(Url, error ?? new NbdConnectionException("The NBD client failed."));
            Volatile.Write(ref _lastError, failure);
            AttachmentLog.Failed(_logger, Url.ToString(), (int)failure.Code, failure);
            Post(() =>
            {
                Delegate?.DidEncounterError(this, failure);
                ErrorEncountered?.Invoke(this, new NbdAttachmentErrorEventArgs(failure));
            });
        }
    }

    private void Post(Action action) => _callbacks.Post(action);
}
