using System.Globalization;
using NbdAttachment.InteropTests.Servers;
using Xunit.Abstractions;

namespace NbdAttachment.InteropTests.Guest;

/// <summary>
/// Proves the test guest against the reference vhost-user-blk backend: guest (QEMU, TCG) → qemu-storage-daemon →
/// nbdkit. <see cref="OurBackendGuestTests"/> makes the same guest-visible assertions against NbdAttachment.VhostUser.
/// </summary>
[Collection(GuestCollection.Name)]
[Trait("Category", "Guest")]
public sealed class ReferenceGuestTests(ITestOutputHelper output)
{
    [SkippableFact]
    public async Task Write_verify_through_qemu_storage_daemon_memory_plugin()
    {
        await using var nbdkit = await StartNbdkitAsync("memory", [$"size={GuestAssertions.DiskSize}"]);
        await using var qsd = await StartDaemonAsync(nbdkit);

        var r = await GuestMachine.RunAsync(GuestAssertions.Options(qsd.VhostUserSocketPath, GuestScenarios.WriteVerify, output));

        GuestAssertions.Report(output, "write-verify (memory)", r);
        GuestAssertions.WriteVerify(r, imagePath: null);
    }

    [SkippableFact]
    public async Task Write_verify_through_qemu_storage_daemon_file_plugin_matches_server_bytes()
    {
        using var temp = new TempDirectory();
        var image = GuestAssertions.CreateImage(temp.Combine("disk.img"));
        await using var nbdkit = await StartNbdkitAsync("file", [$"file={image}"]);
        await using var qsd = await StartDaemonAsync(nbdkit);

        var r = await GuestMachine.RunAsync(GuestAssertions.Options(qsd.VhostUserSocketPath, GuestScenarios.WriteVerify, output));

        GuestAssertions.Report(output, "write-verify (file)", r);
        GuestAssertions.WriteVerify(r, image);
    }

    [SkippableFact]
    public async Task Read_only_export_is_read_only_in_the_guest()
    {
        using var temp = new TempDirectory();
        var image = GuestAssertions.CreateImage(temp.Combine("disk.img"));
        var log = temp.Combine("nbdkit.log");
        await using var nbdkit = await StartNbdkitAsync("file", [$"file={image}", $"logfile={log}"], ["log"]);
        await using var qsd = await StartDaemonAsync(nbdkit, writable: false);

        var r = await GuestMachine.RunAsync(GuestAssertions.Options(qsd.VhostUserSocketPath, GuestScenarios.ReadOnly, output));

        GuestAssertions.Report(output, "read-only", r);
        GuestAssertions.ReadOnly(r, image);
        GuestAssertions.ServerSawNoWrites(await File.ReadAllTextAsync(log));
    }

    [SkippableFact]
    public async Task Discard_and_write_zeroes_read_back_zeroes_and_reach_the_server()
    {
        using var temp = new TempDirectory();
        var log = temp.Combine("nbdkit.log");
        await using var nbdkit = await StartNbdkitAsync("memory", [$"size={GuestAssertions.DiskSize}", $"logfile={log}"], ["log"]);
        await using var qsd = await StartDaemonAsync(nbdkit);

        var r = await GuestMachine.RunAsync(GuestAssertions.Options(qsd.VhostUserSocketPath, GuestScenarios.Discard, output));

        GuestAssertions.Report(output, "discard", r);
        output.WriteLine($"zero method: {r["zero_method"]}");
        GuestAssertions.Discard(r);
        GuestAssertions.ServerSawTrimAndZero(r, await File.ReadAllTextAsync(log));
    }

    [SkippableFact]
    public async Task Long_write_reads_back_and_matches_server_bytes()
    {
        using var temp = new TempDirectory();
        var image = GuestAssertions.CreateImage(temp.Combine("disk.img"));
        await using var nbdkit = await StartNbdkitAsync("file", [$"file={image}"]);
        await using var qsd = await StartDaemonAsync(nbdkit);

        var r = await GuestMachine.RunAsync(GuestAssertions.Options(
            qsd.VhostUserSocketPath, GuestScenarios.LongWrite, output: null, GuestAssertions.LongWriteParameters()));

        GuestAssertions.Report(output, "long-write", r);
        GuestAssertions.LongWrite(r, image);
    }

    /// <summary>
    /// The reference for OurBackendGuestTests' restart test: qemu-storage-daemon with <c>reconnect-delay</c> rides out
    /// an nbdkit SIGKILL + restart (same socket, same file) in the middle of the guest's long-write.
    /// </summary>
    [SkippableFact]
    public async Task Nbd_server_killed_and_restarted_during_long_write_guest_sees_no_error()
    {
        using var temp = new TempDirectory();
        var image = GuestAssertions.CreateImage(temp.Combine("disk.img"));
        await using var nbdkit = await StartNbdkitAsync("file", [$"file={image}"]);
        await using var qsd = await QemuStorageDaemonProcess.StartAsync(
            new QemuStorageDaemonOptions { Nbd = nbdkit.Endpoint, ReconnectDelaySeconds = 30 });

        await using var guest = await GuestMachine.StartAsync(GuestAssertions.Options(
            qsd.VhostUserSocketPath, GuestScenarios.LongWrite, output: null, GuestAssertions.LongWriteParameters(GuestAssertions.RestartPacingMs)));
        await guest.WaitForProgressAsync(GuestAssertions.RestartAfterChunk, TimeSpan.FromSeconds(60));
        await nbdkit.RestartAsync(GuestAssertions.RestartDowntime);
        var stillWriting = guest.IsStillWriting();
        var r = await guest.WaitForExitAsync();

        GuestAssertions.Report(output, "long-write with nbdkit restart", r);
        stillWriting.Should().BeTrue("the restart must land while the guest is still writing");
        nbdkit.StartCount.Should().Be(2);
        GuestAssertions.LongWrite(r, image);
    }

    [SkippableFact]
    public async Task Throughput_through_qemu_storage_daemon()
    {
        var (write, read) = await MeasureThroughputAsync(output);

        output.WriteLine(string.Create(CultureInfo.InvariantCulture, $"qemu-storage-daemon: write {write:0.0} MB/s, read {read:0.0} MB/s (64 MiB, 1 MiB O_DIRECT, TCG guest)"));
    }

    /// <summary>One throughput run through qemu-storage-daemon → nbdkit memory (also the baseline of <see cref="OurBackendGuestTests"/>).</summary>
    internal static async Task<(double WriteMBps, double ReadMBps)> MeasureThroughputAsync(ITestOutputHelper output)
    {
        await using var nbdkit = await StartNbdkitAsync("memory", [$"size={GuestAssertions.DiskSize}"]);
        await using var qsd = await StartDaemonAsync(nbdkit);
        var r = await GuestMachine.RunAsync(GuestAssertions.Options(qsd.VhostUserSocketPath, GuestScenarios.Throughput, output: null));
        GuestAssertions.Report(output, "throughput (qemu-storage-daemon)", r);
        return GuestAssertions.Throughput(r);
    }

    internal static Task<NbdkitProcess> StartNbdkitAsync(string plugin, IReadOnlyList<string> arguments, IReadOnlyList<string>? filters = null) =>
        NbdkitProcess.StartAsync(new NbdkitOptions
        {
            Plugin = plugin,
            PluginArguments = arguments,
            Filters = filters ?? [],
            Listen = ListenKind.Unix,
        });

    private static Task<QemuStorageDaemonProcess> StartDaemonAsync(NbdkitProcess nbdkit, bool writable = true) =>
        QemuStorageDaemonProcess.StartAsync(new QemuStorageDaemonOptions { Nbd = nbdkit.Endpoint, Writable = writable });
}
