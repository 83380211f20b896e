using System.Text;
using NbdAttachment.Tests.VhostUser.Support;
using Xunit.Abstractions;

namespace NbdAttachment.Tests.VhostUser;

/// <summary>
/// Proves <see cref="TestFrontEnd"/> against the reference back-end, qemu-storage-daemon's vhost-user-blk export, so
/// that failures of the back-end tests point at our back-end and not at the test front-end. Skipped without the binary.
/// </summary>
public sealed class ReferenceBackendTests(ITestOutputHelper output)
{
    private const long ImageSize = 64L << 20;

    [SkippableFact]
    public async Task Negotiates_and_reads_the_config()
    {
        await using var daemon = await StartAsync();
        await using var fe = await daemon.ConnectAsync();
        await fe.NegotiateAsync();
        output.WriteLine($"features 0x{fe.OfferedFeatures:x} acked 0x{fe.AckedFeatures:x} protocol 0x{fe.OfferedProtocolFeatures:x} acked 0x{fe.AckedProtocolFeatures:x} queues {fe.QueueNum}");
        output.WriteLine(fe.Config!.ToString());

        VirtioFeatures.Has(fe.OfferedFeatures, VirtioFeatures.Version1).Should().BeTrue();
        VirtioFeatures.Has(fe.OfferedFeatures, VirtioFeatures.ProtocolFeatures).Should().BeTrue();
        VirtioFeatures.Has(fe.OfferedFeatures, VirtioFeatures.RingIndirectDesc).Should().BeTrue();
        VirtioFeatures.Has(fe.OfferedFeatures, VirtioFeatures.RingEventIdx).Should().BeTrue();
        VirtioFeatures.Has(fe.OfferedFeatures, VirtioFeatures.BlkFlush).Should().BeTrue();
        VirtioFeatures.Has(fe.OfferedFeatures, VirtioFeatures.BlkRo).Should().BeFalse();
        fe.ReplyAck.Should().BeTrue();
        fe.Config!.Capacity.Should().Be((ulong)(ImageSize / 512));
        fe.Config.BlkSize.Should().Be(512);
        fe.Config.NumQueues.Should().Be(1);
        fe.QueueNum.Should().BeGreaterThanOrEqualTo(1);
        daemon.IsRunning.Should().BeTrue();
    }

    [SkippableFact]
    public async Task Read_only_export_offers_RO_and_fails_writes()
    {
        await using var daemon = await StartAsync(writable: false);
        await using var fe = await daemon.ConnectAsync();
        await fe.NegotiateAsync();
        VirtioFeatures.Has(fe.OfferedFeatures, VirtioFeatures.BlkRo).Should().BeTrue();
        var result = await fe.SubmitAsync(BlkRequest.Write(0, new byte[512]));
        result.Status.Should().Be(VirtioBlk.StatusIoErr);
    }

    [SkippableTheory]
    [InlineData(true, false, 1)]
    [InlineData(false, false, 1)]
    [InlineData(true, true, 1)]
    [InlineData(false, true, 2)]
    public async Task Write_then_read_round_trips(bool eventIdx, bool indirect, int regions)
    {
        await using var daemon = await StartAsync();
        await using var fe = await daemon.ConnectAsync(new FrontEndOptions { EventIdx = eventIdx, RegionCount = regions });
        await fe.NegotiateAsync();
        VirtioFeatures.Has(fe.AckedFeatures, VirtioFeatures.RingEventIdx).Should().Be(eventIdx);

        var data = Pattern(64 * 1024, 7);
        var write = await fe.SubmitAsync(BlkRequest.Write(2048, data, segments: 4, indirect: indirect));
        write.Status.Should().Be(VirtioBlk.StatusOk);
        daemon.ReadImage(2048 * 512, data.Length).Should().Equal(data);

        var read = await fe.SubmitAsync(BlkRequest.Read(2048, data.Length, segments: 3, indirect: indirect));
        read.Status.Should().Be(VirtioBlk.StatusOk);
        read.Data.Should().Equal(data);
        read.UsedLength.Should().Be((uint)data.Length + 1, "the device wrote the data and the status byte");

        var flush = await fe.SubmitAsync(BlkRequest.Flush());
        flush.Status.Should().Be(VirtioBlk.StatusOk);
    }

    [SkippableFact]
    public async Task Reads_what_is_in_the_image()
    {
        await using var daemon = await StartAsync();
        var data = Pattern(4096, 3);
        daemon.WriteImage(ImageSize - 4096, data);
        await using var fe = await daemon.ConnectAsync();
        await fe.NegotiateAsync();
        var read = await fe.SubmitAsync(BlkRequest.Read((ulong)(ImageSize - 4096) / 512, 4096));
        read.Status.Should().Be(VirtioBlk.StatusOk);
        read.Data.Should().Equal(data);
    }

    [SkippableFact]
    public async Task Out_of_range_and_unknown_requests_fail()
    {
        await using var daemon = await StartAsync();
        await using var fe = await daemon.ConnectAsync();
        await fe.NegotiateAsync();
        var beyond = await fe.SubmitAsync(BlkRequest.Read((ulong)ImageSize / 512, 512));
        beyond.Status.Should().Be(VirtioBlk.StatusIoErr);
        var straddle = await fe.SubmitAsync(BlkRequest.Read(((ulong)ImageSize / 512) - 1, 1024));
        straddle.Status.Should().Be(VirtioBlk.StatusIoErr);
        var unknown = await fe.SubmitAsync(new BlkRequest { Type = 0x77, Segments = [BlkSegment.Writable(512)] });
        unknown.Status.Should().Be(VirtioBlk.StatusUnsupported);
    }

    [SkippableFact]
    public async Task Get_id_returns_the_serial()
    {
        await using var daemon = await StartAsync();
        await using var fe = await daemon.ConnectAsync();
        await fe.NegotiateAsync();
        var id = await fe.SubmitAsync(BlkRequest.GetId());
        id.Status.Should().Be(VirtioBlk.StatusOk);
        var text = Encoding.ASCII.GetString(id.Data).TrimEnd('\0');
        output.WriteLine($"GET_ID: '{text}' used length {id.UsedLength}");
        text.Should().NotBeEmpty();
    }

    [SkippableFact]
    public async Task Discard_and_write_zeroes_zero_the_range()
    {
        await using var daemon = await StartAsync();
        await using var fe = await daemon.ConnectAsync();
        await fe.NegotiateAsync();
        VirtioFeatures.Has(fe.OfferedFeatures, VirtioFeatures.BlkDiscard).Should().BeTrue();
        VirtioFeatures.Has(fe.OfferedFeatures, VirtioFeatures.BlkWriteZeroes).Should().BeTrue();
        var data = Pattern(1 << 20, 5);
        (await fe.SubmitAsync(BlkRequest.Write(0, data, segments: 8))).Status.Should().Be(VirtioBlk.StatusOk);

        var zeroes = await fe.SubmitAsync(BlkRequest.WriteZeroes(8, 8));
        zeroes.Status.Should().Be(VirtioBlk.StatusOk);
        var unmap = await fe.SubmitAsync(BlkRequest.WriteZeroes(64, 64, unmap: true));
        unmap.Status.Should().Be(VirtioBlk.StatusOk);
        var discard = await fe.SubmitAsync(BlkRequest.Discard(1024, 1024));
        discard.Status.Should().Be(VirtioBlk.StatusOk);

        var read = await fe.SubmitAsync(BlkRequest.Read(0, 1 << 20, segments: 8));
        read.Status.Should().Be(VirtioBlk.StatusOk);
        read.Data.AsSpan(0, 4096).ToArray().Should().Equal(data.AsSpan(0, 4096).ToArray());
        read.Data.AsSpan(4096, 4096).ToArray().Should().OnlyContain(b => b == 0);
        read.Data.AsSpan(8192, 64 * 512 - 8192).ToArray().Should().Equal(data.AsSpan(8192, 64 * 512 - 8192).ToArray());
        read.Data.AsSpan(64 * 512, 64 * 512).ToArray().Should().OnlyContain(b => b == 0);
        read.Data.AsSpan(128 * 512, 896 * 512).ToArray().Should().Equal(data.AsSpan(128 * 512, 896 * 512).ToArray());
    }

    [SkippableFact]
    public async Task Thirty_two_requests_in_flight_on_two_queues()
    {
        await using var daemon = await StartAsync(queues: 2);
        await using var fe = await daemon.ConnectAsync(new FrontEndOptions { QueueCount = 2, QueueSize = 128 });
        await fe.NegotiateAsync();
        fe.Config!.NumQueues.Should().Be(2);

        var writes = Enumerable.Range(0, 32)
            .Select(i => fe.SubmitAsync(BlkRequest.Write((ulong)i * 16, Pattern(8192, i), segments: 2), i % 2))
            .ToArray();
        (await Task.WhenAll(writes)).Should().OnlyContain(r => r.Status == VirtioBlk.StatusOk);
        var reads = Enumerable.Range(0, 32)
            .Select(i => fe.SubmitAsync(BlkRequest.Read((ulong)i * 16, 8192, indirect: i % 3 == 0), i % 2))
            .ToArray();
        var results = await Task.WhenAll(reads);
        for (var i = 0; i < 32; i++)
        {
            results[i].Status.Should().Be(VirtioBlk.StatusOk);
            results[i].Data.Should().Equal(Pattern(8192, i));
        }

        fe.Queues.Should().OnlyContain(q => q.Unexpected.IsEmpty);
    }

    [SkippableFact]
    public async Task Stops_a_ring_with_GET_VRING_BASE_and_restarts_it()
    {
        await using var daemon = await StartAsync();
        await using var fe = await daemon.ConnectAsync();
        await fe.NegotiateAsync();
        for (var i = 0; i < 5; i++)
        {
            (await fe.SubmitAsync(BlkRequest.Write((ulong)i, Pattern(512, i)))).Status.Should().Be(VirtioBlk.StatusOk);
        }

        var based = await fe.GetVringBaseAsync(0);
        based.Should().Be(5);

        await fe.StartQueueAsync(0);
        var read = await fe.SubmitAsync(BlkRequest.Read(0, 5 * 512));
        read.Status.Should().Be(VirtioBlk.StatusOk);
        read.Data.Should().Equal(Enumerable.Range(0, 5).SelectMany(i => Pattern(512, i)).ToArray());
        (await fe.GetVringBaseAsync(0)).Should().Be(6);
    }

    [SkippableFact]
    public async Task Rejects_a_vring_address_outside_guest_memory()
    {
        await using var daemon = await StartAsync();
        await using var fe = await daemon.ConnectAsync();
        await fe.HandshakeAsync();
        await fe.SetMemTableAsync();
        await fe.RequestAsync(VhostUserRequest.SetVringNum, TestFrontEnd.VringState(0, 256));
        await fe.RequestAsync(VhostUserRequest.SetVringBase, TestFrontEnd.VringState(0, 0));
        var q = fe.Queues[0];
        fe.SendMessage(
            VhostUserRequest.SetVringAddr,
            VhostUserFlags.Version | VhostUserFlags.NeedReply,
            TestFrontEnd.VringAddr(0, 0xdead_0000_0000, fe.Memory.ToUserAddress(q.UsedRing), fe.Memory.ToUserAddress(q.AvailRing)));
        string outcome;
        try
        {
            var reply = await fe.ReceiveAsync();
            outcome = $"reply to {reply.Request}: {Convert.ToHexString(reply.Payload)}";
        }
        catch (Exception ex) when (ex is EndOfStreamException or IOException)
        {
            outcome = "connection closed";
        }

        output.WriteLine(outcome);
        if (outcome != "connection closed")
        {
            // QEMU 7.2's libvhost-user acks with 0 and then drops the connection (vu_panic): probe.
            bool closed;
            try
            {
                fe.SendMessage(VhostUserRequest.GetFeatures, VhostUserFlags.Version, []);
                closed = await fe.WaitForClosedAsync();
            }
            catch (IOException)
            {
                closed = true;
            }

            output.WriteLine(closed ? "then closed the connection" : "still open");
            closed.Should().BeTrue("the reference back-end drops a front-end whose ring is outside guest memory");
        }

        daemon.IsRunning.Should().BeTrue();
    }

    public static TheoryData<string> HostileCases =>
    [
        "descriptor outside memory", "looping chain", "nested indirect", "indirect bad length", "avail idx jump",
        "oversized header", "mem table beyond file", "header too short", "read-only status",
    ];

    /// <summary>
    /// The hostile primitives used against our back-end, run against the reference: the daemon survives, the outcome
    /// (used entry or closed connection) is logged, and a new front-end is served afterwards.
    /// </summary>
    [SkippableTheory]
    [MemberData(nameof(HostileCases))]
    public async Task Reference_survives_hostile_front_end(string variant)
    {
        await using var daemon = await StartAsync();
        await using (var fe = await daemon.ConnectAsync(new FrontEndOptions { QueueSize = 64, Timeout = TimeSpan.FromSeconds(3) }))
        {
            Task<UsedElement>? used = null;
            ulong status = 0;
            if (variant == "oversized header")
            {
                await fe.HandshakeAsync();
                fe.SendMessage(VhostUserRequest.SetMemTable, VhostUserFlags.Version, [], declaredSize: 0x10000);
            }
            else if (variant == "mem table beyond file")
            {
                await fe.HandshakeAsync();
                var r = fe.Memory.Regions[0];
                fe.SendMessage(VhostUserRequest.SetMemTable, VhostUserFlags.Version, TestFrontEnd.MemTable([r with { Size = r.Size * 4 }]), [fe.Memory.Fd]);
            }
            else
            {
                await fe.NegotiateAsync();
                var m = fe.Memory;
                var q = fe.Queues[0];
                var header = m.Allocate(16);
                m.Write(header, BlkRequest.Read(0, 512).Header());
                var data = m.Allocate(512);
                status = m.Allocate(16);
                m.Span(status, 16).Fill(TestFrontEnd.StatusSentinel);
                switch (variant)
                {
                    case "descriptor outside memory":
                        (_, used) = fe.SubmitChain(0, [(header, 16, 0), (m.GuestPhysicalEnd + 4096, 512, VirtqDescFlags.Write), (status, 1, VirtqDescFlags.Write)]);
                        break;
                    case "header too short":
                        (_, used) = fe.SubmitChain(0, [(header, 8, 0), (status, 1, VirtqDescFlags.Write)]);
                        break;
                    case "read-only status":
                        (_, used) = fe.SubmitChain(0, [(header, 16, 0), (data, 512, 0), (status, 1, 0)]);
                        break;
                    case "looping chain":
                        var d = q.AllocateDescriptors(2);
                        q.WriteDescriptor(d[0], header, 16, VirtqDescFlags.Next, d[1]);
                        q.WriteDescriptor(d[1], data, 512, VirtqDescFlags.Next | VirtqDescFlags.Write, d[0]);
                        used = q.Expect(d[0]);
                        q.Publish(d[0]);
                        q.Kick();
                        break;
                    case "nested indirect":
                        var inner = m.Allocate(16);
                        SplitVirtqueue.WriteDescriptorAt(m, inner, status, 1, VirtqDescFlags.Write, 0);
                        (_, used) = fe.SubmitChain(0, [(header, 16, 0), (inner, 16, VirtqDescFlags.Indirect)], indirect: true);
                        break;
                    case "indirect bad length":
                        var one = q.AllocateDescriptors(1);
                        q.WriteDescriptor(one[0], data, 40, VirtqDescFlags.Indirect, 0);
                        used = q.Expect(one[0]);
                        q.Publish(one[0]);
                        q.Kick();
                        break;
                    case "avail idx jump":
                        q.SetAvailIndex((ushort)(q.AvailIndex + q.Size + 1));
                        q.Kick();
                        break;
                    default:
                        throw new ArgumentOutOfRangeException(nameof(variant));
                }
            }

            var closed = fe.WaitForClosedAsync();
            var first = used is null ? closed : await Task.WhenAny(used, closed);
            if (first == used)
            {
                output.WriteLine($"{variant}: used entry len {used!.Result.Length}, status byte 0x{fe.Memory.Span(status, 1)[0]:x2}");
            }
            else
            {
                output.WriteLine($"{variant}: {(await closed ? "connection closed" : "no reaction within the bound")}");
            }
        }

        daemon.IsRunning.Should().BeTrue();
        await using var next = await daemon.ConnectAsync();
        await next.NegotiateAsync();
        (await next.SubmitAsync(BlkRequest.Read(0, 512))).Status.Should().Be(VirtioBlk.StatusOk);
    }

    private async Task<QemuStorageDaemon> StartAsync(int queues = 1, bool writable = true)
    {
        Skip.IfNot(QemuStorageDaemon.IsAvailable, "qemu-storage-daemon is not installed");
        Skip.IfNot(OperatingSystem.IsLinux(), "vhost-user needs Linux");
        return await QemuStorageDaemon.StartAsync(ImageSize, queues, writable);
    }

    internal static byte[] Pattern(int length, int seed)
    {
        var bytes = new byte[length];
        for (var i = 0; i < length; i++)
        {
            bytes[i] = (byte)((i * 31) + (seed * 17) + (i >> 9));
        }

        return bytes;
    }
}
