using System.Collections.Concurrent;
using NbdAttachment.Virtualization;

namespace NbdAttachment.Tests.VhostUser.Support;

/// <summary>
/// An <see cref="IBlockDevice"/> backed by a byte array, with call counters and an optional gate: while
/// <see cref="HoldCompletions"/> is set, every operation parks as a <see cref="HeldOperation"/> until the test releases
/// it, so tests can see how many requests the back-end has in flight and complete them in any order. The operation's
/// effect (read or write of the array) happens when it is released.
/// </summary>
public sealed class MemoryBlockDevice : IBlockDevice
{
    private readonly byte[] _data;
    private readonly object _lock = new();
    private readonly ConcurrentQueue<HeldOperation> _held = new();
    private readonly SemaphoreSlim _heldSignal = new(0);
    private int _reads;
    private int _writes;
    private int _flushes;
    private int _discards;
    private int _writeZeroes;
    private int _cancelled;

    public MemoryBlockDevice(long capacity, bool readOnly = false, int logicalBlockSize = 512)
    {
        _data = new byte[capacity];
        IsReadOnly = readOnly;
        LogicalBlockSize = logicalBlockSize;
    }

    public long Capacity => _data.LongLength;

    public int LogicalBlockSize { get; }

    public bool IsReadOnly { get; }

    /// <summary>Park every operation until released.</summary>
    public bool HoldCompletions { get; set; }

    public int Reads => Volatile.Read(ref _reads);

    public int Writes => Volatile.Read(ref _writes);

    public int Flushes => Volatile.Read(ref _flushes);

    public int Discards => Volatile.Read(ref _discards);

    public int WriteZeroesCalls => Volatile.Read(ref _writeZeroes);

    /// <summary>Operations whose cancellation token fired while held.</summary>
    public int Cancelled => Volatile.Read(ref _cancelled);

    public bool Disposed { get; private set; }

    /// <summary>Operations that are parked now, in arrival order (released ones drop out).</summary>
    public IReadOnlyList<HeldOperation> Held => _held.Where(h => !h.Released).ToArray();

    /// <summary>A copy of the contents.</summary>
    public byte[] Snapshot(long offset, int length)
    {
        lock (_lock)
        {
            return _data.AsSpan((int)offset, length).ToArray();
        }
    }

    public void Fill(long offset, ReadOnlySpan<byte> data)
    {
        lock (_lock)
        {
            data.CopyTo(_data.AsSpan((int)offset));
        }
    }

    /// <summary>Waits until at least <paramref name="count"/> operations are parked (bounded).</summary>
    public async Task<IReadOnlyList<HeldOperation>> WaitForHeldAsync(int count, TimeSpan timeout)
    {
        using var cts = new CancellationTokenSource(timeout);
        while (true)
        {
            var held = Held;
            if (held.Count >= count)
            {
                return held;
            }

            try
            {
                await _heldSignal.WaitAsync(cts.Token);
            }
            catch (OperationCanceledException)
            {
                throw new TimeoutException($"Only {Held.Count} of {count} device operations arrived within {timeout}.");
            }
        }
    }

    /// <summary>Releases every parked operation and stops parking new ones.</summary>
    public void ReleaseAll()
    {
        HoldCompletions = false;
        foreach (var h in _held)
        {
            h.Release();
        }
    }

    public ValueTask ReadAsync(long offset, Memory<byte> buffer, CancellationToken cancellationToken = default) =>
        Run("read", offset, buffer.Length, ref _reads, cancellationToken, () =>
        {
            Check(offset, buffer.Length);
            lock (_lock)
            {
                _data.AsSpan((int)offset, buffer.Length).CopyTo(buffer.Span);
            }
        });

    public ValueTask WriteAsync(long offset, ReadOnlyMemory<byte> data, bool forceUnitAccess = false, CancellationToken cancellationToken = default) =>
        Run("write", offset, data.Length, ref _writes, cancellationToken, () =>
        {
            CheckWritable();
            Check(offset, data.Length);
            lock (_lock)
            {
                data.Span.CopyTo(_data.AsSpan((int)offset));
            }
        });

    public ValueTask FlushAsync(CancellationToken cancellationToken = default) =>
        Run("flush", 0, 0, ref _flushes, cancellationToken, () => { });

    public ValueTask DiscardAsync(long offset, long length, CancellationToken cancellationToken = default) =>
        Run("discard", offset, length, ref _discards, cancellationToken, () =>
        {
            CheckWritable();
            Check(offset, length);
            lock (_lock)
            {
                _data.AsSpan((int)offset, (int)length).Clear();
            }
        });

    public ValueTask WriteZeroesAsync(long offset, long length, CancellationToken cancellationToken = default) =>
        Run("write-zeroes", offset, length, ref _writeZeroes, cancellationToken, () =>
        {
            CheckWritable();
            Check(offset, length);
            lock (_lock)
            {
                _data.AsSpan((int)offset, (int)length).Clear();
            }
        });

    public ValueTask DisposeAsync()
    {
        Disposed = true;
        ReleaseAll();
        return ValueTask.CompletedTask;
    }

    private ValueTask Run(string kind, long offset, long length, ref int counter, CancellationToken cancellationToken, Action effect)
    {
        Interlocked.Increment(ref counter);
        if (!HoldCompletions)
        {
            effect();
            return ValueTask.CompletedTask;
        }

        var held = new HeldOperation(kind, offset, length);
        _held.Enqueue(held);
        _heldSignal.Release();
        return new ValueTask(WaitAndRunAsync(held, effect, cancellationToken));
    }

    private async Task WaitAndRunAsync(HeldOperation held, Action effect, CancellationToken cancellationToken)
    {
        try
        {
            await held.WaitAsync(cancellationToken);
        }
        catch (OperationCanceledException)
        {
            Interlocked.Increment(ref _cancelled);
            throw;
        }

        effect();
    }

    private void Check(long offset, long length)
    {
        if (offset < 0 || length < 0 || offset + length > Capacity)
        {
            throw new ArgumentOutOfRangeException(nameof(offset), $"{offset}+{length} is beyond the {Capacity}-byte device.");
        }
    }

    private void CheckWritable()
    {
        if (IsReadOnly)
        {
            throw new InvalidOperationException("The device is read-only.");
        }
    }
}

/// <summary>A device operation parked by <see cref="MemoryBlockDevice.HoldCompletions"/>.</summary>
public sealed class HeldOperation(string kind, long offset, long length)
{
    private readonly TaskCompletionSource _gate = new(TaskCreationOptions.RunContinuationsAsynchronously);

    public string Kind { get; } = kind;

    public long Offset { get; } = offset;

    public long Length { get; } = length;

    public bool Released => _gate.Task.IsCompleted;

    public void Release() => _gate.TrySetResult();

    internal Task WaitAsync(CancellationToken cancellationToken) => _gate.Task.WaitAsync(cancellationToken);

    public override string ToString() => $"{Kind} {Offset}+{Length}";
}
