using System.Buffers;

namespace NbdAttachment.Engine;

/// <summary>
/// The memory of one wire's pipes: fixed-size blocks kept for reuse, each with its own reusable owner object, so
/// renting a pipe segment allocates nothing once the pool is warm, whichever threads rent and return it (the
/// shared array pool keeps only a few arrays per thread and core, and allocates past that).
/// </summary>
internal sealed class SegmentPool : MemoryPool<byte>
{
    /// <summary>Size of every block (the pipes' buffer size).</summary>
    public const int BlockSize = 64 * 1024;

    /// <summary>Most blocks kept idle; a burst beyond this is allocated and left to the GC afterwards.</summary>
    private const int MaxIdle = 16;

    private readonly Stack<Block> _idle = new();
    private readonly object _lock = new();

    public override int MaxBufferSize => BlockSize;

    public override IMemoryOwner<byte> Rent(int minBufferSize = -1)
    {
        if (minBufferSize > BlockSize)
        {
            return new Block(this, minBufferSize); // larger than a block: never pooled
        }

        lock (_lock)
        {
            if (_idle.TryPop(out var block))
            {
                block.Rented = true;
                return block;
            }
        }

        return new Block(this, BlockSize) { Rented = true };
    }

    protected override void Dispose(bool disposing)
    {
        lock (_lock)
        {
            _idle.Clear();
        }
    }

    private void Return(Block block)
    {
        if (block.Length != BlockSize)
        {
            return;
        }

        lock (_lock)
        {
            if (_idle.Count < MaxIdle)
            {
                _idle.Push(block);
            }
        }
    }

    private sealed class Block : IMemoryOwner<byte>
    {
        private readonly SegmentPool _pool;
        private readonly byte[] _array;

        public Block(SegmentPool pool, int length)
        {
            _pool = pool;
            _array = GC.AllocateUninitializedArray<byte>(length, pinned: true);
        }

        public bool Rented { get; set; }

        public int Length => _array.Length;

        public Memory<byte> Memory => _array;

        public void Dispose()
        {
            if (Rented)
            {
                Rented = false;
                _pool.Return(this);
            }
        }
    }
}
