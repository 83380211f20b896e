using System.Buffers;
using System.Buffers.Binary;
using System.Diagnostics;
using System.Text;
using NbdAttachment.Protocol;
using NbdAttachment.Tests.Support;
using Xunit.Abstractions;

namespace NbdAttachment.Tests.Reliability;

/// <summary>
/// Codec-level fuzzing: the pure parsers get valid encodings (built here, independently of the client's encoders)
/// and seeded mutations of them. A parser may only return a defined result or throw <see cref="NbdProtocolException"/>;
/// any other exception is a bug. At least 100,000 cases in total by default (NBD_FUZZ_CASES).
/// </summary>
[Collection(ReliabilityCollection.Name)]
public sealed class CodecFuzzTests
{
    private readonly ITestOutputHelper _output;

    public CodecFuzzTests(ITestOutputHelper output) => _output = output;

    [Fact]
    public void Codec_parsers_survive_at_least_100000_mutated_inputs_with_only_typed_errors()
    {
        var total = FuzzSettings.CodecCases;
        var failures = new List<string>();
        var stopwatch = Stopwatch.StartNew();
        var counts = new Dictionary<string, (int Cases, int Rejected)>();

        Run("reply header", (int)(total * 0.35), 1, failures, counts, FuzzReplyHeader);
        Run("option reply header", (int)(total * 0.15), 2, failures, counts, FuzzOptionReplyHeader);
        Run("NBD_REP_SERVER", (int)(total * 0.10), 3, failures, counts, FuzzServer);
        Run("NBD_REP_META_CONTEXT", (int)(total * 0.10), 4, failures, counts, FuzzMetaContext);
        Run("strings", (int)(total * 0.10), 5, failures, counts, FuzzString);
        Run("NBD_REP_INFO + block sizes", total - (int)(total * 0.35) - (int)(total * 0.15) - (3 * (int)(total * 0.10)), 6, failures, counts, FuzzInfo);

        var cases = counts.Values.Sum(c => c.Cases);
        foreach (var (name, (n, rejected)) in counts)
        {
            _output.WriteLine($"{name}: {n} cases, {rejected} rejected with NbdProtocolException");
        }

        _output.WriteLine($"{cases} codec cases in {stopwatch.Elapsed.TotalSeconds:0.00} s (seed {FuzzSettings.Seed})");
        failures.Should().BeEmpty();
        cases.Should().BeGreaterThanOrEqualTo(Math.Min(total, 100_000));
    }

    private static void Run(string name, int cases, int salt, List<string> failures, Dictionary<string, (int, int)> counts, Func<Random, int, bool> body)
    {
        var rejected = 0;
        for (var i = 0; i < cases && failures.Count < 20; i++)
        {
            var rng = new Random(FuzzSettings.CaseSeed(salt, i));
            try
            {
                if (!body(rng, i))
                {
                    rejected++;
                }
            }
            catch (NbdProtocolException)
            {
                rejected++;
            }
            catch (Exception ex)
            {
                failures.Add($"{name} case {i} (seed {FuzzSettings.Seed}, salt {salt}): {ex.GetType().Name}: {ex.Message}");
            }
        }

        counts[name] = (cases, rejected);
    }

    /// <summary>Simple and structured reply headers, split into 1 to 4 segments at random points.</summary>
    private static bool FuzzReplyHeader(Random rng, int index)
    {
        byte[] seed = rng.Next(3) == 0
            ? Bytes.U32(RawConnection.SimpleMagic).U32((uint)rng.Next(2) * 5).U64(Cookie(rng)).Build()
            : Bytes.U32(RawConnection.StructuredMagic).U16((ushort)rng.Next(2)).U16(ChunkType(rng)).U64(Cookie(rng)).U32((uint)rng.Next(0, 70000)).Build();
        if (rng.Next(4) != 0)
        {
            seed = seed.Concat(RandomBytes(rng, rng.Next(0, 24))).ToArray();
        }

        var bytes = index % 10 == 0 ? seed : Mutator.Mutate(seed, rng, [0, 4, 6, 8, 16]);
        var cuts = Enumerable.Range(0, rng.Next(0, 4)).Select(_ => rng.Next(0, bytes.Length + 1)).ToArray();
        var sequence = Segments.Split(bytes, cuts);
        var status = NbdReplyHeader.TryRead(sequence, out var header);
        var magic = bytes.Length >= 4 ? BinaryPrimitives.ReadUInt32BigEndian(bytes) : 0u;
        switch (status)
        {
            case OperationStatus.Done:
                Check(bytes.Length >= header.HeaderSize, "Done with fewer bytes than the header");
                Check(header.IsStructured == (magic == RawConnection.StructuredMagic), "magic and header kind disagree");
                var again = new byte[header.HeaderSize];
                header.WriteTo(again);
                Check(again.AsSpan().SequenceEqual(bytes.AsSpan(0, header.HeaderSize)), "the header does not round-trip");
                return true;
            case OperationStatus.NeedMoreData:
                Check(bytes.Length < NbdReplyHeader.StructuredSize, "NeedMoreData with a full structured header available");
                Check(bytes.Length < 4 || magic is RawConnection.SimpleMagic or RawConnection.StructuredMagic, "NeedMoreData for a bad magic");
                return true;
            case OperationStatus.InvalidData:
                Check(magic is not RawConnection.SimpleMagic and not RawConnection.StructuredMagic, "InvalidData for a good magic");
                return false;
            default:
                throw new InvalidOperationException($"undefined status {status}");
        }
    }

    /// <summary>Option reply headers: the negotiator always hands exactly 20 bytes, so mutations are fitted to 20.</summary>
    private static bool FuzzOptionReplyHeader(Random rng, int index)
    {
        var seed = Bytes.U64(RawConnection.OptReplyMagic).U32((uint)rng.Next(1, 12)).U32(ReplyType(rng)).U32((uint)rng.Next(0, 200)).Build();
        var bytes = index % 10 == 0 ? seed : Mutator.Mutate(seed, rng, [0, 8, 12, 16]);
        Array.Resize(ref bytes, NbdOptionReplyHeader.Size);
        var header = NbdOptionReplyHeader.ReadFrom(bytes);
        Check(BinaryPrimitives.ReadUInt64BigEndian(bytes) == RawConnection.OptReplyMagic, "accepted a bad option reply magic");
        Check(header.Length == BinaryPrimitives.ReadUInt32BigEndian(bytes.AsSpan(16)), "length misread");
        Check(header.IsError == ((BinaryPrimitives.ReadUInt32BigEndian(bytes.AsSpan(12)) & 0x80000000) != 0), "error bit misread");
        return true;
    }

    private static bool FuzzServer(Random rng, int index)
    {
        var name = Encoding.UTF8.GetBytes(RandomText(rng, rng.Next(0, 40)));
        var description = Encoding.UTF8.GetBytes(RandomText(rng, rng.Next(0, 60)));
        var seed = Bytes.U32((uint)name.Length).Raw(name).Raw(description).Build();
        var bytes = index % 10 == 0 ? seed : Mutator.Mutate(seed, rng, [0]);
        var (parsedName, parsedDescription) = NbdOptionCodec.ParseServer(bytes);
        var nameLength = BinaryPrimitives.ReadUInt32BigEndian(bytes);
        Check(nameLength <= bytes.Length - 4, "accepted a name running past the reply");
        Check(Encoding.UTF8.GetByteCount(parsedName) == nameLength, "name length mismatch");
        Check(Encoding.UTF8.GetByteCount(parsedDescription) == bytes.Length - 4 - nameLength, "description length mismatch");
        return true;
    }

    private static bool FuzzMetaContext(Random rng, int index)
    {
        var seed = Bytes.U32((uint)rng.Next()).Raw(Encoding.UTF8.GetBytes(rng.Next(2) == 0 ? "base:allocation" : "qemu:dirty-bitmap:" + RandomText(rng, rng.Next(1, 20)))).Build();
        var bytes = index % 10 == 0 ? seed : Mutator.Mutate(seed, rng, [0]);
        var (id, name) = NbdOptionCodec.ParseMetaContext(bytes);
        Check(id == BinaryPrimitives.ReadUInt32BigEndian(bytes), "id misread");
        Check(name.Length > 0, "accepted an empty context name");
        return true;
    }

    private static bool FuzzString(Random rng, int index)
    {
        var length = rng.Next(8) == 0 ? rng.Next(4090, 4200) : rng.Next(0, 64);
        var seed = Encoding.UTF8.GetBytes(RandomText(rng, length));
        var bytes = index % 10 == 0 ? seed : Mutator.Mutate(seed, rng);
        _ = NbdOptionCodec.DecodeMessage(bytes); // lenient: must never throw
        var text = NbdOptionCodec.DecodeString(bytes, "fuzzed string");
        Check(bytes.Length <= NbdLimits.MaxString, "accepted a string over the limit");
        Check(Encoding.UTF8.GetByteCount(text) == bytes.Length, "string length mismatch");
        return true;
    }

    /// <summary>NBD_REP_INFO payloads applied in sequence, then the block-size triple checked against the spec's rules.</summary>
    private static bool FuzzInfo(Random rng, int index)
    {
        var details = new NbdExportDetails();
        var accepted = true;
        for (var n = rng.Next(1, 4); n > 0; n--)
        {
            byte[] seed = rng.Next(5) switch
            {
                0 => RawConnection.InfoExport((ulong)rng.NextInt64(0, 1L << 40), (ushort)rng.Next(65536)),
                1 => Bytes.U16(1).Raw(Encoding.UTF8.GetBytes(RandomText(rng, rng.Next(0, 30)))).Build(),
                2 => Bytes.U16(2).Raw(Encoding.UTF8.GetBytes(RandomText(rng, rng.Next(0, 30)))).Build(),
                3 => RawConnection.InfoBlockSize(1u << rng.Next(0, 17), 1u << rng.Next(9, 22), rng.Next(4) == 0 ? uint.MaxValue : 1u << rng.Next(9, 27)),
                _ => Bytes.U16((ushort)rng.Next(4, 65536)).Raw(RandomBytes(rng, rng.Next(0, 20))).Build(),
            };
            var bytes = index % 10 == 0 ? seed : Mutator.Mutate(seed, rng, [0, 2, 6, 10]);
            try
            {
                details.ApplyInfo(bytes);
            }
            catch (NbdProtocolException)
            {
                accepted = false;
            }
        }

        var problem = details.ValidateBlockSizes();
        if (details.HasBlockSize && problem is null)
        {
            // Independent statement of the spec's rules.
            var (min, pref, max) = (details.MinimumBlock, details.PreferredBlock, details.MaximumPayload);
            Check(min is >= 1 and <= 65536 && (min & (min - 1)) == 0, $"accepted minimum block {min}");
            Check((pref & (pref - 1)) == 0 && pref >= Math.Max(min, 512u), $"accepted preferred block {pref}");
            Check(max >= pref && (max == uint.MaxValue || max % min == 0), $"accepted maximum payload {max}");
        }

        return accepted && problem is null;
    }

    private static ulong Cookie(Random rng) => ((ulong)(uint)rng.Next(0, 4) << 32) | (uint)rng.Next(0, 64);

    private static ushort ChunkType(Random rng) => rng.Next(7) switch
    {
        0 => 0,
        1 => 1,
        2 => 2,
        3 => 5,
        4 => 0x8001,
        5 => 0x8002,
        _ => (ushort)rng.Next(65536),
    };

    private static uint ReplyType(Random rng) => rng.Next(5) switch
    {
        0 => 1,
        1 => 3,
        2 => 4,
        3 => 0x80000000u | (uint)rng.Next(1, 11),
        _ => (uint)rng.Next(),
    };

    private static byte[] RandomBytes(Random rng, int length)
    {
        var bytes = new byte[length];
        rng.NextBytes(bytes);
        return bytes;
    }

    private static string RandomText(Random rng, int length)
    {
        const string alphabet = "abcdefghijklmnopqrstuvwxyz0123456789:-_/ éü€😀";
        var builder = new StringBuilder(length);
        for (var i = 0; i < length; i++)
        {
            var c = alphabet[rng.Next(alphabet.Length)];
            if (char.IsSurrogate(c))
            {
                builder.Append("😀");
                i++;
            }
            else
            {
                builder.Append(c);
            }
        }

        return builder.ToString();
    }

    private static void Check(bool condition, string what)
    {
        if (!condition)
        {
            throw new InvalidOperationException("oracle: " + what);
        }
    }
}
