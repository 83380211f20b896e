using NbdAttachment.Client;
using NbdAttachment.InteropTests.Servers;
using static NbdAttachment.InteropTests.Client.ClientTestSupport;

namespace NbdAttachment.InteropTests.Client;

/// <summary><c>NbdClient.ListMetaContextsAsync</c> (NBD_OPT_LIST_META_CONTEXT) against nbdkit and qemu-nbd.</summary>
public sealed class MetaContextListTests
{
    private const long MiB = 1024 * 1024;

    [SkippableFact]
    public Task Nbdkit_lists_base_allocation() => Bounded(async () =>
    {
        await using var server = await NbdkitProcess.StartMemoryAsync("1M");
        (await NbdClient.ListMetaContextsAsync(Parse(server.Uri), options: Plain)).Should().Contain("base:allocation");
        (await NbdClient.ListMetaContextsAsync(Parse(server.Uri), "qemu:", Plain)).Should().BeEmpty();
    });

    [SkippableFact]
    public Task Qemu_nbd_lists_base_allocation_and_its_dirty_bitmap() => Bounded(async () =>
    {
        using var temp = new TempDirectory();
        var qcow = temp.Combine("list.qcow2");
        await QemuImg.CreateAsync(qcow, "qcow2", 4 * MiB);
        await QemuImg.AddBitmapAsync(qcow, "b0");
        await using var server = await QemuNbdProcess.StartAsync(new QemuNbdOptions { Format = "qcow2", ImagePath = qcow, ReadOnly = true, Bitmaps = ["b0"] });

        var all = await NbdClient.ListMetaContextsAsync(Parse(server.Uri), options: Plain);
        // qemu:allocation-depth is offered only with qemu-nbd -A, which these fixtures do not pass.
        all.Should().Contain(["base:allocation", "qemu:dirty-bitmap:b0"]);
        all.Should().OnlyHaveUniqueItems();
        (await NbdClient.ListMetaContextsAsync(Parse(server.Uri), "qemu:dirty-bitmap:", Plain)).Should().Equal("qemu:dirty-bitmap:b0");
    });
}
