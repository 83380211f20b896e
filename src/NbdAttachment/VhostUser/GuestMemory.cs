using NbdAttachment.VhostUser.Native;

namespace NbdAttachment.VhostUser;

/// <summary>One region of guest memory mapped from a descriptor the front-end sent.</summary>
internal readonly unsafe struct GuestMemoryRegion(ulong guestAddress, ulong size, ulong userAddress, byte* host, byte* mapBase, nuint mapLength)
{
    public ulong GuestAddress { get; } = guestAddress;

    public ulong Size { get; } = size;

    public ulong UserAddress { get; } = userAddress;

    public byte* Host { get; } = host;

    public byte* MapBase { get; } = mapBase;

    public nuint MapLength { get; } = mapLength;
}

/// <summary>
/// The guest memory table of one session: regions mapped from the front-end's descriptors, with bounds-checked
/// translation of guest-physical addresses (descriptors) and front-end virtual addresses (ring locations) to host
/// pointers. Reference-counted: a replaced table is unmapped only once the last request using it has finished, so a
/// request in flight never touches unmapped memory.
/// </summary>
internal sealed unsafe class GuestMemory
{
    private readonly GuestMemoryRegion[] _regions;
    private int _references = 1;

    private GuestMemory(GuestMemoryRegion[] regions) => _regions = regions;

    /// <summary>An empty table: every translation fails.</summary>
    public static GuestMemory Empty { get; } = new([]);

    public int RegionCount => _regions.Length;

    /// <summary>
    /// Maps the regions of a SET_MEM_TABLE payload (after the count and padding) from <paramref name="fds"/>. The
    /// descriptors are not closed here.
    /// </summary>
    public static GuestMemory Map(ReadOnlySpan<byte> regions, int count, IReadOnlyList<int> fds)
    {
        var mapped = new GuestMemoryRegion[count];
        var done = 0;
        try
        {
            for (var i = 0; i < count; i++)
            {
                var entry = regions.Slice(i * Protocol.VhostUserConstants.MemoryRegionSize, Protocol.VhostUserConstants.MemoryRegionSize);
                var guest = System.Buffers.Binary.BinaryPrimitives.ReadUInt64LittleEndian(entry);
                var size = System.Buffers.Binary.BinaryPrimitives.ReadUInt64LittleEndian(entry[8..]);
                var user = System.Buffers.Binary.BinaryPrimitives.ReadUInt64LittleEndian(entry[16..]);
                var offset = System.Buffers.Binary.BinaryPrimitives.ReadUInt64LittleEndian(entry[24..]);
                mapped[i] = MapRegion(i, guest, size, user, offset, fds[i]);
                done++;
            }

            for (var i = 0; i < count; i++)
            {
                for (var j = i + 1; j < count; j++)
                {
                    if (Overlaps(mapped[i].GuestAddress, mapped[i].Size, mapped[j].GuestAddress, mapped[j].Size))
                    {
                        throw new VhostUserProtocolException($"Memory regions {i} and {j} overlap in guest-physical space.");
                    }
                }
            }
        }
        catch
        {
            for (var i = 0; i < done; i++)
            {
                _ = LibC.Munmap(mapped[i].MapBase, mapped[i].MapLength);
            }

            throw;
        }

        return new GuestMemory(mapped);
    }

    /// <summary>A pointer to <paramref name="length"/> bytes at guest-physical <paramref name="address"/>, or null when any byte is outside one region.</summary>
    public byte* TranslateGuest(ulong address, ulong length) => Translate(address, length, user: false);

    /// <summary>A pointer to <paramref name="length"/> bytes at front-end virtual <paramref name="address"/>, or null.</summary>
    public byte* TranslateUser(ulong address, ulong length) => Translate(address, length, user: true);

    public void AddReference() => Interlocked.Increment(ref _references);

    /// <summary>Drops a reference; the last one unmaps the regions.</summary>
    public void Release()
    {
        if (Interlocked.Decrement(ref _references) == 0)
        {
            foreach (var region in _regions)
            {
                _ = LibC.Munmap(region.MapBase, region.MapLength);
            }
        }
    }

    private byte* Translate(ulong address, ulong length, bool user)
    {
        foreach (ref readonly var region in _regions.AsSpan())
        {
            var start = user ? region.UserAddress : region.GuestAddress;
            if (address >= start && address - start < region.Size && length <= region.Size - (address - start))
            {
                return region.Host + (address - start);
            }
        }

        return null;
    }

    private static GuestMemoryRegion MapRegion(int index, ulong guest, ulong size, ulong user, ulong offset, int fd)
    {
        if (size == 0 || size > (1UL << 48) || offset > (1UL << 48) || guest > ulong.MaxValue - size || user > ulong.MaxValue - size)
        {
            throw new VhostUserProtocolException($"Memory region {index} is invalid (guest 0x{guest:X}, size 0x{size:X}, user 0x{user:X}, offset 0x{offset:X}).");
        }

        // A mapping past the end of the file would raise SIGBUS on first touch: check the file is large enough.
        var fileSize = LibC.LSeek(fd, 0, LibC.SEEK_END);
        if (fileSize < 0 || (ulong)fileSize < size + offset)
        {
            throw new VhostUserProtocolException(fileSize < 0
                ? $"Memory region {index}: the descriptor cannot be sized ({LibC.Describe(LibC.Errno)})."
                : $"Memory region {index} needs 0x{size + offset:X} bytes but its file has 0x{fileSize:X}.");
        }

        var length = (nuint)(size + offset);
        var map = LibC.Mmap(null, length, LibC.PROT_READ | LibC.PROT_WRITE, LibC.MAP_SHARED, fd, 0);
        if (map == (void*)-1)
        {
            throw new VhostUserProtocolException($"Memory region {index} (0x{size:X} bytes at offset 0x{offset:X}) cannot be mapped: {LibC.Describe(LibC.Errno)}.");
        }

        return new GuestMemoryRegion(guest, size, user, (byte*)map + offset, (byte*)map, length);
    }

    private static bool Overlaps(ulong a, ulong aLength, ulong b, ulong bLength) => a < b + bLength && b < a + aLength;
}
