using Microsoft.Win32.SafeHandles;
using NbdAttachment.Client;

namespace NbdAttachment.Samples.NbdCopy;

/// <summary>One side of a copy: an NBD export or a local file, addressed by byte offset.</summary>
internal abstract class Endpoint : IAsyncDisposable
{
    public abstract string Name { get; }

    public abstract long Size { get; }

    /// <summary>Zero ranges need no write: the destination is known to read as zeroes there (a freshly created file).</summary>
    public abstract bool IsFresh { get; }

    public abstract ValueTask ReadAsync(int worker, long offset, Memory<byte> buffer, CancellationToken cancellationToken);

    public abstract ValueTask WriteAsync(int worker, long offset, ReadOnlyMemory<byte> data, CancellationToken cancellationToken);

    /// <summary>Makes a range read as zeroes without sending the zeroes when possible.</summary>
    public abstract ValueTask ZeroAsync(int worker, long offset, long length, CancellationToken cancellationToken);

    /// <summary>The source's extents (data or zero); null when the endpoint cannot tell.</summary>
    public abstract IAsyncEnumerable<(long Offset, long Length, bool Zero)>? GetMapAsync(CancellationToken cancellationToken);

    public abstract ValueTask FlushAsync(CancellationToken cancellationToken);

    public abstract ValueTask DisposeAsync();

    public static bool IsNbdUrl(string text) => text.Contains("://", StringComparison.Ordinal);
}

/// <summary>An NBD export behind one client (requests in flight) or several (when the server allows multi-conn).</summary>
internal sealed class NbdEndpoint : Endpoint
{
    private readonly NbdClient[] _clients;

    private NbdEndpoint(NbdClient[] clients) => _clients = clients;

    public override string Name => _clients[0].Uri.ToString();

    public override long Size => Export.Size;

    public override bool IsFresh => false;

    public NbdExportInfo Export => _clients[0].Export;

    public int Connections => _clients.Length;

    public static async Task<NbdEndpoint> OpenAsync(string url, int connections, CancellationToken cancellationToken)
    {
        var options = NbdClientOptions.Default with { MaxInFlightRequests = 64 };
        var first = await NbdClient.ConnectAsync(NbdUri.Parse(url), options, cancellationToken);
        var clients = new List<NbdClient> { first };
        try
        {
            if (first.Export.CanMultiConn)
            {
                while (clients.Count < connections)
                {
                    clients.Add(await NbdClient.ConnectAsync(first.Uri, options, cancellationToken));
                }
            }

            return new NbdEndpoint([.. clients]);
        }
        catch
        {
            foreach (var client in clients)
            {
                await client.DisposeAsync();
            }

            throw;
        }
    }

    public override ValueTask ReadAsync(int worker, long offset, Memory<byte> buffer, CancellationToken cancellationToken) =>
        Pick(worker).ReadAsync(offset, buffer, cancellationToken);

    public override ValueTask WriteAsync(int worker, long offset, ReadOnlyMemory<byte> data, CancellationToken cancellationToken) =>
        Pick(worker).WriteAsync(offset, data, NbdCommandOptions.None, cancellationToken);

    public override async ValueTask ZeroAsync(int worker, long offset, long length, CancellationToken cancellationToken)
    {
        var client = Pick(worker);
        if (Export.CanWriteZeroes)
        {
            // No NO_HOLE flag: the server may punch a hole, which keeps the destination sparse.
            await client.WriteZeroesAsync(offset, length, NbdCommandOptions.None, cancellationToken);
            return;
        }

        var zeroes = new byte[(int)Math.Min(length, 1 << 20)];
        for (var at = offset; at < offset + length; at += zeroes.Length)
        {
            var piece = (int)Math.Min(zeroes.Length, offset + length - at);
            await client.WriteAsync(at, zeroes.AsMemory(0, piece), NbdCommandOptions.None, cancellationToken);
        }
    }

    public override async IAsyncEnumerable<(long Offset, long Length, bool Zero)>? GetMapAsync([System.Runtime.CompilerServices.EnumeratorCancellation] CancellationToken cancellationToken)
    {
        if (!Export.CanBlockStatus || !Export.MetaContexts.Contains("base:allocation"))
        {
            yield return (0, Size, false);
            yield break;
        }

        await foreach (var extent in _clients[0].GetExtentsAsync(0, Size, "base:allocation", cancellationToken))
        {
            yield return (extent.Offset, extent.Length, extent.IsZero);
        }
    }

    public override async ValueTask FlushAsync(CancellationToken cancellationToken)
    {
        if (Export.CanFlush)
        {
            foreach (var client in _clients)
            {
                await client.FlushAsync(cancellationToken);
            }
        }
    }

    public override async ValueTask DisposeAsync()
    {
        foreach (var client in _clients)
        {
            await client.DisposeAsync();
        }
    }

    private NbdClient Pick(int worker) => _clients[worker % _clients.Length];
}

/// <summary>A local file, read or written with positional (thread-safe) I/O.</summary>
internal sealed class FileEndpoint : Endpoint
{
    private readonly SafeFileHandle _handle;
    private readonly bool _created;

    private FileEndpoint(string path, SafeFileHandle handle, long size, bool created)
    {
        Name = path;
        _handle = handle;
        Size = size;
        _created = created;
    }

    public override string Name { get; }

    public override long Size { get; }

    public override bool IsFresh => _created;

    public static FileEndpoint OpenRead(string path)
    {
        var handle = File.OpenHandle(path, FileMode.Open, FileAccess.Read, FileShare.Read, FileOptions.Asynchronous);
        return new FileEndpoint(path, handle, RandomAccess.GetLength(handle), created: false);
    }

    /// <summary>Creates (or truncates) the file and sets its length, so unwritten ranges stay holes on file systems that support them.</summary>
    public static FileEndpoint Create(string path, long size, bool sparse)
    {
        var handle = File.OpenHandle(path, FileMode.Create, FileAccess.ReadWrite, FileShare.None, FileOptions.Asynchronous);
        RandomAccess.SetLength(handle, size);
        return new FileEndpoint(path, handle, size, created: sparse);
    }

    public override ValueTask ReadAsync(int worker, long offset, Memory<byte> buffer, CancellationToken cancellationToken) =>
        ReadExactlyAsync(offset, buffer, cancellationToken);

    public override ValueTask WriteAsync(int worker, long offset, ReadOnlyMemory<byte> data, CancellationToken cancellationToken) =>
        RandomAccess.WriteAsync(_handle, data, offset, cancellationToken);

    public override async ValueTask ZeroAsync(int worker, long offset, long length, CancellationToken cancellationToken)
    {
        if (IsFresh)
        {
            return; // already a hole that reads as zeroes
        }

        var zeroes = new byte[(int)Math.Min(length, 1 << 20)];
        for (var at = offset; at < offset + length; at += zeroes.Length)
        {
            await RandomAccess.WriteAsync(_handle, zeroes.AsMemory(0, (int)Math.Min(zeroes.Length, offset + length - at)), at, cancellationToken);
        }
    }

    public override IAsyncEnumerable<(long Offset, long Length, bool Zero)>? GetMapAsync(CancellationToken cancellationToken) => null;

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

    private async ValueTask ReadExactlyAsync(long offset, Memory<byte> buffer, CancellationToken cancellationToken)
    {
        while (!buffer.IsEmpty)
        {
            var read = await RandomAccess.ReadAsync(_handle, buffer, offset, cancellationToken);
            if (read == 0)
            {
                throw new EndOfStreamException($"{Name} ended at {offset} bytes.");
            }

            buffer = buffer[read..];
            offset += read;
        }
    }
}
