using System.Buffers.Binary;

namespace NbdAttachment.Protocol;

/// <summary>What the server said about an export during negotiation; filled by INFO replies or the EXPORT_NAME reply.</summary>
internal sealed class NbdExportDetails
{
    public bool HasExport { get; private set; }

    public ulong Size { get; private set; }

    public ushort Flags { get; private set; }

    public string? CanonicalName { get; private set; }

    public string? Description { get; private set; }

    public bool HasBlockSize { get; private set; }

    public uint MinimumBlock { get; private set; }

    public uint PreferredBlock { get; private set; }

    public uint MaximumPayload { get; private set; }

    public void SetExport(ulong size, ushort flags)
    {
        HasExport = true;
        Size = size;
        Flags = flags;
    }

    /// <summary>Applies one <c>NBD_REP_INFO</c> payload (type included), checking each declared length.</summary>
    public void ApplyInfo(ReadOnlySpan<byte> payload)
    {
        if (payload.Length < 2)
        {
            throw new NbdProtocolException($"NBD_REP_INFO reply of {payload.Length} bytes has no info type.");
        }

        var type = (NbdInfoType)BinaryPrimitives.ReadUInt16BigEndian(payload);
        var body = payload[2..];
        switch (type)
        {
            case NbdInfoType.Export:
                ExpectLength(payload, 12, "NBD_INFO_EXPORT");
                SetExport(BinaryPrimitives.ReadUInt64BigEndian(body), BinaryPrimitives.ReadUInt16BigEndian(body[8..]));
                break;
            case NbdInfoType.Name:
                CanonicalName = NbdOptionCodec.DecodeString(body, "export name");
                break;
            case NbdInfoType.Description:
                Description = NbdOptionCodec.DecodeString(body, "export description");
                break;
            case NbdInfoType.BlockSize:
                ExpectLength(payload, 14, "NBD_INFO_BLOCK_SIZE");
                HasBlockSize = true;
                MinimumBlock = BinaryPrimitives.ReadUInt32BigEndian(body);
                PreferredBlock = BinaryPrimitives.ReadUInt32BigEndian(body[4..]);
                MaximumPayload = BinaryPrimitives.ReadUInt32BigEndian(body[8..]);
                break;
            default:
                break; // Unknown info types are ignored, as the spec requires.
        }
    }

    /// <summary>
    /// Checks an advertised block-size triple against the spec's rules; returns the reason it is invalid, or null.
    /// </summary>
    public string? ValidateBlockSizes()
    {
        if (!HasBlockSize)
        {
            return null;
        }

        var min = MinimumBlock;
        var pref = PreferredBlock;
        var max = MaximumPayload;
        if (min == 0 || min > 65536 || !IsPowerOfTwo(min))
        {
            return $"minimum block {min} is not a power of two between 1 and 65536";
        }

        if (!IsPowerOfTwo(pref) || pref < Math.Max(min, 512u))
        {
            return $"preferred block {pref} is not a power of two at least max(minimum, 512)";
        }

        if (max < pref || (max != uint.MaxValue && max % min != 0))
        {
            return $"maximum payload {max} is below the preferred block {pref} or not a multiple of the minimum {min}";
        }

        return null;
    }

    private static bool IsPowerOfTwo(uint value) => value != 0 && (value & (value - 1)) == 0;

    private static void ExpectLength(ReadOnlySpan<byte> payload, int expected, string what)
    {
        if (payload.Length != expected)
        {
            throw new NbdProtocolException($"{what} reply is {payload.Length} bytes; it must be exactly {expected}.");
        }
    }
}
