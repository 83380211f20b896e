using System.Buffers.Binary;
using NbdAttachment.Tests.Support;

namespace NbdAttachment.Tests.Reliability;

internal enum FuzzOpKind
{
    Read,
    Write,
    Flush,
    Trim,
    WriteZeroes,
    BlockStatus,
    Cache,
}

/// <summary>One client operation of a fuzz case, with the reply a correct server gives and the result it implies.</summary>
internal sealed class FuzzOp
{
    public required FuzzOpKind Kind { get; init; }

    public long Offset { get; init; }

    public int Length { get; init; }

    public byte[]? Data { get; init; }

    /// <summary>The server answers with an error (NBD_EIO).</summary>
    public bool Fails { get; init; }

    /// <summary>For reads: what the reply's data and holes add up to.</summary>
    public byte[]? Expected { get; set; }

    public int RequestBytes => 28 + (Kind == FuzzOpKind.Write ? Length : 0);

    public static FuzzOp Random(Random rng, long exportSize, uint minBlock)
    {
        var kind = (FuzzOpKind)rng.Next(7);
        var blocks = (int)Math.Max(1, Math.Min(65536 / minBlock, rng.Next(3) == 0 ? 64 : 8));
        var length = (int)(minBlock * (uint)rng.Next(1, blocks + 1));
        if (minBlock == 1)
        {
            length = rng.Next(1, rng.Next(4) == 0 ? 65536 : 4096);
        }

        var offset = (long)(minBlock * (ulong)rng.NextInt64(0, (exportSize - length) / minBlock));
        byte[]? data = null;
        if (kind == FuzzOpKind.Write)
        {
            data = new byte[length];
            rng.NextBytes(data);
        }

        return new FuzzOp { Kind = kind, Offset = kind == FuzzOpKind.Flush ? 0 : offset, Length = kind == FuzzOpKind.Flush ? 0 : length, Data = data, Fails = rng.Next(8) == 0 };
    }
}

/// <summary>
/// Builds what a correct server sends back for a set of operations: simple replies, or structured chunks
/// (data and holes split and shuffled, interleaved across requests, DONE on each request's last chunk). Also
/// records the offsets of interesting fields (types, lengths, offsets) for the mutator.
/// </summary>
internal static class ReplyScript
{
    public const uint ContextId = 1;

    public static ulong CookieFor(int slot, uint generation) => ((ulong)generation << 32) | (uint)slot;

    public static byte[] Build(IReadOnlyList<(FuzzOp Op, ulong Cookie)> ops, bool structured, Random rng, List<int> fields)
    {
        var perOp = ops.Select(o => new Queue<byte[]>(Chunks(o.Op, o.Cookie, structured, rng))).Where(q => q.Count > 0).ToList();
        var output = new List<byte>();
        while (perOp.Count > 0)
        {
            var pick = structured ? rng.Next(perOp.Count) : rng.Next(perOp.Count);
            var chunk = perOp[pick].Dequeue();
            AddFields(chunk, output.Count, structured, fields);
            output.AddRange(chunk);
            if (perOp[pick].Count == 0)
            {
                perOp.RemoveAt(pick);
            }
        }

        return [.. output];
    }

    /// <summary>A structured reply for a simple reply (or the reverse) goes whole: simple replies cannot be interleaved.</summary>
    private static List<byte[]> Chunks(FuzzOp op, ulong cookie, bool structured, Random rng)
    {
        if (!structured)
        {
            if (op.Fails)
            {
                return [Bytes.U32(RawConnection.SimpleMagic).U32(5).U64(cookie).Build()];
            }

            if (op.Kind == FuzzOpKind.Read)
            {
                var data = new byte[op.Length];
                rng.NextBytes(data);
                op.Expected = data;
                return [Bytes.U32(RawConnection.SimpleMagic).U32(0).U64(cookie).Raw(data).Build()];
            }

            return [Bytes.U32(RawConnection.SimpleMagic).U32(0).U64(cookie).Build()];
        }

        var chunks = new List<(ushort Type, byte[] Payload)>();
        if (op.Fails)
        {
            var message = "injected"u8.ToArray();
            chunks.Add((0x8001, Bytes.U32(5).U16((ushort)message.Length).Raw(message).Build()));
        }
        else if (op.Kind == FuzzOpKind.Read)
        {
            var expected = new byte[op.Length];
            var cuts = Enumerable.Range(0, rng.Next(0, 4)).Select(_ => rng.Next(1, Math.Max(2, op.Length))).Where(c => c < op.Length).Append(0).Append(op.Length).Distinct().Order().ToArray();
            for (var i = 0; i + 1 < cuts.Length; i++)
            {
                var start = cuts[i];
                var length = cuts[i + 1] - start;
                if (rng.Next(5) == 0)
                {
                    chunks.Add((2, Bytes.U64((ulong)(op.Offset + start)).U32((uint)length).Build()));
                }
                else
                {
                    var data = new byte[length];
                    rng.NextBytes(data);
                    data.CopyTo(expected, start);
                    chunks.Add((1, Bytes.U64((ulong)(op.Offset + start)).Raw(data).Build()));
                }
            }

            op.Expected = expected;
            Shuffle(chunks, rng);
        }
        else if (op.Kind == FuzzOpKind.BlockStatus)
        {
            var status = Bytes.U32(ContextId);
            var remaining = (long)op.Length;
            while (remaining > 0)
            {
                var length = (uint)Math.Min(remaining, rng.Next(1, 3) * 4096L);
                status.U32(length).U32((uint)rng.Next(4));
                remaining -= length;
            }

            chunks.Add((5, status.Build()));
        }

        var none = chunks.Count == 0 || rng.Next(5) == 0;
        var result = new List<byte[]>();
        for (var i = 0; i < chunks.Count; i++)
        {
            var done = !none && i == chunks.Count - 1;
            result.Add(RawConnection.ChunkBytes(cookie, chunks[i].Type, chunks[i].Payload, done));
        }

        if (none)
        {
            result.Add(RawConnection.ChunkBytes(cookie, 0, [], true));
        }

        return result;
    }

    private static void AddFields(byte[] chunk, int at, bool structured, List<int> fields)
    {
        if (!structured || BinaryPrimitives.ReadUInt32BigEndian(chunk) == RawConnection.SimpleMagic)
        {
            fields.Add(at + 4);
            fields.Add(at + 8);
            return;
        }

        fields.Add(at + 4);
        fields.Add(at + 6);
        fields.Add(at + 16);
        if (chunk.Length >= 28)
        {
            fields.Add(at + 20);
            fields.Add(at + 24);
        }
    }

    private static void Shuffle<T>(List<T> list, Random rng)
    {
        for (var i = list.Count - 1; i > 0; i--)
        {
            var j = rng.Next(i + 1);
            (list[i], list[j]) = (list[j], list[i]);
        }
    }
}
