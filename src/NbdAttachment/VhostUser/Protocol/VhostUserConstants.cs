namespace NbdAttachment.VhostUser.Protocol;

/// <summary>Wire constants of vhost-user, split virtqueues and virtio-blk (from the QEMU vhost-user document and the virtio 1.2 specification).</summary>
internal static class VhostUserConstants
{
    // Message header.
    public const int HeaderSize = 12;
    public const uint ProtocolVersion = 0x1;
    public const uint VersionMask = 0x3;
    public const uint ReplyFlag = 0x4;
    public const uint NeedReplyFlag = 0x8;

    /// <summary>The largest payload accepted; the largest real message (SET_MEM_TABLE, GET_CONFIG) is under 300 bytes.</summary>
    public const int MaxPayload = 4096;

    public const int MaxMemoryRegions = 8;
    public const int MemoryRegionSize = 32;
    public const int MaxConfigSize = 256;
    public const ulong VringNoFdMask = 0x100;
    public const ulong VringIndexMask = 0xff;
    public const int MaxQueueSize = 32768;

    // Device feature bits (virtio and vhost-user).
    public const int FeatureProtocolFeatures = 30;
    public const int FeatureVersion1 = 32;
    public const int FeatureIndirectDesc = 28;
    public const int FeatureEventIdx = 29;
    public const int FeatureNotifyOnEmpty = 24;
    public const int FeatureAnyLayout = 27;

    // virtio-blk feature bits.
    public const int BlkSizeMax = 1;
    public const int BlkSegMax = 2;
    public const int BlkReadOnly = 5;
    public const int BlkBlockSize = 6;
    public const int BlkFlush = 9;
    public const int BlkTopology = 10;
    public const int BlkMultiQueue = 12;
    public const int BlkDiscard = 13;
    public const int BlkWriteZeroes = 14;

    // Protocol feature bits.
    public const int ProtocolMultiQueue = 0;
    public const int ProtocolReplyAck = 3;
    public const int ProtocolConfig = 9;

    // Split virtqueue.
    public const ushort DescNext = 1;
    public const ushort DescWrite = 2;
    public const ushort DescIndirect = 4;
    public const ushort AvailNoInterrupt = 1;
    public const int DescriptorSize = 16;

    // virtio-blk requests.
    public const uint BlkIn = 0;
    public const uint BlkOut = 1;
    public const uint BlkFlushRequest = 4;
    public const uint BlkGetId = 8;
    public const uint BlkDiscardRequest = 11;
    public const uint BlkWriteZeroesRequest = 13;
    public const byte StatusOk = 0;
    public const byte StatusIoError = 1;
    public const byte StatusUnsupported = 2;
    public const int BlkHeaderSize = 16;
    public const int BlkIdSize = 20;
    public const int SectorSize = 512;
    public const int SectorShift = 9;
    public const uint WriteZeroesUnmap = 1;
    public const int DiscardSegmentSize = 16;

    public static ulong Bit(int bit) => 1UL << bit;
}
