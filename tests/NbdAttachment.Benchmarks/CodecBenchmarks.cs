using System.Buffers;
using BenchmarkDotNet.Attributes;
using NbdAttachment.Protocol;

namespace NbdAttachment.Benchmarks;

/// <summary>The transmission codec and the option encoder: pure functions, expected to allocate nothing (BuildGoData returns a new array).</summary>
[MemoryDiagnoser]
public class CodecBenchmarks
{
    private static readonly NbdInfoType[] Infos = [NbdInfoType.Export, NbdInfoType.Name, NbdInfoType.Description, NbdInfoType.BlockSize];

    private readonly byte[] _requestBuffer = new byte[NbdRequestHeader.Size];
    private ReadOnlySequence<byte> _singleSegment;
    private ReadOnlySequence<byte> _multiSegment;
    private ulong _cookie;

    [GlobalSetup]
    public void Setup()
    {
        // A structured OFFSET_DATA chunk header for a 4 KiB read, followed by the start of its payload.
        var bytes = new byte[NbdReplyHeader.StructuredSize + 64];
        NbdReplyHeader.Structured(1, NbdChunkType.OffsetData, 0x1234_5678_9abc_def0, 8 + 4096).WriteTo(bytes);
        _singleSegment = new ReadOnlySequence<byte>(bytes);

        // The same bytes split after 10 bytes: the magic is in the first segment, the header straddles the boundary.
        var first = new Segment(bytes.AsMemory(0, 10), 0);
        var last = first.Append(bytes.AsMemory(10));
        _multiSegment = new ReadOnlySequence<byte>(first, 0, last, last.Memory.Length);
    }

    [Benchmark]
    public void RequestHeaderWriteTo() =>
        new NbdRequestHeader(NbdCommand.Read, NbdCommandFlags.None, ++_cookie, 1 << 20, 4096).WriteTo(_requestBuffer);

    [Benchmark]
    public ulong ReplyHeaderTryReadSingleSegment()
    {
        _ = NbdReplyHeader.TryRead(_singleSegment, out var header);
        return header.Cookie;
    }

    [Benchmark]
    public ulong ReplyHeaderTryReadMultiSegment()
    {
        _ = NbdReplyHeader.TryRead(_multiSegment, out var header);
        return header.Cookie;
    }

    [Benchmark]
    public byte[] OptionCodecBuildGoData() => NbdOptionCodec.BuildGoData("export", Infos);

    private sealed class Segment : ReadOnlySequenceSegment<byte>
    {
        public Segment(ReadOnlyMemory<byte> memory, long runningIndex)
        {
            Memory = memory;
            RunningIndex = runningIndex;
        }

        public Segment Append(ReadOnlyMemory<byte> memory)
        {
            var next = new Segment(memory, RunningIndex + Memory.Length);
            Next = next;
            return next;
        }
    }
}
