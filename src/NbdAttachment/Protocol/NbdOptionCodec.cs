using System.Buffers.Binary;
using System.Text;

namespace NbdAttachment.Protocol;

/// <summary>An option reply header (20 bytes), read during option haggling.</summary>
internal readonly record struct NbdOptionReplyHeader(NbdOption Option, NbdOptionReplyType Type, uint Length)
{
    public const int Size = 20;

    public bool IsError => ((uint)Type & (uint)NbdOptionReplyType.ErrorBit) != 0;

    /// <summary>Parses and checks the magic; throws <see cref="NbdProtocolException"/> on a bad magic.</summary>
    public static NbdOptionReplyHeader ReadFrom(ReadOnlySpan<byte> source)
    {
        var magic = BinaryPrimitives.ReadUInt64BigEndian(source);
        if (magic != NbdMagic.OptionReply)
        {
            throw new NbdProtocolException($"Bad option reply magic 0x{magic:x16} (expected 0x{NbdMagic.OptionReply:x16}).");
        }

        return new NbdOptionReplyHeader(
            (NbdOption)BinaryPrimitives.ReadUInt32BigEndian(source[8..]),
            (NbdOptionReplyType)BinaryPrimitives.ReadUInt32BigEndian(source[12..]),
            BinaryPrimitives.ReadUInt32BigEndian(source[16..Size]));
    }
}

/// <summary>Encoders and decoders for the option-haggling phase. Pure functions, no I/O.</summary>
internal static class NbdOptionCodec
{
    public const int OptionHeaderSize = 16;
    public const int GreetingSize = 16;
    public const int OldstyleRestSize = 136; // size u64, flags u32, 124 zeroes
    public const int ExportNameReplyShort = 10;
    public const int ExportNameReplyLong = 134;

    private static readonly UTF8Encoding StrictUtf8 = new(encoderShouldEmitUTF8Identifier: false, throwOnInvalidBytes: true);

    /// <summary>Builds a full option request: IHAVEOPT, option, length, data.</summary>
    public static byte[] BuildOption(NbdOption option, ReadOnlySpan<byte> data)
    {
        var buffer = new byte[OptionHeaderSize + data.Length];
        BinaryPrimitives.WriteUInt64BigEndian(buffer, NbdMagic.IHaveOpt);
        BinaryPrimitives.WriteUInt32BigEndian(buffer.AsSpan(8), (uint)option);
        BinaryPrimitives.WriteUInt32BigEndian(buffer.AsSpan(12), (uint)data.Length);
        data.CopyTo(buffer.AsSpan(OptionHeaderSize));
        return buffer;
    }

    /// <summary>Data of <c>NBD_OPT_GO</c>/<c>NBD_OPT_INFO</c>: name length, name, count, info types.</summary>
    public static byte[] BuildGoData(string exportName, ReadOnlySpan<NbdInfoType> infos)
    {
        var nameLength = Encoding.UTF8.GetByteCount(exportName);
        var data = new byte[4 + nameLength + 2 + (2 * infos.Length)];
        BinaryPrimitives.WriteUInt32BigEndian(data, (uint)nameLength);
        Encoding.UTF8.GetBytes(exportName, data.AsSpan(4));
        var at = 4 + nameLength;
        BinaryPrimitives.WriteUInt16BigEndian(data.AsSpan(at), (ushort)infos.Length);
        at += 2;
        foreach (var info in infos)
        {
            BinaryPrimitives.WriteUInt16BigEndian(data.AsSpan(at), (ushort)info);
            at += 2;
        }

        return data;
    }

    /// <summary>Data of <c>NBD_OPT_SET_META_CONTEXT</c>/<c>LIST_META_CONTEXT</c>: export name and queries.</summary>
    public static byte[] BuildMetaContextData(string exportName, IReadOnlyList<string> queries)
    {
        var nameLength = Encoding.UTF8.GetByteCount(exportName);
        var total = 4 + nameLength + 4;
        foreach (var query in queries)
        {
            total += 4 + Encoding.UTF8.GetByteCount(query);
        }

        var data = new byte[total];
        BinaryPrimitives.WriteUInt32BigEndian(data, (uint)nameLength);
        var at = 4 + Encoding.UTF8.GetBytes(exportName, data.AsSpan(4));
        BinaryPrimitives.WriteUInt32BigEndian(data.AsSpan(at), (uint)queries.Count);
        at += 4;
        foreach (var query in queries)
        {
            var length = Encoding.UTF8.GetBytes(query, data.AsSpan(at + 4));
            BinaryPrimitives.WriteUInt32BigEndian(data.AsSpan(at), (uint)length);
            at += 4 + length;
        }

        return data;
    }

    /// <summary>Decodes a server string (names, descriptions, messages); invalid UTF-8 is a protocol error.</summary>
    public static string DecodeString(ReadOnlySpan<byte> bytes, string what)
    {
        if (bytes.Length > NbdLimits.MaxString)
        {
            throw new NbdProtocolException($"The server sent a {what} of {bytes.Length} bytes; the limit is {NbdLimits.MaxString}.");
        }

        try
        {
            return StrictUtf8.GetString(bytes);
        }
        catch (DecoderFallbackException ex)
        {
            throw new NbdProtocolException($"The server sent a {what} that is not valid UTF-8.", ex);
        }
    }

    /// <summary>Decodes an error message leniently: it is only shown to people.</summary>
    public static string DecodeMessage(ReadOnlySpan<byte> bytes) =>
        Encoding.UTF8.GetString(bytes.Length > NbdLimits.MaxString ? bytes[..NbdLimits.MaxString] : bytes);

    /// <summary>Parses <c>NBD_REP_SERVER</c>: name length, name, description.</summary>
    public static (string Name, string Description) ParseServer(ReadOnlySpan<byte> payload)
    {
        if (payload.Length < 4)
        {
            throw new NbdProtocolException($"NBD_REP_SERVER reply of {payload.Length} bytes is shorter than 4.");
        }

        var nameLength = BinaryPrimitives.ReadUInt32BigEndian(payload);
        if (nameLength > (uint)(payload.Length - 4))
        {
            throw new NbdProtocolException($"NBD_REP_SERVER name length {nameLength} runs past the reply ({payload.Length} bytes).");
        }

        var name = DecodeString(payload.Slice(4, (int)nameLength), "export name");
        var description = DecodeString(payload[(4 + (int)nameLength)..], "export description");
        return (name, description);
    }

    /// <summary>Parses <c>NBD_REP_META_CONTEXT</c>: id then name.</summary>
    public static (uint Id, string Name) ParseMetaContext(ReadOnlySpan<byte> payload)
    {
        if (payload.Length < 5)
        {
            throw new NbdProtocolException($"NBD_REP_META_CONTEXT reply of {payload.Length} bytes is too short.");
        }

        return (BinaryPrimitives.ReadUInt32BigEndian(payload), DecodeString(payload[4..], "meta context name"));
    }
}
