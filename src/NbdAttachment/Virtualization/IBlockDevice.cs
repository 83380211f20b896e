namespace NbdAttachment.Virtualization;

/// <summary>
/// The guest I/O surface of an opened storage attachment: what a host's device emulation (virtio-blk, NVMe, USB mass
/// storage) calls. Thread-safe; many requests may be outstanding. Dispose to drain and close.
/// </summary>
public interface IBlockDevice : IAsyncDisposable
{
    /// <summary>The device size in bytes.</summary>
    long Capacity { get; }

    /// <summary>The logical block size to present to the guest: 512, or the backing store's minimum block if larger.</summary>
    int LogicalBlockSize { get; }

    /// <summary>Whether the device is read-only (forced, or read-only at the source).</summary>
    bool IsReadOnly { get; }

    /// <summary>Reads <paramref name="buffer"/>.Length bytes at <paramref name="offset"/>.</summary>
    /// <param name="offset">Byte offset.</param>
    /// <param name="buffer">Receives the data.</param>
    /// <param name="cancellationToken">Cancels the wait.</param>
    ValueTask ReadAsync(long offset, Memory<byte> buffer, CancellationToken cancellationToken = default);

    /// <summary>Writes <paramref name="data"/> at <paramref name="offset"/>.</summary>
    /// <param name="offset">Byte offset.</param>
    /// <param name="data">The bytes; must stay unchanged until the task completes.</param>
    /// <param name="forceUnitAccess">Make this write durable before it completes (honoured in <see cref="DiskSynchronizationMode.Full"/>).</param>
    /// <param name="cancellationToken">Cancels the wait.</param>
    ValueTask WriteAsync(long offset, ReadOnlyMemory<byte> data, bool forceUnitAccess = false, CancellationToken cancellationToken = default);

    /// <summary>Makes completed writes durable (honoured in <see cref="DiskSynchronizationMode.Full"/>).</summary>
    /// <param name="cancellationToken">Cancels the wait.</param>
    ValueTask FlushAsync(CancellationToken cancellationToken = default);

    /// <summary>Tells the backing store a range is no longer needed; a no-op where unsupported.</summary>
    /// <param name="offset">Byte offset.</param>
    /// <param name="length">Bytes to discard.</param>
    /// <param name="cancellationToken">Cancels the wait.</param>
    ValueTask DiscardAsync(long offset, long length, CancellationToken cancellationToken = default);

    /// <summary>Makes a range read as zeroes.</summary>
    /// <param name="offset">Byte offset.</param>
    /// <param name="length">Bytes to zero.</param>
    /// <param name="cancellationToken">Cancels the wait.</param>
    ValueTask WriteZeroesAsync(long offset, long length, CancellationToken cancellationToken = default);
}
