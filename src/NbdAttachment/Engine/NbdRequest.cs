using System.Buffers;
using System.Threading.Tasks.Sources;
using NbdAttachment.Client;
using NbdAttachment.Protocol;

namespace NbdAttachment.Engine;

/// <summary>
/// One request slot: a pooled, reusable <see cref="IValueTaskSource"/>. Completion is queued to the thread pool
/// (the request is its own work item), so user code never runs on the read loop and nothing is allocated.
/// A slot is owned by the caller (until it reads the result) and by the wire (until the server's reply is
/// complete, or the request is dropped before it was sent); it returns to the free list when both have let go.
/// </summary>
internal sealed class NbdRequest : IValueTaskSource, IThreadPoolWorkItem
{
    public const int StateFree = 0;
    public const int StateQueued = 1;
    public const int StateSent = 2;
    public const int StateDone = 3;

    private static readonly Action<object?> CancelCallback = static state => ((NbdRequest)state!).Cancel();

    private readonly RequestTable _table;
    private ManualResetValueTaskSourceCore<bool> _core; // mutable struct: never readonly
    private int _state;
    private int _owners;
    private CancellationTokenRegistration _registration;
    private uint _generation;
    private NbdWire? _transferWire;
    private WriteJournal? _journal;
    private WriteJournal.Entry? _journalEntry;
    private long _watermark;
    private int _extentsBase;
    private bool _hasDeferred;
    private Exception? _deferred;
    private Exception? _outcome;

    public NbdRequest(RequestTable table, int slot)
    {
        _table = table;
        Slot = slot;
        // Completion is handed to the thread pool by queueing this object itself (no allocation), so the
        // continuation then runs inline there, never on the read loop.
        _core.RunContinuationsAsynchronously = false;
    }

    public int Slot { get; }

    public ulong Cookie => ((ulong)_generation << 32) | (uint)Slot;

    public int State => Volatile.Read(ref _state);

    public NbdCommand Command { get; private set; }

    public NbdCommandFlags Flags { get; private set; }

    public ulong Offset { get; private set; }

    public uint Length { get; private set; }

    public ReadOnlyMemory<byte> Payload { get; private set; }

    public Memory<byte> ReadBuffer { get; private set; }

    /// <summary>Set once the caller gave up (cancelled or timed out): no more bytes may go into its buffer.</summary>
    public bool Abandoned { get; private set; }

    /// <summary>The first error reported for this reply (later ones are ignored, as the spec advises).</summary>
    public Exception? Error { get; set; }

    /// <summary>Bytes of the read range covered by data or hole chunks so far.</summary>
    public long Covered { get; set; }

    /// <summary>Block status: the meta context wanted (ids are per connection, so the wire maps the name).</summary>
    public string? Context { get; private set; }

    /// <summary>Block status: the caller's list that receives the extents.</summary>
    public List<NbdExtent>? Extents { get; private set; }

    public short Version => _core.Version;

    public long StartTimestamp { get; private set; }

    public void Prepare(NbdCommand command, NbdCommandFlags flags, ulong offset, uint length, ReadOnlyMemory<byte> payload, Memory<byte> readBuffer, string? context = null, List<NbdExtent>? extents = null)
    {
        _generation++;
        Command = command;
        Flags = flags;
        Offset = offset;
        Length = length;
        Payload = payload;
        ReadBuffer = readBuffer;
        Context = context;
        Abandoned = false;
        Error = null;
        Covered = 0;
        Extents = extents;
        _extentsBase = extents?.Count ?? 0;
        _journal = null;
        _journalEntry = null;
        IsInternal = false;
        _owners = 2;
        StartTimestamp = System.Diagnostics.Stopwatch.GetTimestamp();
        Volatile.Write(ref _state, StateQueued);
    }

    /// <summary>Sent by the client itself (journal replay): never replayed by a later wire.</summary>
    public bool IsInternal { get; set; }

    /// <summary>
    /// Ties the request to the journal: a write's copy is kept once the server acknowledges it; a flush
    /// drops what was acknowledged before <paramref name="watermark"/>.
    /// </summary>
    public void AttachJournal(WriteJournal journal, WriteJournal.Entry? entry, long watermark)
    {
        _journal = journal;
        _journalEntry = entry;
        _watermark = watermark;
    }

    public void RegisterCancellation(CancellationToken cancellationToken)
    {
        if (cancellationToken.CanBeCanceled)
        {
            _registration = cancellationToken.UnsafeRegister(CancelCallback, this);
        }
    }

    /// <summary>The writer is about to put the request on the wire. False if it was abandoned while queued.</summary>
    public bool TryMarkSent() => TryStartSend(null);

    /// <summary>
    /// The writer puts the request on the wire. With <paramref name="transferWire"/>, the payload then moves
    /// directly between the socket and the caller's memory: until <see cref="EndTransfer"/>, the caller is not told
    /// of any outcome (so its memory stays untouched after it is told), and abandoning it stops that wire.
    /// False if the request was abandoned while queued.
    /// </summary>
    public bool TryStartSend(NbdWire? transferWire)
    {
        lock (this)
        {
            if (Abandoned || Interlocked.CompareExchange(ref _state, StateSent, StateQueued) != StateQueued)
            {
                return false;
            }

            _transferWire = transferWire;
            return true;
        }
    }

    /// <summary>The reader starts receiving this request's data straight into the caller's buffer.</summary>
    public bool TryBeginTransfer(NbdWire wire)
    {
        lock (this)
        {
            if (Abandoned)
            {
                return false;
            }

            _transferWire = wire;
            return true;
        }
    }

    /// <summary>Direct transfer over: delivers an outcome that arrived meanwhile.</summary>
    public void EndTransfer()
    {
        lock (this)
        {
            _transferWire = null;
            if (_hasDeferred)
            {
                _hasDeferred = false;
                var deferred = _deferred;
                _deferred = null;
                Signal(deferred);
            }
        }
    }

    /// <summary>
    /// A broken wire hands a sent request back for replay on the next connection. What the broken wire had
    /// received of its reply is forgotten: the replay's reply starts over.
    /// </summary>
    public bool TryRequeue()
    {
        if (Interlocked.CompareExchange(ref _state, StateQueued, StateSent) != StateSent)
        {
            return false;
        }

        lock (this)
        {
            Error = null;
            Covered = 0;
            if (Extents is { } extents && !Abandoned && extents.Count > _extentsBase)
            {
                extents.RemoveRange(_extentsBase, extents.Count - _extentsBase);
            }
        }

        return true;
    }

    /// <summary>Completes the request (null error = success) and releases the wire's ownership.</summary>
    public void Complete(Exception? error)
    {
        var previous = Interlocked.Exchange(ref _state, StateDone);
        if (previous is StateDone or StateFree)
        {
            return;
        }

        // Journal first, so a flush the caller submits after hearing of success covers this write.
        if (_journal is { } journal)
        {
            if (_journalEntry is { } entry)
            {
                if (error is null)
                {
                    journal.Acknowledge(entry);
                }
                else
                {
                    journal.Discard(entry);
                }
            }
            else if (error is null && Command == NbdCommand.Flush)
            {
                journal.FlushCompleted(_watermark);
            }
        }

        // Outside the lock: disposing waits for a cancellation callback already running, which takes the lock.
        // Waiting here also keeps that callback from outliving this use of the slot. From now on (state Done) a
        // cancellation changes nothing, so Abandoned is settled.
        _registration.Dispose();
        _registration = default;
        bool abandoned;
        lock (this)
        {
            abandoned = Abandoned;
        }

        var moved = Command is NbdCommand.Read or NbdCommand.Write ? Length : 0;
        var outcome = abandoned ? Diagnostics.NbdMeter.Cancelled : error is null ? Diagnostics.NbdMeter.Ok : Diagnostics.NbdMeter.Failed;
        Diagnostics.NbdMeter.RecordCompletion(NbdNames.Command(Command), moved, StartTimestamp, outcome);

        // Tell the caller last, and let go right after, so the slot is free by the time the caller submits again.
        if (!abandoned)
        {
            lock (this)
            {
                SignalOrDefer(error);
            }
        }

        ReleaseOwner();
    }

    /// <summary>Copies reply bytes into the caller's buffer unless the caller already gave up.</summary>
    public void CopyToReadBuffer(in System.Buffers.ReadOnlySequence<byte> data, long offsetInRequest)
    {
        lock (this)
        {
            if (!Abandoned)
            {
                data.CopyTo(ReadBuffer.Span.Slice((int)offsetInRequest));
            }
        }
    }

    /// <summary>Zero-fills part of the caller's buffer (a hole chunk) unless the caller already gave up.</summary>
    public void ZeroReadBuffer(long offsetInRequest, int length)
    {
        lock (this)
        {
            if (!Abandoned)
            {
                ReadBuffer.Span.Slice((int)offsetInRequest, length).Clear();
            }
        }
    }

    /// <summary>The caller gave up: it is told at once; the slot stays reserved until the server's reply arrives.</summary>
    public void Abandon(Exception error)
    {
        NbdWire? transferring;
        lock (this)
        {
            if (Abandoned || State is StateDone or StateFree)
            {
                return;
            }

            Abandoned = true;
            transferring = _transferWire;
            SignalOrDefer(error);
        }

        // Bytes are moving between the socket and the caller's memory: the only way to stop them is to end the
        // wire (requests in flight are replayed on the next one); the caller is told once the transfer stopped.
        transferring?.Stop(new NbdConnectionException("A request was cancelled while its payload was in transit; the connection is re-established."));

        // A request that never reached the wire needs no reply: the writer skips it.
        if (Interlocked.CompareExchange(ref _state, StateDone, StateQueued) == StateQueued)
        {
            if (_journalEntry is { } entry)
            {
                _journal!.Discard(entry);
            }

            ReleaseOwner();
        }
    }

    public ValueTaskSourceStatus GetStatus(short token) => _core.GetStatus(token);

    public void OnCompleted(Action<object?> continuation, object? state, short token, ValueTaskSourceOnCompletedFlags flags) =>
        _core.OnCompleted(continuation, state, token, flags);

    public void GetResult(short token)
    {
        try
        {
            _core.GetResult(token);
        }
        finally
        {
            ReleaseOwner();
        }
    }

    /// <summary>Adds a block-status extent to the caller's list unless the caller already gave up.</summary>
    public void AddExtent(NbdExtent extent)
    {
        lock (this)
        {
            if (!Abandoned)
            {
                Extents!.Add(extent);
            }
        }
    }

    /// <summary>Tells the caller now, or after the direct transfer in progress ends. Must hold the lock.</summary>
    private void SignalOrDefer(Exception? error)
    {
        if (_transferWire is null)
        {
            Signal(error);
        }
        else
        {
            _hasDeferred = true;
            _deferred = error;
        }
    }

    private void Signal(Exception? error)
    {
        _outcome = error;
        ThreadPool.UnsafeQueueUserWorkItem(this, preferLocal: false);
    }

    /// <summary>Runs on the thread pool: completes the caller's await (its continuation runs here).</summary>
    void IThreadPoolWorkItem.Execute()
    {
        var error = _outcome;
        _outcome = null;
        if (error is null)
        {
            _core.SetResult(true);
        }
        else
        {
            _core.SetException(error);
        }
    }

    private void Cancel() => Abandon(new OperationCanceledException($"The {NbdNames.Command(Command)} request was cancelled."));

    private void ReleaseOwner()
    {
        if (Interlocked.Decrement(ref _owners) == 0)
        {
            _core.Reset();
            Volatile.Write(ref _state, StateFree);
            _table.Release(this);
        }
    }
}
