namespace NbdAttachment.Testing;

/// <summary>
/// Transmission replies: in-flight bookkeeping and the single path every reply takes to the socket
/// (delay, stall, corruption, reordering, then an atomic write under the write lock).
/// </summary>
internal sealed partial class ServerConnection
{
    private readonly SemaphoreSlim _writeLock = new(1, 1);
    private readonly SemaphoreSlim _slots;
    private readonly Lock _inFlightLock = new();
    private readonly HashSet<Task> _inFlight = [];
    private readonly List<(long Sequence, byte[] Bytes, ReplyTicket Ticket)> _heldReplies = [];
    private int _inFlightCount;
    private int _holdTarget;
    private volatile bool _repliesDropped;

    /// <summary>Starts handling a request on the thread pool, so requests of one connection overlap.</summary>
    private void Launch(NbdRequest request)
    {
        Statistics.ObserveConcurrency(Interlocked.Increment(ref _inFlightCount));
        Task task = Task.Run(() => HandleRequestAsync(request));
        lock (_inFlightLock)
        {
            _inFlight.Add(task);
        }

        // Registered after Add, so Remove can never run first.
        _ = task.ContinueWith(
            (t, state) =>
            {
                var self = (ServerConnection)state!;
                lock (self._inFlightLock)
                {
                    self._inFlight.Remove(t);
                }
            },
            this,
            CancellationToken.None,
            TaskContinuationOptions.ExecuteSynchronously,
            TaskScheduler.Default);
    }

    private async Task WaitForInFlightAsync()
    {
        Task[] pending;
        lock (_inFlightLock)
        {
            pending = [.. _inFlight];
        }

        await Task.WhenAll(pending).ConfigureAwait(false);
    }

    /// <summary>Executes one request (or an injected failure) and sends its reply. Never throws.</summary>
    private async Task HandleRequestAsync(NbdRequest request)
    {
        var ticket = new ReplyTicket(this);
        try
        {
            byte[] reply = Faults.TryConsumeFailure(request.Type, out uint error, out string message)
                ? ErrorReply(request, error, message)
                : Execute(request);
            await SendReplyAsync(request.Sequence, reply, ticket, _cts.Token).ConfigureAwait(false);
        }
        catch (Exception ex) when (ex is OperationCanceledException or ObjectDisposedException)
        {
            // Connection closing.
        }
#pragma warning disable CA1031 // Socket failures and server bugs end this connection only.
        catch (Exception ex)
        {
            if (ex is not IOException and not System.Net.Sockets.SocketException)
            {
                Statistics.ProtocolError($"internal server error: {ex}");
            }

            Abort();
        }
#pragma warning restore CA1031
        finally
        {
            ticket.Answered();
            _slots.Release();
        }
    }

    /// <summary>Sends one complete reply; <paramref name="sequence"/> is the request's arrival number on this connection.</summary>
    private async Task SendReplyAsync(long sequence, byte[] reply, ReplyTicket ticket, CancellationToken token)
    {
        if (_repliesDropped)
        {
            return;
        }

        TimeSpan delay = Faults.TakeReplyDelay();
        if (delay > TimeSpan.Zero)
        {
            await Task.Delay(delay, token).ConfigureAwait(false);
        }

        await Faults.WaitWhileStalledAsync(token).ConfigureAwait(false);
        if (Faults.TakeReplyCorruption() is { } transform)
        {
            reply = transform(reply);
        }

        await _writeLock.WaitAsync(token).ConfigureAwait(false);
        try
        {
            if (_repliesDropped)
            {
                return;
            }

            if (_holdTarget == 0)
            {
                _holdTarget = Faults.TakeReorderBatch();
            }

            if (_holdTarget > 0)
            {
                _heldReplies.Add((sequence, reply, ticket));
                if (_heldReplies.Count >= _holdTarget)
                {
                    await WriteHeldRepliesAsync(token).ConfigureAwait(false);
                }

                return;
            }

            ticket.Answered();
            await _stream.WriteAsync(reply, token).ConfigureAwait(false);
        }
        finally
        {
            _writeLock.Release();
        }
    }

    /// <summary>
    /// Writes replies held for reordering in the reverse order of their requests' arrival, so the client sees
    /// them reversed whatever order they completed in. Caller holds the write lock.
    /// </summary>
    private async Task WriteHeldRepliesAsync(CancellationToken token)
    {
        foreach ((long _, byte[] bytes, ReplyTicket ticket) in _heldReplies.OrderByDescending(r => r.Sequence))
        {
            ticket.Answered();
            await _stream.WriteAsync(bytes, token).ConfigureAwait(false);
        }

        _heldReplies.Clear();
        _holdTarget = 0;
    }

    /// <summary>Releases any replies still held for reordering (used on NBD_CMD_DISC).</summary>
    private async Task ReleaseHeldRepliesAsync(CancellationToken token)
    {
        await _writeLock.WaitAsync(token).ConfigureAwait(false);
        try
        {
            if (!_repliesDropped && _heldReplies.Count > 0)
            {
                await WriteHeldRepliesAsync(token).ConfigureAwait(false);
            }
        }
        finally
        {
            _writeLock.Release();
        }
    }

    /// <summary>Stops all further replies; waits for a reply being written to finish so none is torn.</summary>
    private async Task DropRepliesAsync(CancellationToken token)
    {
        _repliesDropped = true;
        await _writeLock.WaitAsync(token).ConfigureAwait(false);
        _heldReplies.Clear();
        _writeLock.Release();
    }

    /// <summary>
    /// Counts a request as in flight until its reply starts going out (not until the reply task ends), so the
    /// concurrency statistic never counts a request the client may already have seen answered.
    /// </summary>
    private sealed class ReplyTicket
    {
        private readonly ServerConnection _connection;
        private int _answered;

        public ReplyTicket(ServerConnection connection) => _connection = connection;

        public void Answered()
        {
            if (Interlocked.Exchange(ref _answered, 1) == 0)
            {
                Interlocked.Decrement(ref _connection._inFlightCount);
            }
        }
    }
}
