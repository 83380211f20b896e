using System.Buffers;
using System.Numerics;

namespace NbdAttachment.Engine;

/// <summary>
/// Copies of the write-type commands (WRITE, WRITE_ZEROES, TRIM) the server acknowledged since the last FLUSH.
/// A server that restarts may lose the ones it had not made durable; after a reconnect they are all sent again,
/// in the order the server acknowledged them, before anything else is sent. FUA writes are kept too: they are
/// durable, but replaying an older write over them would undo them. Copies live in buffers the journal keeps
/// for reuse (power-of-two sizes, up to about twice its capacity), so steady-state writing allocates nothing.
/// A completed FLUSH drops every entry acknowledged before it was submitted.
/// </summary>
internal sealed class WriteJournal
{
    private readonly object _ackLock = new(); // _acknowledged, _sequence
    private readonly object _poolLock = new(); // _spare, _buffers, _pooledBytes
    private readonly List<Entry> _acknowledged = [];
    private readonly Stack<Entry> _spare = new();
    private readonly Stack<byte[]>[] _buffers = Enumerable.Range(0, 32).Select(_ => new Stack<byte[]>()).ToArray();
    private long _pooledBytes;
    private long _sequence;
    private long _bytes;

    public WriteJournal(long capacity) => Capacity = capacity;

    /// <summary>The configured capacity; from half of it the connection starts a flush of its own to empty the journal.</summary>
    public long Capacity { get; }

    /// <summary>Bytes held (acknowledged and still pending).</summary>
    public long Bytes => Interlocked.Read(ref _bytes);

    /// <summary>Entries acknowledged and not yet covered by a flush.</summary>
    public int Count
    {
        get
        {
            lock (_ackLock)
            {
                return _acknowledged.Count;
            }
        }
    }

    /// <summary>The acknowledgement number a flush submitted now will cover up to.</summary>
    public long Watermark => Interlocked.Read(ref _sequence);

    /// <summary>Copies a write (a zeroing or trim has no payload) before it is sent.</summary>
    public Entry Record(NbdAttachment.Protocol.NbdCommand command, long offset, long length, ReadOnlySpan<byte> payload)
    {
        byte[]? copy = null;
        if (command == NbdAttachment.Protocol.NbdCommand.Write)
        {
            copy = RentBuffer(payload.Length);
            payload.CopyTo(copy);
            Interlocked.Add(ref _bytes, payload.Length);
        }

        Entry? entry;
        lock (_poolLock)
        {
            _spare.TryPop(out entry);
        }

        entry ??= new Entry();
        entry.Set(command, offset, length, copy);
        return entry;
    }

    /// <summary>The server acknowledged the write: keep it until a flush covers it.</summary>
    public void Acknowledge(Entry entry)
    {
        lock (_ackLock)
        {
            entry.Sequence = ++_sequence;
            _acknowledged.Add(entry);
        }
    }

    /// <summary>The write failed or was given up: forget it.</summary>
    public void Discard(Entry entry) => Return(entry);

    /// <summary>A flush submitted at <paramref name="watermark"/> completed: every entry acknowledged before it is durable.</summary>
    public void FlushCompleted(long watermark)
    {
        // Cut the covered entries out under the acknowledgement lock, then recycle them under the pool lock, so
        // the reader acknowledging replies meanwhile never waits for thousands of entries to be recycled.
        Entry[] done;
        int count;
        lock (_ackLock)
        {
            count = 0;
            while (count < _acknowledged.Count && _acknowledged[count].Sequence <= watermark)
            {
                count++;
            }

            if (count == 0)
            {
                return;
            }

            done = ArrayPool<Entry>.Shared.Rent(count);
            _acknowledged.CopyTo(0, done, 0, count);
            _acknowledged.RemoveRange(0, count);
        }

        lock (_poolLock)
        {
            for (var i = 0; i < count; i++)
            {
                ReturnLocked(done[i]);
            }
        }

        Array.Clear(done, 0, count);
        ArrayPool<Entry>.Shared.Return(done);
    }

    /// <summary>The acknowledged entries, oldest acknowledgement first, for replay.</summary>
    public List<Entry> Snapshot()
    {
        lock (_ackLock)
        {
            return [.. _acknowledged];
        }
    }

    private byte[] RentBuffer(int length)
    {
        var size = (int)BitOperations.RoundUpToPowerOf2((uint)Math.Max(length, 4096));
        lock (_poolLock)
        {
            if (_buffers[BitOperations.Log2((uint)size)].TryPop(out var buffer))
            {
                _pooledBytes -= buffer.Length;
                return buffer;
            }
        }

        return GC.AllocateUninitializedArray<byte>(size);
    }

    private void Return(Entry entry)
    {
        lock (_poolLock)
        {
            ReturnLocked(entry);
        }
    }

    private void ReturnLocked(Entry entry)
    {
        if (entry.Buffer is { } buffer)
        {
            Interlocked.Add(ref _bytes, -entry.Length);
            if (_pooledBytes + buffer.Length <= 2 * Capacity)
            {
                _buffers[BitOperations.Log2((uint)buffer.Length)].Push(buffer);
                _pooledBytes += buffer.Length;
            }
        }

        entry.Set(default, 0, 0, null);
        _spare.Push(entry);
    }

    /// <summary>One journalled write (pooled: reused after a flush covers it).</summary>
    internal sealed class Entry
    {
        public long Offset { get; private set; }

        public long Length { get; private set; }

        /// <summary>WRITE, WRITE_ZEROES or TRIM.</summary>
        public NbdAttachment.Protocol.NbdCommand Command { get; private set; }

        /// <summary>The copied payload of a WRITE (rented: may be longer than <see cref="Length"/>).</summary>
        public byte[]? Buffer { get; private set; }

        public long Sequence { get; set; }

        public ReadOnlyMemory<byte> Payload => Buffer is null ? default : Buffer.AsMemory(0, (int)Length);

        public bool Overlaps(Entry other) => Offset < other.Offset + other.Length && other.Offset < Offset + Length;

        public void Set(NbdAttachment.Protocol.NbdCommand command, long offset, long length, byte[]? buffer)
        {
            Command = command;
            Offset = offset;
            Length = length;
            Buffer = buffer;
            Sequence = 0;
        }
    }
}
