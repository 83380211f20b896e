using System.Buffers;
using System.Buffers.Binary;

namespace NbdAttachment.Protocol;

/// <summary>
/// A transmission reply header: either a simple reply (16 bytes) or a structured reply chunk header (20 bytes).
/// The cookie sits at offset 8 in both, so a reader looks at the magic first.
/// </summary>
internal readonly struct NbdReplyHeader
{
    public const int SimpleSize = 16;
    public const int StructuredSize = 20;

    private NbdReplyHeader(bool structured, uint error, ushort flags, NbdChunkType type, ulong cookie, uint length)
    {
        IsStructured = structured;
        Error = error;
        ReplyFlags = flags;
        ChunkType = type;
        Cookie = cookie;
        PayloadLength = length;
    }

    public bool IsStructured { get; }

    /// <summary>The error of a simple reply (0 for success); 0 for a structured chunk.</summary>
    public uint Error { get; }

    public ushort ReplyFlags { get; }

    public bool IsDone => !IsStructured || (ReplyFlags & 1) != 0;

    public NbdChunkType ChunkType { get; }

    public ulong Cookie { get; }

    /// <summary>The chunk payload length (structured only).</summary>
    public uint PayloadLength { get; }

    public int HeaderSize => IsStructured ? StructuredSize : SimpleSize;

    public static NbdReplyHeader Simple(uint error, ulong cookie) => new(false, error, 0, NbdChunkType.None, cookie, 0);

    public static NbdReplyHeader Structured(ushort flags, NbdChunkType type, ulong cookie, uint length) => new(true, 0, flags, type, cookie, length);

    /// <summary>
    /// Parses a reply header from the start of <paramref name="buffer"/>. Returns <see cref="OperationStatus.NeedMoreData"/>
    /// when the buffer is too short and <see cref="OperationStatus.InvalidData"/> for an unknown magic.
    /// </summary>
    public static OperationStatus TryRead(in ReadOnlySequence<byte> buffer, out NbdReplyHeader header)
    {
        header = default;
        if (buffer.Length < 4)
        {
            return OperationStatus.NeedMoreData;
        }

        var first = buffer.FirstSpan;
        var magic = first.Length >= 4 ? BinaryPrimitives.ReadUInt32BigEndian(first) : ReadMagicSlow(buffer);
        int size;
        if (magic == NbdMagic.SimpleReply)
        {
            size = SimpleSize;
        }
        else if (magic == NbdMagic.StructuredReply)
        {
            size = StructuredSize;
        }
        else
        {
            return OperationStatus.InvalidData;
        }

        if (buffer.Length < size)
        {
            return OperationStatus.NeedMoreData;
        }

        Span<byte> bytes = stackalloc byte[StructuredSize];
        ReadOnlySpan<byte> src = bytes;
        if (first.Length >= size)
        {
            src = first[..size];
        }
        else
        {
            buffer.Slice(0, size).CopyTo(bytes);
        }

        header = size == SimpleSize
            ? Simple(BinaryPrimitives.ReadUInt32BigEndian(src[4..]), BinaryPrimitives.ReadUInt64BigEndian(src[8..]))
            : Structured(
                BinaryPrimitives.ReadUInt16BigEndian(src[4..]),
                (NbdChunkType)BinaryPrimitives.ReadUInt16BigEndian(src[6..]),
                BinaryPrimitives.ReadUInt64BigEndian(src[8..]),
                BinaryPrimitives.ReadUInt32BigEndian(src[16..]));
        return OperationStatus.Done;
    }

    /// <summary>Reads the 32-bit magic at the start of a buffer, for diagnostics.</summary>
    public static uint PeekMagic(in ReadOnlySequence<byte> buffer) =>
        buffer.FirstSpan.Length >= 4 ? BinaryPrimitives.ReadUInt32BigEndian(buffer.FirstSpan) : ReadMagicSlow(buffer);

    public void WriteTo(Span<byte> destination)
    {
        if (IsStructured)
        {
            BinaryPrimitives.WriteUInt32BigEndian(destination, NbdMagic.StructuredReply);
            BinaryPrimitives.WriteUInt16BigEndian(destination[4..], ReplyFlags);
            BinaryPrimitives.WriteUInt16BigEndian(destination[6..], (ushort)ChunkType);
            BinaryPrimitives.WriteUInt64BigEndian(destination[8..], Cookie);
            BinaryPrimitives.WriteUInt32BigEndian(destination[16..StructuredSize], PayloadLength);
        }
        else
        {
            BinaryPrimitives.WriteUInt32BigEndian(destination, NbdMagic.SimpleReply);
            BinaryPrimitives.WriteUInt32BigEndian(destination[4..], Error);
            BinaryPrimitives.WriteUInt64BigEndian(destination[8..SimpleSize], Cookie);
        }
    }

    public override string ToString() => IsStructured
        ? $"chunk type={ChunkType} flags={ReplyFlags} cookie={Cookie:x} length={PayloadLength}"
        : $"simple error={Error} cookie={Cookie:x}";

    private static uint ReadMagicSlow(in ReadOnlySequence<byte> buffer)
    {
        Span<byte> magic = stackalloc byte[4];
        buffer.Slice(0, 4).CopyTo(magic);
        return BinaryPrimitives.ReadUInt32BigEndian(magic);
    }
}
