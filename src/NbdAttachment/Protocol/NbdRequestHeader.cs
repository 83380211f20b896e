using System.Buffers.Binary;

namespace NbdAttachment.Protocol;

/// <summary>A compact transmission request header (28 bytes).</summary>
internal readonly struct NbdRequestHeader
{
    public const int Size = 28;

    public NbdRequestHeader(NbdCommand command, NbdCommandFlags flags, ulong cookie, ulong offset, uint length)
    {
        Command = command;
        Flags = flags;
        Cookie = cookie;
        Offset = offset;
        Length = length;
    }

    public NbdCommand Command { get; }

    public NbdCommandFlags Flags { get; }

    public ulong Cookie { get; }

    public ulong Offset { get; }

    public uint Length { get; }

    public void WriteTo(Span<byte> destination)
    {
        BinaryPrimitives.WriteUInt32BigEndian(destination, NbdMagic.Request);
        BinaryPrimitives.WriteUInt16BigEndian(destination[4..], (ushort)Flags);
        BinaryPrimitives.WriteUInt16BigEndian(destination[6..], (ushort)Command);
        BinaryPrimitives.WriteUInt64BigEndian(destination[8..], Cookie);
        BinaryPrimitives.WriteUInt64BigEndian(destination[16..], Offset);
        BinaryPrimitives.WriteUInt32BigEndian(destination[24..Size], Length);
    }

    public static NbdRequestHeader ReadFrom(ReadOnlySpan<byte> source) => new(
        (NbdCommand)BinaryPrimitives.ReadUInt16BigEndian(source[6..]),
        (NbdCommandFlags)BinaryPrimitives.ReadUInt16BigEndian(source[4..]),
        BinaryPrimitives.ReadUInt64BigEndian(source[8..]),
        BinaryPrimitives.ReadUInt64BigEndian(source[16..]),
        BinaryPrimitives.ReadUInt32BigEndian(source[24..Size]));

    public override string ToString() => $"{NbdNames.Command(Command)} cookie={Cookie:x} offset={Offset} length={Length} flags={Flags}";
}
