using System.Collections.Concurrent;
using System.Diagnostics.Tracing;

/// <summary>Samples allocations by type through the runtime's GC AllocationTick events (one per ~100 KB allocated).</summary>
internal sealed class AllocationSampler : EventListener
{
    private readonly ConcurrentDictionary<string, int> _types = new();

    /// <summary>Samples are counted only while this is set (the measured phase, after warm-up).</summary>
    public static volatile bool Measuring;

    public IEnumerable<KeyValuePair<string, int>> Top(int count) => _types.OrderByDescending(p => p.Value).Take(count);

    protected override void OnEventSourceCreated(EventSource eventSource)
    {
        if (eventSource.Name == "Microsoft-Windows-DotNETRuntime")
        {
            EnableEvents(eventSource, EventLevel.Verbose, (EventKeywords)0x1);
        }
    }

    protected override void OnEventWritten(EventWrittenEventArgs eventData)
    {
        if (Measuring && eventData.EventName?.StartsWith("GCAllocationTick", StringComparison.Ordinal) == true && eventData.Payload is { } payload)
        {
            var index = eventData.PayloadNames!.IndexOf("TypeName");
            if (index >= 0 && payload[index] is string type)
            {
                _types.AddOrUpdate(type, 1, (_, n) => n + 1);
            }
        }
    }
}
