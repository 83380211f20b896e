using System.Text;
using NbdAttachment.Client;
using NbdAttachment.Tests.Support;

namespace NbdAttachment.Tests.Reliability;

/// <summary>The server side of one valid handshake, and what the client will have negotiated after it.</summary>
internal sealed record HandshakeScript(
    byte[] Script,
    string Action,
    NbdClientOptions Options,
    long Expected,
    string ExportName,
    bool Oldstyle,
    uint LastOption,
    bool Structured,
    bool MetaContext,
    uint MinBlock);

/// <summary>Server sides of valid handshakes, as byte streams, for the fuzzers (an encoder independent of the client's).</summary>
internal static class Handshakes
{
    /// <summary>All transmission features, for cases that go on to transmission.</summary>
    public const ushort AllFeatures = 0x0D6D | 0x80;

    public static HandshakeScript Build(Random rng, List<int> fields, long? fixedSize = null, ushort? fixedFlags = null, bool goOnly = false)
    {
        var output = new List<byte>();
        void Add(byte[] bytes, params int[] at)
        {
            foreach (var a in at)
            {
                fields.Add(output.Count + a);
            }

            output.AddRange(bytes);
        }

        void Reply(uint option, uint type, byte[]? data = null) =>
            Add(Bytes.U64(RawConnection.OptReplyMagic).U32(option).U32(type).U32((uint)(data?.Length ?? 0)).Raw(data ?? []).Build(), 8, 12, 16, 20, 22);

        var size = fixedSize ?? rng.NextInt64(0, 1L << 40);
        var flags = fixedFlags ?? (ushort)(1 | (rng.Next(2048) << 1));
        var style = rng.Next(10);
        var structured = rng.Next(4) != 0;
        var options = new NbdClientOptions { RequestStructuredReplies = structured, Reconnect = NbdReconnectPolicy.Disabled };
        if (style == 0)
        {
            // Oldstyle: size, flags (upper 16 bits zero), 124 zeroes.
            Add(Bytes.U64(RawConnection.NbdMagic).U64(0x0000420281861253UL).U64((ulong)size).U32(flags).Raw(new byte[124]).Build(), 8, 16, 24);
            return new([.. output], "GO", options, size, string.Empty, true, 0, false, false, 1);
        }

        var noZeroes = rng.Next(3) != 0;
        if (style == 1)
        {
            // Non-fixed newstyle: straight to EXPORT_NAME.
            Add(Bytes.U64(RawConnection.NbdMagic).U64(RawConnection.IHaveOpt).U16((ushort)(noZeroes ? 2 : 0)).Build(), 16);
            Add(Bytes.U64((ulong)size).U16(flags).Raw(noZeroes ? [] : new byte[124]).Build(), 0, 8);
            return new([.. output], "GO", options, size, "disk", false, 1, false, false, 1);
        }

        Add(Bytes.U64(RawConnection.NbdMagic).U64(RawConnection.IHaveOpt).U16((ushort)(noZeroes ? 3 : 1)).Build(), 8, 16);
        var action = goOnly ? "GO" : rng.Next(6) switch { 0 => "INFO", 1 => "LIST", _ => "GO" };
        if (action == "LIST")
        {
            var count = rng.Next(0, 5);
            for (var i = 0; i < count; i++)
            {
                var name = Encoding.UTF8.GetBytes($"export-{i}");
                Reply(3, 2, Bytes.U32((uint)name.Length).Raw(name).Raw(Encoding.UTF8.GetBytes("a disk")).Build());
            }

            Reply(3, 1);
            return new([.. output], action, options, count, "disk", false, 3, false, false, 1);
        }

        var negotiatedStructured = false;
        var meta = false;
        if (structured)
        {
            negotiatedStructured = rng.Next(4) != 0;
            Reply(8, negotiatedStructured ? 1u : 0x80000001u);
            if (negotiatedStructured)
            {
                if (rng.Next(3) != 0)
                {
                    meta = true;
                    Reply(10, 4, Bytes.U32(ReplyScript.ContextId).Raw("base:allocation"u8.ToArray()).Build());
                }

                Reply(10, 1);
            }
        }

        var option = action == "INFO" ? 6u : 7u;
        if (option == 7 && rng.Next(6) == 0)
        {
            // GO unsupported: the client falls back to EXPORT_NAME.
            Reply(7, 0x80000001u);
            Add(Bytes.U64((ulong)size).U16(flags).Raw(noZeroes ? [] : new byte[124]).Build(), 0, 8);
            return new([.. output], action, options, size, "disk", false, 1, negotiatedStructured, meta, 1);
        }

        var infos = new List<byte[]>
        {
            RawConnection.InfoExport((ulong)size, flags),
            Bytes.U16(1).Raw("disk"u8.ToArray()).Build(),
            Bytes.U16(2).Raw("a fuzzed disk"u8.ToArray()).Build(),
        };
        var minBlock = 1u;
        if (rng.Next(2) == 0)
        {
            minBlock = 1u << rng.Next(0, 13);
            infos.Add(RawConnection.InfoBlockSize(minBlock, 4096, 1u << 25));
        }

        foreach (var info in infos.OrderBy(_ => rng.Next()))
        {
            Reply(option, 3, info);
        }

        Reply(option, 1);
        return new([.. output], action, options, size, "disk", false, option, negotiatedStructured, meta, minBlock);
    }
}
