using System.Buffers;
using System.Diagnostics;
using System.Threading.Channels;

namespace NbdAttachment.Samples.NbdCopy;

/// <summary>What a copy did.</summary>
internal sealed record CopySummary(long TotalBytes, long BytesCopied, long BytesZero, TimeSpan Elapsed)
{
    public double MiBPerSecond => Elapsed.TotalSeconds <= 0 ? 0 : TotalBytes / (1024.0 * 1024.0) / Elapsed.TotalSeconds;

    public override string ToString() =>
        $"{TotalBytes:N0} bytes in {Elapsed.TotalSeconds:0.000} s ({MiBPerSecond:0.0} MiB/s): {BytesCopied:N0} copied, {BytesZero:N0} skipped as zero";
}

/// <summary>
/// Copies a source endpoint to a destination with a few workers pulling chunks from a queue. With sparse copying on,
/// ranges the source reports as zero (block status) and chunks that read as all zeroes are not sent as data:
/// the destination zeroes them cheaply (WRITE_ZEROES) or skips them (a fresh, sparse file).
/// </summary>
internal sealed class Copier
{
    private const int ChunkSize = 1 << 20;

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
        _workers = workers;
        _sparse = sparse;
    }

    public long Done => Interlocked.Read(ref _copied) + Interlocked.Read(ref _zero);

    public async Task<CopySummary> RunAsync(CancellationToken cancellationToken)
    {
        var stopwatch = Stopwatch.StartNew();
        var size = _source.Size;
        var queue = Channel.CreateBounded<(long Offset, int Length, bool Zero)>(new BoundedChannelOptions(_workers * 4) { SingleWriter = true });
        using var failed = CancellationTokenSource.CreateLinkedTokenSource(cancellationToken);
        var producer = ProduceAsync(queue.Writer, size, failed);
        var workers = Enumerable.Range(0, _workers).Select(i => WorkAsync(i, queue.Reader, failed)).ToArray();
        Task[] all = [producer, .. workers];
        try
        {
            await Task.WhenAll(all);
        }
        catch
        {
            // Report the error that stopped the copy, not the cancellations it caused in the other tasks.
            var cause = all.Where(t => t.IsFaulted).Select(t => t.Exception!.InnerException!).FirstOrDefault(e => e is not OperationCanceledException);
            if (cause is not null)
            {
                System.Runtime.ExceptionServices.ExceptionDispatchInfo.Throw(cause);
            }

            throw;
        }

        await _destination.FlushAsync(cancellationToken);
        return new CopySummary(size, _copied, _zero, stopwatch.Elapsed);
    }

    private async Task ProduceAsync(ChannelWriter<(long, int, bool)> writer, long size, CancellationTokenSource failed)
    {
        var cancellationToken = failed.Token;
        try
        {
            var map = _sparse ? _source.GetMapAsync(cancellationToken) : null;
            if (map is null)
            {
                await SplitAsync(writer, 0, size, false, cancellationToken);
            }
            else
            {
                await foreach (var (offset, length, zero) in map)
                {
                    await SplitAsync(writer, offset, length, zero, cancellationToken);
                }
            }
        }
        catch
        {
            failed.Cancel();
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
            await writer.WriteAsync((at, (int)Math.Min(step, offset + length - at), zero), cancellationToken);
        }
    }

    private async Task WorkAsync(int worker, ChannelReader<(long Offset, int Length, bool Zero)> reader, CancellationTokenSource failed)
    {
        var buffer = ArrayPool<byte>.Shared.Rent(ChunkSize);
        try
        {
            await foreach (var (offset, length, zero) in reader.ReadAllAsync(failed.Token))
            {
                if (zero)
                {
                    await _destination.ZeroAsync(worker, offset, length, failed.Token);
                    Interlocked.Add(ref _zero, length);
                    continue;
                }

                var chunk = buffer.AsMemory(0, length);
                await _source.ReadAsync(worker, offset, chunk, failed.Token);
                if (_sparse && !chunk.Span.ContainsAnyExcept((byte)0))
                {
                    await _destination.ZeroAsync(worker, offset, length, failed.Token);
                    Interlocked.Add(ref _zero, length);
                    continue;
                }

                await _destination.WriteAsync(worker, offset, chunk, failed.Token);
                Interlocked.Add(ref _copied, length);
            }
        }
        catch
        {
            failed.Cancel();
            throw;
        }
        finally
        {
            ArrayPool<byte>.Shared.Return(buffer);
        }
    }
}
