using System.Buffers;

namespace NbdAttachment.VhostUser;

/// <summary>
/// A reusable <see cref="MemoryManager{T}"/> over a span of mapped guest memory, so a request's data reaches the
/// block device without a copy. One per request slot; re-pointed for each request.
/// </summary>
internal sealed unsafe class UnmanagedBuffer : MemoryManager<byte>
{
    private byte* _pointer;
    private int _length;

    public Memory<byte> Point(byte* pointer, int length)
    {
        _pointer = pointer;
        _length = length;
        return Memory;
    }

    public override Span<byte> GetSpan() => new(_pointer, _length);

    public override MemoryHandle Pin(int elementIndex = 0) => new(_pointer + elementIndex);

    public override void Unpin()
    {
    }

    protected override void Dispose(bool disposing)
    {
    }
}
