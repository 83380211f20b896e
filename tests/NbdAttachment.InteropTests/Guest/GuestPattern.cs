using System.Security.Cryptography;

namespace NbdAttachment.InteropTests.Guest;

/// <summary>
/// The deterministic data the guest writes: <see cref="Size"/> pseudo-random bytes from a fixed seed, shipped in
/// the initramfs as <c>/data/pattern.bin</c>. The host regenerates the same bytes to check what reached the server,
/// and <see cref="Expected"/> gives, per scenario, the bytes the disk must hold afterwards.
/// </summary>
public static class GuestPattern
{
    public const int MiB = 1024 * 1024;

    /// <summary>5 MiB: write-verify uses [0, 4 MiB) at disk offset 0 and [4 MiB, 5 MiB) at disk offset 16 MiB.</summary>
    public const int Size = 5 * MiB;

    public const int Seed = 0x4E424454; // "NBDT"

    private static readonly Lazy<byte[]> Data = new(() =>
    {
        var bytes = new byte[Size];
        new Random(Seed).NextBytes(bytes); // seeded Random is stable across .NET versions
        return bytes;
    });

    /// <summary>The pattern bytes (do not modify).</summary>
    public static ReadOnlyMemory<byte> Bytes => Data.Value;

    public static string Md5(ReadOnlySpan<byte> data) => Convert.ToHexStringLower(MD5.HashData(data));

    /// <summary>write-verify: (disk offset, pattern offset, length) of each region the guest writes.</summary>
    public static IReadOnlyList<(long DiskOffset, int PatternOffset, int Length, string Name)> WriteVerifyRegions { get; } =
    [
        (0, 0, 4 * MiB, "a"),
        (16L * MiB, 4 * MiB, 1 * MiB, "b"),
    ];

    /// <summary>long-write: chunk <paramref name="index"/> of <paramref name="chunkSize"/> bytes is pattern chunk index mod (Size / chunkSize).</summary>
    public static ReadOnlySpan<byte> LongWriteChunk(int index, int chunkSize)
    {
        var perPattern = Size / chunkSize;
        return Data.Value.AsSpan((index % perPattern) * chunkSize, chunkSize);
    }

    /// <summary>The bytes the long-write scenario leaves at [0, chunks × chunkSize).</summary>
    public static byte[] LongWriteExpected(int chunks, int chunkSize)
    {
        var result = new byte[(long)chunks * chunkSize];
        for (var i = 0; i < chunks; i++)
        {
            LongWriteChunk(i, chunkSize).CopyTo(result.AsSpan(i * chunkSize));
        }

        return result;
    }
}
