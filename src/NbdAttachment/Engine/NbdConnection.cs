using System.Threading.Channels;
using Microsoft.Extensions.Logging;
using NbdAttachment.Client;
using NbdAttachment.Protocol;

namespace NbdAttachment.Engine;

/// <summary>
/// One logical connection to an export: the in-flight table and the submission queue, which outlive any one
/// transport session (<see cref="NbdWire"/>). When a wire breaks, the requests it had sent are kept for
/// replay on the next wire, or failed when the owner gives up (<see cref="Fail"/>).
/// </summary>
internal sealed partial class NbdConnection : IDisposable
{
    /// <summary>Queued after the last request to make the writer send NBD_CMD_DISC and stop.</summary>
    internal static readonly NbdRequest DisconnectMarker = new(null!, -1);

    /// <summary>Queued to wake the writer of a wire that is stopping (it waits without a token, allocation-free).</summary>
    internal static readonly NbdRequest WakeMarker = new(null!, -1);

    private readonly Channel<NbdRequest> _queue = Channel.CreateUnbounded<NbdRequest>(new UnboundedChannelOptions
    {
        SingleReader = true,
        AllowSynchronousContinuations = false,
    });

    private readonly RequestTable _table;
    private readonly object _lock = new();
    private List<NbdRequest> _replay = [];
    private NbdWire? _wire;
    private Exception? _failure;

    public NbdConnection(NbdExportInfo export, int maxInFlight, ILogger logger)
    {
        Export = export;
        Logger = logger;
        _table = new RequestTable(maxInFlight);
    }

    /// <summary>The export as negotiated on the first wire; later wires must match it.</summary>
    public NbdExportInfo Export { get; }

    public ILogger Logger { get; }

    public RequestTable Table => _table;

    /// <summary>How long the oldest request on the wire has been waiting.</summary>
    public TimeSpan OldestSentAge()
    {
        var oldest = long.MaxValue;
        foreach (var request in _table.SnapshotSent())
        {
            oldest = Math.Min(oldest, request.StartTimestamp);
        }

        return oldest == long.MaxValue ? TimeSpan.Zero : System.Diagnostics.Stopwatch.GetElapsedTime(oldest);
    }

    public ChannelReader<NbdRequest> Queue => _queue.Reader;

    /// <summary>Requests holding a slot: queued, on the wire, or not yet collected by their caller.</summary>
    public int InFlight => _table.InUse;

    public Exception? Failure => Volatile.Read(ref _failure);

    /// <summary>The wire currently attached, if any.</summary>
    public NbdWire? CurrentWire => Volatile.Read(ref _wire);

    /// <summary>
    /// Runs a wire until it ends. Requests it had on the wire are then kept for replay on the next one.
    /// Returns the reason the wire ended (null after a clean disconnect).
    /// </summary>
    public async Task<Exception?> RunWireAsync(NbdWire wire)
    {
        List<NbdRequest> replay;
        lock (_lock)
        {
            replay = _replay;
            _replay = [];
            _wire = wire;
        }

        var error = await wire.RunAsync(replay).ConfigureAwait(false);
        lock (_lock)
        {
            _wire = null;
            foreach (var request in _table.SnapshotSent())
            {
                if (request.Abandoned)
                {
                    // Its caller gave up and may reuse its buffer: never re-send it, just release the slot.
                    request.Complete(null);
                }
                else if (request.TryRequeue())
                {
                    _replay.Add(request);
                }
            }

            foreach (var request in replay)
            {
                if (request.State == NbdRequest.StateQueued && !request.Abandoned && !_replay.Contains(request))
                {
                    _replay.Add(request); // never reached the wire this time
                }
            }

            _replay.Sort(static (a, b) => a.Offset.CompareTo(b.Offset));
        }

        await wire.DisposeAsync().ConfigureAwait(false);
        return error;
    }

    /// <summary>Requests waiting for the next wire (re-sends after a break).</summary>
    public int PendingReplay
    {
        get
        {
            lock (_lock)
            {
                return _replay.Count;
            }
        }
    }

    /// <summary>Fails everything queued or waiting for replay, and every later submission, with <paramref name="error"/>.</summary>
    public void Fail(Exception error)
    {
        List<NbdRequest> replay;
        lock (_lock)
        {
            _failure ??= error;
            error = _failure;
            replay = _replay;
            _replay = [];
        }

        _queue.Writer.TryComplete();
        _wire?.Stop(error);
        foreach (var request in replay)
        {
            request.Complete(error);
        }

        foreach (var request in _table.SnapshotSent())
        {
            request.Complete(error);
        }

        while (_queue.Reader.TryRead(out var queued))
        {
            if (!ReferenceEquals(queued, DisconnectMarker) && !ReferenceEquals(queued, WakeMarker))
            {
                queued.Complete(error);
            }
        }
    }

    /// <summary>Asks the writer to send NBD_CMD_DISC after everything queued so far.</summary>
    public bool RequestDisconnect() => _queue.Writer.TryWrite(DisconnectMarker);

    /// <summary>Wakes the writer so it notices that its wire stopped.</summary>
    public void WakeWriter() => _queue.Writer.TryWrite(WakeMarker);

    public void Dispose()
    {
        // Nothing to release: the table's semaphore has no wait handle, and callers still waiting for a slot
        // must get one (and then the failure), so it is never disposed.
    }

    /// <summary>Queues one request and returns a task for its reply. Allocation-free when a slot is free.</summary>
    internal ValueTask Submit(NbdCommand command, NbdCommandFlags flags, ulong offset, uint length, ReadOnlyMemory<byte> payload, Memory<byte> readBuffer, CancellationToken cancellationToken, string? context = null, List<NbdExtent>? extents = null)
    {
        if (Failure is { } failure)
        {
            return ValueTask.FromException(failure);
        }

        if (cancellationToken.IsCancellationRequested)
        {
            return ValueTask.FromCanceled(cancellationToken);
        }

        var rent = _table.RentAsync(cancellationToken);
        if (rent.IsCompletedSuccessfully)
        {
            return Enqueue(rent.Result, command, flags, offset, length, payload, readBuffer, cancellationToken, context, extents);
        }

        return SubmitSlowAsync(rent, command, flags, offset, length, payload, readBuffer, cancellationToken, context, extents);
    }

    private async ValueTask SubmitSlowAsync(ValueTask<NbdRequest> rent, NbdCommand command, NbdCommandFlags flags, ulong offset, uint length, ReadOnlyMemory<byte> payload, Memory<byte> readBuffer, CancellationToken cancellationToken, string? context, List<NbdExtent>? extents)
    {
        var request = await rent.ConfigureAwait(false);
        await Enqueue(request, command, flags, offset, length, payload, readBuffer, cancellationToken, context, extents).ConfigureAwait(false);
    }

    private ValueTask Enqueue(NbdRequest request, NbdCommand command, NbdCommandFlags flags, ulong offset, uint length, ReadOnlyMemory<byte> payload, Memory<byte> readBuffer, CancellationToken cancellationToken, string? context, List<NbdExtent>? extents)
    {
        request.Prepare(command, flags, offset, length, payload, readBuffer, context, extents);
        var task = new ValueTask(request, request.Version);
        request.RegisterCancellation(cancellationToken);
        if (!_queue.Writer.TryWrite(request))
        {
            request.Complete(Failure ?? new ObjectDisposedException(nameof(NbdClient), "The NBD connection is closed."));
        }

        return task;
    }
}
