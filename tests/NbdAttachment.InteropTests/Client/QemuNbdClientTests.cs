using NbdAttachment.Client;
using NbdAttachment.InteropTests.Servers;
using static NbdAttachment.InteropTests.Client.ClientTestSupport;

namespace NbdAttachment.InteropTests.Client;

/// <summary>NbdAttachment's client against qemu-nbd: raw/qcow2, named exports, read-only, block status, dirty bitmaps.</summary>
public sealed class QemuNbdClientTests
{
    private const int MiB = 1024 * 1024;

    [SkippableTheory]
    [InlineData("raw", ListenKind.Tcp)]
    [InlineData("raw", ListenKind.Unix)]
    [InlineData("qcow2", ListenKind.Tcp)]
    [InlineData("qcow2", ListenKind.Unix)]
    public Task Write_read_flush_trim_zeroes_on_named_export(string format, ListenKind listen) => Bounded(async () =>
    {
        await using var server = await QemuNbdProcess.StartAsync(new QemuNbdOptions
        {
            Format = format, ImageSize = 8 * MiB, Listen = listen, ExportName = "vol-" + format, Discard = "unmap",
        });

        var listing = await NbdClient.ListExportsAsync(Parse(server.Uri), Plain);
        listing.Select(l => l.Name).Should().Contain("vol-" + format);

        await using var client = await ConnectAsync(server.Uri);
        var e = client.Export;
        e.Size.Should().Be(8 * MiB);
        e.StructuredReplies.Should().BeTrue();
        e.CanFlush.Should().BeTrue();
        e.CanWriteZeroes.Should().BeTrue();

        var data = RandomBytes(5 * MiB + 3, 11);
        await client.WriteAsync(MiB - 1, data, e.CanFua ? NbdCommandOptions.ForceUnitAccess : NbdCommandOptions.None);
        var one = new byte[] { 0x5A };
        await client.WriteAsync(0, one);
        await client.FlushAsync();
        await client.WriteZeroesAsync(2 * MiB, 4096);
        if (e.CanFastZero)
        {
            // qemu may answer ENOTSUP to a fast zero it cannot do quickly; both outcomes are conformant.
            try
            {
                await client.WriteZeroesAsync(3 * MiB, 65536, NbdCommandOptions.FastZero);
                Array.Clear(data, 3 * MiB - (MiB - 1), 65536);
            }
            catch (NbdServerException ex) when (ex.Error == NbdError.NotSupported)
            {
            }
        }

        if (e.CanCache)
        {
            await client.CacheAsync(0, MiB);
        }

        Array.Clear(data, 2 * MiB - (MiB - 1), 4096);
        var back = new byte[data.Length];
        await client.ReadAsync(MiB - 1, back);
        back.ShouldEqualBytes(data);
        var first = new byte[2];
        await client.ReadAsync(0, first);
        first.Should().Equal(0x5A, 0);

        if (e.CanTrim)
        {
            // Trim is advisory: qemu may or may not discard; the call must succeed and the export stay usable.
            await client.TrimAsync(6 * MiB, MiB);
        }

        var extents = await AllExtentsAsync(client, e.Size);
        extents.Should().Contain(x => !x.IsHole, "data was written");
    });

    [SkippableFact]
    public Task Unknown_export_is_refused() => Bounded(async () =>
    {
        await using var server = await QemuNbdProcess.StartAsync(new QemuNbdOptions { ExportName = "only" });

        var error = (await FluentActions.Awaiting(async () => await ConnectAsync(server.UriFor("other")))
            .Should().ThrowAsync<NbdNegotiationException>()).Which.Error;
        error.Should().BeOneOf(NbdNegotiationError.UnknownExport, NbdNegotiationError.ExportRefused);
    });

    [SkippableFact]
    public Task Read_only_export_refuses_writes_locally() => Bounded(async () =>
    {
        await using var server = await QemuNbdProcess.StartAsync(new QemuNbdOptions { ReadOnly = true, ImageSize = MiB });
        await using var client = await ConnectAsync(server.Uri);

        client.Export.IsReadOnly.Should().BeTrue();
        (await FluentActions.Awaiting(async () => await client.WriteAsync(0, new byte[1])).Should().ThrowAsync<NbdRequestRejectedException>())
            .Which.Reason.Should().Be(NbdRequestRejectReason.ReadOnly);
        var buffer = new byte[MiB];
        await client.ReadAsync(0, buffer);
        buffer.Should().OnlyContain(b => b == 0);
    });

    [SkippableFact]
    public Task Qcow2_read_through_the_client_matches_qemu_img_convert() => Bounded(async () =>
    {
        using var temp = new TempDirectory();
        var qcow = temp.Combine("src.qcow2");
        var raw = temp.Combine("converted.raw");
        const long size = 6 * MiB;
        await QemuImg.CreateAsync(qcow, "qcow2", size);

        // Fill some clusters through a writable qemu-nbd (our client as the writer), leave holes elsewhere.
        await using (var writer = await QemuNbdProcess.StartAsync(new QemuNbdOptions { Format = "qcow2", ImagePath = qcow }))
        {
            await using var w = await ConnectAsync(writer.Uri);
            await w.WriteAsync(12345, RandomBytes(700_000, 21));
            await w.WriteAsync(4 * MiB - 7, RandomBytes(65_536 + 14, 22));
            await w.FlushAsync();
            await w.DisposeAsync();
            await writer.StopAsync(TimeSpan.FromSeconds(10));
        }

        await QemuImg.RunAsync(["convert", "-f", "qcow2", "-O", "raw", qcow, raw]);
        var expected = await File.ReadAllBytesAsync(raw);
        expected.Length.Should().Be((int)size);

        await using var server = await QemuNbdProcess.StartAsync(new QemuNbdOptions { Format = "qcow2", ImagePath = qcow, ReadOnly = true });
        await using var client = await ConnectAsync(server.Uri);
        var actual = new byte[size];
        await client.ReadAsync(0, actual);
        actual.ShouldEqualBytes(expected);

        var extents = await AllExtentsAsync(client, size);
        extents.Should().Contain(x => x.IsHole);
        extents.Should().Contain(x => !x.IsHole);
        foreach (var x in extents.Where(x => x.IsZero))
        {
            actual.AsSpan((int)x.Offset, (int)Math.Min(x.Length, size - x.Offset)).IndexOfAnyExcept((byte)0).Should().Be(-1);
        }
    });

    [SkippableFact]
    public Task Dirty_bitmap_context_reports_written_ranges() => Bounded(async () =>
    {
        using var temp = new TempDirectory();
        var qcow = temp.Combine("bitmap.qcow2");
        const long size = 8 * MiB;
        await QemuImg.CreateAsync(qcow, "qcow2", size);
        await QemuImg.AddBitmapAsync(qcow, "b0");

        // Writes go through qemu-nbd (writable, without -B: a bitmap exported with -B is busy/read-only),
        // which records them in the enabled persistent bitmap b0.
        await using (var writer = await QemuNbdProcess.StartAsync(new QemuNbdOptions { Format = "qcow2", ImagePath = qcow }))
        {
            await using var w = await ConnectAsync(writer.Uri);
            await w.WriteAsync(2 * MiB, RandomBytes(65_536, 1));
            await w.WriteAsync(5 * MiB + 100, RandomBytes(10, 2));
            await w.FlushAsync();
            await w.DisposeAsync();

            // SIGTERM, not SIGKILL: qemu-nbd must close the image cleanly to store the bitmap
            // (a killed qemu-nbd leaves it marked in-use, "inconsistent").
            await writer.StopAsync(TimeSpan.FromSeconds(10));
        }

        await using var server = await QemuNbdProcess.StartAsync(new QemuNbdOptions
        {
            Format = "qcow2", ImagePath = qcow, ReadOnly = true, Bitmaps = ["b0"],
        });
        const string context = "qemu:dirty-bitmap:b0";
        await using var client = await ConnectAsync(server.Uri, Plain with { MetaContexts = ["base:allocation", context] });

        client.Export.MetaContexts.Should().Contain(["base:allocation", context]);
        var extents = await AllExtentsAsync(client, size, context);
        var dirty = extents.Where(x => (x.Flags & 1) != 0).ToList();
        dirty.Should().NotBeEmpty();
        dirty.Should().Contain(x => x.Offset <= 2 * MiB && x.Offset + x.Length >= 2 * MiB + 65_536);
        dirty.Should().Contain(x => x.Offset <= 5 * MiB + 100 && x.Offset + x.Length >= 5 * MiB + 110);
        extents.Where(x => (x.Flags & 1) == 0).Should().Contain(x => x.Offset == 0, "the start of the disk was never written");
    });
}
