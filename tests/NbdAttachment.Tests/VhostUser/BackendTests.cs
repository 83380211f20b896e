using System.Text;
using NbdAttachment.Tests.VhostUser.Support;
using NbdAttachment.VhostUser;

namespace NbdAttachment.Tests.VhostUser;

/// <summary>
/// <see cref="VhostUserBlockBackend"/> driven by the managed test front-end (proven against qemu-storage-daemon in
/// <see cref="ReferenceBackendTests"/>), serving an in-memory device.
/// </summary>
public sealed class BackendTests
{
    private const long Capacity = 16L << 20;

    [Fact]
    public async Task Offers_the_virtio_blk_and_vhost_user_features()
    {
        await using var h = BackendHarness.Start(options: VhostUserBlockBackendOptions.Default with { QueueCount = 2 });
        await using var fe = await h.ConnectAsync();
        var features = await fe.GetFeaturesAsync();
        foreach (var bit in new[]
        {
            VirtioFeatures.Version1, VirtioFeatures.RingIndirectDesc, VirtioFeatures.RingEventIdx, VirtioFeatures.ProtocolFeatures,
            VirtioFeatures.BlkSizeMax, VirtioFeatures.BlkSegMax, VirtioFeatures.BlkBlkSize, VirtioFeatures.BlkFlush, VirtioFeatures.BlkMq,
            VirtioFeatures.BlkDiscard, VirtioFeatures.BlkWriteZeroes,
        })
        {
            VirtioFeatures.Has(features, bit).Should().BeTrue($"feature bit {bit} is offered");
        }

        VirtioFeatures.Has(features, VirtioFeatures.BlkRo).Should().BeFalse("the device is writable");

        var protocol = await fe.GetProtocolFeaturesAsync();
        foreach (var bit in new[] { VhostUserProtocolFeatures.Mq, VhostUserProtocolFeatures.ReplyAck, VhostUserProtocolFeatures.Config })
        {
            (protocol & VhostUserProtocolFeatures.Bit(bit)).Should().NotBe(0UL, $"protocol feature bit {bit} is offered");
        }

        await fe.SetProtocolFeaturesAsync(protocol & fe.Options.ProtocolFeatures);
        (await fe.GetQueueNumAsync()).Should().Be(2);
        await fe.SetOwnerAsync();
        await fe.SetFeaturesAsync(fe.FeaturesToAck(features));
        await fe.SetMemTableAsync();
        await fe.StartQueueAsync(0);
        (await fe.SubmitAsync(BlkRequest.Flush())).Status.Should().Be(VirtioBlk.StatusOk);
        h.Backend.IsConnected.Should().BeTrue();
    }

    [Theory]
    [InlineData(512)]
    [InlineData(4096)]
    public async Task Config_describes_the_device(int blockSize)
    {
        var options = VhostUserBlockBackendOptions.Default with { QueueCount = 3, MaxSegments = 64, MaxSegmentSize = 256 * 1024 };
        await using var h = BackendHarness.Start(new MemoryBlockDevice(Capacity, logicalBlockSize: blockSize), options);
        await using var fe = await h.ConnectAsync();
        await fe.HandshakeAsync();
        var config = fe.Config!;
        config.Raw.Length.Should().Be(VirtioBlk.ConfigSize);
        config.Capacity.Should().Be((ulong)Capacity / 512, "capacity is in 512-byte sectors whatever the block size");
        config.SizeMax.Should().Be(256u * 1024);
        config.SegMax.Should().Be(64);
        config.BlkSize.Should().Be((uint)blockSize);
        config.NumQueues.Should().Be(3);
        config.MaxDiscardSectors.Should().BeGreaterThan(0);
        config.MaxDiscardSeg.Should().BeGreaterThanOrEqualTo(1);
        config.DiscardSectorAlignment.Should().BeGreaterThanOrEqualTo((uint)blockSize / 512);
        config.MaxWriteZeroesSectors.Should().BeGreaterThan(0);
        config.MaxWriteZeroesSeg.Should().BeGreaterThanOrEqualTo(1);
        config.WriteZeroesMayUnmap.Should().BeLessThanOrEqualTo(1);
        fe.QueueNum.Should().Be(3);
    }

    [Fact]
    public async Task Read_only_device_offers_RO_and_fails_modifications()
    {
        await using var h = BackendHarness.Start(new MemoryBlockDevice(Capacity, readOnly: true));
        await using var fe = await h.ConnectNegotiatedAsync();
        VirtioFeatures.Has(fe.OfferedFeatures, VirtioFeatures.BlkRo).Should().BeTrue();
        (await fe.SubmitAsync(BlkRequest.Write(0, new byte[4096]))).Status.Should().Be(VirtioBlk.StatusIoErr);
        (await fe.SubmitAsync(BlkRequest.Read(0, 4096))).Status.Should().Be(VirtioBlk.StatusOk);
        var wz = await fe.SubmitAsync(BlkRequest.WriteZeroes(0, 8));
        wz.Status.Should().NotBe(VirtioBlk.StatusOk);
        var discard = await fe.SubmitAsync(BlkRequest.Discard(0, 8));
        discard.Status.Should().NotBe(VirtioBlk.StatusOk);
        h.Device.Writes.Should().Be(0, "a write to a read-only device is refused before it reaches the device");
    }

    [Theory]
    [InlineData(true, false, 1)]
    [InlineData(false, false, 1)]
    [InlineData(true, true, 1)]
    [InlineData(false, true, 2)]
    [InlineData(true, false, 3)]
    public async Task Write_then_read_round_trips(bool eventIdx, bool indirect, int regions)
    {
        await using var h = BackendHarness.Start();
        await using var fe = await h.ConnectNegotiatedAsync(new FrontEndOptions { EventIdx = eventIdx, RegionCount = regions, MemorySize = 24L << 20 });
        VirtioFeatures.Has(fe.AckedFeatures, VirtioFeatures.RingEventIdx).Should().Be(eventIdx);
        var data = ReferenceBackendTests.Pattern(128 * 1024, 1);

        (await fe.SubmitAsync(BlkRequest.Write(100, data, segments: 5, indirect: indirect))).Status.Should().Be(VirtioBlk.StatusOk);
        h.Device.Snapshot(100 * 512, data.Length).Should().Equal(data);

        var read = await fe.SubmitAsync(BlkRequest.Read(100, data.Length, segments: 3, indirect: indirect));
        read.Status.Should().Be(VirtioBlk.StatusOk);
        read.Data.Should().Equal(data);
        read.UsedLength.Should().Be((uint)data.Length + 1, "used len counts the data and the status byte written");
        fe.Queues[0].Unexpected.Should().BeEmpty();
    }

    [Fact]
    public async Task Accepts_any_descriptor_layout()
    {
        // VIRTIO_F_VERSION_1 implies ANY_LAYOUT: header and data may share a descriptor, and so may data and status.
        await using var h = BackendHarness.Start();
        await using var fe = await h.ConnectNegotiatedAsync();
        var data = ReferenceBackendTests.Pattern(1024, 9);
        var m = fe.Memory;

        var write = m.Allocate(16 + data.Length);
        m.Write(write, BlkRequest.Write(4, data).Header());
        m.Write(write + 16, data);
        var status = m.Allocate(1);
        m.Span(status, 1)[0] = TestFrontEnd.StatusSentinel;
        var (_, used) = fe.SubmitChain(0, [(write, (uint)(16 + data.Length), 0), (status, 1, VirtqDescFlags.Write)]);
        await fe.Bound(used, "combined header+data");
        m.Span(status, 1)[0].Should().Be(VirtioBlk.StatusOk);
        h.Device.Snapshot(4 * 512, data.Length).Should().Equal(data);

        var header = m.Allocate(16);
        m.Write(header, BlkRequest.Read(4, data.Length).Header());
        var dataAndStatus = m.Allocate(data.Length + 1);
        m.Span(dataAndStatus + (ulong)data.Length, 1)[0] = TestFrontEnd.StatusSentinel;
        var (_, readUsed) = fe.SubmitChain(0, [(header, 16, 0), (dataAndStatus, (uint)data.Length + 1, VirtqDescFlags.Write)]);
        (await fe.Bound(readUsed, "combined data+status")).Length.Should().Be((uint)data.Length + 1);
        m.Read(dataAndStatus, data.Length).Should().Equal(data);
        m.Span(dataAndStatus + (ulong)data.Length, 1)[0].Should().Be(VirtioBlk.StatusOk);
    }

    [Fact]
    public async Task Flush_reaches_the_device()
    {
        await using var h = BackendHarness.Start();
        await using var fe = await h.ConnectNegotiatedAsync();
        VirtioFeatures.Has(fe.AckedFeatures, VirtioFeatures.BlkFlush).Should().BeTrue();
        (await fe.SubmitAsync(BlkRequest.Flush())).Status.Should().Be(VirtioBlk.StatusOk);
        h.Device.Flushes.Should().Be(1);
    }

    [Theory]
    [InlineData("nbd-serial-1")]
    [InlineData("ABCDEFGHIJKLMNOPQRST")]
    [InlineData("")]
    public async Task Get_id_returns_the_identifier(string identifier)
    {
        await using var h = BackendHarness.Start(options: VhostUserBlockBackendOptions.Default with { DeviceIdentifier = identifier });
        await using var fe = await h.ConnectNegotiatedAsync();
        var id = await fe.SubmitAsync(BlkRequest.GetId());
        id.Status.Should().Be(VirtioBlk.StatusOk);
        var expected = new byte[VirtioBlk.IdBytes];
        Encoding.ASCII.GetBytes(identifier).CopyTo(expected, 0);
        id.Data.Should().Equal(expected, "the serial is NUL-padded to 20 bytes (no NUL when it is exactly 20)");
    }

    [Fact]
    public async Task Discard_and_write_zeroes_reach_the_device()
    {
        await using var h = BackendHarness.Start();
        await using var fe = await h.ConnectNegotiatedAsync();
        VirtioFeatures.Has(fe.AckedFeatures, VirtioFeatures.BlkDiscard).Should().BeTrue();
        VirtioFeatures.Has(fe.AckedFeatures, VirtioFeatures.BlkWriteZeroes).Should().BeTrue();
        var data = ReferenceBackendTests.Pattern(256 * 1024, 2);
        h.Device.Fill(0, data);

        (await fe.SubmitAsync(BlkRequest.WriteZeroes(8, 8))).Status.Should().Be(VirtioBlk.StatusOk);
        (await fe.SubmitAsync(BlkRequest.WriteZeroes(64, 16, unmap: true))).Status.Should().Be(VirtioBlk.StatusOk);
        (await fe.SubmitAsync(BlkRequest.Discard(256, 128))).Status.Should().Be(VirtioBlk.StatusOk);

        h.Device.WriteZeroesCalls.Should().BeGreaterThanOrEqualTo(1);
        h.Device.Discards.Should().BeGreaterThanOrEqualTo(1);
        var after = h.Device.Snapshot(0, data.Length);
        after.AsSpan(0, 4096).ToArray().Should().Equal(data.AsSpan(0, 4096).ToArray());
        after.AsSpan(4096, 4096).ToArray().Should().OnlyContain(b => b == 0);
        after.AsSpan(64 * 512, 16 * 512).ToArray().Should().OnlyContain(b => b == 0, "WRITE_ZEROES with UNMAP still reads back zeroes");
        after.AsSpan(80 * 512, 4096).ToArray().Should().Equal(data.AsSpan(80 * 512, 4096).ToArray());
    }

    [Fact]
    public async Task Unknown_request_type_is_unsupported()
    {
        await using var h = BackendHarness.Start();
        await using var fe = await h.ConnectNegotiatedAsync();
        var result = await fe.SubmitAsync(new BlkRequest { Type = 0x77, Segments = [BlkSegment.Writable(512)] });
        result.Status.Should().Be(VirtioBlk.StatusUnsupported);
        (await fe.SubmitAsync(BlkRequest.Flush())).Status.Should().Be(VirtioBlk.StatusOk, "the queue keeps working");
    }

    [Fact]
    public async Task Out_of_range_requests_fail_without_reaching_the_device()
    {
        await using var h = BackendHarness.Start();
        await using var fe = await h.ConnectNegotiatedAsync();
        const ulong sectors = (ulong)Capacity / 512;
        (await fe.SubmitAsync(BlkRequest.Read(sectors, 512))).Status.Should().Be(VirtioBlk.StatusIoErr);
        (await fe.SubmitAsync(BlkRequest.Read(sectors - 1, 1024))).Status.Should().Be(VirtioBlk.StatusIoErr);
        (await fe.SubmitAsync(BlkRequest.Write(sectors - 1, new byte[1024]))).Status.Should().Be(VirtioBlk.StatusIoErr);
        (await fe.SubmitAsync(BlkRequest.Read(ulong.MaxValue / 512, 512))).Status.Should().Be(VirtioBlk.StatusIoErr);
        (await fe.SubmitAsync(BlkRequest.WriteZeroes(sectors - 4, 8))).Status.Should().Be(VirtioBlk.StatusIoErr);
        (await fe.SubmitAsync(BlkRequest.Read(sectors - 1, 512))).Status.Should().Be(VirtioBlk.StatusOk, "the last sector is in range");
        h.Device.Writes.Should().Be(0);
        h.Device.WriteZeroesCalls.Should().Be(0);
    }

    [Fact]
    public async Task Requests_complete_out_of_order()
    {
        await using var h = BackendHarness.Start();
        await using var fe = await h.ConnectNegotiatedAsync();
        h.Device.Fill(0, ReferenceBackendTests.Pattern(4 * 4096, 4));
        h.Device.HoldCompletions = true;
        var requests = Enumerable.Range(0, 4).Select(i => fe.SubmitAsync(BlkRequest.Read((ulong)i * 8, 4096))).ToArray();
        var held = await h.Device.WaitForHeldAsync(4, BackendHarness.Bound);

        foreach (var i in new[] { 3, 1, 0, 2 })
        {
            held.Single(op => op.Offset == i * 4096L).Release();
            var result = await requests[i];
            result.Status.Should().Be(VirtioBlk.StatusOk);
            result.Data.Should().Equal(ReferenceBackendTests.Pattern(4 * 4096, 4).AsSpan(i * 4096, 4096).ToArray());
            requests.Where((_, j) => j != i && !held.Single(op => op.Offset == j * 4096L).Released).All(t => !t.IsCompleted)
                .Should().BeTrue("requests whose device call is still held have not completed");
        }

        fe.Queues[0].CompletionOrder.Select(e => e.Id).Should().HaveCount(4);
    }

    [Fact]
    public async Task Keeps_thirty_two_requests_in_flight()
    {
        await using var h = BackendHarness.Start();
        await using var fe = await h.ConnectNegotiatedAsync(new FrontEndOptions { QueueSize = 128 });
        h.Device.HoldCompletions = true;
        var writes = Enumerable.Range(0, 32)
            .Select(i => fe.SubmitAsync(BlkRequest.Write((ulong)i * 8, ReferenceBackendTests.Pattern(4096, i), indirect: i % 2 == 0)))
            .ToArray();
        (await h.Device.WaitForHeldAsync(32, BackendHarness.Bound)).Should().HaveCount(32, "the back-end does not serialise requests");
        writes.Should().OnlyContain(t => !t.IsCompleted);
        h.Device.ReleaseAll();
        (await Task.WhenAll(writes)).Should().OnlyContain(r => r.Status == VirtioBlk.StatusOk);
        for (var i = 0; i < 32; i++)
        {
            h.Device.Snapshot(i * 4096L, 4096).Should().Equal(ReferenceBackendTests.Pattern(4096, i));
        }
    }

    [Fact]
    public async Task Serves_two_queues_concurrently()
    {
        await using var h = BackendHarness.Start(options: VhostUserBlockBackendOptions.Default with { QueueCount = 2 });
        await using var fe = await h.ConnectNegotiatedAsync(new FrontEndOptions { QueueCount = 2 });
        h.Device.HoldCompletions = true;
        var q0 = fe.SubmitAsync(BlkRequest.Read(0, 4096), 0);
        var q1 = fe.SubmitAsync(BlkRequest.Read(8, 4096), 1);
        var held = await h.Device.WaitForHeldAsync(2, BackendHarness.Bound);

        held.Single(op => op.Offset == 4096).Release();
        (await q1).Status.Should().Be(VirtioBlk.StatusOk);
        q0.IsCompleted.Should().BeFalse("queue 0's request is still held");
        held.Single(op => op.Offset == 0).Release();
        (await q0).Status.Should().Be(VirtioBlk.StatusOk);

        h.Device.HoldCompletions = false;
        var many = Enumerable.Range(0, 40).Select(i => fe.SubmitAsync(BlkRequest.Write((ulong)i, ReferenceBackendTests.Pattern(512, i)), i % 2)).ToArray();
        (await Task.WhenAll(many)).Should().OnlyContain(r => r.Status == VirtioBlk.StatusOk);
        fe.Queues[0].CompletionOrder.Should().HaveCount(21);
        fe.Queues[1].CompletionOrder.Should().HaveCount(21);
    }

    [Fact]
    public async Task Stops_a_ring_with_GET_VRING_BASE_and_restarts_it()
    {
        await using var h = BackendHarness.Start();
        await using var fe = await h.ConnectNegotiatedAsync();
        for (var i = 0; i < 5; i++)
        {
            (await fe.SubmitAsync(BlkRequest.Write((ulong)i, ReferenceBackendTests.Pattern(512, i)))).Status.Should().Be(VirtioBlk.StatusOk);
        }

        (await fe.GetVringBaseAsync(0)).Should().Be(5, "GET_VRING_BASE returns the next available index");
        await fe.StartQueueAsync(0);
        var read = await fe.SubmitAsync(BlkRequest.Read(0, 5 * 512));
        read.Status.Should().Be(VirtioBlk.StatusOk);
        read.Data.Should().Equal(Enumerable.Range(0, 5).SelectMany(i => ReferenceBackendTests.Pattern(512, i)).ToArray());
        (await fe.GetVringBaseAsync(0)).Should().Be(6);
    }

    [Fact]
    public async Task Raises_events_and_serves_the_next_front_end()
    {
        await using var h = BackendHarness.Start();
        h.Backend.IsConnected.Should().BeFalse();
        await using (var fe = await h.ConnectNegotiatedAsync())
        {
            h.Backend.IsConnected.Should().BeTrue();
            (await fe.SubmitAsync(BlkRequest.Flush())).Status.Should().Be(VirtioBlk.StatusOk);
        }

        (await h.NextDisconnectAsync()).Error.Should().BeNull("the front-end closed the socket");
        await h.AssertServesNewFrontEndAsync();
        await h.AssertServesNewFrontEndAsync(new FrontEndOptions { EventIdx = false, IndirectDescriptors = false, QueueSize = 16 });
    }

    [Fact]
    public async Task Works_without_protocol_features_or_reply_ack()
    {
        // A front-end that accepts no protocol feature: rings start enabled, no acks.
        await using var h = BackendHarness.Start();
        await using var fe = await h.ConnectNegotiatedAsync(new FrontEndOptions { ProtocolFeatures = 0 });
        fe.ReplyAck.Should().BeFalse();
        (await fe.SubmitAsync(BlkRequest.Write(0, new byte[512]))).Status.Should().Be(VirtioBlk.StatusOk);
    }

    [Fact]
    public async Task Stop_disconnects_the_front_end_and_removes_the_socket()
    {
        var h = BackendHarness.Start();
        await using (h)
        {
            await using var fe = await h.ConnectNegotiatedAsync();
            File.Exists(h.SocketPath).Should().BeTrue();
            await h.Backend.StopAsync().WaitAsync(BackendHarness.Bound);
            (await fe.WaitForClosedAsync()).Should().BeTrue();
            File.Exists(h.SocketPath).Should().BeFalse();
            (await h.NextDisconnectAsync()).Should().NotBeNull();
        }
    }

    [Fact]
    public async Task Start_twice_throws()
    {
        await using var h = BackendHarness.Start();
        h.Backend.Invoking(b => b.Start()).Should().Throw<InvalidOperationException>();
    }
}
