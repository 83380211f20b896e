using NbdAttachment.Engine;

namespace NbdAttachment.Tests.Engine;

/// <summary>The pipes' block pool: blocks and their owners are reused, oversized requests are not pooled.</summary>
public sealed class SegmentPoolTests
{
    [Fact]
    public void A_returned_block_is_rented_again()
    {
        using var pool = new SegmentPool();
        var first = pool.Rent(1000);
        first.Memory.Length.Should().Be(SegmentPool.BlockSize);
        first.Dispose();
        first.Dispose(); // a second dispose must not return it twice

        var second = pool.Rent();
        var third = pool.Rent();
        second.Should().BeSameAs(first);
        third.Should().NotBeSameAs(first);
    }

    [Fact]
    public void Oversized_requests_get_their_own_memory()
    {
        using var pool = new SegmentPool();
        var big = pool.Rent(SegmentPool.BlockSize + 1);
        big.Memory.Length.Should().BeGreaterThanOrEqualTo(SegmentPool.BlockSize + 1);
        big.Dispose();
        pool.Rent().Should().NotBeSameAs(big);
    }
}
