using Microsoft.Win32.SafeHandles;
using NbdAttachment.Client;

namespace NbdAttachment.Tools.Copy;

/// <summary>One side of a copy: an NBD export, a local file, or a standard stream (<c>-</c>).</summary>
internal abstract class Endpoint : IAsyncDisposable
{
    public abstract string Name { get; }

    /// <summary>The size in bytes, or null when unknown (standard input).</summary>
    public abstract long? Size { get; }

    /// <summary>Only in order, from offset 0 on (a pipe); the copy then runs with one worker.</summary>
    public virtual bool IsSequential => false;

    /// <summary>Zero ranges need no write: the destination already reads as zeroes there (a freshly created sparse file).</summary>
    public virtual bool IsFresh => false;

    /// <summary>Reads up to <paramref name="buffer"/>'s length at <paramref name="offset"/>; fewer bytes only at the end.</summary>
    public abstract ValueTask<int> ReadAsync(long offset, Memory<byte> buffer, CancellationToken cancellationToken);

    public abstract ValueTask WriteAsync(long offset, ReadOnlyMemory<byte> data, CancellationToken cancellationToken);

    /// <summary>Makes a range read as zeroes, without sending zeroes when the endpoint can.</summary>
    public virtual async ValueTask ZeroAsync(long offset, long length, CancellationToken cancellationToken)
    {
        if (IsFresh)
        {
            return;
        }

        var zeroes = new byte[(int)Math.Min(length, 1 << 20)];
        for (var at = offset; at < offset + length; at += zeroes.Length)
        {
            await WriteAsync(at, zeroes.AsMemory(0, (int)Math.Min(zeroes.Length, offset + length - at)), cancellationToken).ConfigureAwait(false);
        }
    }

    /// <summary>The source's extents (data or zero), or null when the endpoint cannot tell.</summary>
    public virtual IAsyncEnumerable<(long Offset, long Length, bool Zero)>? GetMapAsync(CancellationToken cancellationToken) => null;

    public abstract ValueTask FlushAsync(CancellationToken cancellationToken);

    public abstract ValueTask DisposeAsync();
}

/// <summary>An NBD export behind one <see cref="NbdClient"/>; with <see cref="NbdClientOptions.Connections"/> above 1 the client spreads requests over several connections when the server allows multi-conn.</summary>
internal sealed class NbdEndpoint : Endpoint
{
    private readonly NbdClient _client;

    private NbdEndpoint(NbdClient client) => _client = client;

    public override string Name => _client.Uri.ToString();

    public override long? Size => Export.Size;

    public NbdExportInfo Export => _client.Export;

    public int Connections => _client.ConnectionCount;

    public static async Task<NbdEndpoint> OpenAsync(string url, int connections, CancellationToken cancellationToken)
    {
        var options = NbdUrls.OneShotOptions() with { Connections = connections, MaxInFlightRequests = 64 };
        var client = await NbdClient.ConnectAsync(NbdUrls.Parse(url), options, cancellationToken).ConfigureAwait(false);
        return new NbdEndpoint(client);
    }

    public override async ValueTask<int> ReadAsync(long offset, Memory<byte> buffer, CancellationToken cancellationToken)
    {
        var length = (int)Math.Min(buffer.Length, Export.Size - offset);
        await _client.ReadAsync(offset, buffer[..length], cancellationToken).ConfigureAwait(false);
        return length;
    }

    public override ValueTask WriteAsync(long offset, ReadOnlyMemory<byte> data, CancellationToken cancellationToken)
    {
        if (offset + data.Length > Export.Size)
        {
            throw new InvalidOperationException($"the data does not fit the destination export ({Export.Size:N0} bytes)");
        }

        return _client.WriteAsync(offset, data, NbdCommandOptions.None, cancellationToken);
    }

    public override async ValueTask ZeroAsync(long offset, long length, CancellationToken cancellationToken)
    {
        if (Export.CanWriteZeroes)
        {
            // No NO_HOLE flag: the server may punch a hole, which keeps the destination sparse.
            await _client.WriteZeroesAsync(offset, length, NbdCommandOptions.None, cancellationToken).ConfigureAwait(false);
            return;
        }

        await base.ZeroAsync(offset, length, cancellationToken).ConfigureAwait(false);
    }

    public override async IAsyncEnumerable<(long Offset, long Length, bool Zero)>? GetMapAsync([System.Runtime.CompilerServices.EnumeratorCancellation] CancellationToken cancellationToken)
    {
        if (!Export.CanBlockStatus || !Export.MetaContexts.Contains("base:allocation"))
        {
            yield return (0, Export.Size, false);
            yield break;
        }

        await foreach (var extent in _client.GetExtentsAsync(0, Export.Size, "base:allocation", cancellationToken).ConfigureAwait(false))
        {
            yield return (extent.Offset, extent.Length, extent.IsZero);
        }
    }

    public override async ValueTask FlushAsync(CancellationToken cancellationToken)
    {
        if (Export.CanFlush)
        {
            await _client.FlushAsync(cancellationToken).ConfigureAwait(false);
        }
    }

    public override ValueTask DisposeAsync() => _client.DisposeAsync();
}

/// <summary>A local file, read or written with positional (thread-safe) I/O.</summary>
internal sealed class FileEndpoint : Endpoint
{
    private readonly SafeFileHandle _handle;
    private readonly bool _fresh;
    private readonly long _size;

    private FileEndpoint(string path, SafeFileHandle handle, long size, bool fresh)
    {
        Name = path;
        _handle = handle;
        _size = size;
        _fresh = fresh;
    }

    public override string Name { get; }

    public override long? Size => _size;

    public override bool IsFresh => _fresh;

    public static FileEndpoint OpenRead(string path)
    {
        var handle = File.OpenHandle(path, FileMode.Open, FileAccess.Read, FileShare.Read, FileOptions.Asynchronous);
        return new FileEndpoint(path, handle, RandomAccess.GetLength(handle), fresh: false);
    }

    /// <summary>Creates (or truncates) the file; with a known size its length is set first, so unwritten ranges stay holes.</summary>
    public static FileEndpoint Create(string path, long? size, bool sparse)
    {
        var handle = File.OpenHandle(path, FileMode.Create, FileAccess.ReadWrite, FileShare.None, FileOptions.Asynchronous);
        if (size is { } length)
        {
            RandomAccess.SetLength(handle, length);
        }

        return new FileEndpoint(path, handle, size ?? 0, fresh: sparse && size is not null);
    }

    public override async ValueTask<int> ReadAsync(long offset, Memory<byte> buffer, CancellationToken cancellationToken)
    {
        var total = 0;
        while (total < buffer.Length)
        {
            var read = await RandomAccess.ReadAsync(_handle, buffer[total..], offset + total, cancellationToken).ConfigureAwait(false);
            if (read == 0)
            {
                break;
            }

            total += read;
        }

        return total;
    }

    public override ValueTask WriteAsync(long offset, ReadOnlyMemory<byte> data, CancellationToken cancellationToken) =>
        RandomAccess.WriteAsync(_handle, data, offset, cancellationToken);

    public override ValueTask FlushAsync(CancellationToken cancellationToken)
    {
        RandomAccess.FlushToDisk(_handle);
        return ValueTask.CompletedTask;
    }

    public override ValueTask DisposeAsync()
    {
        _handle.Dispose();
        return ValueTask.CompletedTask;
    }
}

/// <summary>Standard input or output (<c>-</c>): read or written in order only.</summary>
internal sealed class StreamEndpoint : Endpoint
{
    private readonly Stream _stream;
    private long _position;

    public StreamEndpoint(string name, Stream stream)
    {
        Name = name;
        _stream = stream;
    }

    public override string Name { get; }

    public override long? Size => null;

    public override bool IsSequential => true;

    public override async ValueTask<int> ReadAsync(long offset, Memory<byte> buffer, CancellationToken cancellationToken)
    {
        CheckPosition(offset);
        var read = await _stream.ReadAtLeastAsync(buffer, buffer.Length, throwOnEndOfStream: false, cancellationToken).ConfigureAwait(false);
        _position += read;
        return read;
    }

    public override async ValueTask WriteAsync(long offset, ReadOnlyMemory<byte> data, CancellationToken cancellationToken)
    {
        CheckPosition(offset);
        await _stream.WriteAsync(data, cancellationToken).ConfigureAwait(false);
        _position += data.Length;
    }

    public override async ValueTask FlushAsync(CancellationToken cancellationToken) =>
        await _stream.FlushAsync(cancellationToken).ConfigureAwait(false);

    public override ValueTask DisposeAsync() => _stream.DisposeAsync();

    private void CheckPosition(long offset)
    {
        if (offset != _position)
        {
            throw new InvalidOperationException($"{Name} can only be accessed in order (asked for offset {offset}, at {_position})");
        }
    }
}
