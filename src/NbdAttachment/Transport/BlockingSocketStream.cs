using System.Net.Sockets;
using System.Runtime.InteropServices;

namespace NbdAttachment.Transport;

/// <summary>
/// A connected socket used only with blocking calls. It is never registered with .NET's socket event engine, so
/// a reader blocked in recv() is woken by the kernel directly: no event-thread wake-up and thread-pool hop per
/// arrival, which on a small machine costs more CPU than the protocol work. The async methods complete
/// synchronously on the calling thread (the wire's reader has a thread of its own). Disposing shuts the socket
/// down first, which wakes any thread blocked in it; that is how cancellation, timeouts and stops reach it.
/// </summary>
internal sealed class BlockingSocketStream : Stream
{
    private readonly Socket _socket;
    private readonly byte[] _head = new byte[64];
    private readonly ArraySegment<byte>[] _gather = new ArraySegment<byte>[2];
    private int _disposed;

    /// <param name="socket">A connected socket in blocking mode; the stream owns it.</param>
    public BlockingSocketStream(Socket socket) => _socket = socket;

    public override bool CanRead => true;

    public override bool CanSeek => false;

    public override bool CanWrite => true;

    public override long Length => throw new NotSupportedException();

    public override long Position { get => throw new NotSupportedException(); set => throw new NotSupportedException(); }

    public override int Read(Span<byte> buffer)
    {
        try
        {
            return _socket.Receive(buffer);
        }
        catch (SocketException ex)
        {
            throw new IOException($"Unable to read data from the transport connection: {ex.Message}", ex);
        }
    }

    public override int Read(byte[] buffer, int offset, int count) => Read(buffer.AsSpan(offset, count));

    public override ValueTask<int> ReadAsync(Memory<byte> buffer, CancellationToken cancellationToken = default)
    {
        if (cancellationToken.IsCancellationRequested)
        {
            return ValueTask.FromCanceled<int>(cancellationToken);
        }

        try
        {
            return new ValueTask<int>(Read(buffer.Span));
        }
        catch (Exception ex)
        {
            return ValueTask.FromException<int>(ex);
        }
    }

    public override Task<int> ReadAsync(byte[] buffer, int offset, int count, CancellationToken cancellationToken) =>
        ReadAsync(buffer.AsMemory(offset, count), cancellationToken).AsTask();

    public override void Write(ReadOnlySpan<byte> buffer)
    {
        try
        {
            while (!buffer.IsEmpty)
            {
                buffer = buffer[_socket.Send(buffer)..];
            }
        }
        catch (SocketException ex)
        {
            throw new IOException($"Unable to write data to the transport connection: {ex.Message}", ex);
        }
    }

    public override void Write(byte[] buffer, int offset, int count) => Write(buffer.AsSpan(offset, count));

    /// <summary>
    /// Writes <paramref name="head"/> then <paramref name="body"/> with one gathered send when the body is an
    /// array (the usual case), so a request header and its payload leave in one system call.
    /// </summary>
    public void Write(ReadOnlySpan<byte> head, ReadOnlyMemory<byte> body)
    {
        if (head.Length > _head.Length || !MemoryMarshal.TryGetArray(body, out var payload))
        {
            Write(head);
            Write(body.Span);
            return;
        }

        head.CopyTo(_head);
        _gather[0] = new ArraySegment<byte>(_head, 0, head.Length);
        _gather[1] = payload;
        int sent;
        try
        {
            sent = _socket.Send(_gather);
        }
        catch (SocketException ex)
        {
            throw new IOException($"Unable to write data to the transport connection: {ex.Message}", ex);
        }
        finally
        {
            _gather[1] = default; // do not keep the caller's array alive
        }

        // A blocking send normally takes everything; finish by hand if it did not.
        if (sent < head.Length)
        {
            Write(head[sent..]);
            sent = head.Length;
        }

        Write(body.Span[(sent - head.Length)..]);
    }

    public override ValueTask WriteAsync(ReadOnlyMemory<byte> buffer, CancellationToken cancellationToken = default)
    {
        if (cancellationToken.IsCancellationRequested)
        {
            return ValueTask.FromCanceled(cancellationToken);
        }

        try
        {
            Write(buffer.Span);
            return ValueTask.CompletedTask;
        }
        catch (Exception ex)
        {
            return ValueTask.FromException(ex);
        }
    }

    public override Task WriteAsync(byte[] buffer, int offset, int count, CancellationToken cancellationToken) =>
        WriteAsync(buffer.AsMemory(offset, count), cancellationToken).AsTask();

    public override void Flush()
    {
    }

    public override Task FlushAsync(CancellationToken cancellationToken) => Task.CompletedTask;

    public override long Seek(long offset, SeekOrigin origin) => throw new NotSupportedException();

    public override void SetLength(long value) => throw new NotSupportedException();

    protected override void Dispose(bool disposing)
    {
        if (disposing && Interlocked.Exchange(ref _disposed, 1) == 0)
        {
            try
            {
                _socket.Shutdown(SocketShutdown.Both); // wakes threads blocked in recv() or send()
            }
            catch (SocketException)
            {
            }

            _socket.Dispose();
        }

        base.Dispose(disposing);
    }
}
