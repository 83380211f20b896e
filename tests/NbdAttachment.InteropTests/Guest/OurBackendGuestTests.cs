using System.Globalization;
using NbdAttachment.Client;
using NbdAttachment.InteropTests.Servers;
using NbdAttachment.VhostUser;
using NbdAttachment.Virtualization;
using Xunit.Abstractions;

namespace NbdAttachment.InteropTests.Guest;

/// <summary>
/// OUR vhost-user-blk backend (NbdAttachment.VhostUser) serving a real Linux guest: guest (QEMU, TCG) →
/// <see cref="VhostUserVirtualMachine"/> → <see cref="NetworkBlockDeviceStorageDeviceAttachment"/> → nbdkit.
/// Same guest-visible assertions as <see cref="ReferenceGuestTests"/> (qemu-storage-daemon), via <see cref="GuestAssertions"/>.
/// </summary>
/// <remarks>
/// Run only these: <c>dotnet test tests/NbdAttachment.InteropTests -c Release --filter "Backend=NbdAttachment.VhostUser"</c>;
/// all guest tests: <c>--filter "Category=Guest"</c>. Set <c>NBD_GUEST_ACCEL=kvm</c> to try KVM instead of TCG.
/// </remarks>
[Collection(GuestCollection.Name)]
[Trait("Category", "Guest")]
[Trait("Backend", "NbdAttachment.VhostUser")]
public sealed class OurBackendGuestTests(ITestOutputHelper output)
{
    [SkippableFact]
    public async Task Write_verify_matches_server_bytes()
    {
        using var temp = new TempDirectory();
        var image = GuestAssertions.CreateImage(temp.Combine("disk.img"));
        await using var nbdkit = await ReferenceGuestTests.StartNbdkitAsync("file", [$"file={image}"]);
        var attachment = Attachment(nbdkit.Uri);
        await using var vm = await StartBackendAsync(attachment, temp);

        var r = await GuestMachine.RunAsync(GuestAssertions.Options(vm.SocketPaths[0], GuestScenarios.WriteVerify, output));
        await vm.StopAsync();

        GuestAssertions.Report(output, "write-verify (our backend)", r);
        GuestAssertions.WriteVerify(r, image);
        r["serial"].Should().Be("nbdtest-disk", "the guest reads the device identifier with VIRTIO_BLK_T_GET_ID");
    }

    [SkippableFact]
    public async Task Forced_read_only_attachment_is_read_only_in_the_guest_and_sends_no_writes()
    {
        using var temp = new TempDirectory();
        var image = GuestAssertions.CreateImage(temp.Combine("disk.img"));
        var log = temp.Combine("nbdkit.log");
        // The server itself is writable: only the attachment's forcedReadOnly may stop the writes.
        await using var nbdkit = await ReferenceGuestTests.StartNbdkitAsync("file", [$"file={image}", $"logfile={log}"], ["log"]);
        var attachment = Attachment(nbdkit.Uri, forcedReadOnly: true);
        await using var vm = await StartBackendAsync(attachment, temp);

        var r = await GuestMachine.RunAsync(GuestAssertions.Options(vm.SocketPaths[0], GuestScenarios.ReadOnly, output));
        await vm.StopAsync();

        GuestAssertions.Report(output, "read-only (our backend)", r);
        GuestAssertions.ReadOnly(r, image);
        GuestAssertions.ServerSawNoWrites(await File.ReadAllTextAsync(log));
    }

    [SkippableFact]
    public async Task Nbd_server_killed_and_restarted_during_long_write_guest_sees_no_error()
    {
        using var temp = new TempDirectory();
        var image = GuestAssertions.CreateImage(temp.Combine("disk.img"));
        await using var nbdkit = await ReferenceGuestTests.StartNbdkitAsync("file", [$"file={image}"]);
        var attachment = Attachment(nbdkit.Uri);
        await using var vm = await StartBackendAsync(attachment, temp);

        await using var guest = await GuestMachine.StartAsync(GuestAssertions.Options(
            vm.SocketPaths[0], GuestScenarios.LongWrite, output: null, GuestAssertions.LongWriteParameters(GuestAssertions.RestartPacingMs)));
        await guest.WaitForProgressAsync(GuestAssertions.RestartAfterChunk, TimeSpan.FromSeconds(60));
        await nbdkit.RestartAsync(GuestAssertions.RestartDowntime); // SIGKILL, down for a while, same socket and file
        var stillWriting = guest.IsStillWriting();
        var r = await guest.WaitForExitAsync();
        await vm.StopAsync();

        GuestAssertions.Report(output, "long-write with nbdkit restart (our backend)", r);
        stillWriting.Should().BeTrue("the restart must land while the guest is still writing");
        nbdkit.StartCount.Should().Be(2);
        attachment.ReconnectCount.Should().BeGreaterThanOrEqualTo(1);
        GuestAssertions.LongWrite(r, image);
    }

    [SkippableFact]
    public async Task Discard_and_write_zeroes_reach_the_server()
    {
        using var temp = new TempDirectory();
        var log = temp.Combine("nbdkit.log");
        await using var nbdkit = await ReferenceGuestTests.StartNbdkitAsync("memory", [$"size={GuestAssertions.DiskSize}", $"logfile={log}"], ["log"]);
        var attachment = Attachment(nbdkit.Uri);
        await using var vm = await StartBackendAsync(attachment, temp);

        var r = await GuestMachine.RunAsync(GuestAssertions.Options(vm.SocketPaths[0], GuestScenarios.Discard, output));
        await vm.StopAsync();

        GuestAssertions.Report(output, "discard (our backend)", r);
        GuestAssertions.Discard(r);
        GuestAssertions.ServerSawTrimAndZero(r, await File.ReadAllTextAsync(log));
    }

    [SkippableFact]
    public async Task Throughput_compared_with_qemu_storage_daemon()
    {
        var (refWrite, refRead) = await ReferenceGuestTests.MeasureThroughputAsync(output);

        using var temp = new TempDirectory();
        await using var nbdkit = await ReferenceGuestTests.StartNbdkitAsync("memory", [$"size={GuestAssertions.DiskSize}"]);
        var attachment = Attachment(nbdkit.Uri);
        await using var vm = await StartBackendAsync(attachment, temp);
        var r = await GuestMachine.RunAsync(GuestAssertions.Options(vm.SocketPaths[0], GuestScenarios.Throughput, output: null));
        await vm.StopAsync();

        GuestAssertions.Report(output, "throughput (our backend)", r);
        var (write, read) = GuestAssertions.Throughput(r);
        output.WriteLine(string.Create(CultureInfo.InvariantCulture,
            $"qemu-storage-daemon: write {refWrite:0.0} MB/s, read {refRead:0.0} MB/s; ours: write {write:0.0} MB/s, read {read:0.0} MB/s; " +
            $"ratio ours/reference: write {write / refWrite:0.00}, read {read / refRead:0.00}"));
    }

    private static NetworkBlockDeviceStorageDeviceAttachment Attachment(Uri url, bool forcedReadOnly = false) =>
        new(
            url,
            TimeSpan.FromSeconds(5),
            forcedReadOnly,
            DiskSynchronizationMode.Full,
            NbdAttachmentOptions.Default with
            {
                Reconnect = NbdReconnectPolicy.Default with { MaxDuration = TimeSpan.FromSeconds(30), MaxDelay = TimeSpan.FromSeconds(1) },
            });

    /// <summary>Builds the configuration from the public API and starts the backend on a socket in <paramref name="temp"/>.</summary>
    private static async Task<VhostUserVirtualMachine> StartBackendAsync(NetworkBlockDeviceStorageDeviceAttachment attachment, TempDirectory temp)
    {
        var configuration = new VirtualMachineConfiguration
        {
            StorageDevices = { new VirtioBlockDeviceConfiguration(attachment) { BlockDeviceIdentifier = "nbdtest-disk" } },
        };
        configuration.Validate();
        var vm = new VhostUserVirtualMachine(configuration, [temp.Combine("vhost-user-blk.sock")]);
        try
        {
            using var timeout = new CancellationTokenSource(TimeSpan.FromSeconds(30));
            await vm.StartAsync(timeout.Token);
            return vm;
        }
        catch
        {
            try
            {
                await vm.DisposeAsync();
            }
            catch (Exception)
            {
                // Keep the start failure; the dispose failure would hide it.
            }

            throw;
        }
    }
}
