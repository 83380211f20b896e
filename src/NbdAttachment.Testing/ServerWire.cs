using System.Buffers.Binary;
using System.Text;

namespace NbdAttachment.Testing;

/// <summary>
/// The server side of the NBD wire format: constants and encoders for every message the test server
/// sends. Written independently of the client library so that the two implementations check each other.
/// </summary>
internal static class ServerWire
{
    // Handshake magics.
    public const ulong NbdMagic = 0x4e42444d41474943;
    public const ulong OldstyleMagic = 0x0000420281861253;
    public const ulong IHaveOpt = 0x49484156454F5054;
    public const ulong OptionReplyMagic = 0x0003e889045565a9;

    // Transmission magics.
    public const uint RequestMagic = 0x25609513;
    public const uint SimpleReplyMagic = 0x67446698;
    public const uint StructuredReplyMagic = 0x668e33ef;

    // Handshake flags (server) and client flags.
    public const ushort FlagFixedNewstyle = 0x0001;
    public const ushort FlagNoZeroes = 0x0002;
    public const uint ClientFlagFixedNewstyle = 0x0001;
    public const uint ClientFlagNoZeroes = 0x0002;

    // Options.
    public const uint OptExportName = 1;
    public const uint OptAbort = 2;
    public const uint OptList = 3;
    public const uint OptStartTls = 5;
    public const uint OptInfo = 6;
    public const uint OptGo = 7;
    public const uint OptStructuredReply = 8;
    public const uint OptListMetaContext = 9;
    public const uint OptSetMetaContext = 10;
    public const uint OptExtendedHeaders = 11;

    // Option reply types.
    public const uint RepAck = 1;
    public const uint RepServer = 2;
    public const uint RepInfo = 3;
    public const uint RepMetaContext = 4;
    public const uint RepErrUnsup = 0x80000001;
    public const uint RepErrPolicy = 0x80000002;
    public const uint RepErrInvalid = 0x80000003;
    public const uint RepErrUnknown = 0x80000006;
    public const uint RepErrBlockSizeReqd = 0x80000008;
    public const uint RepErrTooBig = 0x80000009;

    // NBD_INFO_* types.
    public const ushort InfoExport = 0;
    public const ushort InfoName = 1;
    public const ushort InfoDescription = 2;
    public const ushort InfoBlockSize = 3;

    // Transmission flags.
    public const ushort TxHasFlags = 0x0001;
    public const ushort TxReadOnly = 0x0002;
    public const ushort TxSendFlush = 0x0004;
    public const ushort TxSendFua = 0x0008;
    public const ushort TxSendTrim = 0x0020;
    public const ushort TxSendWriteZeroes = 0x0040;
    public const ushort TxSendDf = 0x0080;
    public const ushort TxCanMultiConn = 0x0100;
    public const ushort TxSendCache = 0x0400;
    public const ushort TxSendFastZero = 0x0800;

    // Command flags.
    public const ushort CmdFlagFua = 0x0001;
    public const ushort CmdFlagNoHole = 0x0002;
    public const ushort CmdFlagDf = 0x0004;
    public const ushort CmdFlagReqOne = 0x0008;
    public const ushort CmdFlagFastZero = 0x0010;

    // Reply flags and chunk types.
    public const ushort ReplyFlagDone = 0x0001;
    public const ushort ChunkNone = 0;
    public const ushort ChunkOffsetData = 1;
    public const ushort ChunkOffsetHole = 2;
    public const ushort ChunkBlockStatus = 5;
    public const ushort ChunkError = 0x8001;

    // Error values.
    public const uint EPerm = 1;
    public const uint EInval = 22;
    public const uint ENoSpc = 28;

    // base:allocation status bits.
    public const uint StateHole = 0x1;
    public const uint StateZero = 0x2;

    public const string BaseAllocation = "base:allocation";

    /// <summary>Size of a compact request header.</summary>
    public const int RequestHeaderSize = 28;

    /// <summary>Size of a simple reply header.</summary>
    public const int SimpleReplyHeaderSize = 16;

    /// <summary>Size of a structured reply chunk header.</summary>
    public const int ChunkHeaderSize = 20;

    /// <summary>Longest string (export name, message, context name) the protocol allows.</summary>
    public const int MaxStringLength = 4096;

    /// <summary>Strict UTF-8: invalid sequences throw instead of being replaced.</summary>
    public static readonly UTF8Encoding StrictUtf8 = new(encoderShouldEmitUTF8Identifier: false, throwOnInvalidBytes: true);

    /// <summary>The 18-byte newstyle greeting.</summary>
    public static byte[] NewstyleGreeting(ushort handshakeFlags)
    {
        var buffer = new byte[18];
        BinaryPrimitives.WriteUInt64BigEndian(buffer, NbdMagic);
        BinaryPrimitives.WriteUInt64BigEndian(buffer.AsSpan(8), IHaveOpt);
        BinaryPrimitives.WriteUInt16BigEndian(buffer.AsSpan(16), handshakeFlags);
        return buffer;
    }

    /// <summary>The 152-byte oldstyle greeting; handshake flags (high half) are always zero.</summary>
    public static byte[] OldstyleGreeting(long size, ushort transmissionFlags)
    {
        var buffer = new byte[152];
        BinaryPrimitives.WriteUInt64BigEndian(buffer, NbdMagic);
        BinaryPrimitives.WriteUInt64BigEndian(buffer.AsSpan(8), OldstyleMagic);
        BinaryPrimitives.WriteUInt64BigEndian(buffer.AsSpan(16), (ulong)size);
        BinaryPrimitives.WriteUInt32BigEndian(buffer.AsSpan(24), transmissionFlags);
        return buffer;
    }

    /// <summary>The raw reply to NBD_OPT_EXPORT_NAME: 10 bytes, or 134 with the zero padding.</summary>
    public static byte[] ExportNameReply(long size, ushort transmissionFlags, bool noZeroes)
    {
        var buffer = new byte[noZeroes ? 10 : 134];
        BinaryPrimitives.WriteUInt64BigEndian(buffer, (ulong)size);
        BinaryPrimitives.WriteUInt16BigEndian(buffer.AsSpan(8), transmissionFlags);
        return buffer;
    }

    /// <summary>A fixed-newstyle option reply with arbitrary data.</summary>
    public static byte[] OptionReply(uint option, uint replyType, ReadOnlySpan<byte> data)
    {
        var buffer = new byte[20 + data.Length];
        BinaryPrimitives.WriteUInt64BigEndian(buffer, OptionReplyMagic);
        BinaryPrimitives.WriteUInt32BigEndian(buffer.AsSpan(8), option);
        BinaryPrimitives.WriteUInt32BigEndian(buffer.AsSpan(12), replyType);
        BinaryPrimitives.WriteUInt32BigEndian(buffer.AsSpan(16), (uint)data.Length);
        data.CopyTo(buffer.AsSpan(20));
        return buffer;
    }

    /// <summary>An option error reply whose data is a human-readable message.</summary>
    public static byte[] OptionError(uint option, uint errorType, string message) =>
        OptionReply(option, errorType, Encoding.UTF8.GetBytes(message));

    /// <summary>NBD_REP_SERVER: name length, name, then description.</summary>
    public static byte[] ServerReply(string name, string? description)
    {
        byte[] nameBytes = Encoding.UTF8.GetBytes(name);
        byte[] descriptionBytes = Encoding.UTF8.GetBytes(description ?? string.Empty);
        var data = new byte[4 + nameBytes.Length + descriptionBytes.Length];
        BinaryPrimitives.WriteUInt32BigEndian(data, (uint)nameBytes.Length);
        nameBytes.CopyTo(data, 4);
        descriptionBytes.CopyTo(data, 4 + nameBytes.Length);
        return OptionReply(OptList, RepServer, data);
    }

    /// <summary>NBD_REP_INFO carrying NBD_INFO_EXPORT.</summary>
    public static byte[] InfoExportReply(uint option, long size, ushort transmissionFlags)
    {
        var data = new byte[12];
        BinaryPrimitives.WriteUInt16BigEndian(data, InfoExport);
        BinaryPrimitives.WriteUInt64BigEndian(data.AsSpan(2), (ulong)size);
        BinaryPrimitives.WriteUInt16BigEndian(data.AsSpan(10), transmissionFlags);
        return OptionReply(option, RepInfo, data);
    }

    /// <summary>NBD_REP_INFO carrying NBD_INFO_NAME or NBD_INFO_DESCRIPTION.</summary>
    public static byte[] InfoStringReply(uint option, ushort infoType, string text)
    {
        var data = Utf8After(2, text);
        BinaryPrimitives.WriteUInt16BigEndian(data, infoType);
        return OptionReply(option, RepInfo, data);
    }

    /// <summary>NBD_REP_INFO carrying NBD_INFO_BLOCK_SIZE.</summary>
    public static byte[] InfoBlockSizeReply(uint option, uint minimum, uint preferred, uint maximum)
    {
        var data = new byte[14];
        BinaryPrimitives.WriteUInt16BigEndian(data, InfoBlockSize);
        BinaryPrimitives.WriteUInt32BigEndian(data.AsSpan(2), minimum);
        BinaryPrimitives.WriteUInt32BigEndian(data.AsSpan(6), preferred);
        BinaryPrimitives.WriteUInt32BigEndian(data.AsSpan(10), maximum);
        return OptionReply(option, RepInfo, data);
    }

    /// <summary>NBD_REP_META_CONTEXT: context id, then name.</summary>
    public static byte[] MetaContextReply(uint option, uint contextId, string name)
    {
        var data = Utf8After(4, name);
        BinaryPrimitives.WriteUInt32BigEndian(data, contextId);
        return OptionReply(option, RepMetaContext, data);
    }

    /// <summary>A buffer of <paramref name="prefix"/> bytes (for the caller to fill) followed by <paramref name="text"/> in UTF-8.</summary>
    private static byte[] Utf8After(int prefix, string text)
    {
        var data = new byte[prefix + Encoding.UTF8.GetByteCount(text)];
        Encoding.UTF8.GetBytes(text, data.AsSpan(prefix));
        return data;
    }

    /// <summary>Writes a 16-byte simple reply header.</summary>
    public static void WriteSimpleReplyHeader(Span<byte> destination, uint error, ulong cookie)
    {
        BinaryPrimitives.WriteUInt32BigEndian(destination, SimpleReplyMagic);
        BinaryPrimitives.WriteUInt32BigEndian(destination[4..], error);
        BinaryPrimitives.WriteUInt64BigEndian(destination[8..], cookie);
    }

    /// <summary>A complete simple reply without payload.</summary>
    public static byte[] SimpleReply(uint error, ulong cookie)
    {
        var buffer = new byte[SimpleReplyHeaderSize];
        WriteSimpleReplyHeader(buffer, error, cookie);
        return buffer;
    }

    /// <summary>Writes a 20-byte structured reply chunk header.</summary>
    public static void WriteChunkHeader(Span<byte> destination, ushort flags, ushort type, ulong cookie, uint payloadLength)
    {
        BinaryPrimitives.WriteUInt32BigEndian(destination, StructuredReplyMagic);
        BinaryPrimitives.WriteUInt16BigEndian(destination[4..], flags);
        BinaryPrimitives.WriteUInt16BigEndian(destination[6..], type);
        BinaryPrimitives.WriteUInt64BigEndian(destination[8..], cookie);
        BinaryPrimitives.WriteUInt32BigEndian(destination[16..], payloadLength);
    }

    /// <summary>A NBD_REPLY_TYPE_NONE chunk with the DONE flag.</summary>
    public static byte[] NoneChunk(ulong cookie)
    {
        var buffer = new byte[ChunkHeaderSize];
        WriteChunkHeader(buffer, ReplyFlagDone, ChunkNone, cookie, 0);
        return buffer;
    }

    /// <summary>A NBD_REPLY_TYPE_ERROR chunk with the DONE flag.</summary>
    public static byte[] ErrorChunk(ulong cookie, uint error, string message)
    {
        byte[] messageBytes = Encoding.UTF8.GetBytes(message);
        if (messageBytes.Length > MaxStringLength)
        {
            Array.Resize(ref messageBytes, MaxStringLength);
        }

        var buffer = new byte[ChunkHeaderSize + 6 + messageBytes.Length];
        WriteChunkHeader(buffer, ReplyFlagDone, ChunkError, cookie, (uint)(6 + messageBytes.Length));
        BinaryPrimitives.WriteUInt32BigEndian(buffer.AsSpan(ChunkHeaderSize), error);
        BinaryPrimitives.WriteUInt16BigEndian(buffer.AsSpan(ChunkHeaderSize + 4), (ushort)messageBytes.Length);
        messageBytes.CopyTo(buffer, ChunkHeaderSize + 6);
        return buffer;
    }
}
