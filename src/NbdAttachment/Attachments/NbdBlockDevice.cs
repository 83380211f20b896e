using NbdAttachment.Client;
using NbdAttachment.Virtualization;

namespace NbdAttachment;

/// <summary>The guest I/O surface of a connected <see cref="NetworkBlockDeviceStorageDeviceAttachment"/>.</summary>
internal sealed class NbdBlockDevice : IBlockDevice
{
    private readonly NetworkBlockDeviceStorageDeviceAttachment _attachment;
    private readonly NbdClient _client;
    private readonly NbdExportInfo _export;
    private readonly bool _full;

    public NbdBlockDevice(NetworkBlockDeviceStorageDeviceAttachment attachment, NbdClient client)
    {
        _attachment = attachment;
        _client = client;
        _export = client.Export;
        _full = attachment.SynchronizationMode == DiskSynchronizationMode.Full;
        IsReadOnly = attachment.IsForcedReadOnly || _export.IsReadOnly;
        LogicalBlockSize = (int)Math.Max(512u, Math.Min(_export.MinimumBlockSize, 64u * 1024));
    }

    public long Capacity => _export.Size;

    public int LogicalBlockSize { get; }

    public bool IsReadOnly { get; }

    public ValueTask ReadAsync(long offset, Memory<byte> buffer, CancellationToken cancellationToken = default) =>
        _client.ReadAsync(offset, buffer, cancellationToken);

    public ValueTask WriteAsync(long offset, ReadOnlyMemory<byte> data, bool forceUnitAccess = false, CancellationToken cancellationToken = default)
    {
        if (IsReadOnly)
        {
            return ValueTask.FromException(BlockDeviceHelpers.ReadOnly("Write"));
        }

        if (!forceUnitAccess || !_full)
        {
            return _client.WriteAsync(offset, data, NbdCommandOptions.None, cancellationToken);
        }

        if (_export.CanFua)
        {
            return _client.WriteAsync(offset, data, NbdCommandOptions.ForceUnitAccess, cancellationToken);
        }

        return WriteThenFlushAsync(offset, data, cancellationToken);
    }

    public ValueTask FlushAsync(CancellationToken cancellationToken = default) =>
        _full && _export.CanFlush ? _client.FlushAsync(cancellationToken) : ValueTask.CompletedTask;

    public ValueTask DiscardAsync(long offset, long length, CancellationToken cancellationToken = default)
    {
        if (IsReadOnly)
        {
            return ValueTask.FromException(BlockDeviceHelpers.ReadOnly("Discard"));
        }

        return _export.CanTrim ? _client.TrimAsync(offset, length, NbdCommandOptions.None, cancellationToken) : ValueTask.CompletedTask;
    }

    public ValueTask WriteZeroesAsync(long offset, long length, CancellationToken cancellationToken = default)
    {
        if (IsReadOnly)
        {
            return ValueTask.FromException(BlockDeviceHelpers.ReadOnly("Write zeroes"));
        }

        return _export.CanWriteZeroes
            ? _client.WriteZeroesAsync(offset, length, NbdCommandOptions.None, cancellationToken)
            : WriteZeroBuffersAsync(offset, length, cancellationToken);
    }

    public ValueTask DisposeAsync() => _attachment.CloseAsync();

    public override string ToString() => $"NBD block device {_attachment.Url} ({Capacity} bytes)";

    private async ValueTask WriteThenFlushAsync(long offset, ReadOnlyMemory<byte> data, CancellationToken cancellationToken)
    {
        await _client.WriteAsync(offset, data, NbdCommandOptions.None, cancellationToken).ConfigureAwait(false);
        if (_export.CanFlush)
        {
            await _client.FlushAsync(cancellationToken).ConfigureAwait(false);
        }
    }

    private async ValueTask WriteZeroBuffersAsync(long offset, long length, CancellationToken cancellationToken)
    {
        BlockDeviceHelpers.CheckRange(offset, length, Capacity);
        var tasks = new List<Task>();
        while (length > 0)
        {
            var chunk = (int)Math.Min(length, BlockDeviceHelpers.ZeroChunk);
            tasks.Add(_client.WriteAsync(offset, BlockDeviceHelpers.Zeroes[..chunk], NbdCommandOptions.None, cancellationToken).AsTask());
            offset += chunk;
            length -= chunk;
        }

        await Task.WhenAll(tasks).ConfigureAwait(false);
    }
}
