namespace NbdAttachment.Client;

/// <summary>One block-status extent: a run of bytes with the same status flags in one metadata context.</summary>
/// <param name="Offset">Where the extent starts, in bytes from the start of the export.</param>
/// <param name="Length">How many bytes it covers (never zero).</param>
/// <param name="Flags">The context's status bits; for <c>base:allocation</c> see <see cref="NbdAllocationFlags"/>.</param>
public readonly record struct NbdExtent(long Offset, long Length, uint Flags)
{
    /// <summary>For <c>base:allocation</c>: the range is a hole (not allocated).</summary>
    public bool IsHole => (Flags & (uint)NbdAllocationFlags.Hole) != 0;

    /// <summary>For <c>base:allocation</c>: the range reads as zeroes.</summary>
    public bool IsZero => (Flags & (uint)NbdAllocationFlags.Zero) != 0;
}

/// <summary>Status bits of the <c>base:allocation</c> metadata context.</summary>
[Flags]
public enum NbdAllocationFlags : uint
{
    /// <summary>Allocated data (or unknown).</summary>
    None = 0,

    /// <summary><c>NBD_STATE_HOLE</c>: not allocated.</summary>
    Hole = 1,

    /// <summary><c>NBD_STATE_ZERO</c>: reads as zeroes.</summary>
    Zero = 2,
}
