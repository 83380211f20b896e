namespace NbdAttachment;

/// <summary>Shared helpers of the block device implementations.</summary>
internal static class BlockDeviceHelpers
{
    /// <summary>Chunk size for zero-filling writes.</summary>
    public const int ZeroChunk = 1 << 20;

    private static byte[]? zeroes;

    /// <summary>A shared, never-written buffer of <see cref="ZeroChunk"/> zero bytes.</summary>
    public static ReadOnlyMemory<byte> Zeroes => zeroes ??= new byte[ZeroChunk];

    public static NbdRequestRejectedException ReadOnly(string operation) =>
        new(NbdRequestRejectReason.ReadOnly, $"{operation} rejected: the device is read-only.");

    public static void CheckRange(long offset, long length, long capacity)
    {
        if (offset < 0 || length < 0 || offset > capacity || length > capacity - offset)
        {
            throw new NbdRequestRejectedException(
                NbdRequestRejectReason.OutOfBounds,
                $"The range {offset}+{length} is outside the device ({capacity} bytes).");
        }
    }
}
