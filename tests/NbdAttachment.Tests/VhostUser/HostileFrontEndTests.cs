using System.Buffers.Binary;
using NbdAttachment.Tests.VhostUser.Support;
using NbdAttachment.VhostUser;

namespace NbdAttachment.Tests.VhostUser;

/// <summary>
/// A front-end that breaks the protocol or the virtqueue rules. The back-end must never crash the process, hang,
/// or touch memory outside the regions it mapped. Control-plane violations end the session with a
/// <see cref="VhostUserProtocolException"/> in FrontEndDisconnected; data-plane violations either fail that request
/// with VIRTIO_BLK_S_IOERR or end the session the same way. Either way the back-end then serves a new front-end.
/// Hostile messages are sent without need_reply so the outcome never depends on an ack.
/// </summary>
public sealed class HostileFrontEndTests
{
    private const uint Plain = VhostUserFlags.Version;

    // ------------------------------------------------------------------ malformed messages

    [Theory]
    [InlineData(VhostUserRequest.SetMemTable, 4097u)]
    [InlineData(VhostUserRequest.GetFeatures, 0x10000u)]
    [InlineData(VhostUserRequest.SetVringAddr, uint.MaxValue)]
    public async Task Oversized_header_is_rejected_without_reading_the_payload(uint request, uint size)
    {
        await using var h = BackendHarness.Start();
        await using var fe = await h.ConnectAsync();
        fe.SendMessage(request, Plain, [], declaredSize: size);
        await h.ExpectProtocolErrorAsync(fe);
        await h.AssertServesNewFrontEndAsync();
    }

    [Theory]
    [InlineData(0u)]
    [InlineData(0xdeadbeefu)]
    [InlineData(1000u)]
    public async Task Garbage_request_number_is_rejected(uint request)
    {
        await using var h = BackendHarness.Start();
        await using var fe = await h.ConnectAsync();
        fe.SendMessage(request, Plain, TestFrontEnd.U64(0));
        await h.ExpectProtocolErrorAsync(fe);
        await h.AssertServesNewFrontEndAsync();
    }

    [Fact]
    public async Task Wrong_payload_size_for_the_request_is_rejected()
    {
        await using var h = BackendHarness.Start();
        await using var fe = await h.ConnectAsync();
        await fe.GetFeaturesAsync();
        fe.SendMessage(VhostUserRequest.SetFeatures, Plain, new byte[3]);
        await h.ExpectProtocolErrorAsync(fe);
        await h.AssertServesNewFrontEndAsync();
    }

    [Theory]
    [InlineData(5)]
    [InlineData(12 + 10)]
    public async Task Truncated_message_then_close_ends_the_session_with_an_error(int bytesSent)
    {
        await using var h = BackendHarness.Start();
        var fe = await h.ConnectAsync();
        var message = new byte[12 + 40];
        BinaryPrimitives.WriteUInt32LittleEndian(message, VhostUserRequest.SetVringAddr);
        BinaryPrimitives.WriteUInt32LittleEndian(message.AsSpan(4), Plain);
        BinaryPrimitives.WriteUInt32LittleEndian(message.AsSpan(8), 40);
        fe.SendRaw(message.AsSpan(0, bytesSent));
        await fe.DisposeAsync();

        var ended = await h.NextDisconnectAsync();
        ended.Error.Should().BeAssignableTo<IOException>("a message cut short is not a clean close");
        await h.AssertServesNewFrontEndAsync();
    }

    // ------------------------------------------------------------------ memory table

    public static TheoryData<string> BadMemTables => ["zero regions", "nine regions", "missing fd", "fewer fds than regions", "gpa overflow", "user address overflow", "beyond the file", "zero size", "payload shorter than regions"];

    [Theory]
    [MemberData(nameof(BadMemTables))]
    public async Task Bad_memory_table_is_rejected(string variant)
    {
        await using var h = BackendHarness.Start();
        await using var fe = await h.ConnectAsync(new FrontEndOptions { RegionCount = 2 });
        await fe.HandshakeAsync();
        var m = fe.Memory;
        var r0 = m.Regions[0];
        var r1 = m.Regions[1];
        byte[] payload;
        int[] fds;
        switch (variant)
        {
            case "zero regions":
                (payload, fds) = (TestFrontEnd.MemTable([]), []);
                break;
            case "nine regions":
                var nine = Enumerable.Range(0, 9).Select(i => r0 with { GuestPhysicalAddress = (ulong)i << 32, UserAddress = r0.UserAddress + ((ulong)i << 32), Size = 4096 }).ToArray();
                (payload, fds) = (TestFrontEnd.MemTable(nine), Enumerable.Repeat(m.Fd, 9).ToArray());
                break;
            case "missing fd":
                (payload, fds) = (TestFrontEnd.MemTable([r0]), []);
                break;
            case "fewer fds than regions":
                (payload, fds) = (TestFrontEnd.MemTable([r0, r1]), [m.Fd]);
                break;
            case "gpa overflow":
                (payload, fds) = (TestFrontEnd.MemTable([r0 with { GuestPhysicalAddress = ulong.MaxValue - 4095 }]), [m.Fd]);
                break;
            case "user address overflow":
                (payload, fds) = (TestFrontEnd.MemTable([r0 with { UserAddress = ulong.MaxValue - 4095 }]), [m.Fd]);
                break;
            case "beyond the file":
                // mmap would succeed, and touching the pages past the end of the memfd would raise SIGBUS.
                (payload, fds) = (TestFrontEnd.MemTable([r0, r1 with { Size = r1.Size * 4 }]), [m.Fd, m.Fd]);
                break;
            case "zero size":
                (payload, fds) = (TestFrontEnd.MemTable([r0 with { Size = 0 }]), [m.Fd]);
                break;
            case "payload shorter than regions":
                var two = TestFrontEnd.MemTable([r0, r1]);
                (payload, fds) = (two[..(8 + 32)], [m.Fd, m.Fd]);
                break;
            default:
                throw new ArgumentOutOfRangeException(nameof(variant));
        }

        fe.SendMessage(VhostUserRequest.SetMemTable, Plain, payload, fds);
        ContinueSetUp(fe);
        await h.ExpectProtocolErrorAsync(fe);
        await h.AssertServesNewFrontEndAsync();
    }

    // ------------------------------------------------------------------ vring set-up

    [Theory]
    [InlineData(0u)]
    [InlineData(3u)]
    [InlineData(100u)]
    [InlineData(65536u)]
    [InlineData(32768u + 1)]
    public async Task Bad_vring_num_is_rejected(uint num)
    {
        await using var h = BackendHarness.Start();
        await using var fe = await h.ConnectAsync();
        await fe.HandshakeAsync();
        await fe.SetMemTableAsync();
        fe.SendMessage(VhostUserRequest.SetVringNum, Plain, TestFrontEnd.VringState(0, num));
        ContinueQueueStart(fe, 0);
        await h.ExpectProtocolErrorAsync(fe);
        await h.AssertServesNewFrontEndAsync();
    }

    [Theory]
    [InlineData(VhostUserRequest.SetVringNum)]
    [InlineData(VhostUserRequest.SetVringBase)]
    [InlineData(VhostUserRequest.SetVringEnable)]
    public async Task Queue_index_out_of_range_is_rejected(uint request)
    {
        await using var h = BackendHarness.Start();
        await using var fe = await h.ConnectAsync();
        await fe.HandshakeAsync();
        await fe.SetMemTableAsync();
        fe.SendMessage(request, Plain, TestFrontEnd.VringState(200, request == VhostUserRequest.SetVringEnable ? 1u : 256u));
        await h.ExpectProtocolErrorAsync(fe);
        await h.AssertServesNewFrontEndAsync();
    }

    [Fact]
    public async Task Vring_kick_without_an_fd_is_rejected()
    {
        await using var h = BackendHarness.Start();
        await using var fe = await h.ConnectAsync();
        await fe.HandshakeAsync();
        await fe.SetMemTableAsync();
        var q = fe.Queues[0];
        await fe.RequestAsync(VhostUserRequest.SetVringNum, TestFrontEnd.VringState(0, (uint)q.Size));
        await fe.RequestAsync(VhostUserRequest.SetVringBase, TestFrontEnd.VringState(0, 0));
        await fe.RequestAsync(VhostUserRequest.SetVringAddr, TestFrontEnd.VringAddr(0, fe.Memory.ToUserAddress(q.DescriptorTable), fe.Memory.ToUserAddress(q.UsedRing), fe.Memory.ToUserAddress(q.AvailRing)));
        fe.SendMessage(VhostUserRequest.SetVringKick, Plain, TestFrontEnd.U64(0)); // no fd, and bit 8 (no-fd) not set
        await h.ExpectProtocolErrorAsync(fe);
        await h.AssertServesNewFrontEndAsync();
    }

    public static TheoryData<string> BadVringAddresses => ["descriptors unmapped", "descriptors straddle the end", "used ring unmapped", "avail ring straddles the end", "zero"];

    [Theory]
    [MemberData(nameof(BadVringAddresses))]
    public async Task Vring_address_outside_guest_memory_is_rejected(string variant)
    {
        await using var h = BackendHarness.Start();
        await using var fe = await h.ConnectAsync();
        await fe.HandshakeAsync();
        await fe.SetMemTableAsync();
        var q = fe.Queues[0];
        var m = fe.Memory;
        var region = m.Regions[0];
        var end = region.UserAddress + region.Size;
        var desc = m.ToUserAddress(q.DescriptorTable);
        var used = m.ToUserAddress(q.UsedRing);
        var avail = m.ToUserAddress(q.AvailRing);
        switch (variant)
        {
            case "descriptors unmapped": desc = 0x7777_0000_0000; break;
            case "descriptors straddle the end": desc = end - 64; break;
            case "used ring unmapped": used = end + 0x10_0000; break;
            case "avail ring straddles the end": avail = end - 4; break;
            case "zero": (desc, used, avail) = (0, 0, 0); break;
            default: throw new ArgumentOutOfRangeException(nameof(variant));
        }

        fe.SendMessage(VhostUserRequest.SetVringNum, Plain, TestFrontEnd.VringState(0, (uint)q.Size));
        fe.SendMessage(VhostUserRequest.SetVringBase, Plain, TestFrontEnd.VringState(0, 0));
        fe.SendMessage(VhostUserRequest.SetVringAddr, Plain, TestFrontEnd.VringAddr(0, desc, used, avail));
        TrySend(() => fe.SendMessage(VhostUserRequest.SetVringKick, Plain, TestFrontEnd.U64(0), [q.KickFd]));
        TrySend(() => fe.SendMessage(VhostUserRequest.SetVringCall, Plain, TestFrontEnd.U64(0), [q.CallFd]));
        TrySend(() => fe.SendMessage(VhostUserRequest.SetVringEnable, Plain, TestFrontEnd.VringState(0, 1)));
        TrySend(q.Kick);
        await h.ExpectProtocolErrorAsync(fe);
        await h.AssertServesNewFrontEndAsync();
    }

    // ------------------------------------------------------------------ descriptors

    public static TheoryData<string> BadDescriptorAddresses => ["past the end", "straddles the end", "wraps around", "huge length", "in the unused gap"];

    [Theory]
    [MemberData(nameof(BadDescriptorAddresses))]
    public async Task Descriptor_outside_guest_memory_fails_the_request(string variant)
    {
        await using var h = BackendHarness.Start();
        await using var fe = await h.ConnectNegotiatedAsync(new FrontEndOptions { GuestPhysicalBase = 0x1_0000_0000 });
        var m = fe.Memory;
        var header = m.Allocate(16);
        m.Write(header, BlkRequest.Read(0, 4096).Header());
        var status = m.Allocate(1);
        m.Span(status, 1)[0] = TestFrontEnd.StatusSentinel;
        (ulong Address, uint Length) data = variant switch
        {
            "past the end" => (m.GuestPhysicalEnd + 0x1000, 4096),
            "straddles the end" => (m.GuestPhysicalEnd - 512, 4096),
            "wraps around" => (ulong.MaxValue - 1023, 4096),
            "huge length" => (m.GuestPhysicalBase + 0x10_0000, uint.MaxValue),
            "in the unused gap" => (0x1000, 4096), // below the base
            _ => throw new ArgumentOutOfRangeException(nameof(variant)),
        };
        var (_, used) = fe.SubmitChain(0, [(header, 16, 0), (data.Address, data.Length, VirtqDescFlags.Write), (status, 1, VirtqDescFlags.Write)]);
        var ended = await ExpectIoErrorOrProtocolErrorAsync(h, fe, used, status);
        h.Device.Reads.Should().Be(0, "nothing was read for a request whose buffer cannot be mapped");
        await RecoverAsync(h, fe, ended);
    }

    [Fact]
    public async Task Header_descriptor_outside_guest_memory_fails_the_request()
    {
        await using var h = BackendHarness.Start();
        await using var fe = await h.ConnectNegotiatedAsync();
        var m = fe.Memory;
        var status = m.Allocate(1);
        m.Span(status, 1)[0] = TestFrontEnd.StatusSentinel;
        var (_, used) = fe.SubmitChain(0, [(m.GuestPhysicalEnd + 4096, 16, 0), (status, 1, VirtqDescFlags.Write)]);
        var ended = await ExpectIoErrorOrProtocolErrorAsync(h, fe, used, status);
        await RecoverAsync(h, fe, ended);
    }

    [Theory]
    [InlineData(false)]
    [InlineData(true)]
    public async Task Looping_descriptor_chain_does_not_hang(bool selfLoop)
    {
        await using var h = BackendHarness.Start();
        await using var fe = await h.ConnectNegotiatedAsync(new FrontEndOptions { QueueSize = 64 });
        var q = fe.Queues[0];
        var m = fe.Memory;
        var header = m.Allocate(16);
        m.Write(header, BlkRequest.Write(0, new byte[512]).Header());
        var data = m.Allocate(512);
        var d = q.AllocateDescriptors(3);
        q.WriteDescriptor(d[0], header, 16, VirtqDescFlags.Next, d[1]);
        q.WriteDescriptor(d[1], data, 512, VirtqDescFlags.Next, selfLoop ? d[1] : d[2]);
        q.WriteDescriptor(d[2], data, 512, VirtqDescFlags.Next, d[0]);
        await PublishAndExpectFailureAsync(h, fe, q, d[0], null);
    }

    [Fact]
    public async Task Next_index_beyond_the_queue_fails_the_request()
    {
        await using var h = BackendHarness.Start();
        await using var fe = await h.ConnectNegotiatedAsync(new FrontEndOptions { QueueSize = 16 });
        var q = fe.Queues[0];
        var m = fe.Memory;
        var header = m.Allocate(16);
        m.Write(header, BlkRequest.Flush().Header());
        var d = q.AllocateDescriptors(1);
        q.WriteDescriptor(d[0], header, 16, VirtqDescFlags.Next, 500);
        await PublishAndExpectFailureAsync(h, fe, q, d[0], null);
    }

    [Fact]
    public async Task Head_index_beyond_the_queue_is_not_followed()
    {
        await using var h = BackendHarness.Start();
        await using var fe = await h.ConnectNegotiatedAsync(new FrontEndOptions { QueueSize = 16 });
        var q = fe.Queues[0];
        q.Publish(16 + 3); // a head that is not a descriptor index
        q.Kick();

        // Either the session ends, or the back-end skips it; in both cases it must not crash and a new front-end works.
        await ProbeOrDisconnectAsync(h, fe);
        await h.AssertServesNewFrontEndAsync();
    }

    public static TheoryData<string> BadIndirectTables => ["zero length", "length not a multiple of 16", "beyond guest memory", "nested indirect", "loop inside the table", "next beyond the table"];

    [Theory]
    [MemberData(nameof(BadIndirectTables))]
    public async Task Bad_indirect_table_fails_the_request(string variant)
    {
        await using var h = BackendHarness.Start();
        await using var fe = await h.ConnectNegotiatedAsync();
        VirtioFeatures.Has(fe.AckedFeatures, VirtioFeatures.RingIndirectDesc).Should().BeTrue();
        var q = fe.Queues[0];
        var m = fe.Memory;
        var header = m.Allocate(16);
        m.Write(header, BlkRequest.Read(0, 512).Header());
        var data = m.Allocate(512);
        var status = m.Allocate(1);
        m.Span(status, 1)[0] = TestFrontEnd.StatusSentinel;
        var table = m.Allocate(16 * 4);
        void Entry(int i, ulong address, uint length, ushort flags, ushort next) =>
            SplitVirtqueue.WriteDescriptorAt(m, table + (16UL * (ulong)i), address, length, flags, next);
        Entry(0, header, 16, VirtqDescFlags.Next, 1);
        Entry(1, data, 512, VirtqDescFlags.Next | VirtqDescFlags.Write, 2);
        Entry(2, status, 1, VirtqDescFlags.Write, 0);

        var d = q.AllocateDescriptors(1);
        ushort headFlags = VirtqDescFlags.Indirect;
        (ulong Address, uint Length) ring = (table, 48);
        var checkStatus = true;
        switch (variant)
        {
            case "zero length": ring = (table, 0); checkStatus = false; break;
            case "length not a multiple of 16": ring = (table, 40); checkStatus = false; break;
            case "beyond guest memory": ring = (m.GuestPhysicalEnd - 16, 48); checkStatus = false; break;
            case "nested indirect":
                var inner = m.Allocate(16 * 2);
                SplitVirtqueue.WriteDescriptorAt(m, inner, data, 512, VirtqDescFlags.Write | VirtqDescFlags.Next, 1);
                SplitVirtqueue.WriteDescriptorAt(m, inner + 16, status, 1, VirtqDescFlags.Write, 0);
                Entry(1, inner, 32, VirtqDescFlags.Indirect | VirtqDescFlags.Next, 2);
                checkStatus = false;
                break;
            case "loop inside the table": Entry(1, data, 512, VirtqDescFlags.Next | VirtqDescFlags.Write, 0); checkStatus = false; break;
            case "next beyond the table": Entry(1, data, 512, VirtqDescFlags.Next | VirtqDescFlags.Write, 9); checkStatus = false; break;
            default: throw new ArgumentOutOfRangeException(nameof(variant));
        }

        q.WriteDescriptor(d[0], ring.Address, ring.Length, headFlags, 0);

        await PublishAndExpectFailureAsync(h, fe, q, d[0], checkStatus ? status : null);
    }

    [Theory]
    [InlineData("read-only status")]
    [InlineData("zero-length status")]
    [InlineData("no status descriptor")]
    public async Task Request_without_a_writable_status_byte_is_not_answered_in_readonly_memory(string variant)
    {
        await using var h = BackendHarness.Start();
        await using var fe = await h.ConnectNegotiatedAsync();
        var m = fe.Memory;
        var header = m.Allocate(16);
        m.Write(header, BlkRequest.Write(0, new byte[512]).Header());
        var data = m.Allocate(512);
        var status = m.Allocate(16);
        m.Span(status, 16).Fill(TestFrontEnd.StatusSentinel);
        IReadOnlyList<(ulong, uint, ushort)> chain = variant switch
        {
            "read-only status" => [(header, 16, 0), (data, 512, 0), (status, 1, 0)],
            "zero-length status" => [(header, 16, 0), (data, 512, 0), (status, 0, VirtqDescFlags.Write)],
            _ => [(header, 16, 0), (data, 512, 0)],
        };
        var (_, used) = fe.SubmitChain(0, chain);
        var ended = await ExpectIoErrorOrProtocolErrorAsync(h, fe, used, statusAddress: null);
        m.Span(status, 16).ToArray().Should().OnlyContain(b => b == TestFrontEnd.StatusSentinel, "the device never writes into a device-readable or zero-length buffer");
        h.Device.Writes.Should().Be(0, "a request that cannot report its status is not executed");
        await RecoverAsync(h, fe, ended);
    }

    [Fact]
    public async Task Header_too_short_fails_the_request()
    {
        await using var h = BackendHarness.Start();
        await using var fe = await h.ConnectNegotiatedAsync();
        var m = fe.Memory;
        var header = m.Allocate(16);
        m.Write(header, BlkRequest.Flush().Header());
        var status = m.Allocate(1);
        m.Span(status, 1)[0] = TestFrontEnd.StatusSentinel;
        var (_, used) = fe.SubmitChain(0, [(header, 8, 0), (status, 1, VirtqDescFlags.Write)]);
        var ended = await ExpectIoErrorOrProtocolErrorAsync(h, fe, used, status);
        h.Device.Flushes.Should().Be(0);
        await RecoverAsync(h, fe, ended);
    }

    [Theory]
    [InlineData(1)]
    [InlineData(1000)]
    public async Task Avail_index_jumping_past_the_queue_size_ends_the_session(int beyond)
    {
        await using var h = BackendHarness.Start();
        await using var fe = await h.ConnectNegotiatedAsync(new FrontEndOptions { QueueSize = 64 });
        var q = fe.Queues[0];
        q.SetAvailIndex((ushort)(q.AvailIndex + q.Size + beyond));
        q.Kick();
        await h.ExpectProtocolErrorAsync(fe);
        h.Device.Reads.Should().Be(0);
        h.Device.Writes.Should().Be(0);
        await h.AssertServesNewFrontEndAsync();
    }

    // ------------------------------------------------------------------ disconnects

    [Fact]
    public async Task Front_end_disconnecting_with_requests_in_flight_does_not_break_the_back_end()
    {
        await using var h = BackendHarness.Start();
        var fe = await h.ConnectNegotiatedAsync();
        h.Device.HoldCompletions = true;
        var requests = Enumerable.Range(0, 8).Select(i => fe.SubmitAsync(BlkRequest.Write((ulong)i * 8, new byte[4096]))).ToArray();
        await h.Device.WaitForHeldAsync(8, BackendHarness.Bound);
        await fe.DisposeAsync(); // closes the socket and unmaps our side of guest memory
        h.Device.ReleaseAll();

        var ended = await h.NextDisconnectAsync();
        (ended.Error is null or IOException).Should().BeTrue($"the session ends cleanly or with an I/O error, not with {ended.Error}");
        foreach (var r in requests)
        {
            await r.Invoking(t => t).Should().ThrowAsync<ObjectDisposedException>();
        }

        await h.AssertServesNewFrontEndAsync();
    }

    [Fact]
    public async Task Front_end_disconnecting_mid_negotiation_does_not_break_the_back_end()
    {
        await using var h = BackendHarness.Start();
        await using (var fe = await h.ConnectAsync())
        {
            await fe.HandshakeAsync();
            await fe.SetMemTableAsync();
            fe.SendMessage(VhostUserRequest.SetVringNum, Plain, TestFrontEnd.VringState(0, 256));
        }

        (await h.NextDisconnectAsync()).Error.Should().BeNull();
        await h.AssertServesNewFrontEndAsync();
    }

    [Fact]
    public async Task A_second_front_end_while_one_is_connected_does_not_disturb_the_first()
    {
        await using var h = BackendHarness.Start();
        await using var first = await h.ConnectNegotiatedAsync();
        await using (var second = await TestFrontEnd.ConnectAsync(h.SocketPath))
        {
            // One front-end at a time: the second is either refused (closed) or left waiting; it never takes over.
            try
            {
                second.SendMessage(VhostUserRequest.GetFeatures, Plain, []);
            }
            catch (IOException)
            {
            }
        }

        (await first.SubmitAsync(BlkRequest.Flush())).Status.Should().Be(VirtioBlk.StatusOk);
    }

    // ------------------------------------------------------------------ helpers

    /// <summary>
    /// Waits for the hostile request's used entry or the end of the session. A used entry must carry IOERR when the
    /// test gave a valid status buffer; an ended session must carry a protocol error. Returns whether the session ended.
    /// </summary>
    /// <summary>Publishes a hand-written chain at <paramref name="head"/>, kicks, and expects IOERR or a protocol-error disconnect; then <see cref="RecoverAsync"/>.</summary>
    private static async Task PublishAndExpectFailureAsync(BackendHarness h, TestFrontEnd fe, SplitVirtqueue q, ushort head, ulong? statusAddress)
    {
        var used = q.Expect(head);
        q.Publish(head);
        q.Kick();
        var ended = await ExpectIoErrorOrProtocolErrorAsync(h, fe, used, statusAddress);
        await RecoverAsync(h, fe, ended);
    }

    /// <summary>The connection still works (or has ended), and a new front-end is served.</summary>
    private static async Task RecoverAsync(BackendHarness h, TestFrontEnd fe, bool ended)
    {
        await ProbeOrDisconnectAsync(h, fe, ended);
        await h.AssertServesNewFrontEndAsync();
    }

    private static async Task<bool> ExpectIoErrorOrProtocolErrorAsync(BackendHarness h, TestFrontEnd fe, Task<UsedElement> used, ulong? statusAddress)
    {
        using var cancel = new CancellationTokenSource();
        var ended = h.NextDisconnectAsync(cancel.Token);
        var first = await Task.WhenAny(used, ended).WaitAsync(BackendHarness.Bound * 2);
        if (first == used)
        {
            await cancel.CancelAsync();
            await ended.ContinueWith(_ => { }, TaskScheduler.Default);
            if (statusAddress is { } s)
            {
                fe.Memory.Span(s, 1)[0].Should().Be(VirtioBlk.StatusIoErr, "the device reports a request it cannot map as an I/O error");
            }

            return false;
        }

        (await ended).Error.Should().BeOfType<VhostUserProtocolException>("a broken virtqueue ends the session with a protocol error");
        return true;
    }

    /// <summary>
    /// After a data-plane violation (unless the session already ended): the queue keeps working, or the session ends
    /// with a protocol error. Then the front-end goes away and its session end is consumed.
    /// </summary>
    private static async Task ProbeOrDisconnectAsync(BackendHarness h, TestFrontEnd fe, bool alreadyEnded = false)
    {
        if (alreadyEnded)
        {
            await fe.DisposeAsync();
            return;
        }

        using var cancel = new CancellationTokenSource();
        var ended = h.NextDisconnectAsync(cancel.Token);
        var probe = fe.SubmitAsync(BlkRequest.Flush());
        var first = await Task.WhenAny(probe, ended).WaitAsync(BackendHarness.Bound * 2);
        if (first == probe)
        {
            await cancel.CancelAsync();
            await ended.ContinueWith(_ => { }, TaskScheduler.Default);
            (await probe).Status.Should().Be(VirtioBlk.StatusOk, "the queue survives a bad request");
            await fe.DisposeAsync();
            (await h.NextDisconnectAsync()).Error.Should().BeNull();
            return;
        }

        (await ended).Error.Should().BeOfType<VhostUserProtocolException>();
        await fe.DisposeAsync();
    }

    /// <summary>The rest of the set-up after a bad SET_MEM_TABLE, so that a back-end that checks late still sees it.</summary>
    private static void ContinueSetUp(TestFrontEnd fe) => ContinueQueueStart(fe, 0, includeNum: true);

    private static void ContinueQueueStart(TestFrontEnd fe, int index, bool includeNum = false)
    {
        var q = fe.Queues[index];
        var m = fe.Memory;
        var i = (uint)index;
        if (includeNum)
        {
            TrySend(() => fe.SendMessage(VhostUserRequest.SetVringNum, Plain, TestFrontEnd.VringState(i, (uint)q.Size)));
        }

        TrySend(() => fe.SendMessage(VhostUserRequest.SetVringBase, Plain, TestFrontEnd.VringState(i, 0)));
        TrySend(() => fe.SendMessage(VhostUserRequest.SetVringAddr, Plain, TestFrontEnd.VringAddr(i, m.ToUserAddress(q.DescriptorTable), m.ToUserAddress(q.UsedRing), m.ToUserAddress(q.AvailRing))));
        TrySend(() => fe.SendMessage(VhostUserRequest.SetVringKick, Plain, TestFrontEnd.U64(i), [q.KickFd]));
        TrySend(() => fe.SendMessage(VhostUserRequest.SetVringCall, Plain, TestFrontEnd.U64(i), [q.CallFd]));
        TrySend(() => fe.SendMessage(VhostUserRequest.SetVringEnable, Plain, TestFrontEnd.VringState(i, 1)));
        TrySend(q.Kick);
    }

    /// <summary>Sends, ignoring a connection the back-end already dropped.</summary>
    private static void TrySend(Action send)
    {
        try
        {
            send();
        }
        catch (IOException)
        {
        }
    }
}
