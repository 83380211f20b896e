using System.Threading.Tasks.Sources;

namespace NbdAttachment.Engine;

/// <summary>
/// Counts free request slots; callers that find none wait in arrival order. Unlike <see cref="SemaphoreSlim"/>,
/// a wait allocates nothing once warm: waiters are pooled value-task sources, and a granted waiter resumes on
/// the thread pool (the waiter is its own work item), never on the thread that released the slot.
/// </summary>
internal sealed class SlotGate
{
    private readonly object _lock = new();
    private readonly Queue<Waiter> _waiters = new();
    private readonly Stack<Waiter> _spare = new();
    private int _free;

    public SlotGate(int free) => _free = free;

    /// <summary>Takes a slot at once if one is free.</summary>
    public bool TryTake()
    {
        lock (_lock)
        {
            if (_free > 0)
            {
                _free--;
                return true;
            }

            return false;
        }
    }

    /// <summary>Takes a slot, waiting for one if none is free. Cancelling gives up the wait (no slot is taken).</summary>
    public ValueTask WaitAsync(CancellationToken cancellationToken)
    {
        if (cancellationToken.IsCancellationRequested)
        {
            return ValueTask.FromCanceled(cancellationToken);
        }

        Waiter waiter;
        lock (_lock)
        {
            if (_free > 0)
            {
                _free--;
                return ValueTask.CompletedTask;
            }

            waiter = _spare.TryPop(out var spare) ? spare : new Waiter(this);
            waiter.Arm();
            _waiters.Enqueue(waiter);
        }

        waiter.RegisterCancellation(cancellationToken);
        return new ValueTask(waiter, waiter.Version);
    }

    /// <summary>Frees a slot: the longest waiter gets it, or it is counted free.</summary>
    public void Release()
    {
        lock (_lock)
        {
            while (_waiters.TryDequeue(out var waiter))
            {
                if (waiter.TryGrant())
                {
                    return;
                }
            }

            _free++;
        }
    }

    private void Recycle(Waiter waiter)
    {
        lock (_lock)
        {
            _spare.Push(waiter);
        }
    }

    /// <summary>One waiting caller. Granted or cancelled exactly once per use, decided by a compare-and-swap.</summary>
    private sealed class Waiter : IValueTaskSource, IThreadPoolWorkItem
    {
        private const int Waiting = 0;
        private const int Granted = 1;
        private const int Cancelled = 2;

        private static readonly Action<object?> CancelCallback = static s => ((Waiter)s!).TryCancel();

        private readonly SlotGate _gate;
        private ManualResetValueTaskSourceCore<bool> _core; // mutable struct: never readonly
        private CancellationTokenRegistration _registration;
        private CancellationToken _token;
        private int _state;

        public Waiter(SlotGate gate)
        {
            _gate = gate;
            _core.RunContinuationsAsynchronously = false; // completion itself runs on the thread pool
        }

        public short Version => _core.Version;

        public void Arm()
        {
            _core.Reset();
            _registration = default;
            _token = default;
            Volatile.Write(ref _state, Waiting);
        }

        public void RegisterCancellation(CancellationToken cancellationToken)
        {
            if (cancellationToken.CanBeCanceled)
            {
                _token = cancellationToken;
                _registration = cancellationToken.UnsafeRegister(CancelCallback, this);
            }
        }

        /// <summary>Called under the gate's lock: hands the slot over unless the wait was cancelled.</summary>
        public bool TryGrant()
        {
            if (Interlocked.CompareExchange(ref _state, Granted, Waiting) != Waiting)
            {
                return false;
            }

            ThreadPool.UnsafeQueueUserWorkItem(this, preferLocal: false);
            return true;
        }

        public ValueTaskSourceStatus GetStatus(short token) => _core.GetStatus(token);

        public void OnCompleted(Action<object?> continuation, object? state, short token, ValueTaskSourceOnCompletedFlags flags) =>
            _core.OnCompleted(continuation, state, token, flags);

        public void GetResult(short token)
        {
            var granted = Volatile.Read(ref _state) == Granted;
            _core.GetResult(token);

            // A cancelled waiter may still sit in the gate's queue: only a granted one (already dequeued) is reused.
            if (granted)
            {
                _gate.Recycle(this);
            }
        }

        void IThreadPoolWorkItem.Execute()
        {
            // Outside the gate's lock: disposing waits for a cancellation callback that may be running.
            _registration.Dispose();
            if (Volatile.Read(ref _state) == Granted)
            {
                _core.SetResult(true);
            }
            else
            {
                _core.SetException(new OperationCanceledException(_token));
            }
        }

        private void TryCancel()
        {
            if (Interlocked.CompareExchange(ref _state, Cancelled, Waiting) == Waiting)
            {
                ThreadPool.UnsafeQueueUserWorkItem(this, preferLocal: false);
            }
        }
    }
}
