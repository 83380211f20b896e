namespace NbdAttachment.Engine;

/// <summary>
/// The one in-flight table of a connection, keyed by cookie (slot index in the low 32 bits, a generation in the
/// high 32). Slots are pre-allocated, so steady-state I/O allocates nothing; when all are taken, callers wait.
/// </summary>
internal sealed class RequestTable
{
    /// <summary>Slots kept for the client's own requests (journal replay) so they never wait behind callers.</summary>
    public const int InternalSlots = 16;

    private readonly NbdRequest[] _slots;
    private readonly Stack<NbdRequest> _free;
    private readonly Stack<NbdRequest> _internalFree;
    private readonly SlotGate _available;
    private readonly SlotGate _internalAvailable = new(InternalSlots);
    private readonly object _lock = new();

    public RequestTable(int capacity)
    {
        Capacity = capacity;
        _slots = new NbdRequest[capacity + InternalSlots];
        _free = new Stack<NbdRequest>(capacity);
        _internalFree = new Stack<NbdRequest>(InternalSlots);
        for (var i = _slots.Length - 1; i >= 0; i--)
        {
            _slots[i] = new NbdRequest(this, i);
            (i < capacity ? _free : _internalFree).Push(_slots[i]);
        }

        _available = new SlotGate(capacity);
    }

    /// <summary>Slots for callers' requests (the in-flight limit).</summary>
    public int Capacity { get; }

    /// <summary>Callers' slots in use (queued, sent, or waiting for their caller to read the result).</summary>
    public int InUse
    {
        get
        {
            lock (_lock)
            {
                return Capacity - _free.Count;
            }
        }
    }

    /// <summary>Rents one of the slots kept for the client's own requests.</summary>
    public async ValueTask<NbdRequest> RentInternalAsync(CancellationToken cancellationToken)
    {
        await _internalAvailable.WaitAsync(cancellationToken).ConfigureAwait(false);
        lock (_lock)
        {
            return _internalFree.Pop();
        }
    }

    public ValueTask<NbdRequest> RentAsync(CancellationToken cancellationToken)
    {
        if (_available.TryTake())
        {
            return new ValueTask<NbdRequest>(Pop());
        }

        return RentSlowAsync(cancellationToken);
    }

    /// <summary>Finds the request a reply belongs to; null when no sent request has that cookie.</summary>
    public NbdRequest? Find(ulong cookie)
    {
        var slot = (uint)cookie;
        if (slot >= (uint)_slots.Length)
        {
            return null;
        }

        var request = _slots[slot];
        return request.Cookie == cookie && request.State == NbdRequest.StateSent ? request : null;
    }

    /// <summary>A snapshot of the requests currently on the wire.</summary>
    public List<NbdRequest> SnapshotSent()
    {
        var sent = new List<NbdRequest>();
        foreach (var request in _slots)
        {
            if (request.State == NbdRequest.StateSent)
            {
                sent.Add(request);
            }
        }

        return sent;
    }

    public void Release(NbdRequest request)
    {
        var isInternal = request.Slot >= Capacity;
        lock (_lock)
        {
            (isInternal ? _internalFree : _free).Push(request);
        }

        (isInternal ? _internalAvailable : _available).Release();
    }

    private NbdRequest Pop()
    {
        lock (_lock)
        {
            return _free.Pop();
        }
    }

    [System.Runtime.CompilerServices.AsyncMethodBuilder(typeof(System.Runtime.CompilerServices.PoolingAsyncValueTaskMethodBuilder<>))]
    private async ValueTask<NbdRequest> RentSlowAsync(CancellationToken cancellationToken)
    {
        await _available.WaitAsync(cancellationToken).ConfigureAwait(false);
        return Pop();
    }
}
