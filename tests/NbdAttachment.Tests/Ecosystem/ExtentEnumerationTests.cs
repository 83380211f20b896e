using System.Text;
using NbdAttachment.Client;
using NbdAttachment.Testing;
using NbdAttachment.Tests.Support;

namespace NbdAttachment.Tests.Ecosystem;

public sealed class ExtentEnumerationTests
{
    private static readonly TimeSpan Bound = TimeSpan.FromSeconds(30);
    private static readonly NbdClientOptions NoReconnect = new() { Reconnect = NbdReconnectPolicy.Disabled };

    [Fact]
    public async Task Whole_export_is_covered_and_data_is_never_a_hole()
    {
        const long size = 16L * 1024 * 1024;
        await using var server = await NbdTestServer.StartAsync(NbdStreamTests.Single(new NbdTestExportOptions("", size)));
        var export = server.GetExport();
        var written = new List<(long Offset, int Length)> { (0, 100), (3 * 65536 + 17, 70_000), (5L * 1024 * 1024, 4096), (size - 10, 10) };
        foreach (var (offset, length) in written)
        {
            export.WriteBytes(offset, NbdStreamTests.Pattern(length, 1));
        }

        await using var client = await NbdClient.ConnectAsync(server.Uri);
        var extents = await Collect(client.GetExtentsAsync(0, size));

        AssertContiguous(extents, 0, size);
        extents.Should().Contain(e => e.IsHole, "most of the export was never written");
        foreach (var (offset, length) in written)
        {
            foreach (var extent in extents.Where(e => e.Offset < offset + length && offset < e.Offset + e.Length))
            {
                extent.IsHole.Should().BeFalse($"{extent} overlaps data written at {offset}+{length}");
                extent.IsZero.Should().BeFalse();
            }
        }

        // Every byte outside a data extent reads as zero.
        var all = export.ReadBytes(0, (int)size);
        foreach (var extent in extents.Where(e => e.IsZero))
        {
            all.AsSpan((int)extent.Offset, (int)extent.Length).IndexOfAnyExcept((byte)0).Should().Be(-1);
        }
    }

    [Theory]
    [InlineData(1L, 1L)]
    [InlineData(65535L, 2L)]
    [InlineData(100_000L, 300_000L)]
    [InlineData(0L, 0L)]
    public async Task Sub_ranges_are_clipped_exactly(long offset, long length)
    {
        var options = NbdStreamTests.Single(new NbdTestExportOptions("", 1024 * 1024) { MinimumBlockSize = 512 });
        await using var server = await NbdTestServer.StartAsync(options);
        server.GetExport().WriteBytes(65536, new byte[] { 1 });
        server.GetExport().WriteBytes(262144, new byte[] { 1 });
        await using var client = await NbdClient.ConnectAsync(server.Uri);
        var extents = await Collect(client.GetExtentsAsync(offset, length));
        AssertContiguous(extents, offset, length);
    }

    [Fact]
    public async Task Zeroed_ranges_are_reported_as_zero()
    {
        await using var server = await NbdTestServer.StartAsync();
        await using var client = await NbdClient.ConnectAsync(server.Uri);
        await client.WriteAsync(0, NbdStreamTests.Pattern(4 * 65536, 2));
        await client.WriteZeroesAsync(65536, 65536, NbdCommandOptions.NoHole);
        var extents = await Collect(client.GetExtentsAsync(0, 4 * 65536));
        AssertContiguous(extents, 0, 4 * 65536);
        extents.Where(e => e.Offset < 131072 && e.Offset + e.Length > 65536).Should().OnlyContain(e => e.IsZero && !e.IsHole);
        extents.Where(e => e.Offset < 65536).Should().OnlyContain(e => !e.IsZero);
    }

    [Fact]
    public async Task Server_covering_a_little_per_reply_is_asked_again_until_the_range_is_covered()
    {
        // Each reply describes one extent, up to the next 4 KiB boundary, for the "qemu:dirty-bitmap:b0" context: dirty (1) on odd blocks.
        var requests = 0;
        await using var server = BitmapServer(async (c, r) =>
        {
            requests++;
            var flags = (uint)((r.Offset / 4096) % 2);
            var length = 4096 - (uint)(r.Offset % 4096);
            await c.SendChunkAsync(r.Cookie, 5, Bytes.U32(7).U32(length).U32(flags).Build());
        });
        var options = NoReconnect with { MetaContexts = ["qemu:dirty-bitmap:b0"] };
        await using var client = await NbdClient.ConnectAsync(server.Uri, options);
        client.Export.MetaContexts.Should().Contain("qemu:dirty-bitmap:b0");

        var extents = await Collect(client.GetExtentsAsync(1000, 5 * 4096, "qemu:dirty-bitmap:b0"));
        AssertContiguous(extents, 1000, 5 * 4096);
        extents.Should().HaveCount(6);
        extents[0].Should().Be(new NbdExtent(1000, 3096, 0));
        extents[1].Should().Be(new NbdExtent(4096, 4096, 1));
        extents[^1].Should().Be(new NbdExtent(5 * 4096, 1000, 1));
        requests.Should().Be(6);
    }

    [Fact]
    public async Task Server_that_makes_no_progress_fails_with_a_protocol_error()
    {
        // Every reply carries the context id and no extent at all.
        await using var server = BitmapServer((c, r) => c.SendChunkAsync(r.Cookie, 5, Bytes.U32(7).Build()));
        await using var client = await NbdClient.ConnectAsync(server.Uri, NoReconnect with { MetaContexts = ["qemu:dirty-bitmap:b0"] });
        var act = async () => await Collect(client.GetExtentsAsync(0, 8192, "qemu:dirty-bitmap:b0"));
        await act.Should().ThrowAsync<NbdProtocolException>().WaitAsync(Bound);
    }

    [Fact]
    public async Task Context_not_granted_and_bad_ranges_are_rejected()
    {
        await using var server = await NbdTestServer.StartAsync();
        await using var client = await NbdClient.ConnectAsync(server.Uri);
        var notGranted = async () => await Collect(client.GetExtentsAsync(0, 4096, "qemu:dirty-bitmap:nope"));
        await notGranted.Should().ThrowAsync<NbdRequestRejectedException>();
        var pastEnd = async () => await Collect(client.GetExtentsAsync(client.Export.Size - 1, 2));
        await pastEnd.Should().ThrowAsync<ArgumentOutOfRangeException>();
        var negative = async () => await Collect(client.GetExtentsAsync(-1, 2));
        await negative.Should().ThrowAsync<ArgumentOutOfRangeException>();
    }

    [Fact]
    public async Task Enumeration_can_be_cancelled()
    {
        await using var server = await NbdTestServer.StartAsync();
        await using var client = await NbdClient.ConnectAsync(server.Uri);
        using var cts = new CancellationTokenSource();
        cts.Cancel();
        var act = async () => await Collect(client.GetExtentsAsync(0, 4096, cancellationToken: cts.Token));
        await act.Should().ThrowAsync<OperationCanceledException>();
    }

    [Fact]
    public async Task Sparse_copy_between_exports_sends_only_data_and_keeps_the_destination_sparse()
    {
        const long size = 8L * 1024 * 1024;
        await using var source = await NbdTestServer.StartAsync(NbdStreamTests.Single(new NbdTestExportOptions("", size)));
        await using var destination = await NbdTestServer.StartAsync(NbdStreamTests.Single(new NbdTestExportOptions("", size)));
        source.GetExport().WriteBytes(123_456, NbdStreamTests.Pattern(200_000, 4));
        source.GetExport().WriteBytes(size - 70_000, NbdStreamTests.Pattern(70_000, 5));
        destination.GetExport().WriteBytes(4L * 1024 * 1024, NbdStreamTests.Pattern(65536, 6)); // stale data to be zeroed

        await using var from = await NbdClient.ConnectAsync(source.Uri);
        await using var to = await NbdClient.ConnectAsync(destination.Uri);
        long copied = 0;
        await foreach (var extent in from.GetExtentsAsync(0, size))
        {
            if (extent.IsZero)
            {
                await to.WriteZeroesAsync(extent.Offset, extent.Length);
                continue;
            }

            var buffer = new byte[extent.Length];
            await from.ReadAsync(extent.Offset, buffer);
            await to.WriteAsync(extent.Offset, buffer);
            copied += extent.Length;
        }

        await to.FlushAsync();
        destination.GetExport().ReadBytes(0, (int)size).AsSpan().SequenceEqual(source.GetExport().ReadBytes(0, (int)size)).Should().BeTrue();
        copied.Should().BeLessThan(size / 8, "holes are not copied as data");
        destination.GetExport().AllocatedBytes.Should().Be(source.GetExport().AllocatedBytes);
    }

    private static void AssertContiguous(List<NbdExtent> extents, long offset, long length)
    {
        var cursor = offset;
        foreach (var extent in extents)
        {
            extent.Offset.Should().Be(cursor, "extents are contiguous");
            extent.Length.Should().BePositive();
            cursor += extent.Length;
        }

        cursor.Should().Be(offset + length, "the extents cover exactly the range");
    }

    private static async Task<List<NbdExtent>> Collect(IAsyncEnumerable<NbdExtent> source)
    {
        var list = new List<NbdExtent>();
        await foreach (var extent in source.WithCancellation(CancellationToken.None))
        {
            list.Add(extent);
        }

        return list;
    }

    /// <summary>A scripted server that grants "qemu:dirty-bitmap:b0" as context id 7 on a 1 MiB export.</summary>
    private static ScriptedServer BitmapServer(Func<RawConnection, RawRequest, Task> onRequest) => ScriptedServer.Start(async c =>
    {
        await c.SendNewstyleGreetingAsync();
        await c.ReadClientFlagsAsync();
        while (true)
        {
            var (option, _) = await c.ReadOptionAsync();
            if (option == 8)
            {
                await c.SendOptionReplyAsync(option, 1);
            }
            else if (option == 10)
            {
                await c.SendOptionReplyAsync(option, 4, Bytes.U32(7).Raw(Encoding.ASCII.GetBytes("qemu:dirty-bitmap:b0")).Build());
                await c.SendOptionReplyAsync(option, 1);
            }
            else if (option == 7)
            {
                await c.SendOptionReplyAsync(option, 3, RawConnection.InfoExport(1 << 20, 0x0D6D));
                await c.SendOptionReplyAsync(option, 1);
                break;
            }
            else
            {
                await c.SendOptionReplyAsync(option, 0x80000001);
            }
        }

        while (true)
        {
            var request = await c.ReadRequestAsync();
            if (request.Type == 2)
            {
                return;
            }

            await onRequest(c, request);
        }
    });
}
