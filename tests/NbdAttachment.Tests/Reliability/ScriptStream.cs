namespace NbdAttachment.Tests.Reliability;

/// <summary>
/// An in-memory duplex stream standing in for a socket: reads return a scripted server byte stream (in
/// randomly sized pieces), each segment released only once the client has written at least its gate in bytes;
/// after the script, reads see end of stream (or wait until disposed when <see cref="HangAtEnd"/>). Writes are
/// counted and discarded.
/// </summary>
internal sealed class ScriptStream : Stream
{
    private readonly List<(long Gate, byte[] Bytes)> _segments;
    private readonly Random _rng;
    private readonly object _lock = new();
    private TaskCompletionSource _progress = new(TaskCreationOptions.RunContinuationsAsynchronously);
    private int _segment;
    private int _position;
    private long _written;
    private bool _disposed;

    public ScriptStream(IEnumerable<(long Gate, byte[] Bytes)> segments, int seed)
    {
        _segments = [.. segments];
        _rng = new Random(seed);
    }

    public bool HangAtEnd { get; init; }

    /// <summary>How long a gated segment waits for the client's bytes before it is released anyway.</summary>
    public TimeSpan GateTimeout { get; init; } = TimeSpan.FromMilliseconds(50);

    public long Written
    {
        get
        {
            lock (_lock)
            {
                return _written;
            }
        }
    }

    public override bool CanRead => true;

    public override bool CanSeek => false;

    public override bool CanWrite => true;

    public override long Length => throw new NotSupportedException();

    public override long Position { get => throw new NotSupportedException(); set => throw new NotSupportedException(); }

    public override async ValueTask<int> ReadAsync(Memory<byte> buffer, CancellationToken cancellationToken = default)
    {
        while (true)
        {
            Task wait;
            lock (_lock)
            {
                ObjectDisposedException.ThrowIf(_disposed, this);
                while (_segment < _segments.Count && _position >= _segments[_segment].Bytes.Length)
                {
                    _segment++;
                    _position = 0;
                }

                if (_segment >= _segments.Count && !HangAtEnd)
                {
                    return 0;
                }

                if (_segment < _segments.Count && _written >= _segments[_segment].Gate)
                {
                    var bytes = _segments[_segment].Bytes;
                    var take = Math.Min(Math.Min(buffer.Length, bytes.Length - _position), _rng.Next(3) == 0 ? _rng.Next(1, 32) : 65536);
                    bytes.AsSpan(_position, take).CopyTo(buffer.Span);
                    _position += take;
                    return take;
                }

                wait = _progress.Task;
            }

            try
            {
                await wait.WaitAsync(GateTimeout, cancellationToken).ConfigureAwait(false);
            }
            catch (TimeoutException)
            {
                // The client will not write more (for example a request cancelled before it was sent): like a
                // server that answers anyway, release the segment.
                lock (_lock)
                {
                    if (_segment < _segments.Count)
                    {
                        _segments[_segment] = (0, _segments[_segment].Bytes);
                    }
                }
            }
        }
    }

    public override ValueTask WriteAsync(ReadOnlyMemory<byte> buffer, CancellationToken cancellationToken = default)
    {
        Write(buffer.Span);
        return ValueTask.CompletedTask;
    }

    public override void Write(ReadOnlySpan<byte> buffer)
    {
        TaskCompletionSource progress;
        lock (_lock)
        {
            ObjectDisposedException.ThrowIf(_disposed, this);
            _written += buffer.Length;
            progress = _progress;
            _progress = new(TaskCreationOptions.RunContinuationsAsynchronously);
        }

        progress.TrySetResult();
    }

    public override void Write(byte[] buffer, int offset, int count) => Write(buffer.AsSpan(offset, count));

    public override Task WriteAsync(byte[] buffer, int offset, int count, CancellationToken cancellationToken) =>
        WriteAsync(buffer.AsMemory(offset, count), cancellationToken).AsTask();

    public override Task<int> ReadAsync(byte[] buffer, int offset, int count, CancellationToken cancellationToken) =>
        ReadAsync(buffer.AsMemory(offset, count), cancellationToken).AsTask();

    public override int Read(byte[] buffer, int offset, int count) => ReadAsync(buffer.AsMemory(offset, count)).AsTask().GetAwaiter().GetResult();

    public override void Flush()
    {
    }

    public override Task FlushAsync(CancellationToken cancellationToken) => Task.CompletedTask;

    public override long Seek(long offset, SeekOrigin origin) => throw new NotSupportedException();

    public override void SetLength(long value) => throw new NotSupportedException();

    protected override void Dispose(bool disposing)
    {
        TaskCompletionSource progress;
        lock (_lock)
        {
            _disposed = true;
            progress = _progress;
        }

        // Like a socket: a read pending on a closed stream fails (it wakes up and sees the stream disposed).
        progress.TrySetResult();
        base.Dispose(disposing);
    }
}
