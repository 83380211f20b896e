namespace NbdAttachment.Testing;

/// <summary>
/// Injects misbehaviour into an <see cref="NbdTestServer"/>. Faults are armed by the test, are one-shot or
/// counted, and apply to transmission-phase replies of every connection unless stated otherwise.
/// Thread-safe; <see cref="Reset"/> disarms everything.
/// </summary>
public sealed class NbdFaultInjector
{
    private readonly Lock _lock = new();
    private TimeSpan _replyDelay;
    private int _delayedReplies;
    private int _reorderBatch;
    private int _failCount;
    private uint _failError;
    private NbdTestCommand? _failCommand;
    private string? _failMessage;
    private int _dropAfterRequests;
    private int _refuseConnections;
    private TaskCompletionSource? _stallGate;
    private Func<byte[], byte[]>? _corruptReply;
    private Func<byte[], byte[]>? _corruptOptionReply;

    /// <summary>True while <see cref="StallReplies"/> is in effect.</summary>
    public bool RepliesStalled
    {
        get
        {
            lock (_lock)
            {
                return _stallGate is not null;
            }
        }
    }

    /// <summary>
    /// Delays each of the next <paramref name="count"/> replies by <paramref name="delay"/> before it is sent.
    /// Replies are delayed independently, so pipelined requests still overlap. <see cref="TimeSpan.Zero"/> disarms.
    /// </summary>
    /// <param name="delay">Delay per reply.</param>
    /// <param name="count">Number of replies to delay; unlimited by default.</param>
    public void DelayReplies(TimeSpan delay, int count = int.MaxValue)
    {
        ArgumentOutOfRangeException.ThrowIfLessThan(delay, TimeSpan.Zero);
        ArgumentOutOfRangeException.ThrowIfNegative(count);
        lock (_lock)
        {
            _replyDelay = delay;
            _delayedReplies = delay == TimeSpan.Zero ? 0 : count;
        }
    }

    /// <summary>
    /// One-shot: the first connection to produce a reply afterwards holds its next <paramref name="batch"/>
    /// replies until all are ready, then sends them in the reverse order of their requests' arrival. Held replies
    /// are also released (reversed) when the client sends NBD_CMD_DISC. A client that waits for a reply before
    /// sending more requests will stall.
    /// </summary>
    /// <param name="batch">Number of replies to hold (at least 2).</param>
    public void ReorderReplies(int batch)
    {
        ArgumentOutOfRangeException.ThrowIfLessThan(batch, 2);
        lock (_lock)
        {
            _reorderBatch = batch;
        }
    }

    /// <summary>
    /// Fails the next <paramref name="count"/> requests (of <paramref name="command"/>, or of any type except
    /// NBD_CMD_DISC) without executing them. The reply is an NBD_REPLY_TYPE_ERROR chunk carrying
    /// <paramref name="message"/> when structured replies were negotiated, a simple error reply otherwise.
    /// </summary>
    /// <param name="count">Number of requests to fail.</param>
    /// <param name="nbdError">NBD error value, for example 5 (NBD_EIO) or 28 (NBD_ENOSPC).</param>
    /// <param name="command">Only fail this command type; null matches every command.</param>
    /// <param name="message">Error message for structured error chunks; a default is used when null.</param>
    public void FailNextCommands(int count, uint nbdError, NbdTestCommand? command = null, string? message = null)
    {
        ArgumentOutOfRangeException.ThrowIfNegative(count);
        ArgumentOutOfRangeException.ThrowIfZero(nbdError);
        lock (_lock)
        {
            _failCount = count;
            _failError = nbdError;
            _failCommand = command;
            _failMessage = message;
        }
    }

    /// <summary>
    /// Counts requests received on any connection; the connection that receives the
    /// <paramref name="requests"/>-th one executes it, then closes abruptly. That request and every other
    /// request of that connection not yet answered get no reply, although their effects (if executed) remain.
    /// One-shot.
    /// </summary>
    /// <param name="requests">Number of requests to receive, counting the last one (at least 1).</param>
    public void DropConnectionAfterRequests(int requests)
    {
        ArgumentOutOfRangeException.ThrowIfLessThan(requests, 1);
        lock (_lock)
        {
            _dropAfterRequests = requests;
        }
    }

    /// <summary>Accepts and immediately closes the next <paramref name="count"/> connections, before any greeting.</summary>
    /// <param name="count">Number of connections to refuse.</param>
    public void RefuseNextConnections(int count)
    {
        ArgumentOutOfRangeException.ThrowIfNegative(count);
        lock (_lock)
        {
            _refuseConnections = count;
        }
    }

    /// <summary>
    /// Withholds every transmission reply (requests are still executed) until <see cref="ResumeReplies"/>:
    /// a server that never answers.
    /// </summary>
    public void StallReplies()
    {
        lock (_lock)
        {
            _stallGate ??= new TaskCompletionSource(TaskCreationOptions.RunContinuationsAsynchronously);
        }
    }

    /// <summary>Releases replies withheld by <see cref="StallReplies"/>.</summary>
    public void ResumeReplies()
    {
        TaskCompletionSource? gate;
        lock (_lock)
        {
            gate = _stallGate;
            _stallGate = null;
        }

        gate?.TrySetResult();
    }

    /// <summary>
    /// One-shot: the complete bytes of the next transmission reply (every chunk of it) are passed to
    /// <paramref name="transform"/>, and its result is written instead. Return an empty array to drop the reply.
    /// </summary>
    /// <param name="transform">Receives the original bytes and returns the bytes to send.</param>
    public void CorruptNextReply(Func<byte[], byte[]> transform)
    {
        ArgumentNullException.ThrowIfNull(transform);
        lock (_lock)
        {
            _corruptReply = transform;
        }
    }

    /// <summary>
    /// One-shot: like <see cref="CorruptNextReply"/>, for the next handshake message the server sends after the
    /// greeting (an option reply, or the NBD_OPT_EXPORT_NAME reply).
    /// </summary>
    /// <param name="transform">Receives the original bytes and returns the bytes to send.</param>
    public void CorruptNextOptionReply(Func<byte[], byte[]> transform)
    {
        ArgumentNullException.ThrowIfNull(transform);
        lock (_lock)
        {
            _corruptOptionReply = transform;
        }
    }

    /// <summary>Disarms every fault and releases stalled replies.</summary>
    public void Reset()
    {
        lock (_lock)
        {
            _replyDelay = TimeSpan.Zero;
            _delayedReplies = 0;
            _reorderBatch = 0;
            _failCount = 0;
            _failMessage = null;
            _failCommand = null;
            _dropAfterRequests = 0;
            _refuseConnections = 0;
            _corruptReply = null;
            _corruptOptionReply = null;
        }

        ResumeReplies();
    }

    internal bool TryConsumeRefusal()
    {
        lock (_lock)
        {
            if (_refuseConnections <= 0)
            {
                return false;
            }

            _refuseConnections--;
            return true;
        }
    }

    internal TimeSpan TakeReplyDelay()
    {
        lock (_lock)
        {
            if (_delayedReplies <= 0)
            {
                return TimeSpan.Zero;
            }

            _delayedReplies--;
            return _replyDelay;
        }
    }

    internal int TakeReorderBatch()
    {
        lock (_lock)
        {
            int batch = _reorderBatch;
            _reorderBatch = 0;
            return batch;
        }
    }

    internal bool TryConsumeFailure(ushort commandType, out uint error, out string message)
    {
        lock (_lock)
        {
            if (_failCount > 0 && commandType != (ushort)NbdTestCommand.Disconnect
                && (_failCommand is null || (ushort)_failCommand.Value == commandType))
            {
                _failCount--;
                error = _failError;
                message = _failMessage ?? $"injected failure (error {_failError})";
                return true;
            }
        }

        error = 0;
        message = string.Empty;
        return false;
    }

    internal bool ConsumeRequestForDrop()
    {
        lock (_lock)
        {
            if (_dropAfterRequests <= 0)
            {
                return false;
            }

            _dropAfterRequests--;
            return _dropAfterRequests == 0;
        }
    }

    internal async Task WaitWhileStalledAsync(CancellationToken cancellationToken)
    {
        while (true)
        {
            TaskCompletionSource? gate;
            lock (_lock)
            {
                gate = _stallGate;
            }

            if (gate is null)
            {
                return;
            }

            await gate.Task.WaitAsync(cancellationToken).ConfigureAwait(false);
        }
    }

    internal Func<byte[], byte[]>? TakeReplyCorruption()
    {
        lock (_lock)
        {
            Func<byte[], byte[]>? transform = _corruptReply;
            _corruptReply = null;
            return transform;
        }
    }

    internal Func<byte[], byte[]>? TakeOptionReplyCorruption()
    {
        lock (_lock)
        {
            Func<byte[], byte[]>? transform = _corruptOptionReply;
            _corruptOptionReply = null;
            return transform;
        }
    }
}
