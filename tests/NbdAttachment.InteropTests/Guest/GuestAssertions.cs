using System.Globalization;
using Xunit.Abstractions;

namespace NbdAttachment.InteropTests.Guest;

/// <summary>Runs xunit's guest tests one at a time (a TCG guest takes a whole core; the CI box has two).</summary>
[CollectionDefinition(Name, DisableParallelization = true)]
public sealed class GuestCollection
{
    public const string Name = "Guest";
}

/// <summary>
/// The guest-visible assertions shared by <see cref="ReferenceGuestTests"/> (qemu-storage-daemon) and
/// <see cref="OurBackendGuestTests"/> (NbdAttachment.VhostUser), so both backends must produce the same results.
/// </summary>
public static class GuestAssertions
{
    /// <summary>Size of the disks the guest tests use.</summary>
    public const long DiskSize = 64L * GuestPattern.MiB;

    /// <summary>long-write parameters: 64 × 256 KiB, a FLUSH every 8 chunks.</summary>
    public const int LongWriteChunks = 64;

    public const int LongWriteChunkBytes = 256 * 1024;

    /// <summary>Restart tests: 100 ms between chunks (64 chunks take ≥ 6.4 s); the kill lands after chunk 8; 0.5 s down.</summary>
    public const int RestartPacingMs = 100;

    public const int RestartAfterChunk = 8;

    public static readonly TimeSpan RestartDowntime = TimeSpan.FromMilliseconds(500);

    /// <summary>True while the long-write loop has not printed its last PROGRESS line.</summary>
    public static bool IsStillWriting(this GuestMachine guest)
    {
        ArgumentNullException.ThrowIfNull(guest);
        return !guest.Console.Contains($"NBDTEST PROGRESS chunk={LongWriteChunks - 1}\n", StringComparison.Ordinal);
    }

    public static GuestMachineOptions Options(string socketPath, string scenario, ITestOutputHelper? output, IReadOnlyDictionary<string, string>? parameters = null) =>
        new()
        {
            VhostUserSocketPath = socketPath,
            Scenario = scenario,
            Parameters = parameters ?? new Dictionary<string, string>(StringComparer.Ordinal),
            ConsoleLog = output is null ? null : line => TryWrite(output, "guest| " + line),
        };

    /// <summary>long-write kernel parameters; <paramref name="delayMs"/> paces the loop so the host can act mid-run.</summary>
    public static IReadOnlyDictionary<string, string> LongWriteParameters(int delayMs = 0) =>
        new Dictionary<string, string>(StringComparer.Ordinal)
        {
            ["chunks"] = LongWriteChunks.ToString(CultureInfo.InvariantCulture),
            ["chunk_bytes"] = LongWriteChunkBytes.ToString(CultureInfo.InvariantCulture),
            ["sync_every"] = "8",
            ["delay_ms"] = delayMs.ToString(CultureInfo.InvariantCulture),
        };

    /// <summary>Creates a sparse image of <see cref="DiskSize"/> for nbdkit's file plugin.</summary>
    public static string CreateImage(string path)
    {
        using var f = File.Create(path);
        f.SetLength(DiskSize);
        return path;
    }

    /// <summary>Every run: the guest finished, all its checks passed, no I/O errors, QEMU exited cleanly, the disk had the right size.</summary>
    public static void Succeeded(GuestRunResult r, bool readOnly = false)
    {
        var because = "the guest console says so:\n" + r.Tail();
        r.GuestExitCode.Should().Be(0, because);
        r.Failures.Should().BeEmpty(because);
        r.Errors.Should().BeEmpty(because);
        r.QemuExitCode.Should().Be(0, because);
        r.GetInt64("size_bytes").Should().Be(DiskSize, because);
        r["ro"].Should().Be(readOnly ? "1" : "0", because);
        r.GetInt64("dmesg_io_errors").Should().Be(0, because);
    }

    /// <summary>write-verify: the guest read back what it wrote; when <paramref name="imagePath"/> is given, the server's bytes are exactly the pattern too.</summary>
    public static void WriteVerify(GuestRunResult r, string? imagePath)
    {
        Succeeded(r);
        var pattern = GuestPattern.Bytes.Span;
        foreach (var (diskOffset, patternOffset, length, name) in GuestPattern.WriteVerifyRegions)
        {
            var expected = GuestPattern.Md5(pattern.Slice(patternOffset, length));
            r[name + "_match"].Should().Be("yes");
            r[name + "_md5"].Should().Be(expected, $"region {name} read back in the guest must be the pattern");
            if (imagePath is not null)
            {
                var onServer = ReadImage(imagePath, diskOffset, length);
                GuestPattern.Md5(onServer).Should().Be(r[name + "_md5"], $"the server's bytes of region {name} must be what the guest wrote");
                onServer.AsSpan().SequenceEqual(pattern.Slice(patternOffset, length)).Should().BeTrue();
            }
        }

        if (imagePath is not null)
        {
            // Nothing else was written: [4 MiB, 16 MiB) is still zero.
            ReadImage(imagePath, 4L * GuestPattern.MiB, 12 * GuestPattern.MiB).AsSpan().ContainsAnyExcept((byte)0).Should().BeFalse();
        }
    }

    /// <summary>read-only: the guest sees a read-only disk, its write and discard fail, reads work; the image (if any) is untouched.</summary>
    public static void ReadOnly(GuestRunResult r, string? imagePath)
    {
        Succeeded(r, readOnly: true);
        r["ro_flag"].Should().Be("yes");
        r["write_rejected"].Should().Be("yes");
        r["discard_rejected"].Should().Be("yes");
        r["read_ok"].Should().Be("yes");
        r["head_md5"].Should().Be(GuestPattern.Md5(new byte[GuestPattern.MiB]), "the disk started zeroed and nothing was written");
        if (imagePath is not null)
        {
            ReadImage(imagePath, 0, 4 * GuestPattern.MiB).AsSpan().ContainsAnyExcept((byte)0).Should().BeFalse("no write may reach the server");
        }
    }

    /// <summary>discard: discarded and zeroed ranges read back as zeroes, the neighbours are intact.</summary>
    public static void Discard(GuestRunResult r)
    {
        Succeeded(r);
        r.GetInt64("discard_max_bytes").Should().BePositive("the device must offer VIRTIO_BLK_F_DISCARD");
        r.GetInt64("write_zeroes_max_bytes").Should().BePositive("the device must offer VIRTIO_BLK_F_WRITE_ZEROES");
        r["discard_ok"].Should().Be("yes");
        r["zero_ok"].Should().Be("yes");
        r["discarded_reads_zero"].Should().Be("yes");
        r["zeroed_reads_zero"].Should().Be("yes");
        r["head_intact"].Should().Be("yes");
        r["tail_intact"].Should().Be("yes");
    }

    /// <summary>nbdkit's log filter saw NBD_CMD_TRIM and NBD_CMD_WRITE_ZEROES (only when the guest had BLKZEROOUT).</summary>
    public static void ServerSawTrimAndZero(GuestRunResult r, string nbdkitLog)
    {
        nbdkitLog.Should().Contain(" Trim id=", "the guest's blkdiscard must reach the server as NBD_CMD_TRIM");
        if (r["zero_method"] == "blkzeroout")
        {
            nbdkitLog.Should().Contain(" Zero id=", "the guest's BLKZEROOUT must reach the server as NBD_CMD_WRITE_ZEROES");
        }
    }

    /// <summary>nbdkit's log filter saw reads but no write, trim or zero.</summary>
    public static void ServerSawNoWrites(string nbdkitLog)
    {
        nbdkitLog.Should().NotContainAny([" Write id=", " Trim id=", " Zero id="], "a read-only disk must not send writes, trims or zeroes");
        nbdkitLog.Should().Contain(" Read id=", "the guest's reads must reach the server");
    }

    /// <summary>long-write: no write failed, the read-back matches; with <paramref name="imagePath"/> the server holds exactly the chunks.</summary>
    public static void LongWrite(GuestRunResult r, string? imagePath)
    {
        Succeeded(r);
        r.GetInt64("write_errors").Should().Be(0);
        r["no_dmesg_io_errors"].Should().Be("yes");
        var expected = GuestPattern.LongWriteExpected(LongWriteChunks, LongWriteChunkBytes);
        r["written_md5"].Should().Be(GuestPattern.Md5(expected));
        r["read_md5"].Should().Be(r["written_md5"]);
        r["readback_match"].Should().Be("yes");
        if (imagePath is not null)
        {
            var onServer = ReadImage(imagePath, 0, expected.Length);
            onServer.AsSpan().SequenceEqual(expected).Should().BeTrue("the server must hold every chunk the guest wrote");
        }
    }

    /// <summary>throughput: both passes succeeded; returns MB/s (10^6 bytes per second) of the write and read passes.</summary>
    public static (double WriteMBps, double ReadMBps) Throughput(GuestRunResult r)
    {
        Succeeded(r);
        r["write_ok"].Should().Be("yes");
        r["read_ok"].Should().Be("yes");
        var bytes = r.GetInt64("bytes");
        var writeNs = r.GetInt64("write_ns");
        var readNs = r.GetInt64("read_ns");
        writeNs.Should().BePositive();
        readNs.Should().BePositive();
        return (bytes * 1000.0 / writeNs, bytes * 1000.0 / readNs);
    }

    public static void Report(ITestOutputHelper output, string what, GuestRunResult r)
    {
        ArgumentNullException.ThrowIfNull(output);
        TryWrite(output, string.Create(
            CultureInfo.InvariantCulture,
            $"{what}: boot (QEMU start to /dev/vda) {r.BootTime?.TotalSeconds:0.00} s, whole run {r.Elapsed.TotalSeconds:0.00} s, qemu exit {r.QemuExitCode}, guest rc {r.GuestExitCode}"));
    }

    public static byte[] ReadImage(string path, long offset, int length)
    {
        var buffer = new byte[length];
        using var f = new FileStream(path, FileMode.Open, FileAccess.Read, FileShare.ReadWrite);
        f.Position = offset;
        f.ReadExactly(buffer);
        return buffer;
    }

    /// <summary>ITestOutputHelper throws once its test has finished; console lines may arrive late.</summary>
    public static void TryWrite(ITestOutputHelper output, string line)
    {
        ArgumentNullException.ThrowIfNull(output);
        try
        {
            output.WriteLine(line);
        }
        catch (InvalidOperationException)
        {
        }
    }
}
