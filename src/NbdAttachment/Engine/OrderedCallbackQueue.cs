namespace NbdAttachment.Engine;

/// <summary>
/// Runs user callbacks (events, delegates) on the thread pool one at a time, in the order they were posted, never
/// on the caller's thread. A callback that throws is reported to <c>onError</c> and does not stop the queue.
/// </summary>
internal sealed class OrderedCallbackQueue
{
    private readonly object _lock = new();
    private readonly Action<Exception> _onError;
    private Task _tail = Task.CompletedTask;

    public OrderedCallbackQueue(Action<Exception> onError) => _onError = onError;

    /// <summary>Completes when every callback posted so far has run.</summary>
    public Task Drained
    {
        get
        {
            lock (_lock)
            {
                return _tail;
            }
        }
    }

    public void Post(Action callback)
    {
        lock (_lock)
        {
            _tail = _tail.ContinueWith(
                static (_, state) =>
                {
                    var (queue, action) = ((OrderedCallbackQueue, Action))state!;
                    try
                    {
                        action();
                    }
#pragma warning disable CA1031 // A user callback must not break the queue.
                    catch (Exception ex)
#pragma warning restore CA1031
                    {
                        queue._onError(ex);
                    }
                },
                (this, callback),
                CancellationToken.None,
                TaskContinuationOptions.DenyChildAttach,
                TaskScheduler.Default);
        }
    }
}
