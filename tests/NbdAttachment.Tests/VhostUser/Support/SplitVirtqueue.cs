using System.Buffers.Binary;
using System.Collections.Concurrent;

namespace NbdAttachment.Tests.VhostUser.Support;

/// <summary>An entry of the used ring.</summary>
public readonly record struct UsedElement(uint Id, uint Length);

/// <summary>
/// The driver side of one split virtqueue (virtio 1.x section 2.7) laid out in <see cref="GuestMemory"/>: descriptor
/// table, available ring (with <c>used_event</c>), used ring (with <c>avail_event</c>), each page-aligned, plus a kick
/// and a call eventfd. Methods that touch the rings take <see cref="Lock"/>.
/// </summary>
public sealed unsafe class SplitVirtqueue : IDisposable
{
    private readonly GuestMemory _memory;
    private readonly Stack<ushort> _freeDescriptors = new();
    private readonly Dictionary<ushort, (Action<UsedElement> OnUsed, Action<Exception> OnFail)> _pending = [];

    public SplitVirtqueue(GuestMemory memory, int index, int size)
    {
        _memory = memory;
        Index = index;
        Size = size;
        DescriptorTable = memory.Allocate(16L * size, 4096);
        AvailRing = memory.Allocate(6 + (2L * size), 4096);
        UsedRing = memory.Allocate(6 + (8L * size), 4096);
        for (var i = size - 1; i >= 0; i--)
        {
            _freeDescriptors.Push((ushort)i);
        }

        KickFd = Native.EventFd();
        CallFd = Native.EventFd();
    }

    public int Index { get; }

    public int Size { get; }

    public ulong DescriptorTable { get; }

    public ulong AvailRing { get; }

    public ulong UsedRing { get; }

    public int KickFd { get; }

    public int CallFd { get; }

    public object Lock { get; } = new();

    /// <summary>Whether VIRTIO_RING_F_EVENT_IDX was negotiated (the driver then maintains <c>used_event</c>).</summary>
    public bool EventIdx { get; set; }

    /// <summary>The driver's next available index (what it last wrote to <c>avail->idx</c>).</summary>
    public ushort AvailIndex { get; private set; }

    /// <summary>The next used index the driver has not consumed yet.</summary>
    public ushort LastUsedIndex { get; private set; }

    /// <summary>Used entries whose id matched no request in flight.</summary>
    public ConcurrentQueue<UsedElement> Unexpected { get; } = new();

    /// <summary>Completed used entries, in used-ring order.</summary>
    public ConcurrentQueue<UsedElement> CompletionOrder { get; } = new();

    public int InFlight
    {
        get
        {
            lock (Lock)
            {
                return _pending.Count;
            }
        }
    }

    /// <summary>The device's <c>used->idx</c>.</summary>
    public ushort DeviceUsedIndex => Volatile.Read(ref *(ushort*)_memory.PointerTo(UsedRing + 2, 2));

    /// <summary>The device's <c>avail_event</c> (meaningful with EVENT_IDX).</summary>
    public ushort AvailEvent => Volatile.Read(ref *(ushort*)_memory.PointerTo(UsedRing + 4 + (8UL * (ulong)Size), 2));

    public ushort[] AllocateDescriptors(int count)
    {
        lock (Lock)
        {
            if (_freeDescriptors.Count < count)
            {
                throw new InvalidOperationException($"Queue {Index}: {count} descriptors wanted, {_freeDescriptors.Count} free.");
            }

            var result = new ushort[count];
            for (var i = 0; i < count; i++)
            {
                result[i] = _freeDescriptors.Pop();
            }

            return result;
        }
    }

    public void FreeDescriptors(IEnumerable<ushort> descriptors)
    {
        lock (Lock)
        {
            foreach (var d in descriptors)
            {
                _freeDescriptors.Push(d);
            }
        }
    }

    /// <summary>Writes descriptor <paramref name="index"/> of the ring's table.</summary>
    public void WriteDescriptor(int index, ulong address, uint length, ushort flags, ushort next) =>
        WriteDescriptorAt(_memory, DescriptorTable + (16UL * (ulong)index), address, length, flags, next);

    /// <summary>Writes a descriptor anywhere in guest memory (an indirect table entry).</summary>
    public static void WriteDescriptorAt(GuestMemory memory, ulong descriptorAddress, ulong address, uint length, ushort flags, ushort next)
    {
        var span = memory.Span(descriptorAddress, 16);
        BinaryPrimitives.WriteUInt64LittleEndian(span, address);
        BinaryPrimitives.WriteUInt32LittleEndian(span[8..], length);
        BinaryPrimitives.WriteUInt16LittleEndian(span[12..], flags);
        BinaryPrimitives.WriteUInt16LittleEndian(span[14..], next);
    }

    /// <summary>Registers what to do when <paramref name="head"/> comes back in the used ring. Call before <see cref="Publish"/>.</summary>
    public void Expect(ushort head, Action<UsedElement> onUsed, Action<Exception> onFail)
    {
        lock (Lock)
        {
            if (!_pending.TryAdd(head, (onUsed, onFail)))
            {
                throw new InvalidOperationException($"Queue {Index}: head {head} is already in flight.");
            }
        }
    }

    /// <summary>Registers <paramref name="head"/> and returns a task for its used entry.</summary>
    public Task<UsedElement> Expect(ushort head)
    {
        var tcs = new TaskCompletionSource<UsedElement>(TaskCreationOptions.RunContinuationsAsynchronously);
        Expect(head, e => tcs.TrySetResult(e), ex => tcs.TrySetException(ex));
        return tcs.Task;
    }

    /// <summary>Puts <paramref name="head"/> in the next available slot and publishes it (advances <c>avail->idx</c>).</summary>
    public void Publish(ushort head)
    {
        lock (Lock)
        {
            var slot = AvailRing + 4 + (2UL * (ulong)(AvailIndex % Size));
            BinaryPrimitives.WriteUInt16LittleEndian(_memory.Span(slot, 2), head);
            SetAvailIndexLocked((ushort)(AvailIndex + 1));
        }
    }

    /// <summary>Writes <c>avail->idx</c> directly (hostile tests: jump it arbitrarily). Does not kick.</summary>
    public void SetAvailIndex(ushort value)
    {
        lock (Lock)
        {
            SetAvailIndexLocked(value);
        }
    }

    /// <summary>Writes <c>avail->ring[slot]</c> without publishing.</summary>
    public void WriteAvailSlot(int slot, ushort head)
    {
        lock (Lock)
        {
            BinaryPrimitives.WriteUInt16LittleEndian(_memory.Span(AvailRing + 4 + (2UL * (ulong)slot), 2), head);
        }
    }

    /// <summary>Notifies the device (writes the kick eventfd). Always kicks: over-notifying is allowed.</summary>
    public void Kick()
    {
        Interlocked.MemoryBarrier();
        Native.Signal(KickFd);
    }

    /// <summary>Consumes new used entries; called by the front-end's reaper thread after the call eventfd fired.</summary>
    internal void Reap()
    {
        var done = new List<(UsedElement Element, Action<UsedElement>? Action)>();
        lock (Lock)
        {
            while (true)
            {
                var deviceIndex = DeviceUsedIndex;
                Interlocked.MemoryBarrier();
                while (LastUsedIndex != deviceIndex)
                {
                    var entry = _memory.Span(UsedRing + 4 + (8UL * (ulong)(LastUsedIndex % Size)), 8);
                    var element = new UsedElement(BinaryPrimitives.ReadUInt32LittleEndian(entry), BinaryPrimitives.ReadUInt32LittleEndian(entry[4..]));
                    LastUsedIndex++;
                    Action<UsedElement>? action = null;
                    if (element.Id < Size && _pending.Remove((ushort)element.Id, out var pending))
                    {
                        action = pending.OnUsed;
                    }

                    done.Add((element, action));
                }

                if (!EventIdx)
                {
                    break;
                }

                // used_event: interrupt me when the device moves past what I have consumed; then re-check, so an entry
                // added between the last read and this write is not missed.
                var usedEvent = _memory.PointerTo(AvailRing + 4 + (2UL * (ulong)Size), 2);
                Volatile.Write(ref *(ushort*)usedEvent, LastUsedIndex);
                Interlocked.MemoryBarrier();
                if (DeviceUsedIndex == LastUsedIndex)
                {
                    break;
                }
            }
        }

        foreach (var (element, action) in done)
        {
            if (action is null)
            {
                Unexpected.Enqueue(element);
            }
            else
            {
                CompletionOrder.Enqueue(element);
                try
                {
                    action(element);
                }
                catch (Exception ex) when (ex is not OutOfMemoryException)
                {
                    Unexpected.Enqueue(element);
                }
            }
        }
    }

    /// <summary>Fails every request in flight (the front-end is going away).</summary>
    internal List<Action<Exception>> TakePending()
    {
        lock (Lock)
        {
            var list = _pending.Values.Select(p => p.OnFail).ToList();
            _pending.Clear();
            return list;
        }
    }

    public void Dispose()
    {
        Native.Close(KickFd);
        Native.Close(CallFd);
    }

    private void SetAvailIndexLocked(ushort value)
    {
        Interlocked.MemoryBarrier();
        Volatile.Write(ref *(ushort*)_memory.PointerTo(AvailRing + 2, 2), value);
        AvailIndex = value;
    }
}
