using System.Buffers;
using NbdAttachment.Protocol;
using NbdAttachment.Tests.Support;

namespace NbdAttachment.Tests.Protocol;

public sealed class CodecTests
{
    [Fact]
    public void Request_header_round_trips_and_is_28_bytes_big_endian()
    {
        var header = new NbdRequestHeader(NbdCommand.Write, NbdCommandFlags.Fua, 0x0102030405060708, 0x1122334455667788, 0xAABBCCDD);
        var bytes = new byte[NbdRequestHeader.Size];
        header.WriteTo(bytes);
        bytes[..4].Should().Equal(0x25, 0x60, 0x95, 0x13);
        bytes[4..6].Should().Equal(0x00, 0x01);
        bytes[6..8].Should().Equal(0x00, 0x01);
        var back = NbdRequestHeader.ReadFrom(bytes);
        back.Cookie.Should().Be(header.Cookie);
        back.Offset.Should().Be(header.Offset);
        back.Length.Should().Be(header.Length);
        back.Flags.Should().Be(NbdCommandFlags.Fua);
        back.Command.Should().Be(NbdCommand.Write);
    }

    public static TheoryData<bool> Kinds => new() { true, false };

    [Theory]
    [MemberData(nameof(Kinds))]
    public void Reply_header_parses_when_split_at_every_offset(bool structured)
    {
        var header = structured
            ? NbdReplyHeader.Structured(1, NbdChunkType.OffsetData, 0xCAFEBABE00000007, 4104)
            : NbdReplyHeader.Simple(5, 0xCAFEBABE00000007);
        var bytes = new byte[header.HeaderSize + 3];
        header.WriteTo(bytes);
        for (var split = 0; split <= bytes.Length; split++)
        {
            for (var second = split; second <= bytes.Length; second++)
            {
                var sequence = Segments.Split(bytes, split, second);
                NbdReplyHeader.TryRead(sequence, out var parsed).Should().Be(OperationStatus.Done);
                parsed.Cookie.Should().Be(0xCAFEBABE00000007);
                parsed.IsStructured.Should().Be(structured);
                parsed.HeaderSize.Should().Be(header.HeaderSize);
                if (structured)
                {
                    parsed.PayloadLength.Should().Be(4104);
                    parsed.ChunkType.Should().Be(NbdChunkType.OffsetData);
                    parsed.IsDone.Should().BeTrue();
                }
                else
                {
                    parsed.Error.Should().Be(5);
                }
            }
        }
    }

    [Fact]
    public void Reply_header_needs_more_data_for_every_short_prefix_and_rejects_bad_magic()
    {
        var bytes = new byte[NbdReplyHeader.StructuredSize];
        NbdReplyHeader.Structured(0, NbdChunkType.None, 1, 0).WriteTo(bytes);
        for (var length = 0; length < bytes.Length; length++)
        {
            NbdReplyHeader.TryRead(new ReadOnlySequence<byte>(bytes, 0, length), out _).Should().Be(OperationStatus.NeedMoreData);
        }

        bytes[0] ^= 0xFF;
        NbdReplyHeader.TryRead(new ReadOnlySequence<byte>(bytes), out _).Should().Be(OperationStatus.InvalidData);
    }

    [Fact]
    public void Go_data_has_name_and_info_requests()
    {
        var data = NbdOptionCodec.BuildGoData("ab", [NbdInfoType.BlockSize, NbdInfoType.Name]);
        data.Should().Equal(0, 0, 0, 2, (byte)'a', (byte)'b', 0, 2, 0, 3, 0, 1);
    }

    [Fact]
    public void Meta_context_data_has_queries()
    {
        var data = NbdOptionCodec.BuildMetaContextData("", ["base:allocation"]);
        data.Length.Should().Be(4 + 4 + 4 + 15);
        data[4..8].Should().Equal(0, 0, 0, 1);
        data[8..12].Should().Equal(0, 0, 0, 15);
    }

    [Fact]
    public void Server_reply_with_name_length_past_the_end_is_a_protocol_error()
    {
        var act = () => NbdOptionCodec.ParseServer([0, 0, 0, 9, (byte)'a']);
        act.Should().Throw<NbdProtocolException>().WithMessage("*runs past*");
    }

    [Fact]
    public void Strings_over_4096_bytes_or_bad_utf8_are_protocol_errors()
    {
        var tooLong = () => NbdOptionCodec.DecodeString(new byte[4097], "name");
        tooLong.Should().Throw<NbdProtocolException>().WithMessage("*4096*");
        var bad = () => NbdOptionCodec.DecodeString([0xC3, 0x28], "name");
        bad.Should().Throw<NbdProtocolException>().WithMessage("*UTF-8*");
    }

    [Theory]
    [InlineData(512u, 4096u, 1048576u, null)]
    [InlineData(1u, 4096u, 0xFFFFFFFFu, null)]
    [InlineData(0u, 4096u, 1048576u, "minimum")]
    [InlineData(3u, 4096u, 1048576u, "minimum")]
    [InlineData(131072u, 131072u, 1048576u, "minimum")]
    [InlineData(512u, 256u, 1048576u, "preferred")]
    [InlineData(4096u, 2048u, 1048576u, "preferred")]
    [InlineData(512u, 4096u, 2048u, "maximum")]
    [InlineData(512u, 4096u, 1048577u, "maximum")]
    public void Block_size_advertisements_are_checked(uint min, uint preferred, uint max, string? problem)
    {
        var details = new NbdExportDetails();
        details.ApplyInfo(RawBlockSize(min, preferred, max));
        var result = details.ValidateBlockSizes();
        if (problem is null)
        {
            result.Should().BeNull();
        }
        else
        {
            result.Should().Contain(problem);
        }
    }

    [Fact]
    public void Unknown_info_types_are_ignored()
    {
        var details = new NbdExportDetails();
        details.ApplyInfo([0, 99, 1, 2, 3]);
        details.HasExport.Should().BeFalse();
    }

    private static byte[] RawBlockSize(uint min, uint preferred, uint max)
    {
        var bytes = new byte[14];
        bytes[1] = 3;
        System.Buffers.Binary.BinaryPrimitives.WriteUInt32BigEndian(bytes.AsSpan(2), min);
        System.Buffers.Binary.BinaryPrimitives.WriteUInt32BigEndian(bytes.AsSpan(6), preferred);
        System.Buffers.Binary.BinaryPrimitives.WriteUInt32BigEndian(bytes.AsSpan(10), max);
        return bytes;
    }
}
