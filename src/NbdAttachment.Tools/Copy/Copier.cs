using System.Buffers;
using System.Diagnostics;
using System.Globalization;
using System.Threading.Channels;

namespace NbdAttachment.Tools.Copy;

/// <summary>What a copy did.</summary>
internal sealed record CopySummary(long TotalBytes, long BytesCopied, long BytesZero, TimeSpan Elapsed)
{
    public double MiBPerSecond => Elapsed.TotalSeconds <= 0 ? 0 : TotalBytes / (1024.0 * 1024.0) / Elapsed.TotalSeconds;

    public override string ToString() => string.Create(
        CultureInfo.InvariantCulture,
        $"copied {TotalBytes:N0} bytes in {Elapsed.TotalSeconds:0.000} s ({MiBPerSecond:0.0} MiB/s): {BytesCopied:N0} written as data, {BytesZero:N0} as zeroes");
}

/// <summary>
/// Copies a source endpoint to a destination. Random-access endpoints are copied by several workers pulling chunks from a
/// queue; with sparse copying on, ranges the source reports as zero (block status) and chunks that read as all zeroes are
/// not sent as data: the destination zeroes them cheaply (WRITE_ZEROES) or skips them (a fresh, sparse file). A standard
/// stream on either side makes the copy sequential.
/// </summary>
internal sealed class Copier
{
    public const int ChunkSize = 1 << 20;

    private readonly Endpoint _source;
    private readonly Endpoint _destination;
    private readonly int _workers;
    private readonly bool _sparse;
    private long _copied;
    private long _zero;

    public Copier(Endpoint source, Endpoint destination, int workers, bool sparse)
    {
        _source = source;
        _destination = destination;
        _workers = source.IsSequential || destination.IsSequential || source.Size is null ? 1 : workers;
        _sparse = sparse;
    }

    /// <summary>Bytes done so far (data and zeroes), for progress.</summary>
    public long Done => Interlocked.Read(ref _copied) + Interlocked.Read(ref _zero);

    /// <summary>Bytes to copy, or null when the source size is unknown.</summary>
    public long? Total => _source.Size;

    public async Task<CopySummary> RunAsync(CancellationToken cancellationToken)
    {
        var stopwatch = Stopwatch.StartNew();
        if (_workers == 1 && (_source.IsSequential || _destination.IsSequential || _source.Size is null))
        {
            await CopySequentiallyAsync(cancellationToken).ConfigureAwait(false);
        }
        else
        {
            await CopyInParallelAsync(_source.Size!.Value, cancellationToken).ConfigureAwait(false);
        }

        return new CopySummary(Done, Interlocked.Read(ref _copied), Interlocked.Read(ref _zero), stopwatch.Elapsed);
    }

    private async Task CopySequentiallyAsync(CancellationToken cancellationToken)
    {
        var buffer = ArrayPool<byte>.Shared.Rent(ChunkSize);
        try
        {
            long offset = 0;
            while (true)
            {
                var want = _source.Size is { } size ? (int)Math.Min(ChunkSize, size - offset) : ChunkSize;
                if (want == 0)
                {
                    return;
                }

                var read = await _source.ReadAsync(offset, buffer.AsMemory(0, want), cancellationToken).ConfigureAwait(false);
                if (read == 0)
                {
                    return;
                }

                await PutAsync(offset, buffer.AsMemory(0, read), cancellationToken).ConfigureAwait(false);
                offset += read;
                if (read < want)
                {
                    return;
                }
            }
        }
        finally
        {
            ArrayPool<byte>.Shared.Return(buffer);
        }
    }

    private async Task CopyInParallelAsync(long size, CancellationToken cancellationToken)
    {
        var queue = Channel.CreateBounded<(long Offset, int Length, bool Zero)>(new BoundedChannelOptions(_workers * 4) { SingleWriter = true });
        using var failed = CancellationTokenSource.CreateLinkedTokenSource(cancellationToken);
        var producer = ProduceAsync(queue.Writer, size, failed);
        var workers = Enumerable.Range(0, _workers).Select(_ => WorkAsync(queue.Reader, failed)).ToArray();
        Task[] all = [producer, .. workers];
        try
        {
            await Task.WhenAll(all).ConfigureAwait(false);
        }
        catch when (!cancellationToken.IsCancellationRequested)
        {
            // Report the error that stopped the copy, not the cancellations it caused in the other tasks.
            var cause = all.Where(t => t.IsFaulted).Select(t => t.Exception!.InnerException!).FirstOrDefault(e => e is not OperationCanceledException);
            if (cause is not null)
            {
                System.Runtime.ExceptionServices.ExceptionDispatchInfo.Throw(cause);
            }

            throw;
        }
    }

    private async Task ProduceAsync(ChannelWriter<(long, int, bool)> writer, long size, CancellationTokenSource failed)
    {
        var cancellationToken = failed.Token;
        try
        {
            var map = _sparse ? _source.GetMapAsync(cancellationToken) : null;
            if (map is null)
            {
                await SplitAsync(writer, 0, size, false, cancellationToken).ConfigureAwait(false);
            }
            else
            {
                await foreach (var (offset, length, zero) in map.ConfigureAwait(false))
                {
                    await SplitAsync(writer, offset, length, zero, cancellationToken).ConfigureAwait(false);
                }
            }
        }
        catch
        {
            await failed.CancelAsync().ConfigureAwait(false);
            throw;
        }
        finally
        {
            writer.TryComplete();
        }
    }

    private static async Task SplitAsync(ChannelWriter<(long, int, bool)> writer, long offset, long length, bool zero, CancellationToken cancellationToken)
    {
        // Zero ranges travel as large pieces (one WRITE_ZEROES or nothing); data ranges as chunks.
        var step = zero ? 1L << 30 : ChunkSize;
        for (var at = offset; at < offset + length; at += step)
        {
            await writer.WriteAsync((at, (int)Math.Min(step, offset + length - at), zero), cancellationToken).ConfigureAwait(false);
        }
    }

    private async Task WorkAsync(ChannelReader<(long Offset, int Length, bool Zero)> reader, CancellationTokenSource failed)
    {
        var buffer = ArrayPool<byte>.Shared.Rent(ChunkSize);
        try
        {
            await foreach (var (offset, length, zero) in reader.ReadAllAsync(failed.Token).ConfigureAwait(false))
            {
                if (zero)
                {
                    await _destination.ZeroAsync(offset, length, failed.Token).ConfigureAwait(false);
                    Interlocked.Add(ref _zero, length);
                    continue;
                }

                var chunk = buffer.AsMemory(0, length);
                var read = await _source.ReadAsync(offset, chunk, failed.Token).ConfigureAwait(false);
                if (read != length)
                {
                    throw new EndOfStreamException($"{_source.Name} ended at {offset + read:N0} bytes");
                }

                await PutAsync(offset, chunk, failed.Token).ConfigureAwait(false);
            }
        }
        catch
        {
            await failed.CancelAsync().ConfigureAwait(false);
            throw;
        }
        finally
        {
            ArrayPool<byte>.Shared.Return(buffer);
        }
    }

    private async ValueTask PutAsync(long offset, ReadOnlyMemory<byte> chunk, CancellationToken cancellationToken)
    {
        if (_sparse && !chunk.Span.ContainsAnyExcept((byte)0))
        {
            await _destination.ZeroAsync(offset, chunk.Length, cancellationToken).ConfigureAwait(false);
            Interlocked.Add(ref _zero, chunk.Length);
            return;
        }

        await _destination.WriteAsync(offset, chunk, cancellationToken).ConfigureAwait(false);
        Interlocked.Add(ref _copied, chunk.Length);
    }
}
