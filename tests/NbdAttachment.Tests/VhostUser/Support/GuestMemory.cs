namespace NbdAttachment.Tests.VhostUser.Support;

/// <summary>One vhost-user memory region as the front-end announces it.</summary>
public readonly record struct MemoryRegion(ulong GuestPhysicalAddress, ulong Size, ulong UserAddress, ulong MmapOffset);

/// <summary>
/// "Guest RAM": a memfd mapped shared into this process, announced to the back-end as one or more regions (split
/// evenly, each with its own guest-physical and user address and an mmap offset into the same file). Guest physical
/// addresses are contiguous from <see cref="GuestPhysicalBase"/>; user addresses are by default fake (so a back-end
/// that dereferences them instead of translating them faults) and each region's is distinct. A first-fit allocator
/// hands out buffers that never straddle a region boundary.
/// </summary>
public sealed unsafe class GuestMemory : IDisposable
{
    private readonly List<(ulong Offset, ulong Length)>[] _free;
    private readonly object _lock = new();
    private bool _disposed;

    public GuestMemory(long size, int regionCount, ulong guestPhysicalBase, ulong? userAddressBase)
    {
        if (regionCount is < 1 or > 8 || size % (regionCount * 4096L) != 0)
        {
            throw new ArgumentOutOfRangeException(nameof(regionCount));
        }

        Size = size;
        GuestPhysicalBase = guestPhysicalBase;
        Fd = Native.MemfdCreate("vhost-user-test-guest");
        Native.Ftruncate(Fd, size);
        Pointer = Native.MapSharedMemory(Fd, size);
        new Span<byte>((void*)Pointer, checked((int)size)).Clear();

        var regionSize = (ulong)(size / regionCount);
        var regions = new MemoryRegion[regionCount];
        _free = new List<(ulong, ulong)>[regionCount];
        for (var i = 0; i < regionCount; i++)
        {
            var offset = (ulong)i * regionSize;
            var user = userAddressBase is { } fake
                ? fake + ((ulong)i * 0x1_0000_0000UL) + 0x20_0000UL
                : (ulong)Pointer + offset;
            regions[i] = new MemoryRegion(guestPhysicalBase + offset, regionSize, user, offset);

            // Keep the first page of each region unused so that no buffer sits at guest address 0.
            _free[i] = [(offset + 4096, regionSize - 4096)];
        }

        Regions = regions;
    }

    /// <summary>The memfd; stays open for the lifetime of this object.</summary>
    public int Fd { get; }

    public long Size { get; }

    public ulong GuestPhysicalBase { get; }

    /// <summary>Where the memfd is mapped in this process.</summary>
    public nint Pointer { get; }

    public IReadOnlyList<MemoryRegion> Regions { get; }

    /// <summary>The guest-physical end (exclusive).</summary>
    public ulong GuestPhysicalEnd => GuestPhysicalBase + (ulong)Size;

    /// <summary>Allocates <paramref name="length"/> bytes (zeroed) aligned to <paramref name="alignment"/>; returns the guest-physical address.</summary>
    public ulong Allocate(long length, int alignment = 16)
    {
        ArgumentOutOfRangeException.ThrowIfNegativeOrZero(length);
        var size = ((ulong)length + 15) & ~15UL;
        lock (_lock)
        {
            foreach (var list in _free)
            {
                for (var i = 0; i < list.Count; i++)
                {
                    var (offset, available) = list[i];
                    var aligned = (offset + (ulong)alignment - 1) & ~((ulong)alignment - 1);
                    var waste = aligned - offset;
                    if (available < waste + size)
                    {
                        continue;
                    }

                    list.RemoveAt(i);
                    if (waste > 0)
                    {
                        list.Insert(i++, (offset, waste));
                    }

                    if (available > waste + size)
                    {
                        list.Insert(i, (aligned + size, available - waste - size));
                    }

                    var span = Span(GuestPhysicalBase + aligned, checked((int)size));
                    span.Clear();
                    return GuestPhysicalBase + aligned;
                }
            }
        }

        throw new InvalidOperationException($"Guest memory exhausted allocating {length} bytes.");
    }

    /// <summary>Returns a buffer from <see cref="Allocate"/>.</summary>
    public void Free(ulong guestAddress, long length)
    {
        var offset = guestAddress - GuestPhysicalBase;
        var size = ((ulong)length + 15) & ~15UL;
        lock (_lock)
        {
            var regionSize = (ulong)Size / (ulong)_free.Length;
            var list = _free[(int)(offset / regionSize)];
            var index = 0;
            while (index < list.Count && list[index].Offset < offset)
            {
                index++;
            }

            list.Insert(index, (offset, size));

            // Merge with the neighbours.
            if (index + 1 < list.Count && list[index].Offset + list[index].Length == list[index + 1].Offset)
            {
                list[index] = (list[index].Offset, list[index].Length + list[index + 1].Length);
                list.RemoveAt(index + 1);
            }

            if (index > 0 && list[index - 1].Offset + list[index - 1].Length == list[index].Offset)
            {
                list[index - 1] = (list[index - 1].Offset, list[index - 1].Length + list[index].Length);
                list.RemoveAt(index);
            }
        }
    }

    /// <summary>A view of guest memory at a guest-physical address.</summary>
    public Span<byte> Span(ulong guestAddress, int length)
    {
        ObjectDisposedException.ThrowIf(_disposed, this);
        if (guestAddress < GuestPhysicalBase || guestAddress + (ulong)length > GuestPhysicalEnd)
        {
            throw new ArgumentOutOfRangeException(nameof(guestAddress), $"0x{guestAddress:x}+{length} is outside guest memory.");
        }

        return new Span<byte>((void*)(Pointer + (nint)(guestAddress - GuestPhysicalBase)), length);
    }

    public void Write(ulong guestAddress, ReadOnlySpan<byte> data) => data.CopyTo(Span(guestAddress, data.Length));

    public byte[] Read(ulong guestAddress, int length) => Span(guestAddress, length).ToArray();

    /// <summary>The user (front-end virtual) address of a guest-physical address, as SET_VRING_ADDR wants it.</summary>
    public ulong ToUserAddress(ulong guestAddress)
    {
        foreach (var region in Regions)
        {
            if (guestAddress >= region.GuestPhysicalAddress && guestAddress < region.GuestPhysicalAddress + region.Size)
            {
                return region.UserAddress + (guestAddress - region.GuestPhysicalAddress);
            }
        }

        throw new ArgumentOutOfRangeException(nameof(guestAddress));
    }

    /// <summary>A raw pointer into guest memory (for volatile ring-index accesses).</summary>
    public byte* PointerTo(ulong guestAddress, int length)
    {
        _ = Span(guestAddress, length);
        return (byte*)(Pointer + (nint)(guestAddress - GuestPhysicalBase));
    }

    public void Dispose()
    {
        if (_disposed)
        {
            return;
        }

        _disposed = true;
        Native.Unmap(Pointer, Size);
        Native.Close(Fd);
    }
}
