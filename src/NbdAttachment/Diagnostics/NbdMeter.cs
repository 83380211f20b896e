using System.Diagnostics;
using System.Diagnostics.Metrics;

namespace NbdAttachment.Diagnostics;

/// <summary>
/// The library's <see cref="Meter"/> and the names of its instruments (a public contract, like event ids).
/// Listen with <c>MeterListener</c>, dotnet-counters or OpenTelemetry using <see cref="Name"/>.
/// </summary>
public static class NbdMeter
{
    /// <summary>The meter name: <c>NbdAttachment</c>.</summary>
    public const string Name = "NbdAttachment";

    /// <summary>Counter of completed NBD commands; tags <c>nbd.command</c> and <c>nbd.outcome</c> (<c>ok</c>, <c>error</c>, <c>cancelled</c>).</summary>
    public const string Operations = "nbd.client.operations";

    /// <summary>Counter of payload bytes moved by successful READ and WRITE commands, in bytes; tag <c>nbd.command</c>.</summary>
    public const string Bytes = "nbd.client.bytes";

    /// <summary>Histogram of command latency from submission to reply, in seconds; tag <c>nbd.command</c>.</summary>
    public const string Duration = "nbd.client.operation.duration";

    /// <summary>Counter of successful reconnects.</summary>
    public const string Reconnects = "nbd.client.reconnects";

    /// <summary>Counter of connections lost (before any reconnect attempt); tag <c>error.type</c>.</summary>
    public const string ConnectionsLost = "nbd.client.connections.lost";

    internal const string Ok = "ok";
    internal const string Failed = "error";
    internal const string Cancelled = "cancelled";

    private static readonly Meter Meter = new(Name, typeof(NbdMeter).Assembly.GetName().Version?.ToString());

    internal static readonly Counter<long> OperationCounter = Meter.CreateCounter<long>(Operations, "{operation}", "NBD commands completed.");

    internal static readonly Counter<long> ByteCounter = Meter.CreateCounter<long>(Bytes, "By", "Payload bytes read or written.");

    internal static readonly Histogram<double> DurationHistogram = Meter.CreateHistogram<double>(Duration, "s", "NBD command latency.");

    internal static readonly Counter<long> ReconnectCounter = Meter.CreateCounter<long>(Reconnects, "{reconnect}", "Successful reconnects.");

    internal static readonly Counter<long> LostCounter = Meter.CreateCounter<long>(ConnectionsLost, "{connection}", "Connections lost.");

    /// <summary>Records one completed command. Costs a few checks and no allocation when nobody listens.</summary>
    internal static void RecordCompletion(string command, long bytes, long startTimestamp, string outcome)
    {
        if (OperationCounter.Enabled)
        {
            OperationCounter.Add(1, new KeyValuePair<string, object?>("nbd.command", command), new KeyValuePair<string, object?>("nbd.outcome", outcome));
        }

        if (ReferenceEquals(outcome, Ok) && bytes > 0 && ByteCounter.Enabled)
        {
            ByteCounter.Add(bytes, new KeyValuePair<string, object?>("nbd.command", command));
        }

        if (DurationHistogram.Enabled)
        {
            DurationHistogram.Record(Stopwatch.GetElapsedTime(startTimestamp).TotalSeconds, new KeyValuePair<string, object?>("nbd.command", command));
        }
    }
}
