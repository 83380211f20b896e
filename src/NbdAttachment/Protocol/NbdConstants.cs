namespace NbdAttachment.Protocol;

/// <summary>Magic numbers and fixed sizes of the NBD protocol (all big-endian on the wire).</summary>
internal static class NbdMagic
{
    public const ulong InitPassword = 0x4e42444d41474943UL; // "NBDMAGIC"
    public const ulong OldstyleMagic = 0x0000420281861253UL;
    public const ulong IHaveOpt = 0x49484156454F5054UL; // "IHAVEOPT"
    public const ulong OptionReply = 0x0003e889045565a9UL;
    public const uint Request = 0x25609513;
    public const uint SimpleReply = 0x67446698;
    public const uint StructuredReply = 0x668e33ef;
    public const uint ExtendedReply = 0x6e8a278c;
}

/// <summary>Protocol limits the client enforces on what a server sends.</summary>
internal static class NbdLimits
{
    /// <summary>Strings (names, descriptions, messages) may be at most this many bytes.</summary>
    public const int MaxString = 4096;

    /// <summary>Largest option reply the client accepts (LIST and meta-context replies are small).</summary>
    public const int MaxOptionReply = 64 * 1024;

    /// <summary>Largest non-data structured chunk payload accepted (block status: 2^20 extents of 8 bytes plus the id).</summary>
    public const int MaxStatusChunk = (8 * 1024 * 1024) + 4;

    /// <summary>Payload cap used when the server advertises no maximum.</summary>
    public const int DefaultMaxPayload = 32 * 1024 * 1024;

    /// <summary>Absolute payload cap whatever the server advertises.</summary>
    public const int HardMaxPayload = 64 * 1024 * 1024;

    /// <summary>Alignment assumed when the server advertises none (the spec says servers SHOULD accept 1).</summary>
    public const int DefaultMinimumBlock = 1;

    /// <summary>Preferred block size when the server advertises none.</summary>
    public const int DefaultPreferredBlock = 4096;
}

internal enum NbdOption : uint
{
    ExportName = 1,
    Abort = 2,
    List = 3,
    StartTls = 5,
    Info = 6,
    Go = 7,
    StructuredReply = 8,
    ListMetaContext = 9,
    SetMetaContext = 10,
    ExtendedHeaders = 11,
}

internal enum NbdOptionReplyType : uint
{
    Ack = 1,
    Server = 2,
    Info = 3,
    MetaContext = 4,
    ErrorBit = 0x80000000,
    ErrUnsup = 0x80000001,
    ErrPolicy = 0x80000002,
    ErrInvalid = 0x80000003,
    ErrPlatform = 0x80000004,
    ErrTlsReqd = 0x80000005,
    ErrUnknown = 0x80000006,
    ErrShutdown = 0x80000007,
    ErrBlockSizeReqd = 0x80000008,
    ErrTooBig = 0x80000009,
    ErrExtHeaderReqd = 0x8000000A,
}

internal enum NbdInfoType : ushort
{
    Export = 0,
    Name = 1,
    Description = 2,
    BlockSize = 3,
}

[Flags]
internal enum NbdHandshakeFlags : ushort
{
    None = 0,
    FixedNewstyle = 1,
    NoZeroes = 2,
}

internal enum NbdCommand : ushort
{
    Read = 0,
    Write = 1,
    Disconnect = 2,
    Flush = 3,
    Trim = 4,
    Cache = 5,
    WriteZeroes = 6,
    BlockStatus = 7,
}

[Flags]
internal enum NbdCommandFlags : ushort
{
    None = 0,
    Fua = 1,
    NoHole = 2,
    DontFragment = 4,
    ReqOne = 8,
    FastZero = 16,
}

internal enum NbdChunkType : ushort
{
    None = 0,
    OffsetData = 1,
    OffsetHole = 2,
    BlockStatus = 5,
    BlockStatusExt = 6,
    ErrorBit = 0x8000,
    Error = 0x8001,
    ErrorOffset = 0x8002,
}

internal static class NbdNames
{
    public static string Option(NbdOption option) => option switch
    {
        NbdOption.ExportName => "NBD_OPT_EXPORT_NAME",
        NbdOption.Abort => "NBD_OPT_ABORT",
        NbdOption.List => "NBD_OPT_LIST",
        NbdOption.StartTls => "NBD_OPT_STARTTLS",
        NbdOption.Info => "NBD_OPT_INFO",
        NbdOption.Go => "NBD_OPT_GO",
        NbdOption.StructuredReply => "NBD_OPT_STRUCTURED_REPLY",
        NbdOption.ListMetaContext => "NBD_OPT_LIST_META_CONTEXT",
        NbdOption.SetMetaContext => "NBD_OPT_SET_META_CONTEXT",
        NbdOption.ExtendedHeaders => "NBD_OPT_EXTENDED_HEADERS",
        _ => $"option {(uint)option}",
    };

    public static string Command(NbdCommand command) => command switch
    {
        NbdCommand.Read => "READ",
        NbdCommand.Write => "WRITE",
        NbdCommand.Disconnect => "DISC",
        NbdCommand.Flush => "FLUSH",
        NbdCommand.Trim => "TRIM",
        NbdCommand.Cache => "CACHE",
        NbdCommand.WriteZeroes => "WRITE_ZEROES",
        NbdCommand.BlockStatus => "BLOCK_STATUS",
        _ => $"command {(ushort)command}",
    };

    /// <summary>Maps a wire error number to <see cref="NbdError"/>; unknown values become EINVAL, as the spec says.</summary>
    public static NbdError Error(uint value) => value switch
    {
        1 => NbdError.PermissionDenied,
        5 => NbdError.IOError,
        12 => NbdError.OutOfMemory,
        22 => NbdError.InvalidArgument,
        28 => NbdError.NoSpace,
        75 => NbdError.Overflow,
        95 => NbdError.NotSupported,
        108 => NbdError.Shutdown,
        _ => NbdError.InvalidArgument,
    };

    public static NbdNegotiationError NegotiationError(NbdOptionReplyType type) => type switch
    {
        NbdOptionReplyType.ErrUnsup => NbdNegotiationError.Unsupported,
        NbdOptionReplyType.ErrPolicy => NbdNegotiationError.Policy,
        NbdOptionReplyType.ErrInvalid => NbdNegotiationError.Invalid,
        NbdOptionReplyType.ErrPlatform => NbdNegotiationError.Platform,
        NbdOptionReplyType.ErrTlsReqd => NbdNegotiationError.TlsRequired,
        NbdOptionReplyType.ErrUnknown => NbdNegotiationError.UnknownExport,
        NbdOptionReplyType.ErrShutdown => NbdNegotiationError.Shutdown,
        NbdOptionReplyType.ErrBlockSizeReqd => NbdNegotiationError.BlockSizeRequired,
        NbdOptionReplyType.ErrTooBig => NbdNegotiationError.TooBig,
        NbdOptionReplyType.ErrExtHeaderReqd => NbdNegotiationError.ExtendedHeadersRequired,
        _ => NbdNegotiationError.Other,
    };
}
