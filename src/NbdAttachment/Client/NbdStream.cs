using System.Buffers;

namespace NbdAttachment.Client;

/// <summary>
/// A seekable <see cref="Stream"/> over one NBD export: byte-granular reads and writes at any position
/// (the client handles alignment), a fixed <see cref="Length"/> equal to the export size, and
/// <see cref="FlushAsync(CancellationToken)"/> mapped to <c>NBD_CMD_FLUSH</c>. Like most streams it keeps
/// one <see cref="Position"/> and is not meant for concurrent use; use the <see cref="NbdClient"/> directly for parallel I/O.
/// </summary>
public sealed class NbdStream : Stream
{
    private readonly NbdClient _client;
    private readonly bool _leaveOpen;
    private long _position;
    private int _disposed;

    /// <summary>Wraps <paramref name="client"/>.</summary>
    /// <param name="client">A connected client.</param>
    /// <param name="leaveOpen"><see langword="true"/> to keep the client open when the stream is disposed.</param>
    public NbdStream(NbdClient client, bool leaveOpen = false)
    {
        ArgumentNullException.ThrowIfNull(client);
        _client = client;
        _leaveOpen = leaveOpen;
    }

    /// <summary>The client this stream reads and writes through.</summary>
    public NbdClient Client => _client;

    /// <inheritdoc />
    public override bool CanRead => _disposed == 0;

    /// <inheritdoc />
    public override bool CanSeek => _disposed == 0;

    /// <summary><see langword="true"/> unless the stream is disposed or the export is read-only.</summary>
    public override bool CanWrite => _disposed == 0 && !_client.Export.IsReadOnly;

    /// <summary>The export size in bytes; it never changes.</summary>
    public override long Length
    {
        get
        {
            ThrowIfDisposed();
            return _client.Export.Size;
        }
    }

    /// <summary>The byte offset of the next read or write. It may be set past the end; reads there return 0 bytes.</summary>
    public override long Position
    {
        get
        {
            ThrowIfDisposed();
            return _position;
        }

        set
        {
            ThrowIfDisposed();
            ArgumentOutOfRangeException.ThrowIfNegative(value);
            _position = value;
        }
    }

    /// <inheritdoc />
    public override long Seek(long offset, SeekOrigin origin)
    {
        ThrowIfDisposed();
        long target = origin switch
        {
            SeekOrigin.Begin => offset,
            SeekOrigin.Current => _position + offset,
            SeekOrigin.End => _client.Export.Size + offset,
            _ => throw new ArgumentOutOfRangeException(nameof(origin), origin, "Unknown seek origin."),
        };
        if (target < 0)
        {
            throw new IOException($"Cannot seek to {target}: before the start of the export.");
        }

        _position = target;
        return target;
    }

    /// <summary>Always throws: an NBD export cannot be resized through the protocol.</summary>
    /// <param name="value">Ignored.</param>
    /// <exception cref="NotSupportedException">Always.</exception>
    public override void SetLength(long value) =>
        throw new NotSupportedException("An NBD export has a fixed size; it cannot be resized through NbdStream.");

    /// <inheritdoc />
    public override int Read(byte[] buffer, int offset, int count)
    {
        ValidateBufferArguments(buffer, offset, count);
        return ReadAsync(buffer.AsMemory(offset, count)).AsTask().GetAwaiter().GetResult();
    }

    /// <inheritdoc />
    public override int Read(Span<byte> buffer)
    {
        var rented = ArrayPool<byte>.Shared.Rent(buffer.Length);
        try
        {
            int read = ReadAsync(rented.AsMemory(0, buffer.Length)).AsTask().GetAwaiter().GetResult();
            rented.AsSpan(0, read).CopyTo(buffer);
            return read;
        }
        finally
        {
            ArrayPool<byte>.Shared.Return(rented);
        }
    }

    /// <inheritdoc />
    public override Task<int> ReadAsync(byte[] buffer, int offset, int count, CancellationToken cancellationToken)
    {
        ValidateBufferArguments(buffer, offset, count);
        return ReadAsync(buffer.AsMemory(offset, count), cancellationToken).AsTask();
    }

    /// <summary>Reads up to <paramref name="buffer"/>.Length bytes at <see cref="Position"/>; fewer at the end of the export, 0 past it.</summary>
    /// <param name="buffer">Receives the data.</param>
    /// <param name="cancellationToken">Cancels the wait.</param>
    public override async ValueTask<int> ReadAsync(Memory<byte> buffer, CancellationToken cancellationToken = default)
    {
        ThrowIfDisposed();
        long position = _position;
        long available = _client.Export.Size - position;
        if (available <= 0 || buffer.IsEmpty)
        {
            return 0;
        }

        int count = (int)Math.Min(buffer.Length, available);
        await _client.ReadAsync(position, buffer[..count], cancellationToken).ConfigureAwait(false);
        _position = position + count;
        return count;
    }

    /// <inheritdoc />
    public override void Write(byte[] buffer, int offset, int count)
    {
        ValidateBufferArguments(buffer, offset, count);
        WriteAsync(buffer.AsMemory(offset, count)).AsTask().GetAwaiter().GetResult();
    }

    /// <inheritdoc />
    public override void Write(ReadOnlySpan<byte> buffer)
    {
        var rented = ArrayPool<byte>.Shared.Rent(buffer.Length);
        try
        {
            buffer.CopyTo(rented);
            WriteAsync(rented.AsMemory(0, buffer.Length)).AsTask().GetAwaiter().GetResult();
        }
        finally
        {
            ArrayPool<byte>.Shared.Return(rented);
        }
    }

    /// <inheritdoc />
    public override Task WriteAsync(byte[] buffer, int offset, int count, CancellationToken cancellationToken)
    {
        ValidateBufferArguments(buffer, offset, count);
        return WriteAsync(buffer.AsMemory(offset, count), cancellationToken).AsTask();
    }

    /// <summary>Writes <paramref name="buffer"/> at <see cref="Position"/> and advances it.</summary>
    /// <param name="buffer">The bytes to write.</param>
    /// <param name="cancellationToken">Cancels the wait.</param>
    /// <exception cref="NotSupportedException">The export is read-only, or the write would run past its end (nothing is written).</exception>
    public override async ValueTask WriteAsync(ReadOnlyMemory<byte> buffer, CancellationToken cancellationToken = default)
    {
        ThrowIfDisposed();
        if (_client.Export.IsReadOnly)
        {
            throw new NotSupportedException($"The NBD export '{_client.Export.ExportName}' is read-only.");
        }

        long position = _position;
        long size = _client.Export.Size;
        if (position + buffer.Length > size)
        {
            throw new NotSupportedException(
                $"Cannot write {buffer.Length} bytes at offset {position}: the NBD export has a fixed size of {size} bytes and cannot grow.");
        }

        if (buffer.IsEmpty)
        {
            return;
        }

        await _client.WriteAsync(position, buffer, NbdCommandOptions.None, cancellationToken).ConfigureAwait(false);
        _position = position + buffer.Length;
    }

    /// <inheritdoc />
    public override void Flush() => FlushAsync(CancellationToken.None).GetAwaiter().GetResult();

    /// <summary>Sends <c>NBD_CMD_FLUSH</c> when the export is writable and the server supports it; otherwise does nothing.</summary>
    /// <param name="cancellationToken">Cancels the wait.</param>
    public override Task FlushAsync(CancellationToken cancellationToken)
    {
        ThrowIfDisposed();
        return CanWrite && _client.Export.CanFlush ? _client.FlushAsync(cancellationToken).AsTask() : Task.CompletedTask;
    }

    /// <summary>Disposes the client unless the stream was created with <c>leaveOpen</c>.</summary>
    public override async ValueTask DisposeAsync()
    {
        if (Interlocked.Exchange(ref _disposed, 1) == 0 && !_leaveOpen)
        {
            await _client.DisposeAsync().ConfigureAwait(false);
        }

        GC.SuppressFinalize(this);
    }

    /// <inheritdoc />
    protected override void Dispose(bool disposing)
    {
        if (disposing && Interlocked.Exchange(ref _disposed, 1) == 0 && !_leaveOpen)
        {
            _client.DisposeAsync().AsTask().GetAwaiter().GetResult();
        }

        base.Dispose(disposing);
    }

    private void ThrowIfDisposed() => ObjectDisposedException.ThrowIf(_disposed != 0, this);
}
