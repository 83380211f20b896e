using System.Collections.Concurrent;
using System.Diagnostics.Metrics;
using NbdAttachment.Client;
using NbdAttachment.Diagnostics;
using NbdAttachment.Testing;

namespace NbdAttachment.Tests.Diagnostics;

public sealed class MetricsTests
{
    [Fact]
    public async Task Operations_bytes_latency_and_reconnects_are_measured()
    {
        await using var server = await NbdTestServer.StartAsync();
        var longs = new ConcurrentBag<(string Name, long Value, string? Command, string? Outcome)>();
        var doubles = new ConcurrentBag<(string Name, double Value)>();
        using var listener = new MeterListener();
        listener.InstrumentPublished = (instrument, l) =>
        {
            if (instrument.Meter.Name == NbdMeter.Name)
            {
                l.EnableMeasurementEvents(instrument);
            }
        };
        listener.SetMeasurementEventCallback<long>((instrument, value, tags, _) =>
        {
            string? command = null, outcome = null;
            foreach (var tag in tags)
            {
                command = tag.Key == "nbd.command" ? (string?)tag.Value : command;
                outcome = tag.Key == "nbd.outcome" ? (string?)tag.Value : outcome;
            }

            longs.Add((instrument.Name, value, command, outcome));
        });
        listener.SetMeasurementEventCallback<double>((instrument, value, _, _) => doubles.Add((instrument.Name, value)));
        listener.Start();

        // Other tests run in parallel and also report to the shared meter, so only lower bounds can be asserted.
        await using var client = await NbdClient.ConnectAsync(server.Uri, new NbdClientOptions
        {
            Reconnect = NbdReconnectPolicy.Default with { InitialDelay = TimeSpan.FromMilliseconds(10) },
        });
        await client.WriteAsync(0, new byte[12345]);
        await client.ReadAsync(0, new byte[12345]);
        server.Faults.FailNextCommands(1, 5, NbdTestCommand.Flush);
        var flush = async () => await client.FlushAsync();
        await flush.Should().ThrowAsync<NbdServerException>();
        server.Faults.DropConnectionAfterRequests(1);
        await client.ReadAsync(0, new byte[1]).AsTask().WaitAsync(TimeSpan.FromSeconds(20));

        longs.Should().Contain(m => m.Name == NbdMeter.Operations && m.Command == "WRITE" && m.Outcome == "ok");
        longs.Should().Contain(m => m.Name == NbdMeter.Operations && m.Command == "FLUSH" && m.Outcome == "error");
        longs.Should().Contain(m => m.Name == NbdMeter.Bytes && m.Command == "READ" && m.Value == 12345);
        longs.Should().Contain(m => m.Name == NbdMeter.Reconnects);
        longs.Should().Contain(m => m.Name == NbdMeter.ConnectionsLost);
        doubles.Should().Contain(m => m.Name == NbdMeter.Duration && m.Value >= 0);
    }
}
