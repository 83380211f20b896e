namespace NbdAttachment.Engine;

/// <summary>
/// The one in-flight table of a connection, keyed by cookie (slot index in the low 32 bits, a generation in the
/// high 32). Slots are pre-allocated, so steady-state I/O allocates nothing; when all are taken, callers wait.
/// </summary>
internal sealed class RequestTable
{
    private readonly NbdRequest[] _slots;
    private readonly Stack<NbdRequest> _free;
    private readonly SemaphoreSlim _available;
    private readonly object _lock = new();

    public RequestTable(int capacity)
    {
        _slots = new NbdRequest[capacity];
        _free = new Stack<NbdRequest>(capacity);
        for (var i = capacity - 1; i >= 0; i--)
        {
            _slots[i] = new NbdRequest(this, i);
            _free.Push(_slots[i]);
        }

        _available = new SemaphoreSlim(capacity, capacity);
    }

    public int Capacity => _slots.Length;

    /// <summary>Slots in use (queued, sent, or waiting for their caller to read the result).</summary>
    public int InUse
    {
        get
        {
            lock (_lock)
            {
                return _slots.Length - _free.Count;
            }
        }
    }

    public ValueTask<NbdRequest> RentAsync(CancellationToken cancellationToken)
    {
        if (_available.Wait(0, CancellationToken.None))
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
        lock (_lock)
        {
            _free.Push(request);
        }

        _available.Release();
    }

    private NbdRequest Pop()
    {
        lock (_lock)
        {
            return _free.Pop();
        }
    }

    private async ValueTask<NbdRequest> RentSlowAsync(CancellationToken cancellationToken)
    {
        await _available.WaitAsync(cancellationToken).ConfigureAwait(false);
        return Pop();
    }
}
