namespace NbdAttachment.Tests.VhostUser.Support;

/// <summary>vhost-user message types (front-end to back-end), from QEMU's docs/interop/vhost-user.rst.</summary>
public static class VhostUserRequest
{
    public const uint GetFeatures = 1;
    public const uint SetFeatures = 2;
    public const uint SetOwner = 3;
    public const uint ResetOwner = 4;
    public const uint SetMemTable = 5;
    public const uint SetLogBase = 6;
    public const uint SetLogFd = 7;
    public const uint SetVringNum = 8;
    public const uint SetVringAddr = 9;
    public const uint SetVringBase = 10;
    public const uint GetVringBase = 11;
    public const uint SetVringKick = 12;
    public const uint SetVringCall = 13;
    public const uint SetVringErr = 14;
    public const uint GetProtocolFeatures = 15;
    public const uint SetProtocolFeatures = 16;
    public const uint GetQueueNum = 17;
    public const uint SetVringEnable = 18;
    public const uint GetConfig = 24;
    public const uint SetConfig = 25;
    public const uint GetInflightFd = 31;
    public const uint GetMaxMemSlots = 36;
}

/// <summary>Header flags.</summary>
public static class VhostUserFlags
{
    public const uint Version = 0x1;
    public const uint Reply = 1u << 2;
    public const uint NeedReply = 1u << 3;
}

/// <summary>Feature bits: virtio transport, vhost-user, virtio-blk.</summary>
public static class VirtioFeatures
{
    public const int BlkSizeMax = 1;
    public const int BlkSegMax = 2;
    public const int BlkGeometry = 4;
    public const int BlkRo = 5;
    public const int BlkBlkSize = 6;
    public const int BlkFlush = 9;
    public const int BlkTopology = 10;
    public const int BlkConfigWce = 11;
    public const int BlkMq = 12;
    public const int BlkDiscard = 13;
    public const int BlkWriteZeroes = 14;
    public const int RingIndirectDesc = 28;
    public const int RingEventIdx = 29;
    public const int ProtocolFeatures = 30;
    public const int Version1 = 32;

    public static ulong Bit(int bit) => 1UL << bit;

    public static bool Has(ulong features, int bit) => (features & Bit(bit)) != 0;
}

/// <summary>vhost-user protocol feature bits.</summary>
public static class VhostUserProtocolFeatures
{
    public const int Mq = 0;
    public const int LogShmfd = 1;
    public const int Rarp = 2;
    public const int ReplyAck = 3;
    public const int Mtu = 4;
    public const int BackendReq = 5;
    public const int CrossEndian = 6;
    public const int CryptoSession = 7;
    public const int PageFaultMigration = 8;
    public const int Config = 9;
    public const int BackendSendFd = 10;
    public const int HostNotifier = 11;
    public const int InflightShmfd = 12;
    public const int ResetDevice = 13;
    public const int InbandNotifications = 14;
    public const int ConfigureMemSlots = 15;
    public const int Status = 16;

    public static ulong Bit(int bit) => 1UL << bit;
}

/// <summary>virtio-blk request types and status bytes.</summary>
public static class VirtioBlk
{
    public const uint TypeIn = 0;
    public const uint TypeOut = 1;
    public const uint TypeFlush = 4;
    public const uint TypeGetId = 8;
    public const uint TypeDiscard = 11;
    public const uint TypeWriteZeroes = 13;

    public const byte StatusOk = 0;
    public const byte StatusIoErr = 1;
    public const byte StatusUnsupported = 2;

    public const uint WriteZeroesFlagUnmap = 1;
    public const int IdBytes = 20;
    public const int SectorSize = 512;

    /// <summary>virtio_blk_config up to and including write_zeroes_may_unmap + padding (what QEMU 7.2 front-ends read).</summary>
    public const int ConfigSize = 60;
}

/// <summary>Split virtqueue descriptor flags.</summary>
public static class VirtqDescFlags
{
    public const ushort Next = 1;
    public const ushort Write = 2;
    public const ushort Indirect = 4;
}
