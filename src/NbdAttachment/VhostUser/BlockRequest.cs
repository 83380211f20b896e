using System.Buffers;
using System.Buffers.Binary;
using System.Runtime.InteropServices;
using static NbdAttachment.VhostUser.Protocol.VhostUserConstants;

namespace NbdAttachment.VhostUser;

/// <summary>
/// One virtio-blk request taken from a virtqueue: the descriptor chain as device-readable and device-writable
/// segments of mapped guest memory, turned into one <see cref="Virtualization.IBlockDevice"/> call and completed with a
/// status byte. Pooled by its queue; allocation-free once warm. Data that spans several non-adjacent segments goes
/// through a pooled bounce buffer; a single segment is handed to the device in place.
/// </summary>
internal sealed unsafe class BlockRequest
{
    private readonly Virtqueue _queue;
    private readonly UnmanagedBuffer _inPlace = new();
    private readonly Action _onCompleted;
    private readonly byte[] _discardSegments = new byte[DiscardSegmentSize * 256];
    private Segment[] _segments = new Segment[8];
    private int _segmentCount;
    private long _readable;
    private long _writable;
    private bool _malformed;
    private GuestMemory? _memory;
    private BlockDeviceContext? _context;
    private CancellationToken _cancellationToken;
    private ValueTask _pending;
    private byte[]? _bounce;
    private int _bounceLength;
    private uint _type;
    private int _discardCount;
    private int _discardNext;

    public BlockRequest(Virtqueue queue)
    {
        _queue = queue;
        _onCompleted = OnCompleted;
    }

    /// <summary>The head descriptor index: what goes back in the used ring.</summary>
    public ushort Head { get; private set; }

    /// <summary>The queue generation the request was taken in; a restarted queue ignores older requests.</summary>
    public int Generation { get; private set; }

    public void Begin(ushort head, int generation, GuestMemory memory, BlockDeviceContext context, CancellationToken cancellationToken)
    {
        Head = head;
        Generation = generation;
        _memory = memory;
        _context = context;
        _cancellationToken = cancellationToken;
        _segmentCount = 0;
        _readable = 0;
        _writable = 0;
        _malformed = false;
    }

    /// <summary>Adds one descriptor's buffer (null <paramref name="host"/>: outside guest memory).</summary>
    public void AddSegment(byte* host, uint length, bool writable)
    {
        if (length == 0)
        {
            return;
        }

        if (host is null)
        {
            _malformed = true;
            return;
        }

        if (!writable && _writable > 0)
        {
            _malformed = true; // device-readable after device-writable: not a valid chain
            return;
        }

        if (_segmentCount > 0)
        {
            ref var last = ref _segments[_segmentCount - 1];
            if (last.Writable == writable && last.Host + last.Length == host && (long)last.Length + length <= int.MaxValue)
            {
                last.Length += (int)length;
                Account(length, writable);
                return;
            }
        }

        if (_segmentCount == _segments.Length)
        {
            Array.Resize(ref _segments, _segments.Length * 2);
        }

        if (length > int.MaxValue)
        {
            _malformed = true;
            return;
        }

        _segments[_segmentCount++] = new Segment(host, (int)length, writable);
        Account(length, writable);
    }

    /// <summary>Marks the chain invalid (loop, bad index, bad indirect table); it completes with IOERR if it has a status byte.</summary>
    public void MarkMalformed() => _malformed = true;

    /// <summary>Runs the request. Completion (possibly later, on a pool thread) returns it to its queue.</summary>
    public void Start()
    {
        byte status;
        try
        {
            status = Issue();
        }
        catch (Exception ex)
        {
            status = Failed(ex);
        }

        if (status != byte.MaxValue)
        {
            Finish(status);
            return;
        }

        Await();
    }

    private void Account(uint length, bool writable)
    {
        if (writable)
        {
            _writable += length;
        }
        else
        {
            _readable += length;
        }
    }

    private void Await()
    {
        if (_pending.IsCompleted)
        {
            OnCompleted();
        }
        else
        {
            _pending.ConfigureAwait(false).GetAwaiter().UnsafeOnCompleted(_onCompleted);
        }
    }

    /// <summary>Starts the device call; returns a status to finish now, or <see cref="byte.MaxValue"/> when <see cref="_pending"/> is running.</summary>
    private byte Issue()
    {
        if (_malformed || _readable < BlkHeaderSize || _writable < 1)
        {
            return StatusIoError;
        }

        Span<byte> header = stackalloc byte[BlkHeaderSize];
        Copy(false, 0, header);
        _type = BinaryPrimitives.ReadUInt32LittleEndian(header);
        var sector = BinaryPrimitives.ReadUInt64LittleEndian(header[8..]);
        var context = _context!;
        var device = context.Device;
        var outData = _readable - BlkHeaderSize;
        var inData = _writable - 1;
        switch (_type)
        {
            case BlkIn:
                if (inData > _context!.MaxRequestBytes || !TryRange(sector, inData, out var readOffset))
                {
                    return StatusIoError;
                }

                _pending = inData == 0 ? ValueTask.CompletedTask : device.ReadAsync(readOffset, Data(true, 0, (int)inData), _cancellationToken);
                return byte.MaxValue;

            case BlkOut:
                if (context.IsReadOnly || outData > context.MaxRequestBytes || !TryRange(sector, outData, out var writeOffset))
                {
                    return StatusIoError;
                }

                _pending = outData == 0 ? ValueTask.CompletedTask : device.WriteAsync(writeOffset, Data(false, BlkHeaderSize, (int)outData), false, _cancellationToken);
                return byte.MaxValue;

            case BlkFlushRequest:
                _pending = device.FlushAsync(_cancellationToken);
                return byte.MaxValue;

            case BlkGetId:
                var id = context.Identifier;
                var room = (int)Math.Min(inData, BlkIdSize);
                Span<byte> padded = stackalloc byte[BlkIdSize];
                padded.Clear();
                id.CopyTo(padded);
                Fill(true, 0, padded[..room]);
                _bounceLength = room; // bytes written, for the used length
                return StatusOk;

            case BlkDiscardRequest:
            case BlkWriteZeroesRequest:
                return StartRanges(outData);

            default:
                return StatusUnsupported;
        }
    }

    private byte StartRanges(long outData)
    {
        if (_context!.IsReadOnly)
        {
            return StatusIoError;
        }

        if (outData == 0 || outData % DiscardSegmentSize != 0 || outData > _discardSegments.Length)
        {
            return StatusUnsupported;
        }

        _discardCount = (int)(outData / DiscardSegmentSize);
        Copy(false, BlkHeaderSize, _discardSegments.AsSpan(0, (int)outData));
        var allowed = _type == BlkWriteZeroesRequest ? WriteZeroesUnmap : 0;
        for (var i = 0; i < _discardCount; i++)
        {
            var flags = BinaryPrimitives.ReadUInt32LittleEndian(_discardSegments.AsSpan((i * DiscardSegmentSize) + 12));
            if ((flags & ~allowed) != 0)
            {
                return StatusUnsupported;
            }
        }

        _discardNext = 0;
        return NextRange();
    }

    /// <summary>Issues the next discard / write-zeroes range; <see cref="StatusOk"/> when all are done.</summary>
    private byte NextRange()
    {
        if (_discardNext == _discardCount)
        {
            return StatusOk;
        }

        var entry = _discardSegments.AsSpan(_discardNext++ * DiscardSegmentSize, DiscardSegmentSize);
        var sector = BinaryPrimitives.ReadUInt64LittleEndian(entry);
        var sectors = BinaryPrimitives.ReadUInt32LittleEndian(entry[8..]);
        if (!TryRange(sector, (long)sectors << SectorShift, out var offset))
        {
            return StatusIoError;
        }

        var length = (long)sectors << SectorShift;
        _pending = _type == BlkDiscardRequest
            ? _context!.Device.DiscardAsync(offset, length, _cancellationToken)
            : _context!.Device.WriteZeroesAsync(offset, length, _cancellationToken);
        return byte.MaxValue;
    }

    private void OnCompleted()
    {
        byte status;
        try
        {
            _pending.GetAwaiter().GetResult();
            _pending = default;
            status = StatusOk;
            if (_type == BlkIn && _bounce is not null)
            {
                Fill(true, 0, _bounce.AsSpan(0, _bounceLength));
            }
            else if (_type is BlkDiscardRequest or BlkWriteZeroesRequest)
            {
                status = NextRange();
                if (status == byte.MaxValue)
                {
                    Await();
                    return;
                }
            }
        }
        catch (Exception ex)
        {
            _pending = default;
            status = Failed(ex);
        }

        Finish(status);
    }

    private byte Failed(Exception ex)
    {
        if (_context is { } context && !_cancellationToken.IsCancellationRequested)
        {
            VhostUserLog.RequestFailed(context.Logger, _queue.Index, _type, ex);
        }

        return StatusIoError;
    }

    private void Finish(byte status)
    {
        var usedLength = 0u;
        // The status is the last device-writable byte (a readable segment after a writable one is never added).
        if (_segmentCount > 0 && _segments[_segmentCount - 1].Writable)
        {
            ref var last = ref _segments[_segmentCount - 1];
            last.Host[last.Length - 1] = status;
            usedLength = 1;
            if (status == StatusOk && _type == BlkIn)
            {
                usedLength += (uint)(_writable - 1);
            }
            else if (status == StatusOk && _type == BlkGetId)
            {
                usedLength += (uint)_bounceLength;
            }
        }

        if (_bounce is not null)
        {
            ArrayPool<byte>.Shared.Return(_bounce);
            _bounce = null;
        }

        _bounceLength = 0;
        var memory = _memory!;
        _memory = null;
        _context = null;
        _queue.Complete(this, usedLength);
        memory.Release();
    }

    private bool TryRange(ulong sector, long length, out long offset)
    {
        offset = 0;
        var capacity = _context!.Capacity;
        if (sector > (ulong)long.MaxValue >> SectorShift || length % SectorSize != 0)
        {
            return false;
        }

        offset = (long)(sector << SectorShift);
        return offset <= capacity && length <= capacity - offset;
    }

    /// <summary>The data bytes [skip, skip+length) of one direction, in place when they are one segment, else a bounce buffer (filled for writes).</summary>
    private Memory<byte> Data(bool writable, long skip, int length)
    {
        var position = 0L;
        for (var i = 0; i < _segmentCount; i++)
        {
            ref var segment = ref _segments[i];
            if (segment.Writable != writable)
            {
                continue;
            }

            if (skip >= position && skip - position + length <= segment.Length)
            {
                return _inPlace.Point(segment.Host + (skip - position), length);
            }

            position += segment.Length;
        }

        _bounce = ArrayPool<byte>.Shared.Rent(length);
        _bounceLength = length;
        if (!writable)
        {
            Copy(false, skip, _bounce.AsSpan(0, length));
        }

        return _bounce.AsMemory(0, length);
    }

    /// <summary>Copies bytes out of the chain's segments of one direction, starting <paramref name="skip"/> bytes in.</summary>
    private void Copy(bool writable, long skip, Span<byte> destination) => Walk(writable, skip, destination, toGuest: false);

    /// <summary>Copies bytes into the chain's writable segments, starting <paramref name="skip"/> bytes in.</summary>
    private void Fill(bool writable, long skip, ReadOnlySpan<byte> source) =>
        Walk(writable, skip, MemoryMarshal.CreateSpan(ref MemoryMarshal.GetReference(source), source.Length), toGuest: true);

    private void Walk(bool writable, long skip, Span<byte> buffer, bool toGuest)
    {
        var done = 0;
        for (var i = 0; i < _segmentCount && done < buffer.Length; i++)
        {
            ref var segment = ref _segments[i];
            if (segment.Writable != writable)
            {
                continue;
            }

            if (skip >= segment.Length)
            {
                skip -= segment.Length;
                continue;
            }

            var count = (int)Math.Min(segment.Length - skip, buffer.Length - done);
            var guest = new Span<byte>(segment.Host + skip, count);
            if (toGuest)
            {
                buffer.Slice(done, count).CopyTo(guest);
            }
            else
            {
                guest.CopyTo(buffer.Slice(done, count));
            }

            done += count;
            skip = 0;
        }
    }

    private struct Segment(byte* host, int length, bool writable)
    {
        public byte* Host = host;
        public int Length = length;
        public bool Writable = writable;
    }
}
