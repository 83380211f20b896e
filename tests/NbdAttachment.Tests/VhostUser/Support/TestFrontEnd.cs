using System.Buffers.Binary;
using System.Net.Sockets;

namespace NbdAttachment.Tests.VhostUser.Support;

/// <summary>Settings of a <see cref="TestFrontEnd"/>.</summary>
public sealed record FrontEndOptions
{
    public int QueueCount { get; init; } = 1;

    /// <summary>Descriptors per queue: a power of two up to 32768.</summary>
    public int QueueSize { get; init; } = 256;

    /// <summary>Accept VIRTIO_RING_F_EVENT_IDX when offered.</summary>
    public bool EventIdx { get; init; } = true;

    /// <summary>Accept VIRTIO_RING_F_INDIRECT_DESC when offered.</summary>
    public bool IndirectDescriptors { get; init; } = true;

    public long MemorySize { get; init; } = 16L << 20;

    /// <summary>Regions the memory is announced as (1 to 8), all backed by the same memfd at increasing mmap offsets.</summary>
    public int RegionCount { get; init; } = 1;

    public ulong GuestPhysicalBase { get; init; }

    /// <summary>Fake user addresses announced for the regions (not this process's mapping), or null to announce the real mapping address.</summary>
    public ulong? FakeUserAddressBase { get; init; } = 0x1000_0000_0000UL;

    /// <summary>Protocol features to accept when offered.</summary>
    public ulong ProtocolFeatures { get; init; } =
        VhostUserProtocolFeatures.Bit(VhostUserProtocolFeatures.Mq) |
        VhostUserProtocolFeatures.Bit(VhostUserProtocolFeatures.ReplyAck) |
        VhostUserProtocolFeatures.Bit(VhostUserProtocolFeatures.Config);

    /// <summary>Bound on every wait (reply, completion, disconnect).</summary>
    public TimeSpan Timeout { get; init; } = TimeSpan.FromSeconds(10);
}

/// <summary>A raw vhost-user message.</summary>
public sealed record VhostUserMessage(uint Request, uint Flags, byte[] Payload);

/// <summary>The back-end answered a need_reply message with a non-zero u64.</summary>
public sealed class VhostUserNackException(uint request, ulong value)
    : IOException($"The back-end rejected request {request} (ack value {value}).")
{
    public uint Request { get; } = request;

    public ulong Value { get; } = value;
}

/// <summary>
/// A managed vhost-user front-end (the part QEMU plays) for tests: negotiates, shares guest memory (a memfd) and
/// eventfds, lays out split virtqueues, submits virtio-blk requests and reaps completions on a background thread
/// that waits on the call eventfds. Every wait is bounded by <see cref="FrontEndOptions.Timeout"/>. The step methods
/// and the raw send methods let hostile tests deviate from the protocol anywhere.
/// </summary>
public sealed class TestFrontEnd : IAsyncDisposable
{
    /// <summary>The feature bits this front-end understands (others are never acknowledged).</summary>
    public const ulong KnownFeatures =
        (1UL << VirtioFeatures.BlkSizeMax) | (1UL << VirtioFeatures.BlkSegMax) | (1UL << VirtioFeatures.BlkGeometry) |
        (1UL << VirtioFeatures.BlkRo) | (1UL << VirtioFeatures.BlkBlkSize) | (1UL << VirtioFeatures.BlkFlush) |
        (1UL << VirtioFeatures.BlkTopology) | (1UL << VirtioFeatures.BlkConfigWce) | (1UL << VirtioFeatures.BlkMq) |
        (1UL << VirtioFeatures.BlkDiscard) | (1UL << VirtioFeatures.BlkWriteZeroes) | (1UL << VirtioFeatures.RingIndirectDesc) |
        (1UL << VirtioFeatures.RingEventIdx) | (1UL << VirtioFeatures.ProtocolFeatures) | (1UL << VirtioFeatures.Version1);

    public const byte StatusSentinel = 0xEE;

    private readonly Socket _socket;
    private readonly NetworkStream _stream;
    private readonly SemaphoreSlim _sendLock = new(1, 1);
    private readonly int _stopFd;
    private readonly Thread _reaper;
    private readonly List<SplitVirtqueue> _queues = [];
    private volatile bool _closed;
    private bool _reaperStopped;

    private TestFrontEnd(Socket socket, FrontEndOptions options)
    {
        _socket = socket;
        _stream = new NetworkStream(socket, ownsSocket: false);
        Options = options;
        Memory = new GuestMemory(options.MemorySize, options.RegionCount, options.GuestPhysicalBase, options.FakeUserAddressBase);
        for (var i = 0; i < options.QueueCount; i++)
        {
            _queues.Add(new SplitVirtqueue(Memory, i, options.QueueSize));
        }

        _stopFd = Native.EventFd();
        _reaper = new Thread(ReapLoop) { IsBackground = true, Name = "vhost-user test front-end reaper" };
        _reaper.Start();
    }

    public FrontEndOptions Options { get; }

    public TimeSpan Timeout => Options.Timeout;

    public GuestMemory Memory { get; }

    public IReadOnlyList<SplitVirtqueue> Queues => _queues;

    /// <summary>The connected socket's file descriptor.</summary>
    public int SocketFd => (int)_socket.SafeHandle.DangerousGetHandle();

    public ulong OfferedFeatures { get; private set; }

    public ulong AckedFeatures { get; private set; }

    public ulong OfferedProtocolFeatures { get; private set; }

    public ulong AckedProtocolFeatures { get; private set; }

    public bool ProtocolFeaturesNegotiated { get; private set; }

    public ulong? QueueNum { get; private set; }

    public BlkConfig? Config { get; private set; }

    /// <summary>Messages in the order sent (request numbers), for diagnostics.</summary>
    public List<uint> Sent { get; } = [];

    public bool ReplyAck => ProtocolFeaturesNegotiated && (AckedProtocolFeatures & VhostUserProtocolFeatures.Bit(VhostUserProtocolFeatures.ReplyAck)) != 0;

    public static async Task<TestFrontEnd> ConnectAsync(string socketPath, FrontEndOptions? options = null)
    {
        options ??= new FrontEndOptions();
        var socket = new Socket(AddressFamily.Unix, SocketType.Stream, ProtocolType.Unspecified);
        try
        {
            using var cts = new CancellationTokenSource(options.Timeout);
            await socket.ConnectAsync(new UnixDomainSocketEndPoint(socketPath), cts.Token);
            return new TestFrontEnd(socket, options);
        }
        catch
        {
            socket.Dispose();
            throw;
        }
    }

    // ---------------------------------------------------------------- raw messages

    /// <summary>Sends one message: header (request, flags, size = payload length unless overridden), payload, fds.</summary>
    public void SendMessage(uint request, uint flags, ReadOnlySpan<byte> payload, ReadOnlySpan<int> fds = default, uint? declaredSize = null)
    {
        var bytes = new byte[12 + payload.Length];
        BinaryPrimitives.WriteUInt32LittleEndian(bytes, request);
        BinaryPrimitives.WriteUInt32LittleEndian(bytes.AsSpan(4), flags);
        BinaryPrimitives.WriteUInt32LittleEndian(bytes.AsSpan(8), declaredSize ?? (uint)payload.Length);
        payload.CopyTo(bytes.AsSpan(12));
        lock (Sent)
        {
            Sent.Add(request);
        }

        SendRaw(bytes, fds);
    }

    /// <summary>Sends arbitrary bytes (with fds on the first byte).</summary>
    public void SendRaw(ReadOnlySpan<byte> bytes, ReadOnlySpan<int> fds = default)
    {
        ObjectDisposedException.ThrowIf(_closed, this);
        Native.SendWithFds(SocketFd, bytes, fds, (int)Timeout.TotalMilliseconds);
    }

    /// <summary>Receives one message from the back-end.</summary>
    public async Task<VhostUserMessage> ReceiveAsync()
    {
        using var cts = new CancellationTokenSource(Timeout);
        var header = new byte[12];
        try
        {
            await _stream.ReadExactlyAsync(header, cts.Token);
            var size = BinaryPrimitives.ReadUInt32LittleEndian(header.AsSpan(8));
            if (size > 4096)
            {
                throw new InvalidDataException($"The back-end sent a {size}-byte payload.");
            }

            var payload = new byte[size];
            await _stream.ReadExactlyAsync(payload, cts.Token);
            return new VhostUserMessage(BinaryPrimitives.ReadUInt32LittleEndian(header), BinaryPrimitives.ReadUInt32LittleEndian(header.AsSpan(4)), payload);
        }
        catch (OperationCanceledException) when (cts.IsCancellationRequested)
        {
            throw new TimeoutException($"No message from the back-end within {Timeout}.");
        }
    }

    /// <summary>Sends a request that always has a reply (GET_*), returns the reply payload.</summary>
    public async Task<byte[]> CallAsync(uint request, ReadOnlyMemory<byte> payload = default)
    {
        await _sendLock.WaitAsync();
        try
        {
            SendMessage(request, VhostUserFlags.Version, payload.Span);
            var reply = await ReceiveAsync();
            if (reply.Request != request || (reply.Flags & VhostUserFlags.Reply) == 0 || (reply.Flags & 0x3) != VhostUserFlags.Version)
            {
                throw new InvalidDataException($"Expected a reply to {request}, got request {reply.Request} flags 0x{reply.Flags:x}.");
            }

            return reply.Payload;
        }
        finally
        {
            _sendLock.Release();
        }
    }

    /// <summary>Sends a request without a natural reply; with REPLY_ACK negotiated sets need_reply and checks the ack.</summary>
    public async Task RequestAsync(uint request, ReadOnlyMemory<byte> payload = default, int[]? fds = null)
    {
        await _sendLock.WaitAsync();
        try
        {
            var ack = ReplyAck;
            SendMessage(request, VhostUserFlags.Version | (ack ? VhostUserFlags.NeedReply : 0), payload.Span, fds);
            if (!ack)
            {
                return;
            }

            var reply = await ReceiveAsync();
            if (reply.Request != request || (reply.Flags & VhostUserFlags.Reply) == 0 || reply.Payload.Length != 8)
            {
                throw new InvalidDataException($"Expected an ack of {request}, got request {reply.Request} flags 0x{reply.Flags:x} size {reply.Payload.Length}.");
            }

            var value = BinaryPrimitives.ReadUInt64LittleEndian(reply.Payload);
            if (value != 0)
            {
                throw new VhostUserNackException(request, value);
            }
        }
        finally
        {
            _sendLock.Release();
        }
    }

    /// <summary>True when the back-end closes the connection within the bound (messages it sends meanwhile are dropped).</summary>
    public async Task<bool> WaitForClosedAsync()
    {
        using var cts = new CancellationTokenSource(Timeout);
        var buffer = new byte[4096];
        try
        {
            while (true)
            {
                if (await _stream.ReadAsync(buffer, cts.Token) == 0)
                {
                    return true;
                }
            }
        }
        catch (OperationCanceledException) when (cts.IsCancellationRequested)
        {
            return false;
        }
        catch (IOException)
        {
            return true;
        }
    }

    // ---------------------------------------------------------------- negotiation steps

    public static byte[] U64(ulong value)
    {
        var bytes = new byte[8];
        BinaryPrimitives.WriteUInt64LittleEndian(bytes, value);
        return bytes;
    }

    public static byte[] VringState(uint index, uint num)
    {
        var bytes = new byte[8];
        BinaryPrimitives.WriteUInt32LittleEndian(bytes, index);
        BinaryPrimitives.WriteUInt32LittleEndian(bytes.AsSpan(4), num);
        return bytes;
    }

    public static byte[] VringAddr(uint index, ulong descriptors, ulong used, ulong available, uint flags = 0, ulong log = 0)
    {
        var bytes = new byte[40];
        BinaryPrimitives.WriteUInt32LittleEndian(bytes, index);
        BinaryPrimitives.WriteUInt32LittleEndian(bytes.AsSpan(4), flags);
        BinaryPrimitives.WriteUInt64LittleEndian(bytes.AsSpan(8), descriptors);
        BinaryPrimitives.WriteUInt64LittleEndian(bytes.AsSpan(16), used);
        BinaryPrimitives.WriteUInt64LittleEndian(bytes.AsSpan(24), available);
        BinaryPrimitives.WriteUInt64LittleEndian(bytes.AsSpan(32), log);
        return bytes;
    }

    public static byte[] MemTable(IReadOnlyList<MemoryRegion> regions)
    {
        var bytes = new byte[8 + (32 * regions.Count)];
        BinaryPrimitives.WriteUInt32LittleEndian(bytes, (uint)regions.Count);
        for (var i = 0; i < regions.Count; i++)
        {
            var span = bytes.AsSpan(8 + (32 * i));
            BinaryPrimitives.WriteUInt64LittleEndian(span, regions[i].GuestPhysicalAddress);
            BinaryPrimitives.WriteUInt64LittleEndian(span[8..], regions[i].Size);
            BinaryPrimitives.WriteUInt64LittleEndian(span[16..], regions[i].UserAddress);
            BinaryPrimitives.WriteUInt64LittleEndian(span[24..], regions[i].MmapOffset);
        }

        return bytes;
    }

    public async Task<ulong> GetFeaturesAsync()
    {
        var reply = await CallAsync(VhostUserRequest.GetFeatures);
        OfferedFeatures = BinaryPrimitives.ReadUInt64LittleEndian(reply);
        return OfferedFeatures;
    }

    public async Task<ulong> GetProtocolFeaturesAsync()
    {
        var reply = await CallAsync(VhostUserRequest.GetProtocolFeatures);
        OfferedProtocolFeatures = BinaryPrimitives.ReadUInt64LittleEndian(reply);
        return OfferedProtocolFeatures;
    }

    public async Task SetProtocolFeaturesAsync(ulong features)
    {
        // REPLY_ACK only applies once negotiated, so this one never asks for an ack.
        await RequestAsync(VhostUserRequest.SetProtocolFeatures, U64(features));
        AckedProtocolFeatures = features;
        ProtocolFeaturesNegotiated = true;
    }

    public async Task<ulong> GetQueueNumAsync()
    {
        var reply = await CallAsync(VhostUserRequest.GetQueueNum);
        QueueNum = BinaryPrimitives.ReadUInt64LittleEndian(reply);
        return QueueNum.Value;
    }

    /// <summary>GET_CONFIG: returns the config bytes the back-end sent (the reply's payload after offset/size/flags).</summary>
    public async Task<byte[]> GetConfigRawAsync(uint offset = 0, uint size = VirtioBlk.ConfigSize)
    {
        var payload = new byte[12 + size];
        BinaryPrimitives.WriteUInt32LittleEndian(payload, offset);
        BinaryPrimitives.WriteUInt32LittleEndian(payload.AsSpan(4), size);
        var reply = await CallAsync(VhostUserRequest.GetConfig, payload);
        if (reply.Length < 12)
        {
            throw new InvalidDataException($"GET_CONFIG reply of {reply.Length} bytes.");
        }

        return reply[12..];
    }

    public async Task<BlkConfig> GetConfigAsync()
    {
        var raw = await GetConfigRawAsync();
        if (raw.Length < VirtioBlk.ConfigSize)
        {
            throw new InvalidDataException($"GET_CONFIG returned {raw.Length} bytes of config.");
        }

        Config = new BlkConfig(raw);
        return Config;
    }

    public Task SetOwnerAsync() => RequestAsync(VhostUserRequest.SetOwner);

    public async Task SetFeaturesAsync(ulong features)
    {
        await RequestAsync(VhostUserRequest.SetFeatures, U64(features));
        AckedFeatures = features;
        foreach (var q in _queues)
        {
            q.EventIdx = VirtioFeatures.Has(features, VirtioFeatures.RingEventIdx);
        }
    }

    public Task SetMemTableAsync() =>
        RequestAsync(VhostUserRequest.SetMemTable, MemTable(Memory.Regions), Enumerable.Repeat(Memory.Fd, Memory.Regions.Count).ToArray());

    /// <summary>Starts (or restarts) a queue: SET_VRING_NUM, SET_VRING_BASE, SET_VRING_ADDR, SET_VRING_KICK, SET_VRING_CALL, SET_VRING_ENABLE.</summary>
    public async Task StartQueueAsync(int index, bool enable = true)
    {
        var q = _queues[index];
        var i = (uint)index;
        await RequestAsync(VhostUserRequest.SetVringNum, VringState(i, (uint)q.Size));
        await RequestAsync(VhostUserRequest.SetVringBase, VringState(i, q.AvailIndex));
        await RequestAsync(VhostUserRequest.SetVringAddr, VringAddr(i, Memory.ToUserAddress(q.DescriptorTable), Memory.ToUserAddress(q.UsedRing), Memory.ToUserAddress(q.AvailRing)));
        await RequestAsync(VhostUserRequest.SetVringKick, U64(i), [q.KickFd]);
        await RequestAsync(VhostUserRequest.SetVringCall, U64(i), [q.CallFd]);
        if (enable && ProtocolFeaturesNegotiated)
        {
            await RequestAsync(VhostUserRequest.SetVringEnable, VringState(i, 1));
        }
    }

    /// <summary>GET_VRING_BASE: stops the ring; returns the index the back-end would next read from the available ring.</summary>
    public async Task<uint> GetVringBaseAsync(int index)
    {
        var reply = await CallAsync(VhostUserRequest.GetVringBase, VringState((uint)index, 0));
        if (reply.Length != 8 || BinaryPrimitives.ReadUInt32LittleEndian(reply) != (uint)index)
        {
            throw new InvalidDataException("Bad GET_VRING_BASE reply.");
        }

        return BinaryPrimitives.ReadUInt32LittleEndian(reply.AsSpan(4));
    }

    /// <summary>The features this front-end acknowledges out of <paramref name="offered"/>.</summary>
    public ulong FeaturesToAck(ulong offered)
    {
        var mask = KnownFeatures;
        if (!Options.EventIdx)
        {
            mask &= ~VirtioFeatures.Bit(VirtioFeatures.RingEventIdx);
        }

        if (!Options.IndirectDescriptors)
        {
            mask &= ~VirtioFeatures.Bit(VirtioFeatures.RingIndirectDesc);
        }

        return offered & mask;
    }

    /// <summary>Feature and protocol-feature negotiation up to SET_FEATURES (no memory, no rings).</summary>
    public async Task HandshakeAsync()
    {
        var offered = await GetFeaturesAsync();
        if (VirtioFeatures.Has(offered, VirtioFeatures.ProtocolFeatures))
        {
            var protocol = await GetProtocolFeaturesAsync();
            await SetProtocolFeaturesAsync(protocol & Options.ProtocolFeatures);
            if ((AckedProtocolFeatures & VhostUserProtocolFeatures.Bit(VhostUserProtocolFeatures.Mq)) != 0)
            {
                await GetQueueNumAsync();
            }

            if ((AckedProtocolFeatures & VhostUserProtocolFeatures.Bit(VhostUserProtocolFeatures.Config)) != 0)
            {
                await GetConfigAsync();
            }
        }

        await SetOwnerAsync();
        await SetFeaturesAsync(FeaturesToAck(offered));
    }

    /// <summary>The whole set-up: handshake, SET_MEM_TABLE, every queue started and enabled.</summary>
    public async Task NegotiateAsync()
    {
        await HandshakeAsync();
        await SetMemTableAsync();
        for (var i = 0; i < _queues.Count; i++)
        {
            await StartQueueAsync(i);
        }
    }

    // ---------------------------------------------------------------- requests

    /// <summary>
    /// Lays out <paramref name="chain"/> (address, length, flags without NEXT) as a descriptor chain, directly in the
    /// table or in one indirect table, registers the head and publishes it, then kicks. Returns the head and a task
    /// for its used entry. The caller owns the buffers; the descriptors are returned to the free list on completion.
    /// </summary>
    public (ushort Head, Task<UsedElement> Used) SubmitChain(
        int queue,
        IReadOnlyList<(ulong Address, uint Length, ushort Flags)> chain,
        bool indirect = false,
        bool kick = true,
        Action<ushort, UsedElement>? onUsed = null)
    {
        ObjectDisposedException.ThrowIf(_closed, this);
        var q = _queues[queue];
        ushort[] descriptors;
        ulong table = 0;
        if (indirect)
        {
            table = Memory.Allocate(16L * chain.Count);
            for (var i = 0; i < chain.Count; i++)
            {
                var last = i == chain.Count - 1;
                SplitVirtqueue.WriteDescriptorAt(Memory, table + (16UL * (ulong)i), chain[i].Address, chain[i].Length, (ushort)(chain[i].Flags | (last ? 0 : VirtqDescFlags.Next)), (ushort)(last ? 0 : i + 1));
            }

            descriptors = q.AllocateDescriptors(1);
            q.WriteDescriptor(descriptors[0], table, (uint)(16 * chain.Count), VirtqDescFlags.Indirect, 0);
        }
        else
        {
            descriptors = q.AllocateDescriptors(chain.Count);
            for (var i = 0; i < chain.Count; i++)
            {
                var last = i == chain.Count - 1;
                q.WriteDescriptor(descriptors[i], chain[i].Address, chain[i].Length, (ushort)(chain[i].Flags | (last ? 0 : VirtqDescFlags.Next)), last ? (ushort)0 : descriptors[i + 1]);
            }
        }

        var tcs = new TaskCompletionSource<UsedElement>(TaskCreationOptions.RunContinuationsAsynchronously);
        var head = descriptors[0];

        q.Expect(
            head,
            e =>
            {
                q.FreeDescriptors(descriptors);
                if (indirect)
                {
                    Memory.Free(table, 16L * chain.Count);
                }

                onUsed?.Invoke(head, e);
                tcs.TrySetResult(e);
            },
            ex => tcs.TrySetException(ex));
        q.Publish(head);
        if (kick)
        {
            q.Kick();
        }

        return (head, tcs.Task);
    }

    /// <summary>Submits a virtio-blk request; the task completes when its used entry arrives (bounded by the timeout).</summary>
    public Task<BlkResult> SubmitAsync(BlkRequest request, int queue = 0)
    {
        var header = Memory.Allocate(16);
        Memory.Write(header, request.Header());
        var chain = new List<(ulong Address, uint Length, ushort Flags)> { (header, 16, 0) };
        var buffers = new List<(ulong Address, int Length, bool Writable)>();
        foreach (var segment in request.Segments)
        {
            var address = Memory.Allocate(Math.Max(segment.Length, 1));
            if (segment.Data is not null)
            {
                Memory.Write(address, segment.Data);
            }

            buffers.Add((address, segment.Length, segment.DeviceWritable));
            chain.Add((address, (uint)segment.Length, segment.DeviceWritable ? VirtqDescFlags.Write : (ushort)0));
        }

        var status = Memory.Allocate(1);
        Memory.Span(status, 1)[0] = StatusSentinel;
        chain.Add((status, 1, VirtqDescFlags.Write));

        var tcs = new TaskCompletionSource<BlkResult>(TaskCreationOptions.RunContinuationsAsynchronously);

        // Runs on the reaper thread, so guest memory is still mapped while it is read.
        void OnUsed(ushort head, UsedElement element)
        {
            try
            {
                var data = new List<byte>();
                foreach (var (address, length, writable) in buffers)
                {
                    if (writable)
                    {
                        data.AddRange(Memory.Read(address, length));
                    }

                    Memory.Free(address, Math.Max(length, 1));
                }

                var statusByte = Memory.Span(status, 1)[0];
                Memory.Free(status, 1);
                Memory.Free(header, 16);
                tcs.TrySetResult(new BlkResult(statusByte, element.Length, [.. data], head));
            }
            catch (Exception ex)
            {
                tcs.TrySetException(ex);
            }
        }

        var (_, used) = SubmitChain(queue, chain, request.Indirect, onUsed: OnUsed);
        _ = used.ContinueWith(
            t => tcs.TrySetException(t.Exception?.InnerException ?? new ObjectDisposedException(nameof(TestFrontEnd))),
            CancellationToken.None,
            TaskContinuationOptions.NotOnRanToCompletion | TaskContinuationOptions.ExecuteSynchronously,
            TaskScheduler.Default);
        return Bound(tcs.Task, $"virtio-blk request type {request.Type} sector {request.Sector} on queue {queue}");
    }

    /// <summary>Awaits <paramref name="task"/> within the timeout, with a message saying what did not happen.</summary>
    public async Task<T> Bound<T>(Task<T> task, string what)
    {
        try
        {
            return await task.WaitAsync(Timeout);
        }
        catch (TimeoutException)
        {
            throw new TimeoutException($"{what}: no completion within {Timeout}.");
        }
    }

    public async ValueTask DisposeAsync()
    {
        if (_closed)
        {
            return;
        }

        _closed = true;
        await _sendLock.WaitAsync(Timeout);
        _stream.Dispose();
        _socket.Dispose();
        Native.Signal(_stopFd);
        _reaperStopped = await Task.Run(() => _reaper.Join(Timeout));
        var gone = new ObjectDisposedException(nameof(TestFrontEnd), "The front-end was disposed with the request in flight.");
        foreach (var q in _queues)
        {
            foreach (var fail in q.TakePending())
            {
                fail(gone);
            }

            q.Dispose();
        }

        if (_reaperStopped)
        {
            // Only unmap when nothing on our side can still touch the memory.
            Memory.Dispose();
        }

        Native.Close(_stopFd);
    }

    private void ReapLoop()
    {
        var fds = new Native.PollFd[_queues.Count + 1];
        while (!_closed)
        {
            fds[0] = new Native.PollFd { Fd = _stopFd, Events = Native.PollIn };
            for (var i = 0; i < _queues.Count; i++)
            {
                fds[i + 1] = new Native.PollFd { Fd = _queues[i].CallFd, Events = Native.PollIn };
            }

            try
            {
                Native.Poll(fds, -1);
                if ((fds[0].REvents & Native.PollIn) != 0 || _closed)
                {
                    return;
                }

                for (var i = 0; i < _queues.Count; i++)
                {
                    if ((fds[i + 1].REvents & Native.PollIn) != 0)
                    {
                        Native.Drain(_queues[i].CallFd);
                        _queues[i].Reap();
                    }
                }
            }
            catch (Exception ex) when (ex is not OutOfMemoryException)
            {
                ReaperError = ex;
                return;
            }
        }
    }

    /// <summary>Why the reaper thread stopped early, if it did.</summary>
    public Exception? ReaperError { get; private set; }
}
