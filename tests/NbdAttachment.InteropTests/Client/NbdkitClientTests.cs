using NbdAttachment.Client;
using NbdAttachment.InteropTests.Servers;
using static NbdAttachment.InteropTests.Client.ClientTestSupport;

namespace NbdAttachment.InteropTests.Client;

/// <summary>NbdAttachment's client against nbdkit: transports, exports, every command, handshake variants.</summary>
public sealed class NbdkitClientTests
{
    private const int MiB = 1024 * 1024;

    [SkippableTheory]
    [InlineData(ListenKind.Tcp)]
    [InlineData(ListenKind.TcpIPv6)]
    [InlineData(ListenKind.Unix)]
    public Task Connects_over_each_transport_and_reads_the_pattern(ListenKind listen) => Bounded(async () =>
    {
        await using var server = await NbdkitProcess.StartAsync(new NbdkitOptions { Plugin = "pattern", PluginArguments = ["size=1M"], Listen = listen });
        await using var client = await ConnectAsync(server.Uri);

        client.State.Should().Be(NbdClientState.Connected);
        client.Export.Size.Should().Be(MiB);
        client.Export.HandshakeStyle.Should().Be(NbdHandshakeStyle.FixedNewstyle);
        client.Export.IsTlsActive.Should().BeFalse();
        var buffer = new byte[64 * 1024];
        await client.ReadAsync(MiB - buffer.Length, buffer);
        VerifyPattern(MiB - buffer.Length, buffer);
    });

    [SkippableFact]
    public Task Pattern_reads_of_many_sizes_and_alignments_match_byte_for_byte() => Bounded(async () =>
    {
        await using var server = await NbdkitProcess.StartAsync(new NbdkitOptions { Plugin = "pattern", PluginArguments = ["size=64M"] });
        await using var client = await ConnectAsync(server.Uri);

        client.Export.MinimumBlockSize.Should().Be(1);
        foreach (var (offset, length) in new (long, int)[] { (0, 1), (1, 1), (7, 3), (4095, 2), (12345, 4097), (1, 65_537), (3 * MiB + 5, 33 * MiB + 3) })
        {
            var buffer = new byte[length];
            await client.ReadAsync(offset, buffer);
            VerifyPattern(offset, buffer);
        }

        // Past the maximum payload: the client must split.
        var big = new byte[(int)client.Export.MaximumPayloadSize + 4096 + 1];
        await client.ReadAsync(17, big);
        VerifyPattern(17, big);
    });

    [SkippableFact]
    public Task Memory_write_then_read_from_one_byte_to_40_MiB() => Bounded(async () =>
    {
        await using var server = await NbdkitProcess.StartAsync(new NbdkitOptions { Plugin = "memory", PluginArguments = ["size=64M"] });
        await using var client = await ConnectAsync(server.Uri);

        client.Export.IsReadOnly.Should().BeFalse();
        client.Export.MaximumPayloadSize.Should().BeLessThan(40 * MiB);
        var seed = 1;
        foreach (var (offset, length) in new (long, int)[] { (0, 1), (5, 1), (4093, 7), (MiB - 1, 2), (2 * MiB + 3, 65_537), (8 * MiB + 1, 40 * MiB) })
        {
            var data = RandomBytes(length, seed++);
            await client.WriteAsync(offset, data);
            var back = new byte[length];
            await client.ReadAsync(offset, back);
            back.ShouldEqualBytes(data, $"at {offset}+{length}");
        }

        // The one-byte write at 0 and at 5 did not disturb their neighbours (still zero).
        var head = new byte[8];
        await client.ReadAsync(0, head);
        head[1..5].Should().OnlyContain(b => b == 0);
    });

    [SkippableFact]
    public Task Flush_fua_trim_write_zeroes_fast_zero_and_cache_on_memory() => Bounded(async () =>
    {
        await using var server = await NbdkitProcess.StartAsync(new NbdkitOptions { Plugin = "memory", PluginArguments = ["size=8M"] });
        await using var client = await ConnectAsync(server.Uri);
        var e = client.Export;
        e.CanFlush.Should().BeTrue();
        e.CanFua.Should().BeTrue();
        e.CanTrim.Should().BeTrue();
        e.CanWriteZeroes.Should().BeTrue();
        e.CanCache.Should().BeTrue();

        var data = RandomBytes(MiB, 7);
        await client.WriteAsync(0, data, NbdCommandOptions.ForceUnitAccess);
        await client.FlushAsync();

        await client.WriteZeroesAsync(4096, 8192);
        await client.WriteZeroesAsync(20_000, 3, NbdCommandOptions.NoHole | NbdCommandOptions.ForceUnitAccess);
        if (e.CanFastZero)
        {
            await client.WriteZeroesAsync(65_536, 65_536, NbdCommandOptions.FastZero);
        }

        await client.TrimAsync(512 * 1024, 128 * 1024, NbdCommandOptions.ForceUnitAccess);
        await client.CacheAsync(0, MiB);

        var expected = (byte[])data.Clone();
        Array.Clear(expected, 4096, 8192);
        Array.Clear(expected, 20_000, 3);
        if (e.CanFastZero)
        {
            Array.Clear(expected, 65_536, 65_536);
        }

        // The memory plugin reads trimmed ranges back as zeroes.
        Array.Clear(expected, 512 * 1024, 128 * 1024);
        var back = new byte[MiB];
        await client.ReadAsync(0, back);
        back.ShouldEqualBytes(expected);
    });

    [SkippableTheory]
    [InlineData(false)]
    [InlineData(true)]
    public Task Structured_replies_on_and_off(bool noStructuredReplies) => Bounded(async () =>
    {
        await using var server = await NbdkitProcess.StartAsync(new NbdkitOptions
        {
            Plugin = "memory", PluginArguments = ["size=4M"], NoStructuredReplies = noStructuredReplies,
        });
        await using var client = await ConnectAsync(server.Uri);

        client.Export.StructuredReplies.Should().Be(!noStructuredReplies);
        client.Export.CanBlockStatus.Should().Be(!noStructuredReplies);
        var data = RandomBytes(3 * MiB, 3);
        await client.WriteAsync(MiB - 1, data);
        var back = new byte[data.Length];
        await client.ReadAsync(MiB - 1, back);
        back.ShouldEqualBytes(data);
        if (noStructuredReplies)
        {
            client.Export.MetaContexts.Should().BeEmpty();
            await FluentActions.Awaiting(async () => await client.GetBlockStatusAsync(0, 4096))
                .Should().ThrowAsync<NbdRequestRejectedException>();
        }
    });

    [SkippableFact]
    public Task Block_status_on_sparse_random_is_contiguous_and_matches_the_data() => Bounded(async () =>
    {
        const long size = 16 * MiB;
        await using var server = await NbdkitProcess.StartAsync(new NbdkitOptions
        {
            Plugin = "sparse-random", PluginArguments = [$"size={size}", "seed=42", "percent=30"],
        });
        await using var client = await ConnectAsync(server.Uri);

        client.Export.MetaContexts.Should().Contain("base:allocation");
        var extents = await AllExtentsAsync(client, size);
        extents.Should().Contain(x => x.IsHole && x.IsZero);
        extents.Should().Contain(x => !x.IsHole);

        // Every extent reported as zero reads back as zeroes.
        foreach (var x in extents.Where(x => x.IsZero).Take(20))
        {
            var buffer = new byte[(int)Math.Min(x.Length, MiB)];
            await client.ReadAsync(x.Offset, buffer);
            buffer.Should().OnlyContain(b => b == 0);
        }

        var one = await client.GetBlockStatusAsync(0, size, singleExtent: true);
        one.Should().ContainSingle();
        one[0].Should().Be(extents[0] with { Length = Math.Min(extents[0].Length, one[0].Length) });
    });

    [SkippableFact]
    public Task Noextents_filter_reports_one_allocated_extent() => Bounded(async () =>
    {
        await using var server = await NbdkitProcess.StartAsync(new NbdkitOptions
        {
            Plugin = "sparse-random", PluginArguments = ["size=8M", "seed=1"], Filters = ["noextents"],
        });
        await using var client = await ConnectAsync(server.Uri);

        var extents = await AllExtentsAsync(client, 8 * MiB);
        extents.Should().ContainSingle();
        extents[0].Flags.Should().Be(0u);
        extents[0].Length.Should().Be(8 * MiB);
    });

    [SkippableFact]
    public Task Blocksize_policy_error_filter_accepts_unaligned_and_oversized_client_io() => Bounded(async () =>
    {
        await using var server = await NbdkitProcess.StartAsync(new NbdkitOptions
        {
            Plugin = "memory",
            PluginArguments = ["size=8M", "blocksize-minimum=4096", "blocksize-maximum=65536", "blocksize-error-policy=error"],
            Filters = ["blocksize-policy"],
        });
        await using var client = await ConnectAsync(server.Uri);

        client.Export.BlockSizesAdvertised.Should().BeTrue();
        client.Export.MinimumBlockSize.Should().Be(4096);
        client.Export.MaximumPayloadSize.Should().BeLessThanOrEqualTo(65536);

        var data = RandomBytes(300_001, 9);
        await client.WriteAsync(4095, data); // unaligned on both ends and > blocksize-maximum
        var back = new byte[data.Length];
        await client.ReadAsync(4095, back);
        back.ShouldEqualBytes(data);

        var tiny = new byte[] { 0xAB };
        await client.WriteAsync(7, tiny);
        var around = new byte[3];
        await client.ReadAsync(6, around);
        around.Should().Equal(0, 0xAB, 0);
        await client.WriteZeroesAsync(4095 + 10, 5);
        var z = new byte[7];
        await client.ReadAsync(4095 + 9, z);
        z.Should().Equal(data[9], 0, 0, 0, 0, 0, data[15]);
    });

    [SkippableFact]
    public Task Read_only_export_refuses_writes_locally() => Bounded(async () =>
    {
        await using var server = await NbdkitProcess.StartAsync(new NbdkitOptions { Plugin = "pattern", PluginArguments = ["size=1M"], ReadOnly = true });
        await using var client = await ConnectAsync(server.Uri);

        client.Export.IsReadOnly.Should().BeTrue();
        (await FluentActions.Awaiting(async () => await client.WriteAsync(0, new byte[512])).Should().ThrowAsync<NbdRequestRejectedException>())
            .Which.Reason.Should().Be(NbdRequestRejectReason.ReadOnly);

        // nbdkit -r does not advertise WRITE_ZEROES/TRIM at all, so NotSupported is as correct as ReadOnly.
        (await FluentActions.Awaiting(async () => await client.WriteZeroesAsync(0, 512)).Should().ThrowAsync<NbdRequestRejectedException>())
            .Which.Reason.Should().BeOneOf(NbdRequestRejectReason.ReadOnly, NbdRequestRejectReason.NotSupported);
        (await FluentActions.Awaiting(async () => await client.TrimAsync(0, 512)).Should().ThrowAsync<NbdRequestRejectedException>())
            .Which.Reason.Should().BeOneOf(NbdRequestRejectReason.ReadOnly, NbdRequestRejectReason.NotSupported);

        var buffer = new byte[4096];
        await client.ReadAsync(4096, buffer); // the connection is still usable
        VerifyPattern(4096, buffer);
    });

    [SkippableFact]
    public Task Named_and_default_exports_and_listing() => Bounded(async () =>
    {
        await using var server = await NbdkitProcess.StartAsync(new NbdkitOptions { Plugin = "memory", PluginArguments = ["size=1M"], ExportName = "named" });

        // nbdkit's default list_exports answers the default export "" (-e does not rename it in the list).
        var listing = await NbdClient.ListExportsAsync(Parse(server.Uri), Plain);
        listing.Should().NotBeEmpty();

        var info = await NbdClient.GetExportInfoAsync(Parse(server.Uri), Plain);
        info.Size.Should().Be(MiB);

        // nbdkit serves the same plugin under any name, including the default export "".
        await using var named = await ConnectAsync(server.UriFor("named"));
        named.Export.ExportName.Should().Be("named");
        await using var byDefault = await ConnectAsync(server.UriFor(string.Empty));
        byDefault.Export.Size.Should().Be(MiB);
    });

    [SkippableFact]
    public Task Unknown_export_is_refused() => Bounded(async () =>
    {
        // The exportname filter makes nbdkit refuse names outside its list.
        await using var server = await NbdkitProcess.StartAsync(new NbdkitOptions
        {
            Plugin = "memory", PluginArguments = ["size=1M", "exportname-list=explicit", "exportname=a", "exportname=b", "exportname-strict=true"], Filters = ["exportname"],
        });

        var listing = await NbdClient.ListExportsAsync(Parse(server.Uri), Plain);
        listing.Select(l => l.Name).Should().Contain(["a", "b"]);

        await using (var ok = await ConnectAsync(server.UriFor("a")))
        {
            ok.Export.Size.Should().Be(MiB);
        }

        var error = (await FluentActions.Awaiting(async () => await ConnectAsync(server.UriFor("nope")))
            .Should().ThrowAsync<NbdNegotiationException>()).Which.Error;
        error.Should().BeOneOf(NbdNegotiationError.UnknownExport, NbdNegotiationError.ExportRefused, NbdNegotiationError.Invalid);
    });

    [SkippableFact]
    public Task Oldstyle_handshake_works() => Bounded(async () =>
    {
        await using var server = await NbdkitProcess.StartAsync(new NbdkitOptions { Plugin = "memory", PluginArguments = ["size=2M"], Oldstyle = true });
        await using var client = await ConnectAsync(server.Uri);

        client.Export.HandshakeStyle.Should().Be(NbdHandshakeStyle.Oldstyle);
        client.Export.Size.Should().Be(2 * MiB);
        client.Export.StructuredReplies.Should().BeFalse();
        var data = RandomBytes(200_000, 4);
        await client.WriteAsync(3, data);
        var back = new byte[data.Length];
        await client.ReadAsync(3, back);
        back.ShouldEqualBytes(data);
    });

    [SkippableTheory]
    [InlineData(0, NbdHandshakeStyle.Newstyle)]
    [InlineData(1, NbdHandshakeStyle.FixedNewstyle)]
    [InlineData(2, NbdHandshakeStyle.Newstyle)]
    [InlineData(3, NbdHandshakeStyle.FixedNewstyle)]
    public Task Mask_handshake_variants_work(int mask, NbdHandshakeStyle expected) => Bounded(async () =>
    {
        await using var server = await NbdkitProcess.StartAsync(new NbdkitOptions { Plugin = "memory", PluginArguments = ["size=1M"], MaskHandshake = mask });
        await using var client = await ConnectAsync(server.Uri);

        client.Export.HandshakeStyle.Should().Be(expected);
        client.Export.Size.Should().Be(MiB);
        var data = RandomBytes(70_000, mask);
        await client.WriteAsync(1, data);
        var back = new byte[data.Length];
        await client.ReadAsync(1, back);
        back.ShouldEqualBytes(data);
    });

    [SkippableFact]
    public Task Concurrent_reads_and_out_of_range_requests() => Bounded(async () =>
    {
        const long size = 32 * MiB;
        await using var server = await NbdkitProcess.StartAsync(new NbdkitOptions { Plugin = "pattern", PluginArguments = [$"size={size}"] });
        await using var client = await ConnectAsync(server.Uri, Plain with { MaxInFlightRequests = 8 });

        var random = new Random(5);
        var requests = Enumerable.Range(0, 200).Select(_ =>
        {
            var length = random.Next(1, 300_000);
            return (Offset: random.NextInt64(0, size - length), Length: length);
        }).ToList();
        await Task.WhenAll(requests.Select(async r =>
        {
            var buffer = new byte[r.Length];
            await client.ReadAsync(r.Offset, buffer);
            VerifyPattern(r.Offset, buffer);
        }));

        (await FluentActions.Awaiting(async () => await client.ReadAsync(size - 1, new byte[2])).Should().ThrowAsync<NbdRequestRejectedException>())
            .Which.Reason.Should().Be(NbdRequestRejectReason.OutOfBounds);
        var last = new byte[1];
        await client.ReadAsync(size - 1, last);
        VerifyPattern(size - 1, last);
    });
}
