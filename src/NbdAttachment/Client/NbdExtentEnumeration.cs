using System.Runtime.CompilerServices;

namespace NbdAttachment.Client;

/// <summary>Block-status helpers over <see cref="NbdClient"/>.</summary>
public static class NbdExtentEnumeration
{
    /// <summary>
    /// Enumerates the extents of <paramref name="context"/> covering exactly
    /// [<paramref name="offset"/>, <paramref name="offset"/> + <paramref name="length"/>): it repeats
    /// <c>NBD_CMD_BLOCK_STATUS</c> from the first byte not yet described until the range is covered, and clips
    /// the first and last extents to the range. Extents are yielded as the server reported them and are contiguous;
    /// they are not merged, so two neighbours may carry the same flags (for example at a request boundary).
    /// </summary>
    /// <param name="client">A connected client whose export granted <paramref name="context"/>.</param>
    /// <param name="offset">Where the range starts.</param>
    /// <param name="length">How many bytes to describe; the range must lie inside the export.</param>
    /// <param name="context">A granted meta context: <c>base:allocation</c>, <c>qemu:dirty-bitmap:NAME</c>, ...</param>
    /// <param name="cancellationToken">Cancels the enumeration.</param>
    /// <exception cref="NbdRequestRejectedException">Block status is not available, or the context was not granted.</exception>
    /// <exception cref="NbdProtocolException">A reply described nothing at or after the first uncovered byte.</exception>
    public static async IAsyncEnumerable<NbdExtent> GetExtentsAsync(
        this NbdClient client,
        long offset,
        long length,
        string context = "base:allocation",
        [EnumeratorCancellation] CancellationToken cancellationToken = default)
    {
        ArgumentNullException.ThrowIfNull(client);
        ArgumentNullException.ThrowIfNull(context);
        ArgumentOutOfRangeException.ThrowIfNegative(offset);
        ArgumentOutOfRangeException.ThrowIfNegative(length);
        long size = client.Export.Size;
        if (offset > size || length > size - offset)
        {
            throw new ArgumentOutOfRangeException(nameof(length), $"The range {offset}+{length} runs past the end of the export ({size} bytes).");
        }

        long end = offset + length;
        long cursor = offset;
        while (cursor < end)
        {
            var extents = await client.GetBlockStatusAsync(cursor, end - cursor, context, false, cancellationToken).ConfigureAwait(false);
            long before = cursor;
            foreach (var extent in extents)
            {
                long start = Math.Max(extent.Offset, cursor);
                long stop = Math.Min(extent.Offset + extent.Length, end);
                if (stop <= start)
                {
                    continue;
                }

                if (start != cursor)
                {
                    throw new NbdProtocolException($"The server's block status for '{context}' left a gap at offset {cursor} (next extent starts at {start}).");
                }

                yield return new NbdExtent(start, stop - start, extent.Flags);
                cursor = stop;
                if (cursor == end)
                {
                    break;
                }
            }

            if (cursor == before)
            {
                throw new NbdProtocolException($"The server's block status for '{context}' made no progress at offset {cursor}.");
            }
        }
    }
}
