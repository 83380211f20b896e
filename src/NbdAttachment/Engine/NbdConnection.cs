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
internal sealed partial class NbdConnection
{
    /// <summary>Queued after the last request to make the writer send NBD_CMD_DISC and stop.</summary>
    internal static readonly NbdRequest DisconnectMarker = new(null!, -1);

    /// <summary>Queued to wake the writer of a wire that is stopping (it waits without a token, allocation-free).</summary>
    internal static readonly NbdRequest WakeMarker = new(null!, -1);

    /// <summary>The outcome given to requests released without an answer (their caller already heard).</summary>
    private static readonly NbdConnectionException Released = new("The connection was lost before the server answered.");

    private readonly Channel<NbdRequest> _queue = Channel.CreateUnbounded<NbdRequest>(new UnboundedChannelOptions
    {
        SingleReader = true,
        AllowSynchronousContinuations = false,
    });

    private readonly RequestTable _table;
    private readonly WriteJournal? _journal;
    private int _earlyFlush;
    private readonly object _lock = new();
    private List<NbdRequest> _replay = [];
    private NbdWire? _wire;
    private Exception? _failure;

    public NbdConnection(NbdExportInfo export, int maxInFlight, ILogger logger, long journalCapacity = 0)
    {
        Export = export;
        Logger = logger;
        _table = new RequestTable(maxInFlight);

        // Only a server that caches writes (it offers FLUSH) can lose acknowledged ones.
        _journal = journalCapacity > 0 && export.CanFlush && !export.IsReadOnly ? new WriteJournal(journalCapacity) : null;
    }

    /// <summary>The journal of acknowledged, unflushed writes; null when disabled.</summary>
    public WriteJournal? Journal => _journal;

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

        var error = await wire.RunAsync(replay, _journal is { Count: > 0 } ? ReplayJournalAsync : null).ConfigureAwait(false);
        lock (_lock)
        {
            _wire = null;
            foreach (var request in _table.SnapshotSent())
            {
                if (request.Abandoned || request.IsInternal)
                {
                    // Its caller gave up and may reuse its buffer, or it was the client's own: never re-send it.
                    request.Complete(Released);
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

    [System.Runtime.CompilerServices.AsyncMethodBuilder(typeof(System.Runtime.CompilerServices.PoolingAsyncValueTaskMethodBuilder))]
    private async ValueTask SubmitSlowAsync(ValueTask<NbdRequest> rent, NbdCommand command, NbdCommandFlags flags, ulong offset, uint length, ReadOnlyMemory<byte> payload, Memory<byte> readBuffer, CancellationToken cancellationToken, string? context, List<NbdExtent>? extents)
    {
        var request = await rent.ConfigureAwait(false);
        await Enqueue(request, command, flags, offset, length, payload, readBuffer, cancellationToken, context, extents).ConfigureAwait(false);
    }

    private ValueTask Enqueue(NbdRequest request, NbdCommand command, NbdCommandFlags flags, ulong offset, uint length, ReadOnlyMemory<byte> payload, Memory<byte> readBuffer, CancellationToken cancellationToken, string? context, List<NbdExtent>? extents)
    {
        request.Prepare(command, flags, offset, length, payload, readBuffer, context, extents);
        if (_journal is { } journal)
        {
            if (command is NbdCommand.Write or NbdCommand.WriteZeroes or NbdCommand.Trim)
            {
                request.AttachJournal(journal, journal.Record(command, (long)offset, length, payload.Span), 0);
                if (journal.Bytes > journal.Capacity / 2)
                {
                    StartEarlyFlush();
                }
            }
            else if (command == NbdCommand.Flush)
            {
                request.AttachJournal(journal, null, journal.Watermark);
            }
        }

        var task = new ValueTask(request, request.Version);
        request.RegisterCancellation(cancellationToken);
        Post(request);
        return task;
    }

    /// <summary>Hands a prepared request to the writer; fails it at once when the connection is closed.</summary>
    private void Post(NbdRequest request)
    {
        if (!_queue.Writer.TryWrite(request))
        {
            request.Complete(Failure ?? new ObjectDisposedException(nameof(NbdClient), "The NBD connection is closed."));
        }
    }

    /// <summary>The journal passed its capacity: flush once in the background so the server makes it durable.</summary>
    private void StartEarlyFlush()
    {
        if (Interlocked.CompareExchange(ref _earlyFlush, 1, 0) == 0)
        {
            _ = EarlyFlushAsync();
        }
    }

    private async Task EarlyFlushAsync()
    {
        try
        {
            // One of the client's own slots: a caller's slot would make a caller wait for every flush.
            var request = await _table.RentInternalAsync(CancellationToken.None).ConfigureAwait(false);
            request.Prepare(NbdCommand.Flush, NbdCommandFlags.None, 0, 0, default, default);
            request.IsInternal = true;
            request.AttachJournal(_journal!, null, _journal!.Watermark);
            var reply = new ValueTask(request, request.Version);
            Post(request);
            await reply.ConfigureAwait(false);
        }
#pragma warning disable CA1031 // A failed early flush is retried at the next write past capacity; the error reaches callers through their own requests.
        catch (Exception)
#pragma warning restore CA1031
        {
        }
        finally
        {
            Volatile.Write(ref _earlyFlush, 0);
        }
    }

    /// <summary>
    /// Runs first on a new wire: writes every acknowledged, unflushed write again, in acknowledgement order
    /// (overlapping ones one after another), before any replayed or new request is sent.
    /// </summary>
    private async Task ReplayJournalAsync(NbdWire wire)
    {
        var entries = _journal!.Snapshot();
        var pending = new List<(WriteJournal.Entry Entry, ValueTask Reply)>(RequestTable.InternalSlots);
        try
        {
            foreach (var entry in entries)
            {
                if (pending.Count == RequestTable.InternalSlots || pending.Exists(p => p.Entry.Overlaps(entry)))
                {
                    await DrainAsync(wire, pending).ConfigureAwait(false);
                }

                pending.Add((entry, await StartReplayAsync(wire, entry).ConfigureAwait(false)));
            }
        }
        finally
        {
            // Also on failure: every reply sent is awaited, so no internal slot is lost.
            await DrainAsync(wire, pending).ConfigureAwait(false);
        }

        Diagnostics.Log.JournalReplayed(Logger, entries.Count, _journal.Bytes);
    }

    /// <summary>Puts one journalled write into the send buffer and returns the task for its reply.</summary>
    private async ValueTask<ValueTask> StartReplayAsync(NbdWire wire, WriteJournal.Entry entry)
    {
        var request = await _table.RentInternalAsync(wire.StopToken).ConfigureAwait(false);
        request.Prepare(entry.Command, NbdCommandFlags.None, (ulong)entry.Offset, (uint)entry.Length, entry.Payload, default);
        request.IsInternal = true;
        var reply = new ValueTask(request, request.Version);
        request.RegisterCancellation(wire.StopToken);
        wire.WriteNow(request);
        return reply;
    }

    /// <summary>Sends the batch and waits for it; a write the server fails is tried twice more before data is declared lost.</summary>
    private async Task DrainAsync(NbdWire wire, List<(WriteJournal.Entry Entry, ValueTask Reply)> pending)
    {
        const int Attempts = 3;
        Exception? failure = null;
        try
        {
            await wire.FlushNowAsync().ConfigureAwait(false);
        }
        catch (Exception ex)
        {
            failure = ex; // the replies are still awaited below: the stopping wire cancels them
        }

        foreach (var (entry, first) in pending)
        {
            // Every reply is awaited whatever happens, so each internal slot is given back.
            var reply = first;
            for (var attempt = 1; ; attempt++)
            {
                try
                {
                    await reply.ConfigureAwait(false);
                    break;
                }
                catch (NbdServerException ex) when (attempt >= Attempts)
                {
                    failure ??= new NbdDataLossException(
                        $"After reconnecting, the acknowledged but unflushed write of {entry.Length} bytes at offset {entry.Offset} could not be written again ({Attempts} attempts): {ex.Message}",
                        ex);
                    break;
                }
                catch (NbdServerException)
                {
                    // Tried again below.
                }
                catch (Exception ex)
                {
                    failure ??= ex; // the wire is stopping
                    break;
                }

                try
                {
                    reply = await StartReplayAsync(wire, entry).ConfigureAwait(false);
                }
                catch (Exception ex)
                {
                    failure ??= ex;
                    break;
                }

                try
                {
                    await wire.FlushNowAsync().ConfigureAwait(false);
                }
                catch (Exception ex)
                {
                    failure ??= ex; // the reply is still awaited: the stopping wire cancels it
                }
            }
        }

        pending.Clear();
        if (failure is not null)
        {
            throw failure;
        }
    }
}
