using System.Diagnostics;
using NbdAttachment.InteropTests.Servers;
using Xunit.Abstractions;

namespace NbdAttachment.InteropTests.Guest;

/// <summary>The guest harness itself: the initramfs is a valid cpio, and a run that overstays its bound is killed.</summary>
[Collection(GuestCollection.Name)]
[Trait("Category", "Guest")]
public sealed class GuestMachineTests(ITestOutputHelper output)
{
    [SkippableFact]
    public async Task Initramfs_is_a_newc_cpio_with_init_busybox_modules_and_pattern()
    {
        var cpio = ServerBinaries.RequireOrSkip(ServerBinaries.Cpio);
        var kernel = await GuestKernel.RequireOrSkipAsync();
        using var temp = new TempDirectory();
        var archive = temp.Combine("initrd.cpio");

        await GuestInitramfs.BuildAsync(kernel, archive);

        // cpio -t reads the archive from stdin; run it through sh so the redirection works.
        var list = await ProcessUtilities.RunToolAsync("/bin/sh", ["-c", $"{cpio} -t -H newc < {archive}"], TimeSpan.FromSeconds(30));
        list.EnsureSuccess();
        var entries = list.StandardOutput.Split('\n', StringSplitOptions.RemoveEmptyEntries);
        entries.Should().Contain(["init", "bin/busybox", "dev/console", "data/pattern.bin", "lib/modules/virtio_blk.ko", "lib/modules/virtio_pci.ko"]);
        var order = kernel.ResolveModules(GuestInitramfs.Modules).Select(m => m.Name).ToList();
        output.WriteLine($"kernel {kernel.Release} from {kernel.Source}; modules: {string.Join(' ', order)}");
        order.IndexOf("virtio_ring").Should().BeLessThan(order.IndexOf("virtio_blk"));
        order.Last().Should().Be("virtio_blk");
    }

    [SkippableFact]
    public async Task Run_exceeding_its_timeout_is_killed_with_the_console_tail()
    {
        using var temp = new TempDirectory();
        await using var nbdkit = await ReferenceGuestTests.StartNbdkitAsync("memory", [$"size={GuestAssertions.DiskSize}"]);
        await using var qsd = await QemuStorageDaemonProcess.StartAsync(new QemuStorageDaemonOptions { Nbd = nbdkit.Endpoint });
        var options = GuestAssertions.Options(qsd.VhostUserSocketPath, GuestScenarios.WriteVerify, output: null) with { Timeout = TimeSpan.FromSeconds(2) };
        var clock = Stopwatch.StartNew();

        await using var guest = await GuestMachine.StartAsync(options);
        var act = () => guest.WaitForExitAsync();

        (await act.Should().ThrowAsync<TimeoutException>()).WithMessage("*did not power off within 2 s*Console*");
        guest.IsRunning.Should().BeFalse("the guest is killed on timeout");
        clock.Elapsed.Should().BeLessThan(TimeSpan.FromSeconds(30));
    }
}
