using Microsoft.Win32.SafeHandles;
using NbdAttachment.Virtualization;

namespace NbdAttachment;

/// <summary>A storage device attachment backed by a local raw disk image file. The file is opened when the virtual machine starts.</summary>
public sealed class DiskImageStorageDeviceAttachment : StorageDeviceAttachment
{
    /// <summary>Creates the attachment. The file is not touched until the virtual machine starts.</summary>
    /// <param name="path">Path of an existing raw image file.</param>
    /// <param name="readOnly">Open the image read-only.</param>
    /// <param name="synchronizationMode">Whether guest flushes reach the disk (<see cref="DiskSynchronizationMode.Full"/>, the default) or are dropped.</param>
    public DiskImageStorageDeviceAttachment(string path, bool readOnly, DiskSynchronizationMode synchronizationMode = DiskSynchronizationMode.Full)
    {
        ArgumentException.ThrowIfNullOrEmpty(path);
        if (!Enum.IsDefined(synchronizationMode))
        {
            throw new ArgumentOutOfRangeException(nameof(synchronizationMode), synchronizationMode, "Unknown synchronization mode.");
        }

        Path = System.IO.Path.GetFullPath(path);
        IsReadOnly = readOnly;
        SynchronizationMode = synchronizationMode;
    }

    /// <summary>The full path of the image file.</summary>
    public string Path { get; }

    /// <summary>Whether the image is opened read-only.</summary>
    public bool IsReadOnly { get; }

    /// <summary>How guest flushes reach the disk.</summary>
    public DiskSynchronizationMode SynchronizationMode { get; }

    /// <inheritdoc/>
    public override string ToString() => $"Disk image {Path}{(IsReadOnly ? " (read-only)" : string.Empty)}";

    /// <inheritdoc/>
    internal override ValueTask<IBlockDevice> OpenAsync(CancellationToken cancellationToken = default)
    {
        cancellationToken.ThrowIfCancellationRequested();
        var stream = new FileStream(
            Path,
            FileMode.Open,
            IsReadOnly ? FileAccess.Read : FileAccess.ReadWrite,
            IsReadOnly ? FileShare.Read : FileShare.Read,
            bufferSize: 0,
            FileOptions.Asynchronous | FileOptions.RandomAccess);
        return ValueTask.FromResult<IBlockDevice>(new FileBlockDevice(stream, IsReadOnly, SynchronizationMode == DiskSynchronizationMode.Full));
    }

    private sealed class FileBlockDevice : IBlockDevice
    {
        private readonly FileStream _stream;
        private readonly SafeFileHandle _handle;
        private readonly bool _full;

        public FileBlockDevice(FileStream stream, bool readOnly, bool full)
        {
            _stream = stream;
            _handle = stream.SafeFileHandle;
            _full = full;
            IsReadOnly = readOnly;
            Capacity = RandomAccess.GetLength(_handle);
        }

        public long Capacity { get; }

        public int LogicalBlockSize => 512;

        public bool IsReadOnly { get; }

        public async ValueTask ReadAsync(long offset, Memory<byte> buffer, CancellationToken cancellationToken = default)
        {
            BlockDeviceHelpers.CheckRange(offset, buffer.Length, Capacity);
            while (buffer.Length > 0)
            {
                var read = await RandomAccess.ReadAsync(_handle, buffer, offset, cancellationToken).ConfigureAwait(false);
                if (read == 0)
                {
                    buffer.Span.Clear();
                    return;
                }

                buffer = buffer[read..];
                offset += read;
            }
        }

        public async ValueTask WriteAsync(long offset, ReadOnlyMemory<byte> data, bool forceUnitAccess = false, CancellationToken cancellationToken = default)
        {
            if (IsReadOnly)
            {
                throw BlockDeviceHelpers.ReadOnly("Write");
            }

            BlockDeviceHelpers.CheckRange(offset, data.Length, Capacity);
            await RandomAccess.WriteAsync(_handle, data, offset, cancellationToken).ConfigureAwait(false);
            if (forceUnitAccess && _full)
            {
                _stream.Flush(flushToDisk: true);
            }
        }

        public ValueTask FlushAsync(CancellationToken cancellationToken = default)
        {
            cancellationToken.ThrowIfCancellationRequested();
            if (_full && !IsReadOnly)
            {
                _stream.Flush(flushToDisk: true);
            }

            return ValueTask.CompletedTask;
        }

        public ValueTask DiscardAsync(long offset, long length, CancellationToken cancellationToken = default)
        {
            if (IsReadOnly)
            {
                return ValueTask.FromException(BlockDeviceHelpers.ReadOnly("Discard"));
            }

            BlockDeviceHelpers.CheckRange(offset, length, Capacity);
            return ValueTask.CompletedTask;
        }

        public async ValueTask WriteZeroesAsync(long offset, long length, CancellationToken cancellationToken = default)
        {
            if (IsReadOnly)
            {
                throw BlockDeviceHelpers.ReadOnly("Write zeroes");
            }

            BlockDeviceHelpers.CheckRange(offset, length, Capacity);
            while (length > 0)
            {
                var chunk = (int)Math.Min(length, BlockDeviceHelpers.ZeroChunk);
                await RandomAccess.WriteAsync(_handle, BlockDeviceHelpers.Zeroes[..chunk], offset, cancellationToken).ConfigureAwait(false);
                offset += chunk;
                length -= chunk;
            }
        }

        public ValueTask DisposeAsync() => _stream.DisposeAsync();
    }
}
