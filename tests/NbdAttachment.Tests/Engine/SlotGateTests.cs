using NbdAttachment.Engine;

namespace NbdAttachment.Tests.Engine;

/// <summary>The request-slot gate: counting, first-come first-served waiting, cancellation that gives nothing away.</summary>
public sealed class SlotGateTests
{
    private static readonly TimeSpan Bound = TimeSpan.FromSeconds(10);

    [Fact]
    public void Takes_free_slots_until_none_is_left()
    {
        var gate = new SlotGate(2);
        gate.TryTake().Should().BeTrue();
        gate.TryTake().Should().BeTrue();
        gate.TryTake().Should().BeFalse();
        gate.Release();
        gate.TryTake().Should().BeTrue();
    }

    [Fact]
    public async Task Waiters_get_released_slots_in_arrival_order()
    {
        var gate = new SlotGate(0);
        var order = new List<int>();
        var waits = Enumerable.Range(0, 3).Select(async i =>
        {
            await gate.WaitAsync(CancellationToken.None);
            lock (order)
            {
                order.Add(i);
            }
        }).ToArray();

        for (var i = 0; i < 3; i++)
        {
            gate.Release();
            await waits[i].WaitAsync(Bound);
        }

        order.Should().Equal(0, 1, 2);
        gate.TryTake().Should().BeFalse("every released slot went to a waiter");
    }

    [Fact]
    public async Task A_cancelled_wait_takes_no_slot()
    {
        var gate = new SlotGate(0);
        using var cancel = new CancellationTokenSource();
        var cancelled = gate.WaitAsync(cancel.Token).AsTask();
        var second = gate.WaitAsync(CancellationToken.None).AsTask();
        cancel.Cancel();
        await FluentActions.Awaiting(() => cancelled.WaitAsync(Bound)).Should().ThrowAsync<OperationCanceledException>();

        gate.Release();
        await second.WaitAsync(Bound); // the slot skipped the cancelled waiter
        gate.Release();
        gate.TryTake().Should().BeTrue();
        gate.TryTake().Should().BeFalse();
    }

    [Fact]
    public async Task An_already_cancelled_token_fails_at_once()
    {
        var gate = new SlotGate(1);
        var act = async () => await gate.WaitAsync(new CancellationToken(true));
        await act.Should().ThrowAsync<OperationCanceledException>();
        gate.TryTake().Should().BeTrue("nothing was taken");
    }

    [Fact]
    public async Task Waiters_are_reused_across_many_waits()
    {
        var gate = new SlotGate(0);
        for (var i = 0; i < 1000; i++)
        {
            var wait = gate.WaitAsync(CancellationToken.None);
            gate.Release();
            await wait.AsTask().WaitAsync(Bound);
        }

        gate.TryTake().Should().BeFalse();
    }
}
