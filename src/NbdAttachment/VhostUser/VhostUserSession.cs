using System.Buffers.Binary;
using Microsoft.Extensions.Logging;
using NbdAttachment.VhostUser.Native;
using NbdAttachment.VhostUser.Protocol;
using static NbdAttachment.VhostUser.Protocol.VhostUserConstants;

namespace NbdAttachment.VhostUser;

/// <summary>
/// One connected front-end: reads messages on its own thread and applies them in order (features, memory table,
/// ring set-up, start and stop), replying where the protocol asks. Ends when the front-end hangs up, breaks the
/// protocol, or the backend stops; every end goes through <see cref="Fail"/> and the one teardown in <see cref="Run"/>.
/// </summary>
internal sealed class VhostUserSession
{
    /// <summary>How long a stopping queue waits for the device to finish the requests in flight.</summary>
    public static readonly TimeSpan DrainTimeout = TimeSpan.FromSeconds(30);

    private readonly UnixSocket _socket;
    private readonly BlockDeviceContext _context;
    private readonly VhostUserBlockBackendOptions _options;
    private readonly Virtqueue[] _queues;
    private readonly CancellationTokenSource _requests = new();
    private readonly List<int> _fds = new(UnixSocket.MaxFds);
    private readonly byte[] _payload = new byte[MaxPayload];
    private readonly byte[] _reply = new byte[HeaderSize + MaxPayload];
    private GuestMemory _memory = GuestMemory.Empty;
    private ulong _features;
    private ulong _protocolFeatures;
    private Exception? _error;
    private int _ending;

    public VhostUserSession(UnixSocket socket, BlockDeviceContext context, VhostUserBlockBackendOptions options)
    {
        _socket = socket;
        _context = context;
        _options = options;
        _queues = new Virtqueue[options.QueueCount];
        for (var i = 0; i < _queues.Length; i++)
        {
            _queues[i] = new Virtqueue(this, i);
        }
    }

    public ILogger Logger => _context.Logger;

    /// <summary>Whether VIRTIO_RING_F_EVENT_IDX was negotiated.</summary>
    public bool EventIndex => (_features & Bit(FeatureEventIdx)) != 0;

    /// <summary>Cancelled when the session is torn down without waiting for the device.</summary>
    public CancellationToken RequestCancellation => _requests.Token;

    /// <summary>Ends the session (any thread): the first cause is kept; <see langword="null"/> is a stop by the backend.</summary>
    public void Fail(Exception? error)
    {
        if (Interlocked.Exchange(ref _ending, 1) == 0)
        {
            _error = error;
            if (error is not null)
            {
                VhostUserLog.SessionFailed(Logger, error);
            }
        }

        _socket.Wake();
    }

    /// <summary>Gives up on the device: cancels every request in flight (a stop whose wait was cancelled).</summary>
    public void Abandon() => _requests.Cancel();

    /// <summary>Runs the message loop until the session ends, then tears it down; returns why it ended (null: clean).</summary>
    public Exception? Run()
    {
        try
        {
            while (Volatile.Read(ref _ending) == 0 && ReadMessage(out var request, out var flags, out var size))
            {
                try
                {
                    Handle(request, flags, _payload.AsSpan(0, size));
                }
                finally
                {
                    foreach (var fd in _fds)
                    {
                        LibC.CloseQuietly(fd);
                    }

                    _fds.Clear();
                }
            }
        }
        catch (Exception ex)
        {
            Fail(ex);
        }
        finally
        {
            Teardown();
        }

        return _error;
    }

    private void Teardown()
    {
        foreach (var queue in _queues)
        {
            queue.Stop(DrainTimeout);
            queue.Reset();
        }

        _requests.Cancel();
        _memory.Release();
        _memory = GuestMemory.Empty;
        _socket.Dispose();

        // _requests is not disposed: the backend may still call Abandon, and a CancellationTokenSource without a
        // timer holds nothing that needs disposing.
    }

    private bool ReadMessage(out VhostUserRequest request, out uint flags, out int size)
    {
        Span<byte> header = stackalloc byte[HeaderSize];
        request = 0;
        flags = 0;
        size = 0;
        var got = _socket.ReceiveExactly(header, _fds);
        if (got == 0)
        {
            return false; // the front-end hung up between messages (or the backend stops)
        }

        if (got < HeaderSize)
        {
            throw Truncated(got, HeaderSize);
        }

        request = (VhostUserRequest)BinaryPrimitives.ReadUInt32LittleEndian(header);
        flags = BinaryPrimitives.ReadUInt32LittleEndian(header[4..]);
        var length = BinaryPrimitives.ReadUInt32LittleEndian(header[8..]);
        if ((flags & VersionMask) != ProtocolVersion)
        {
            throw new VhostUserProtocolException($"Message {(uint)request} has protocol version {flags & VersionMask}; only version 1 exists.");
        }

        if (length > MaxPayload)
        {
            throw new VhostUserProtocolException($"Message {request} announces a payload of {length} bytes; the limit is {MaxPayload}.");
        }

        size = (int)length;
        got = _socket.ReceiveExactly(_payload.AsSpan(0, size), _fds);
        if (got < size)
        {
            throw Truncated(got, size);
        }

        VhostUserLog.Message(Logger, request, size, _fds.Count);
        return true;
    }

    private VhostUserProtocolException Truncated(int got, int wanted) =>
        Volatile.Read(ref _ending) != 0
            ? new VhostUserProtocolException("The session was stopped in the middle of a message.")
            : new VhostUserProtocolException($"The front-end closed the connection in the middle of a message ({got} of {wanted} bytes).");

    private void Handle(VhostUserRequest request, uint flags, ReadOnlySpan<byte> payload)
    {
        var ok = true;
        switch (request)
        {
            case VhostUserRequest.GetFeatures:
                ReplyU64(request, VirtioBlockConfig.Features(_context));
                return;

            case VhostUserRequest.SetFeatures:
                var features = U64(request, payload);
                var offered = VirtioBlockConfig.Features(_context);
                if ((features & ~offered) != 0)
                {
                    throw new VhostUserProtocolException($"SET_FEATURES asks for 0x{features & ~offered:X} that the backend did not offer (offered 0x{offered:X}).");
                }

                _features = features;
                break;

            case VhostUserRequest.GetProtocolFeatures:
                ReplyU64(request, VirtioBlockConfig.ProtocolFeatures);
                return;

            case VhostUserRequest.SetProtocolFeatures:
                var protocol = U64(request, payload);
                if ((protocol & ~VirtioBlockConfig.ProtocolFeatures) != 0)
                {
                    throw new VhostUserProtocolException($"SET_PROTOCOL_FEATURES asks for 0x{protocol & ~VirtioBlockConfig.ProtocolFeatures:X} that the backend did not offer.");
                }

                _protocolFeatures = protocol;
                break;

            case VhostUserRequest.GetQueueNum:
                ReplyU64(request, (ulong)_queues.Length);
                return;

            case VhostUserRequest.SetOwner:
                break;

            case VhostUserRequest.ResetOwner:
            case VhostUserRequest.ResetDevice:
                ResetDevice();
                break;

            case VhostUserRequest.GetConfig:
                GetConfig(payload);
                return;

            case VhostUserRequest.SetConfig:
                ok = false; // the configuration space is read-only (no VIRTIO_BLK_F_CONFIG_WCE)
                break;

            case VhostUserRequest.SetMemTable:
                SetMemoryTable(payload);
                break;

            case VhostUserRequest.SetVringNum:
                SetRingSize(payload);
                break;

            case VhostUserRequest.SetVringAddr:
                SetRingAddresses(payload);
                break;

            case VhostUserRequest.SetVringBase:
                var (baseQueue, baseValue) = State(request, payload);
                if (baseValue > ushort.MaxValue)
                {
                    throw new VhostUserProtocolException($"SET_VRING_BASE of queue {baseQueue.Index} is {baseValue}; a split ring index has 16 bits.");
                }

                baseQueue.Stop(DrainTimeout);
                baseQueue.LastAvailable = (ushort)baseValue;
                break;

            case VhostUserRequest.GetVringBase:
                var (stopQueue, _) = State(request, payload);
                stopQueue.Stop(DrainTimeout);
                stopQueue.KickFd = LibC.CloseQuietly(stopQueue.KickFd);
                stopQueue.KickPolled = false;
                VhostUserLog.QueueStopped(Logger, stopQueue.Index, stopQueue.LastAvailable);
                ReplyState(request, (uint)stopQueue.Index, stopQueue.LastAvailable);
                return;

            case VhostUserRequest.SetVringKick:
            case VhostUserRequest.SetVringCall:
            case VhostUserRequest.SetVringErr:
                SetRingFd(request, payload);
                break;

            case VhostUserRequest.SetVringEnable:
                var (enableQueue, enable) = State(request, payload);
                enableQueue.Enabled = enable != 0;
                if (!enableQueue.Enabled)
                {
                    enableQueue.Stop(DrainTimeout);
                }
                else
                {
                    StartIfReady(enableQueue);
                }

                break;

            case VhostUserRequest.SetLogBase:
            case VhostUserRequest.SetLogFd:
            case VhostUserRequest.SendRarp:
            case VhostUserRequest.NetSetMtu:
            case VhostUserRequest.SetBackendReqFd:
            case VhostUserRequest.IotlbMsg:
            case VhostUserRequest.SetVringEndian:
            case VhostUserRequest.GetInflightFd:
            case VhostUserRequest.SetInflightFd:
            case VhostUserRequest.GetMaxMemSlots:
            case VhostUserRequest.AddMemReg:
            case VhostUserRequest.RemMemReg:
            case VhostUserRequest.SetStatus:
            case VhostUserRequest.GetStatus:
                throw new VhostUserProtocolException($"The front-end sent {request}, which needs a feature the backend did not offer.");

            default:
                throw new VhostUserProtocolException($"The front-end sent unknown message type {(uint)request}.");
        }

        if ((flags & NeedReplyFlag) != 0 && (_protocolFeatures & Bit(ProtocolReplyAck)) != 0)
        {
            ReplyU64(request, ok ? 0UL : 1UL);
        }
    }

    private void ResetDevice()
    {
        foreach (var queue in _queues)
        {
            queue.Stop(DrainTimeout);
            queue.Reset();
        }

        _features = 0;
    }

    private void GetConfig(ReadOnlySpan<byte> payload)
    {
        if (payload.Length < 12)
        {
            throw Short(VhostUserRequest.GetConfig, payload.Length, 12);
        }

        var offset = BinaryPrimitives.ReadUInt32LittleEndian(payload);
        var size = BinaryPrimitives.ReadUInt32LittleEndian(payload[4..]);
        if (size > MaxConfigSize || offset > MaxConfigSize - size || payload.Length != 12 + size)
        {
            throw new VhostUserProtocolException($"GET_CONFIG asks for {size} bytes at offset {offset} in a {payload.Length}-byte message; the space has {MaxConfigSize}.");
        }

        Span<byte> space = stackalloc byte[MaxConfigSize];
        VirtioBlockConfig.Write(space, _context, _options);
        var body = _reply.AsSpan(HeaderSize, payload.Length);
        payload[..12].CopyTo(body);
        space.Slice((int)offset, (int)size).CopyTo(body[12..]);
        Reply(VhostUserRequest.GetConfig, payload.Length);
    }

    private void SetMemoryTable(ReadOnlySpan<byte> payload)
    {
        if (payload.Length < 8)
        {
            throw Short(VhostUserRequest.SetMemTable, payload.Length, 8);
        }

        var count = BinaryPrimitives.ReadUInt32LittleEndian(payload);
        if (count is 0 or > MaxMemoryRegions)
        {
            throw new VhostUserProtocolException($"SET_MEM_TABLE has {count} regions; 1 to {MaxMemoryRegions} are allowed.");
        }

        if (payload.Length < 8 + (count * MemoryRegionSize))
        {
            throw Short(VhostUserRequest.SetMemTable, payload.Length, 8 + ((int)count * MemoryRegionSize));
        }

        if (_fds.Count != count)
        {
            throw new VhostUserProtocolException($"SET_MEM_TABLE has {count} regions but {_fds.Count} file descriptors.");
        }

        var memory = GuestMemory.Map(payload[8..], (int)count, _fds);
        var running = new List<Virtqueue>();
        foreach (var queue in _queues)
        {
            if (queue.IsStarted)
            {
                running.Add(queue);
                queue.Stop(DrainTimeout);
            }
        }

        _memory.Release();
        _memory = memory;
        VhostUserLog.MemoryMapped(Logger, (int)count);
        foreach (var queue in running)
        {
            StartIfReady(queue);
        }
    }

    private void SetRingSize(ReadOnlySpan<byte> payload)
    {
        var (queue, size) = State(VhostUserRequest.SetVringNum, payload);
        if (size is 0 or > MaxQueueSize || (size & (size - 1)) != 0)
        {
            throw new VhostUserProtocolException($"SET_VRING_NUM of queue {queue.Index} is {size}; a split ring has a power of two from 1 to {MaxQueueSize} entries.");
        }

        queue.Stop(DrainTimeout);
        queue.Size = (int)size;
    }

    private void SetRingAddresses(ReadOnlySpan<byte> payload)
    {
        if (payload.Length < 40)
        {
            throw Short(VhostUserRequest.SetVringAddr, payload.Length, 40);
        }

        var queue = Queue(VhostUserRequest.SetVringAddr, BinaryPrimitives.ReadUInt32LittleEndian(payload));
        var wasStarted = queue.IsStarted;
        queue.Stop(DrainTimeout);
        queue.DescriptorAddress = BinaryPrimitives.ReadUInt64LittleEndian(payload[8..]);
        queue.UsedAddress = BinaryPrimitives.ReadUInt64LittleEndian(payload[16..]);
        queue.AvailableAddress = BinaryPrimitives.ReadUInt64LittleEndian(payload[24..]);
        queue.HasAddresses = true;
        if (_memory.RegionCount > 0 && queue.Size > 0)
        {
            CheckRingAddresses(queue);
        }

        if (wasStarted)
        {
            StartIfReady(queue);
        }
    }

    private unsafe void CheckRingAddresses(Virtqueue queue)
    {
        var size = (ulong)queue.Size;
        if (_memory.TranslateUser(queue.DescriptorAddress, size * DescriptorSize) is null
            || _memory.TranslateUser(queue.AvailableAddress, 6 + (2 * size)) is null
            || _memory.TranslateUser(queue.UsedAddress, 6 + (8 * size)) is null)
        {
            throw new VhostUserProtocolException($"SET_VRING_ADDR of queue {queue.Index} points outside guest memory (descriptors 0x{queue.DescriptorAddress:X}, available 0x{queue.AvailableAddress:X}, used 0x{queue.UsedAddress:X}).");
        }
    }

    private void SetRingFd(VhostUserRequest request, ReadOnlySpan<byte> payload)
    {
        var value = U64(request, payload);
        var queue = Queue(request, (uint)(value & VringIndexMask));
        var noFd = (value & VringNoFdMask) != 0;
        if (!noFd && _fds.Count != 1)
        {
            throw new VhostUserProtocolException($"{request} of queue {queue.Index} carries {_fds.Count} file descriptors; it needs one.");
        }

        var fd = -1;
        if (!noFd)
        {
            fd = _fds[0];
            _fds.Clear(); // the queue owns it now
        }

        switch (request)
        {
            case VhostUserRequest.SetVringKick:
                queue.Stop(DrainTimeout);
                queue.KickFd = LibC.CloseQuietly(queue.KickFd);
                queue.KickFd = fd;
                queue.KickPolled = noFd;
                StartIfReady(queue);
                break;
            case VhostUserRequest.SetVringCall:
                queue.SetCallFd(fd);
                break;
            default:
                queue.ErrorFd = LibC.CloseQuietly(queue.ErrorFd);
                queue.ErrorFd = fd;
                break;
        }
    }

    private void StartIfReady(Virtqueue queue)
    {
        if (_memory.RegionCount == 0)
        {
            return;
        }

        var started = queue.IsStarted;
        queue.StartIfReady(_memory, _context, EventIndex, (_features & Bit(FeatureIndirectDesc)) != 0);
        if (!started && queue.IsStarted)
        {
            VhostUserLog.QueueStarted(Logger, queue.Index, queue.Size, queue.LastAvailable);
        }
    }

    private (Virtqueue Queue, uint Value) State(VhostUserRequest request, ReadOnlySpan<byte> payload)
    {
        if (payload.Length < 8)
        {
            throw Short(request, payload.Length, 8);
        }

        return (Queue(request, BinaryPrimitives.ReadUInt32LittleEndian(payload)), BinaryPrimitives.ReadUInt32LittleEndian(payload[4..]));
    }

    private Virtqueue Queue(VhostUserRequest request, uint index) =>
        index < _queues.Length
            ? _queues[index]
            : throw new VhostUserProtocolException($"{request} names queue {index}; the backend has {_queues.Length}.");

    private static ulong U64(VhostUserRequest request, ReadOnlySpan<byte> payload) =>
        payload.Length >= 8 ? BinaryPrimitives.ReadUInt64LittleEndian(payload) : throw Short(request, payload.Length, 8);

    private static VhostUserProtocolException Short(VhostUserRequest request, int length, int needed) =>
        new($"{request} has a {length}-byte payload; it needs {needed}.");

    private void ReplyU64(VhostUserRequest request, ulong value)
    {
        BinaryPrimitives.WriteUInt64LittleEndian(_reply.AsSpan(HeaderSize), value);
        Reply(request, 8);
    }

    private void ReplyState(VhostUserRequest request, uint index, uint value)
    {
        BinaryPrimitives.WriteUInt32LittleEndian(_reply.AsSpan(HeaderSize), index);
        BinaryPrimitives.WriteUInt32LittleEndian(_reply.AsSpan(HeaderSize + 4), value);
        Reply(request, 8);
    }

    private void Reply(VhostUserRequest request, int size)
    {
        BinaryPrimitives.WriteUInt32LittleEndian(_reply, (uint)request);
        BinaryPrimitives.WriteUInt32LittleEndian(_reply.AsSpan(4), ProtocolVersion | ReplyFlag);
        BinaryPrimitives.WriteUInt32LittleEndian(_reply.AsSpan(8), (uint)size);
        _socket.Send(_reply.AsSpan(0, HeaderSize + size));
    }
}
