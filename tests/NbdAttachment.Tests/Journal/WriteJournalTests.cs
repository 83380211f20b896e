using NbdAttachment.Client;
using NbdAttachment.Testing;
using static NbdAttachment.Tests.Engine.CommandTests;

namespace NbdAttachment.Tests.Journal;

/// <summary>
/// A server restart loses writes it acknowledged but had not flushed. The client's journal writes them again
/// after reconnecting, so no acknowledged write is lost.
/// </summary>
public sealed class WriteJournalTests
{
    private static readonly TimeSpan Bound = TimeSpan.FromSeconds(30);

    private static NbdClientOptions Fast(long journal) => new()
    {
        WriteJournalCapacity = journal,
        Reconnect = NbdReconnectPolicy.Default with { InitialDelay = TimeSpan.FromMilliseconds(10), MaxDelay = TimeSpan.FromMilliseconds(50) },
    };

    private static Task<NbdTestServer> CachingServerAsync() =>
        NbdTestServer.StartAsync(new NbdTestServerOptions { Exports = [new NbdTestExportOptions { Size = 16 << 20, VolatileWriteCache = true }] });

    [Fact]
    public async Task Unflushed_writes_lost_by_a_crashing_server_are_written_again()
    {
        await using var server = await CachingServerAsync();
        await using var client = await NbdClient.ConnectAsync(server.Uri, Fast(64 << 20));
        var expected = new byte[16 << 20];
        for (var i = 0; i < 40; i++)
        {
            var data = Pattern(64 * 1024 + (i * 512), i);
            var offset = (long)i * 300 * 1024;
            await client.WriteAsync(offset, data);
            data.CopyTo(expected, offset);
        }

        await client.WriteZeroesAsync(4096, 8192);
        Array.Clear(expected, 4096, 8192);
        var export = server.GetExport();
        export.HasUnflushedWrites.Should().BeTrue();

        // The server "crashes": its cache is gone and the connection drops at the next request.
        export.LoseUnflushedWrites();
        server.Faults.DropConnectionAfterRequests(1);
        var probe = new byte[1];
        await client.ReadAsync(0, probe).AsTask().WaitAsync(Bound);
        client.ReconnectCount.Should().Be(1);

        var back = new byte[expected.Length];
        await client.ReadAsync(0, back).AsTask().WaitAsync(Bound);
        back.Should().Equal(expected, "every acknowledged write must survive the restart");
    }

    [Fact]
    public async Task Without_the_journal_the_same_crash_loses_data()
    {
        // Proves the scenario above really loses data when nothing replays it.
        await using var server = await CachingServerAsync();
        await using var client = await NbdClient.ConnectAsync(server.Uri, Fast(0));
        await client.WriteAsync(0, Pattern(4096, 1));
        server.GetExport().LoseUnflushedWrites();
        server.Faults.DropConnectionAfterRequests(1);
        await client.ReadAsync(0, new byte[1]).AsTask().WaitAsync(Bound);
        var back = new byte[4096];
        await client.ReadAsync(0, back);
        back.Should().OnlyContain(b => b == 0);
    }

    [Fact]
    public async Task A_completed_flush_empties_the_journal()
    {
        await using var server = await CachingServerAsync();
        await using var client = await NbdClient.ConnectAsync(server.Uri, Fast(64 << 20));
        var journal = GetJournal(client);
        await client.WriteAsync(0, new byte[8192]);
        journal.Count.Should().Be(1);
        journal.Bytes.Should().Be(8192);
        await client.WriteAsync(8192, new byte[8192], NbdCommandOptions.ForceUnitAccess);
        await client.TrimAsync(16384, 4096);
        journal.Count.Should().Be(3, "FUA writes and trims are kept too, so an older write replayed later cannot undo them");
        await client.FlushAsync();
        journal.Count.Should().Be(0);
        journal.Bytes.Should().Be(0);
    }

    [Fact]
    public async Task A_fua_write_is_not_undone_by_replaying_an_older_write()
    {
        await using var server = await CachingServerAsync();
        await using var client = await NbdClient.ConnectAsync(server.Uri, Fast(64 << 20));
        await client.WriteAsync(0, Pattern(4096, 1));
        var newer = Pattern(4096, 2);
        await client.WriteAsync(0, newer, NbdCommandOptions.ForceUnitAccess);
        server.Faults.DropConnectionAfterRequests(1);
        await client.ReadAsync(0, new byte[1]).AsTask().WaitAsync(Bound);
        var back = new byte[4096];
        await client.ReadAsync(0, back);
        back.Should().Equal(newer);
    }

    [Fact]
    public async Task Past_its_capacity_the_journal_flushes_by_itself()
    {
        await using var server = await CachingServerAsync();
        await using var client = await NbdClient.ConnectAsync(server.Uri, Fast(256 * 1024));
        for (var i = 0; i < 16; i++)
        {
            await client.WriteAsync(i * 65536L, Pattern(65536, i));
        }

        await WaitFor(() => server.Statistics.Flushes >= 1);
        await WaitFor(() => GetJournal(client).Bytes <= 256 * 1024);
    }

    [Fact]
    public async Task A_flush_in_flight_during_the_crash_is_sent_after_the_replay()
    {
        await using var server = await CachingServerAsync();
        await using var client = await NbdClient.ConnectAsync(server.Uri, Fast(64 << 20));
        var data = Pattern(65536, 3);
        await client.WriteAsync(0, data);
        var export = server.GetExport();
        export.LoseUnflushedWrites();
        server.Faults.DropConnectionAfterRequests(1); // the flush itself is the request that breaks the connection
        await client.FlushAsync().AsTask().WaitAsync(Bound);
        export.HasUnflushedWrites.Should().BeFalse("the replayed flush covers the replayed write");
        var durable = new byte[data.Length];
        export.ReadPersistedBytes(0, durable);
        durable.Should().Equal(data);
    }

    [Fact]
    public async Task A_replayed_write_failing_once_is_tried_again()
    {
        await using var server = await CachingServerAsync();
        await using var client = await NbdClient.ConnectAsync(server.Uri, Fast(64 << 20));
        var data = Pattern(4096, 9);
        await client.WriteAsync(0, data);
        server.GetExport().LoseUnflushedWrites();
        server.Faults.DropConnectionAfterRequests(1);
        server.Faults.FailNextCommands(1, 5, NbdTestCommand.Write);
        await client.ReadAsync(0, new byte[1]).AsTask().WaitAsync(Bound);
        server.GetExport().ReadBytes(0, 4096).Should().Equal(data);
        client.State.Should().Be(NbdClientState.Connected);
    }

    [Fact]
    public async Task A_server_that_stalls_during_the_replay_is_caught_by_the_request_timeout()
    {
        await using var server = await CachingServerAsync();
        await using var client = await NbdClient.ConnectAsync(server.Uri, Fast(64 << 20) with { RequestTimeout = TimeSpan.FromMilliseconds(300) });
        var data = Pattern(4096, 4);
        await client.WriteAsync(0, data);
        server.Faults.DropConnectionAfterRequests(1);
        server.Faults.ReorderReplies(2); // the server holds the single replayed write's reply, waiting for a second
        await client.ReadAsync(0, new byte[1]).AsTask().WaitAsync(Bound);
        client.ReconnectCount.Should().BeGreaterThanOrEqualTo(2);
        server.GetExport().ReadBytes(0, 4096).Should().Equal(data);
    }

    [Fact]
    public async Task A_server_refusing_a_replayed_write_fails_the_client_with_a_data_loss_error()
    {
        await using var server = await CachingServerAsync();
        await using var client = await NbdClient.ConnectAsync(server.Uri, Fast(64 << 20));
        await client.WriteAsync(0, new byte[4096]);
        server.Faults.DropConnectionAfterRequests(1);
        server.Faults.FailNextCommands(3, 5, NbdTestCommand.Write, "disk gone");
        var act = async () => await client.ReadAsync(0, new byte[1]);
        await act.Should().ThrowAsync<NbdDataLossException>().WaitAsync(Bound);
        client.State.Should().Be(NbdClientState.Failed);
        client.Failure.Should().BeOfType<NbdDataLossException>().Which.Message.Should().Contain("could not be written again");
    }

    private static NbdAttachment.Engine.WriteJournal GetJournal(NbdClient client)
    {
        var field = typeof(NbdClient).GetField("_connection", System.Reflection.BindingFlags.NonPublic | System.Reflection.BindingFlags.Instance)!;
        return ((NbdAttachment.Engine.NbdConnection)field.GetValue(client)!).Journal!;
    }
}
