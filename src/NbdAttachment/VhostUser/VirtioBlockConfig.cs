using System.Buffers.Binary;
using static NbdAttachment.VhostUser.Protocol.VhostUserConstants;

namespace NbdAttachment.VhostUser;

/// <summary>The virtio-blk configuration space and feature bits a backend offers for one device (virtio 1.2, 5.2.4).</summary>
internal static class VirtioBlockConfig
{
    /// <summary>Largest discard / write-zeroes range in sectors: 2 GiB, so one range fits one NBD request.</summary>
    public const uint MaxRangeSectors = 1u << 22;

    public static ulong Features(BlockDeviceContext context)
    {
        var features = Bit(FeatureVersion1) | Bit(FeatureIndirectDesc) | Bit(FeatureEventIdx) | Bit(FeatureProtocolFeatures)
            | Bit(BlkSizeMax) | Bit(BlkSegMax) | Bit(BlkBlockSize) | Bit(BlkFlush) | Bit(BlkMultiQueue);
        return context.IsReadOnly
            ? features | Bit(BlkReadOnly)
            : features | Bit(BlkDiscard) | Bit(BlkWriteZeroes);
    }

    public static ulong ProtocolFeatures => Bit(ProtocolMultiQueue) | Bit(ProtocolReplyAck) | Bit(ProtocolConfig);

    /// <summary>Writes the configuration space (zero-padded) into <paramref name="space"/> (at least 60 bytes).</summary>
    public static void Write(Span<byte> space, BlockDeviceContext context, VhostUserBlockBackendOptions options)
    {
        space.Clear();
        var blockSize = context.Device.LogicalBlockSize;
        BinaryPrimitives.WriteUInt64LittleEndian(space, (ulong)context.Capacity >> SectorShift);
        BinaryPrimitives.WriteUInt32LittleEndian(space[8..], (uint)options.MaxSegmentSize);
        BinaryPrimitives.WriteUInt32LittleEndian(space[12..], (uint)options.MaxSegments);
        BinaryPrimitives.WriteUInt32LittleEndian(space[20..], (uint)blockSize);
        BinaryPrimitives.WriteUInt16LittleEndian(space[34..], (ushort)options.QueueCount);
        if (!context.IsReadOnly)
        {
            BinaryPrimitives.WriteUInt32LittleEndian(space[36..], MaxRangeSectors);
            BinaryPrimitives.WriteUInt32LittleEndian(space[40..], 1);
            BinaryPrimitives.WriteUInt32LittleEndian(space[44..], (uint)Math.Max(1, blockSize >> SectorShift));
            BinaryPrimitives.WriteUInt32LittleEndian(space[48..], MaxRangeSectors);
            BinaryPrimitives.WriteUInt32LittleEndian(space[52..], 1);
            space[56] = 1; // write_zeroes_may_unmap
        }
    }
}
