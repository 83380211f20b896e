using System.Buffers.Binary;

namespace NbdAttachment.Tests.VhostUser.Support;

/// <summary>
/// One data segment of a virtio-blk request: device-readable bytes (<see cref="Data"/> set) or a device-writable
/// buffer of <see cref="Length"/> bytes.
/// </summary>
public sealed record BlkSegment(byte[]? Data, int Length, bool DeviceWritable)
{
    public static BlkSegment Readable(byte[] data) => new(data, data.Length, false);

    public static BlkSegment Writable(int length) => new(null, length, true);
}

/// <summary>A virtio-blk request: 16-byte header, data segments, a device-writable status byte.</summary>
public sealed record BlkRequest
{
    public uint Type { get; init; }

    public ulong Sector { get; init; }

    public uint Reserved { get; init; }

    public IReadOnlyList<BlkSegment> Segments { get; init; } = [];

    /// <summary>Put the chain in one indirect table (needs VIRTIO_RING_F_INDIRECT_DESC).</summary>
    public bool Indirect { get; init; }

    public static BlkRequest Read(ulong sector, int length, int segments = 1, bool indirect = false) =>
        new() { Type = VirtioBlk.TypeIn, Sector = sector, Segments = Split(length, segments).Select(BlkSegment.Writable).ToArray(), Indirect = indirect };

    public static BlkRequest Write(ulong sector, byte[] data, int segments = 1, bool indirect = false)
    {
        var parts = new List<BlkSegment>();
        var offset = 0;
        foreach (var length in Split(data.Length, segments))
        {
            parts.Add(BlkSegment.Readable(data.AsSpan(offset, length).ToArray()));
            offset += length;
        }

        return new() { Type = VirtioBlk.TypeOut, Sector = sector, Segments = parts, Indirect = indirect };
    }

    public static BlkRequest Flush() => new() { Type = VirtioBlk.TypeFlush };

    public static BlkRequest GetId(int length = VirtioBlk.IdBytes) => new() { Type = VirtioBlk.TypeGetId, Segments = [BlkSegment.Writable(length)] };

    public static BlkRequest Discard(ulong sector, uint sectors) => Ranged(VirtioBlk.TypeDiscard, (sector, sectors, 0));

    public static BlkRequest WriteZeroes(ulong sector, uint sectors, bool unmap = false) =>
        Ranged(VirtioBlk.TypeWriteZeroes, (sector, sectors, unmap ? VirtioBlk.WriteZeroesFlagUnmap : 0));

    /// <summary>A DISCARD or WRITE_ZEROES request with one 16-byte range segment per range.</summary>
    public static BlkRequest Ranged(uint type, params (ulong Sector, uint Sectors, uint Flags)[] ranges)
    {
        var data = new byte[16 * ranges.Length];
        for (var i = 0; i < ranges.Length; i++)
        {
            BinaryPrimitives.WriteUInt64LittleEndian(data.AsSpan(16 * i), ranges[i].Sector);
            BinaryPrimitives.WriteUInt32LittleEndian(data.AsSpan((16 * i) + 8), ranges[i].Sectors);
            BinaryPrimitives.WriteUInt32LittleEndian(data.AsSpan((16 * i) + 12), ranges[i].Flags);
        }

        return new() { Type = type, Segments = [BlkSegment.Readable(data)] };
    }

    public byte[] Header()
    {
        var header = new byte[16];
        BinaryPrimitives.WriteUInt32LittleEndian(header, Type);
        BinaryPrimitives.WriteUInt32LittleEndian(header.AsSpan(4), Reserved);
        BinaryPrimitives.WriteUInt64LittleEndian(header.AsSpan(8), Sector);
        return header;
    }

    private static IEnumerable<int> Split(int length, int segments)
    {
        var each = length / segments;
        for (var i = 0; i < segments; i++)
        {
            yield return i == segments - 1 ? length - (each * (segments - 1)) : each;
        }
    }
}

/// <summary>The outcome of a virtio-blk request: the status byte (0xEE if the device never wrote it), the used length, the device-written data.</summary>
public sealed record BlkResult(byte Status, uint UsedLength, byte[] Data, ushort Head);

/// <summary>The virtio-blk configuration space (virtio 1.x section 5.2.4).</summary>
public sealed record BlkConfig(byte[] Raw)
{
    public ulong Capacity => BinaryPrimitives.ReadUInt64LittleEndian(Raw);

    public uint SizeMax => U32(8);

    public uint SegMax => U32(12);

    public uint BlkSize => U32(20);

    public byte PhysicalBlockExponent => Raw[24];

    public ushort MinIoSize => BinaryPrimitives.ReadUInt16LittleEndian(Raw.AsSpan(26));

    public uint OptIoSize => U32(28);

    public byte Wce => Raw[32];

    public ushort NumQueues => BinaryPrimitives.ReadUInt16LittleEndian(Raw.AsSpan(34));

    public uint MaxDiscardSectors => U32(36);

    public uint MaxDiscardSeg => U32(40);

    public uint DiscardSectorAlignment => U32(44);

    public uint MaxWriteZeroesSectors => U32(48);

    public uint MaxWriteZeroesSeg => U32(52);

    public byte WriteZeroesMayUnmap => Raw[56];

    public override string ToString() =>
        $"capacity={Capacity} size_max={SizeMax} seg_max={SegMax} blk_size={BlkSize} phys_exp={PhysicalBlockExponent} min_io={MinIoSize} opt_io={OptIoSize} wce={Wce} " +
        $"num_queues={NumQueues} max_discard_sectors={MaxDiscardSectors} max_discard_seg={MaxDiscardSeg} discard_align={DiscardSectorAlignment} " +
        $"max_wz_sectors={MaxWriteZeroesSectors} max_wz_seg={MaxWriteZeroesSeg} wz_may_unmap={WriteZeroesMayUnmap} (raw {Raw.Length} bytes)";

    private uint U32(int offset) => BinaryPrimitives.ReadUInt32LittleEndian(Raw.AsSpan(offset));
}
