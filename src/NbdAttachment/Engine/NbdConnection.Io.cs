using System.Buffers;
using NbdAttachment.Client;
using NbdAttachment.Protocol;

namespace NbdAttachment.Engine;

internal sealed partial class NbdConnection
{
    /// <summary>Largest effect length sent in one TRIM, WRITE_ZEROES or CACHE request (then split).</summary>
    private const long MaxEffectLength = 1L << 30;

    public ValueTask ReadAsync(long offset, Memory<byte> buffer, CancellationToken cancellationToken) =>
        ReadAsync(offset, buffer, false, cancellationToken);

    public ValueTask ReadAsync(long offset, Memory<byte> buffer, bool dontFragment, CancellationToken cancellationToken)
    {
        CheckRange("READ", offset, buffer.Length);
        var flags = NbdCommandFlags.None;
        if (dontFragment)
        {
            CheckFlag(Export.CanDontFragment, "READ with DF", "NBD_FLAG_SEND_DF");
            flags = NbdCommandFlags.DontFragment;
        }

        if (buffer.Length == 0)
        {
            return ValueTask.CompletedTask;
        }

        if (!IsAligned(offset, buffer.Length))
        {
            return ReadUnalignedAsync(offset, buffer, dontFragment, cancellationToken);
        }

        // DF reads of up to 64 KiB must be served whole; larger ones are split to that size.
        var step = dontFragment ? Math.Min(Export.MaximumPayloadSize, Math.Max(65536u, Export.MinimumBlockSize)) : Export.MaximumPayloadSize;
        if (buffer.Length <= step)
        {
            return Submit(NbdCommand.Read, flags, (ulong)offset, (uint)buffer.Length, default, buffer, cancellationToken);
        }

        return SplitAsync(NbdCommand.Read, flags, offset, buffer.Length, default, buffer, cancellationToken, (int)step);
    }

    public ValueTask WriteAsync(long offset, ReadOnlyMemory<byte> data, bool fua, CancellationToken cancellationToken)
    {
        CheckWritable("WRITE");
        CheckRange("WRITE", offset, data.Length);
        var flags = FuaFlag(fua);
        if (data.Length == 0)
        {
            return ValueTask.CompletedTask;
        }

        if (!IsAligned(offset, data.Length))
        {
            return WriteUnalignedAsync(offset, data, flags, cancellationToken);
        }

        if (data.Length <= Export.MaximumPayloadSize)
        {
            return Submit(NbdCommand.Write, flags, (ulong)offset, (uint)data.Length, data, default, cancellationToken);
        }

        return SplitAsync(NbdCommand.Write, flags, offset, data.Length, data, default, cancellationToken);
    }

    public ValueTask FlushAsync(CancellationToken cancellationToken)
    {
        CheckFlag(Export.CanFlush, "FLUSH", "NBD_FLAG_SEND_FLUSH");
        return Submit(NbdCommand.Flush, NbdCommandFlags.None, 0, 0, default, default, cancellationToken);
    }

    public ValueTask TrimAsync(long offset, long length, bool fua, CancellationToken cancellationToken)
    {
        CheckFlag(Export.CanTrim, "TRIM", "NBD_FLAG_SEND_TRIM");
        CheckWritable("TRIM");
        CheckRange("TRIM", offset, length);

        // A trim is a hint: round inward to the minimum block and drop what is left.
        var min = Export.MinimumBlockSize;
        var start = AlignUp(offset, min);
        var end = Math.Max(start, AlignDown(offset + length, min));
        return EffectAsync(NbdCommand.Trim, FuaFlag(fua), start, end - start, cancellationToken);
    }

    public async ValueTask WriteZeroesAsync(long offset, long length, bool fua, bool noHole, bool fastZero, CancellationToken cancellationToken)
    {
        CheckFlag(Export.CanWriteZeroes, "WRITE_ZEROES", "NBD_FLAG_SEND_WRITE_ZEROES");
        CheckWritable("WRITE_ZEROES");
        CheckRange("WRITE_ZEROES", offset, length);
        if (fastZero)
        {
            CheckFlag(Export.CanFastZero, "WRITE_ZEROES with FAST_ZERO", "NBD_FLAG_SEND_FAST_ZERO");
        }

        var flags = FuaFlag(fua) | (noHole ? NbdCommandFlags.NoHole : 0) | (fastZero ? NbdCommandFlags.FastZero : 0);
        var min = Export.MinimumBlockSize;
        var start = AlignUp(offset, min);
        var end = AlignDown(offset + length, min);
        if (start >= end)
        {
            await WriteZeroBytesAsync(offset, length, flags, cancellationToken).ConfigureAwait(false);
            return;
        }

        // Unaligned edges become ordinary (read-modify-write) writes of zeroes.
        if (start > offset)
        {
            await WriteZeroBytesAsync(offset, start - offset, flags, cancellationToken).ConfigureAwait(false);
        }

        await EffectAsync(NbdCommand.WriteZeroes, flags, start, end - start, cancellationToken).ConfigureAwait(false);
        if (offset + length > end)
        {
            await WriteZeroBytesAsync(end, offset + length - end, flags, cancellationToken).ConfigureAwait(false);
        }
    }

    public ValueTask CacheAsync(long offset, long length, CancellationToken cancellationToken)
    {
        CheckFlag(Export.CanCache, "CACHE", "NBD_FLAG_SEND_CACHE");
        CheckRange("CACHE", offset, length);
        var min = Export.MinimumBlockSize;
        var start = AlignDown(offset, min);
        var end = Math.Min(Export.Size, AlignUp(offset + length, min));
        return EffectAsync(NbdCommand.Cache, NbdCommandFlags.None, start, end - start, cancellationToken);
    }

    /// <summary>One BLOCK_STATUS request; extents for <paramref name="context"/> are appended to <paramref name="extents"/>.</summary>
    public ValueTask BlockStatusAsync(long offset, long length, string context, bool single, List<NbdExtent> extents, CancellationToken cancellationToken)
    {
        if (!Export.CanBlockStatus)
        {
            throw new NbdRequestRejectedException(NbdRequestRejectReason.NotSupported, "BLOCK_STATUS needs structured replies and a granted meta context; the server granted none.");
        }

        if (!Export.MetaContextIds.ContainsKey(context))
        {
            throw new NbdRequestRejectedException(
                NbdRequestRejectReason.NotSupported,
                $"Meta context '{context}' was not granted by the server (granted: {string.Join(", ", Export.MetaContexts)}).");
        }

        CheckRange("BLOCK_STATUS", offset, length);
        if (length == 0)
        {
            return ValueTask.CompletedTask;
        }

        var min = Export.MinimumBlockSize;
        var start = AlignDown(offset, min);
        var end = Math.Min(Export.Size, AlignUp(offset + length, min));
        var span = (uint)Math.Min(end - start, uint.MaxValue - (uint.MaxValue % min));
        return Submit(NbdCommand.BlockStatus, single ? NbdCommandFlags.ReqOne : NbdCommandFlags.None, (ulong)start, span, default, default, cancellationToken, context, extents);
    }

    private async ValueTask EffectAsync(NbdCommand command, NbdCommandFlags flags, long offset, long length, CancellationToken cancellationToken)
    {
        var step = AlignDown(MaxEffectLength, Export.MinimumBlockSize);
        while (length > 0)
        {
            var piece = Math.Min(step, length);
            await Submit(command, flags, (ulong)offset, (uint)piece, default, default, cancellationToken).ConfigureAwait(false);
            offset += piece;
            length -= piece;
        }
    }

    /// <summary>Issues all pieces of a large READ or WRITE at once (pipelined), then waits for every one.</summary>
    private async ValueTask SplitAsync(NbdCommand command, NbdCommandFlags flags, long offset, int length, ReadOnlyMemory<byte> payload, Memory<byte> buffer, CancellationToken cancellationToken, int step = 0)
    {
        step = step > 0 ? step : (int)Export.MaximumPayloadSize;
        var count = (length + step - 1) / step;
        var pending = ArrayPool<ValueTask>.Shared.Rent(count);
        try
        {
            for (var i = 0; i < count; i++)
            {
                var at = i * step;
                var size = Math.Min(step, length - at);
                pending[i] = command == NbdCommand.Read
                    ? Submit(command, flags, (ulong)(offset + at), (uint)size, default, buffer.Slice(at, size), cancellationToken)
                    : Submit(command, flags, (ulong)(offset + at), (uint)size, payload.Slice(at, size), default, cancellationToken);
            }

            Exception? first = null;
            for (var i = 0; i < count; i++)
            {
                try
                {
                    await pending[i].ConfigureAwait(false);
                }
                catch (Exception ex)
                {
                    first ??= ex;
                }
            }

            if (first is not null)
            {
                System.Runtime.ExceptionServices.ExceptionDispatchInfo.Throw(first);
            }
        }
        finally
        {
            Array.Clear(pending, 0, count);
            ArrayPool<ValueTask>.Shared.Return(pending);
        }
    }

    private async ValueTask ReadUnalignedAsync(long offset, Memory<byte> buffer, bool dontFragment, CancellationToken cancellationToken)
    {
        var min = Export.MinimumBlockSize;
        var start = AlignDown(offset, min);
        var end = Math.Min(Export.Size, AlignUp(offset + buffer.Length, min));
        var scratch = ArrayPool<byte>.Shared.Rent((int)(end - start));
        try
        {
            await ReadAsync(start, scratch.AsMemory(0, (int)(end - start)), dontFragment, cancellationToken).ConfigureAwait(false);
            scratch.AsSpan((int)(offset - start), buffer.Length).CopyTo(buffer.Span);
        }
        finally
        {
            ArrayPool<byte>.Shared.Return(scratch);
        }
    }

    /// <summary>Read-modify-write: reads the partial head and tail blocks, merges the data, writes whole blocks.</summary>
    private async ValueTask WriteUnalignedAsync(long offset, ReadOnlyMemory<byte> data, NbdCommandFlags flags, CancellationToken cancellationToken)
    {
        var min = Export.MinimumBlockSize;
        var start = AlignDown(offset, min);
        var end = Math.Min(Export.Size, AlignUp(offset + data.Length, min));
        var total = (int)(end - start);
        var scratch = ArrayPool<byte>.Shared.Rent(total);
        try
        {
            var merged = scratch.AsMemory(0, total);
            var headRead = start < offset;
            if (headRead)
            {
                await ReadAsync(start, merged[..(int)Math.Min(min, total)], cancellationToken).ConfigureAwait(false);
            }

            var dataEnd = offset + data.Length;
            var tailStart = AlignDown(dataEnd, min);
            if (dataEnd < end && !(headRead && tailStart == start))
            {
                await ReadAsync(tailStart, merged[(int)(tailStart - start)..], cancellationToken).ConfigureAwait(false);
            }

            data.Span.CopyTo(merged.Span[(int)(offset - start)..]);
            await WriteAlignedAsync(start, merged, flags, cancellationToken).ConfigureAwait(false);
        }
        finally
        {
            ArrayPool<byte>.Shared.Return(scratch);
        }
    }

    private ValueTask WriteAlignedAsync(long offset, ReadOnlyMemory<byte> data, NbdCommandFlags flags, CancellationToken cancellationToken) =>
        data.Length <= Export.MaximumPayloadSize
            ? Submit(NbdCommand.Write, flags, (ulong)offset, (uint)data.Length, data, default, cancellationToken)
            : SplitAsync(NbdCommand.Write, flags, offset, data.Length, data, default, cancellationToken);

    private async ValueTask WriteZeroBytesAsync(long offset, long length, NbdCommandFlags flags, CancellationToken cancellationToken)
    {
        var zeroes = ArrayPool<byte>.Shared.Rent((int)length);
        try
        {
            Array.Clear(zeroes, 0, (int)length);
            await WriteUnalignedAsync(offset, zeroes.AsMemory(0, (int)length), flags & NbdCommandFlags.Fua, cancellationToken).ConfigureAwait(false);
        }
        finally
        {
            ArrayPool<byte>.Shared.Return(zeroes);
        }
    }

    private bool IsAligned(long offset, long length)
    {
        var min = Export.MinimumBlockSize;
        return min <= 1 || ((offset % min) == 0 && ((length % min) == 0 || offset + length == Export.Size));
    }

    private static long AlignDown(long value, uint block) => value - (value % block);

    private static long AlignUp(long value, uint block) => AlignDown(value + block - 1, block);

    private NbdCommandFlags FuaFlag(bool fua)
    {
        if (!fua)
        {
            return NbdCommandFlags.None;
        }

        CheckFlag(Export.CanFua, "FUA", "NBD_FLAG_SEND_FUA");
        return NbdCommandFlags.Fua;
    }

    private void CheckRange(string command, long offset, long length)
    {
        if (offset < 0 || length < 0 || offset > Export.Size - length)
        {
            throw new NbdRequestRejectedException(
                NbdRequestRejectReason.OutOfBounds,
                $"{command} of {length} bytes at offset {offset} is outside the export of {Export.Size} bytes.");
        }
    }

    private void CheckWritable(string command)
    {
        if (Export.IsReadOnly)
        {
            throw new NbdRequestRejectedException(NbdRequestRejectReason.ReadOnly, $"{command} refused: export '{Export.ExportName}' is read-only.");
        }
    }

    private static void CheckFlag(bool supported, string what, string flag)
    {
        if (!supported)
        {
            throw new NbdRequestRejectedException(NbdRequestRejectReason.NotSupported, $"{what} refused: the server did not advertise {flag}.");
        }
    }
}
