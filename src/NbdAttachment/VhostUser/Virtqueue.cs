using NbdAttachment.VhostUser.Native;
using static NbdAttachment.VhostUser.Protocol.VhostUserConstants;

namespace NbdAttachment.VhostUser;

/// <summary>
/// One split virtqueue of a session. The session thread configures it (size, ring addresses, base, eventfds) and
/// starts and stops it; while started, a thread of its own waits for kicks and takes requests from the available
/// ring; requests complete out of order on whatever thread the device completes them, each putting its head on the
/// used ring and signalling the call eventfd when the guest asked to be told.
/// </summary>
internal sealed unsafe class Virtqueue
{
    private readonly VhostUserSession _session;
    private readonly object _usedLock = new();
    private readonly Stack<BlockRequest> _pool = new();
    private readonly ManualResetEventSlim _idle = new(true);
    private Thread? _thread;
    private int _stopFd = -1;
    private int _inFlight;
    private int _generation;
    private GuestMemory? _memory;
    private byte* _descriptors;
    private byte* _available;
    private byte* _used;
    private ushort _signalledUsed;
    private bool _signalledValid;

    public Virtqueue(VhostUserSession session, int index)
    {
        _session = session;
        Index = index;
    }

    public int Index { get; }

    public int Size { get; set; }

    public ulong DescriptorAddress { get; set; }

    public ulong AvailableAddress { get; set; }

    public ulong UsedAddress { get; set; }

    public bool HasAddresses { get; set; }

    /// <summary>The next available-ring index to take (SET/GET_VRING_BASE).</summary>
    public ushort LastAvailable { get; set; }

    public int KickFd { get; set; } = -1;

    /// <summary>True when the front-end said it will not kick (no descriptor): the ring is polled.</summary>
    public bool KickPolled { get; set; }

    public int ErrorFd { get; set; } = -1;

    /// <summary>False after SET_VRING_ENABLE 0.</summary>
    public bool Enabled { get; set; } = true;

    public bool IsStarted => _thread is not null;

    private int _callFd = -1;

    /// <summary>
    /// Replaces the call eventfd (may happen while running); closes the old one. The new one is signalled once: a
    /// completion pushed while there was no (or another) call fd would otherwise never be announced. A spurious
    /// interrupt costs the guest a look at the used ring; a lost one hangs its request.
    /// </summary>
    public void SetCallFd(int fd)
    {
        int old;
        lock (_usedLock)
        {
            old = _callFd;
            _callFd = fd;
            _signalledValid = false;
            if (fd >= 0)
            {
                LibC.Signal(fd);
            }
        }

        LibC.CloseQuietly(old);
    }

    /// <summary>Starts the queue when it is fully configured (size, addresses, kick) and enabled.</summary>
    public void StartIfReady(GuestMemory memory, BlockDeviceContext context, bool eventIndex, bool indirect)
    {
        if (IsStarted || Size == 0 || !HasAddresses || (KickFd < 0 && !KickPolled) || !Enabled)
        {
            return;
        }

        var descriptors = memory.TranslateUser(DescriptorAddress, (ulong)Size * DescriptorSize);
        var available = memory.TranslateUser(AvailableAddress, 6 + (2UL * (ulong)Size));
        var used = memory.TranslateUser(UsedAddress, 6 + (8UL * (ulong)Size));
        if (descriptors is null || available is null || used is null)
        {
            throw new VhostUserProtocolException($"Queue {Index}: a ring address (descriptors 0x{DescriptorAddress:X}, available 0x{AvailableAddress:X}, used 0x{UsedAddress:X}, size {Size}) is outside guest memory.");
        }

        _descriptors = descriptors;
        _available = available;
        _used = used;
        _signalledValid = false;
        _generation++;
        memory.AddReference();
        _memory = memory;
        _stopFd = LibC.EventFd(0, LibC.EFD_CLOEXEC | LibC.EFD_NONBLOCK);
        if (_stopFd < 0)
        {
            throw new IOException($"eventfd failed: {LibC.Describe(LibC.Errno)}");
        }

        var generation = _generation;
        _thread = new Thread(() => Run(context, eventIndex, indirect, generation))
        {
            IsBackground = true,
            Name = $"vhost-user-blk queue {Index}",
        };
        _thread.Start();
    }

    /// <summary>
    /// Stops taking requests and waits (bounded) for the ones in flight to complete, so the used ring is final and
    /// <see cref="LastAvailable"/> is the index to resume at. Called on the session thread.
    /// </summary>
    public void Stop(TimeSpan drainTimeout)
    {
        var thread = _thread;
        if (thread is null)
        {
            return;
        }

        LibC.Signal(_stopFd);
        thread.Join();
        if (!_idle.Wait(drainTimeout))
        {
            VhostUserLog.DrainTimedOut(_session.Logger, Index, Volatile.Read(ref _inFlight));
        }

        lock (_usedLock)
        {
            _generation++; // late completions of this run are dropped, never written into a restarted ring
        }

        _thread = null;
        _stopFd = LibC.CloseQuietly(_stopFd);
        _memory?.Release();
        _memory = null;
    }

    /// <summary>Forgets the configuration and closes the eventfds (queue stopped first).</summary>
    public void Reset()
    {
        Size = 0;
        HasAddresses = false;
        LastAvailable = 0;
        Enabled = true;
        KickPolled = false;
        KickFd = LibC.CloseQuietly(KickFd);
        ErrorFd = LibC.CloseQuietly(ErrorFd);
        SetCallFd(-1);
    }

    /// <summary>Puts a finished request on the used ring and tells the guest if it asked; returns the request to the pool.</summary>
    public void Complete(BlockRequest request, uint usedLength)
    {
        lock (_usedLock)
        {
            if (request.Generation == _generation)
            {
                PushUsed(request.Head, usedLength);
            }

            _pool.Push(request);
        }

        if (Interlocked.Decrement(ref _inFlight) == 0)
        {
            _idle.Set();
        }
    }

    private void PushUsed(ushort head, uint length)
    {
        var used = _used;
        var index = Volatile.Read(ref *(ushort*)(used + 2));
        var element = used + 4 + (8 * (index & (Size - 1)));
        *(uint*)element = head;
        *(uint*)(element + 4) = length;
        var next = (ushort)(index + 1);

        // The element must be visible before the index that publishes it, and the index before reading whether
        // the guest wants an interrupt.
        Volatile.Write(ref *(ushort*)(used + 2), next);
        Interlocked.MemoryBarrier();
        if (_callFd >= 0 && ShouldSignal(index, next))
        {
            LibC.Signal(_callFd);
        }
    }

    private bool ShouldSignal(ushort old, ushort next)
    {
        if (_session.EventIndex)
        {
            // Signal when the guest's used_event lies in (last checked, next]: vring_need_event of the virtio spec.
            var usedEvent = Volatile.Read(ref *(ushort*)(_available + 4 + (2 * Size)));
            var since = _signalledValid ? _signalledUsed : old;
            var valid = _signalledValid;
            _signalledUsed = next;
            _signalledValid = true;
            return !valid || (ushort)(next - usedEvent - 1) < (ushort)(next - since);
        }

        return (Volatile.Read(ref *(ushort*)_available) & AvailNoInterrupt) == 0;
    }

    private void Run(BlockDeviceContext context, bool eventIndex, bool indirect, int generation)
    {
        var polls = stackalloc LibC.PollFd[2];
        try
        {
            while (true)
            {
                if (!TakeAvailable(context, eventIndex, indirect, generation))
                {
                    return;
                }

                polls[0] = new LibC.PollFd { Fd = KickPolled ? -1 : KickFd, Events = LibC.POLLIN };
                polls[1] = new LibC.PollFd { Fd = _stopFd, Events = LibC.POLLIN };
                var n = LibC.Poll(polls, 2, KickPolled ? 5 : -1);
                if (n < 0 && LibC.Errno != LibC.EINTR)
                {
                    throw new IOException($"poll failed: {LibC.Describe(LibC.Errno)}");
                }

                if (polls[1].Revents != 0)
                {
                    return;
                }

                if ((polls[0].Revents & (LibC.POLLERR | LibC.POLLNVAL)) != 0)
                {
                    throw new VhostUserProtocolException($"Queue {Index}: the kick eventfd is not readable.");
                }

                if (polls[0].Revents != 0)
                {
                    _ = LibC.Drain(KickFd);
                }
            }
        }
        catch (Exception ex)
        {
            _session.Fail(ex);
        }
    }

    /// <summary>Takes every available request and starts it; false when the ring is broken (the session is failed).</summary>
    private bool TakeAvailable(BlockDeviceContext context, bool eventIndex, bool indirect, int generation)
    {
        var size = (ushort)Size;
        while (true)
        {
            var availableIndex = Volatile.Read(ref *(ushort*)(_available + 2));
            if (availableIndex == LastAvailable)
            {
                if (!eventIndex)
                {
                    return true;
                }

                // Ask for a kick at the next entry, then look again: the guest may have added one meanwhile.
                Volatile.Write(ref *(ushort*)(_used + 4 + (8 * size)), LastAvailable);
                Interlocked.MemoryBarrier();
                if (Volatile.Read(ref *(ushort*)(_available + 2)) == LastAvailable)
                {
                    return true;
                }

                continue;
            }

            if ((ushort)(availableIndex - LastAvailable) > size)
            {
                _session.Fail(new VhostUserProtocolException($"Queue {Index}: the available index moved from {LastAvailable} to {availableIndex}, more than the queue size {size}."));
                return false;
            }

            Interlocked.MemoryBarrier(); // read the ring entry only after the index that published it
            var head = *(ushort*)(_available + 4 + (2 * (LastAvailable & (size - 1))));
            if (head >= size)
            {
                _session.Fail(new VhostUserProtocolException($"Queue {Index}: available entry {LastAvailable} names descriptor {head}, outside the table of {size}."));
                return false;
            }

            LastAvailable++;
            var request = Rent();
            request.Begin(head, generation, _memory!, context, _session.RequestCancellation);
            _memory!.AddReference();
            ReadChain(request, head, indirect);
            if (Interlocked.Increment(ref _inFlight) == 1)
            {
                _idle.Reset();
            }

            request.Start();
        }
    }

    /// <summary>Walks a descriptor chain (direct, or through one indirect table) into the request's segments; marks it malformed on loops and bad indices.</summary>
    private void ReadChain(BlockRequest request, ushort head, bool indirect)
    {
        var memory = _memory!;
        var table = _descriptors;
        var tableSize = (uint)Size;
        var index = (uint)head;
        var seen = 0;
        var inIndirect = false;
        while (true)
        {
            if (index >= tableSize || ++seen > Size + tableSize)
            {
                request.MarkMalformed(); // index out of the table, or a loop
                return;
            }

            var descriptor = table + (index * DescriptorSize);
            var address = *(ulong*)descriptor;
            var length = *(uint*)(descriptor + 8);
            var flags = *(ushort*)(descriptor + 12);
            var next = *(ushort*)(descriptor + 14);
            if ((flags & DescIndirect) != 0)
            {
                if (!indirect || inIndirect || (flags & DescNext) != 0 || length == 0 || length % DescriptorSize != 0 || length / DescriptorSize > MaxQueueSize)
                {
                    request.MarkMalformed();
                    return;
                }

                var indirectTable = memory.TranslateGuest(address, length);
                if (indirectTable is null)
                {
                    request.MarkMalformed();
                    return;
                }

                table = indirectTable;
                tableSize = length / DescriptorSize;
                index = 0;
                inIndirect = true;
                continue;
            }

            request.AddSegment(memory.TranslateGuest(address, length), length, (flags & DescWrite) != 0);
            if ((flags & DescNext) == 0)
            {
                return;
            }

            index = next;
        }
    }

    private BlockRequest Rent()
    {
        lock (_usedLock)
        {
            if (_pool.TryPop(out var request))
            {
                return request;
            }
        }

        return new BlockRequest(this);
    }
}
