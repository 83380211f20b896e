using NbdAttachment.Client;
using NbdAttachment.Testing;

namespace NbdAttachment.Tests.Engine;

/// <summary>Every command against the in-process server, with structured replies on and off.</summary>
public sealed class CommandTests
{
    private static readonly TimeSpan Bound = TimeSpan.FromSeconds(20);

    public static TheoryData<bool> Structured => new() { true, false };

    [Theory]
    [MemberData(nameof(Structured))]
    public async Task Write_then_read_round_trips(bool structured)
    {
        await using var server = await NbdTestServer.StartAsync(new NbdTestServerOptions { SupportStructuredReplies = structured });
        await using var client = await NbdClient.ConnectAsync(server.Uri);
        client.Export.StructuredReplies.Should().Be(structured);
        var data = Pattern(128 * 1024, 3);
        await client.WriteAsync(4096, data).AsTask().WaitAsync(Bound);
        var back = new byte[data.Length];
        await client.ReadAsync(4096, back).AsTask().WaitAsync(Bound);
        back.Should().Equal(data);
        server.GetExport().ReadBytes(4096, data.Length).Should().Equal(data);
    }

    [Fact]
    public async Task Fua_write_and_flush_reach_the_server()
    {
        await using var server = await NbdTestServer.StartAsync();
        await using var client = await NbdClient.ConnectAsync(server.Uri);
        await client.WriteAsync(0, new byte[512], NbdCommandOptions.ForceUnitAccess);
        await client.FlushAsync();
        server.Statistics.FuaWrites.Should().Be(1);
        server.Statistics.Flushes.Should().Be(1);
    }

    [Fact]
    public async Task Trim_and_write_zeroes_clear_data()
    {
        await using var server = await NbdTestServer.StartAsync();
        await using var client = await NbdClient.ConnectAsync(server.Uri);
        await client.WriteAsync(0, Pattern(1 << 20, 1));
        await client.TrimAsync(0, 256 * 1024);
        await client.WriteZeroesAsync(512 * 1024, 256 * 1024, NbdCommandOptions.NoHole);
        await client.WriteZeroesAsync(768 * 1024, 4096, NbdCommandOptions.FastZero | NbdCommandOptions.ForceUnitAccess);
        server.Statistics.Trims.Should().Be(1);
        server.Statistics.WriteZeroes.Should().Be(2);
        var back = new byte[1 << 20];
        await client.ReadAsync(0, back);
        back.AsSpan(512 * 1024, 256 * 1024).ToArray().Should().OnlyContain(b => b == 0);
        back.AsSpan(768 * 1024, 4096).ToArray().Should().OnlyContain(b => b == 0);
        back.AsSpan(256 * 1024, 256 * 1024).ToArray().Should().Equal(Pattern(1 << 20, 1).AsSpan(256 * 1024, 256 * 1024).ToArray());
    }

    [Fact]
    public async Task Cache_is_sent()
    {
        await using var server = await NbdTestServer.StartAsync();
        await using var client = await NbdClient.ConnectAsync(server.Uri);
        await client.CacheAsync(0, 1 << 20);
        server.Statistics.Caches.Should().Be(1);
    }

    [Fact]
    public async Task Block_status_reports_holes_and_data()
    {
        await using var server = await NbdTestServer.StartAsync();
        await using var client = await NbdClient.ConnectAsync(server.Uri);
        client.Export.CanBlockStatus.Should().BeTrue();
        client.Export.MetaContexts.Should().Contain("base:allocation");
        await client.WriteAsync(1 << 20, Pattern(1 << 20, 5));
        var extents = await client.GetBlockStatusAsync(0, 4 << 20);
        extents.Should().NotBeEmpty();
        extents[0].Offset.Should().Be(0);
        extents[0].IsHole.Should().BeTrue();
        extents[0].IsZero.Should().BeTrue();
        extents.Should().Contain(e => e.Offset == 1 << 20 && !e.IsHole);
        for (var i = 1; i < extents.Count; i++)
        {
            extents[i].Offset.Should().Be(extents[i - 1].Offset + extents[i - 1].Length);
        }

        var one = await client.GetBlockStatusAsync(1 << 20, 4 << 20, singleExtent: true);
        one.Should().ContainSingle().Which.Length.Should().BeLessThanOrEqualTo(4 << 20);
    }

    [Fact]
    public async Task Block_status_without_structured_replies_is_refused_locally()
    {
        await using var server = await NbdTestServer.StartAsync(new NbdTestServerOptions { SupportStructuredReplies = false });
        await using var client = await NbdClient.ConnectAsync(server.Uri);
        var act = async () => await client.GetBlockStatusAsync(0, 4096);
        (await act.Should().ThrowAsync<NbdRequestRejectedException>()).Which.Reason.Should().Be(NbdRequestRejectReason.NotSupported);
        server.Statistics.BlockStatus.Should().Be(0);
    }

    [Fact]
    public async Task Unknown_context_is_refused_locally()
    {
        await using var server = await NbdTestServer.StartAsync();
        await using var client = await NbdClient.ConnectAsync(server.Uri);
        var act = async () => await client.GetBlockStatusAsync(0, 4096, "qemu:dirty-bitmap:x");
        (await act.Should().ThrowAsync<NbdRequestRejectedException>()).Which.Message.Should().Contain("not granted");
    }

    [Theory]
    [MemberData(nameof(Structured))]
    public async Task Split_reads_assembled_from_shuffled_chunks_and_holes(bool withData)
    {
        await using var server = await NbdTestServer.StartAsync(new NbdTestServerOptions { SplitReads = true, MaxChunkSize = 4096 });
        var export = server.GetExport();
        var data = Pattern(256 * 1024, 9);
        if (withData)
        {
            export.WriteBytes(64 * 1024, data.AsSpan(0, 64 * 1024));
            export.WriteBytes(192 * 1024, data.AsSpan(0, 32 * 1024));
        }

        await using var client = await NbdClient.ConnectAsync(server.Uri);
        var back = Enumerable.Repeat((byte)0xEE, 256 * 1024).ToArray();
        await client.ReadAsync(0, back).AsTask().WaitAsync(Bound);
        back.Should().Equal(export.ReadBytes(0, back.Length));
    }

    [Fact]
    public async Task Dont_fragment_reads_come_back_whole_and_are_refused_without_structured_replies()
    {
        await using (var server = await NbdTestServer.StartAsync(new NbdTestServerOptions { SplitReads = true, MaxChunkSize = 512 }))
        {
            var data = Pattern(200 * 1024, 12);
            server.GetExport().WriteBytes(100, data);
            await using var client = await NbdClient.ConnectAsync(server.Uri);
            client.Export.CanDontFragment.Should().BeTrue();
            var back = new byte[data.Length];
            await client.ReadAsync(100, back, NbdCommandOptions.DontFragment).AsTask().WaitAsync(Bound);
            back.Should().Equal(data);
            server.Statistics.Reads.Should().Be(4, "DF reads are split at 64 KiB");
        }

        await using (var plain = await NbdTestServer.StartAsync(new NbdTestServerOptions { SupportStructuredReplies = false }))
        {
            await using var client = await NbdClient.ConnectAsync(plain.Uri);
            var act = async () => await client.ReadAsync(0, new byte[512], NbdCommandOptions.DontFragment);
            (await act.Should().ThrowAsync<NbdRequestRejectedException>()).Which.Reason.Should().Be(NbdRequestRejectReason.NotSupported);
        }
    }

    [Fact]
    public async Task Disposal_sends_disconnect()
    {
        await using var server = await NbdTestServer.StartAsync();
        var client = await NbdClient.ConnectAsync(server.Uri);
        await client.ReadAsync(0, new byte[512]);
        await client.DisposeAsync();
        client.State.Should().Be(NbdClientState.Closed);
        await WaitFor(() => server.Statistics.Disconnects == 1);
        var act = async () => await client.ReadAsync(0, new byte[512]);
        await act.Should().ThrowAsync<ObjectDisposedException>();
    }

    [Fact]
    public async Task Read_only_export_refuses_writes_locally()
    {
        await using var server = await NbdTestServer.StartAsync(new NbdTestServerOptions { Exports = [new NbdTestExportOptions { ReadOnly = true }] });
        await using var client = await NbdClient.ConnectAsync(server.Uri);
        client.Export.IsReadOnly.Should().BeTrue();
        foreach (var act in new Func<Task>[]
        {
            async () => await client.WriteAsync(0, new byte[512]),
            async () => await client.TrimAsync(0, 512),
            async () => await client.WriteZeroesAsync(0, 512),
        })
        {
            (await act.Should().ThrowAsync<NbdRequestRejectedException>()).Which.Reason.Should().Be(NbdRequestRejectReason.ReadOnly);
        }

        server.Statistics.Writes.Should().Be(0);
        server.Statistics.Trims.Should().Be(0);
        server.Statistics.WriteZeroes.Should().Be(0);
    }

    [Theory]
    [InlineData(-1L, 512)]
    [InlineData(0L, 64 * 1024 * 1024 + 1)]
    [InlineData(64L * 1024 * 1024, 1)]
    [InlineData(long.MaxValue, 1)]
    public async Task Out_of_bounds_requests_are_refused_locally(long offset, int length)
    {
        await using var server = await NbdTestServer.StartAsync();
        await using var client = await NbdClient.ConnectAsync(server.Uri);
        var read = async () => await client.ReadAsync(offset, new byte[length]);
        (await read.Should().ThrowAsync<NbdRequestRejectedException>()).Which.Reason.Should().Be(NbdRequestRejectReason.OutOfBounds);
        var trim = async () => await client.TrimAsync(offset, length);
        (await trim.Should().ThrowAsync<NbdRequestRejectedException>()).Which.Reason.Should().Be(NbdRequestRejectReason.OutOfBounds);
        server.Statistics.Reads.Should().Be(0);
    }

    [Fact]
    public async Task Commands_the_server_does_not_advertise_are_refused_locally()
    {
        var options = new NbdTestServerOptions { Exports = [new NbdTestExportOptions { TransmissionFlagsOverride = 0x0001 }] };
        await using var server = await NbdTestServer.StartAsync(options);
        await using var client = await NbdClient.ConnectAsync(server.Uri);
        foreach (var act in new Func<Task>[]
        {
            async () => await client.FlushAsync(),
            async () => await client.TrimAsync(0, 512),
            async () => await client.WriteZeroesAsync(0, 512),
            async () => await client.CacheAsync(0, 512),
            async () => await client.WriteAsync(0, new byte[512], NbdCommandOptions.ForceUnitAccess),
        })
        {
            (await act.Should().ThrowAsync<NbdRequestRejectedException>()).Which.Reason.Should().Be(NbdRequestRejectReason.NotSupported);
        }

        server.Statistics.Flushes.Should().Be(0);
        server.Statistics.Writes.Should().Be(0);
    }

    [Fact]
    public async Task Fast_zero_without_the_flag_is_refused_locally()
    {
        var options = new NbdTestServerOptions { Exports = [new NbdTestExportOptions { TransmissionFlagsOverride = 0x0001 | 0x0040 }] };
        await using var server = await NbdTestServer.StartAsync(options);
        await using var client = await NbdClient.ConnectAsync(server.Uri);
        var act = async () => await client.WriteZeroesAsync(0, 512, NbdCommandOptions.FastZero);
        (await act.Should().ThrowAsync<NbdRequestRejectedException>()).Which.Message.Should().Contain("FAST_ZERO");
        await client.WriteZeroesAsync(0, 512);
    }

    [Fact]
    public async Task Server_errors_reach_the_caller_typed_with_their_message()
    {
        await using var server = await NbdTestServer.StartAsync();
        await using var client = await NbdClient.ConnectAsync(server.Uri);
        server.Faults.FailNextCommands(1, 5, NbdTestCommand.Write, "disk on fire");
        var act = async () => await client.WriteAsync(0, new byte[512]);
        var error = (await act.Should().ThrowAsync<NbdServerException>()).Which;
        error.Error.Should().Be(NbdError.IOError);
        error.ServerMessage.Should().Be("disk on fire");
        error.Command.Should().Be("WRITE");
        await client.WriteAsync(0, new byte[512]);
        client.State.Should().Be(NbdClientState.Connected);
    }

    [Fact]
    public async Task Zero_length_io_completes_without_a_request()
    {
        await using var server = await NbdTestServer.StartAsync();
        await using var client = await NbdClient.ConnectAsync(server.Uri);
        await client.ReadAsync(0, Memory<byte>.Empty);
        await client.WriteAsync(0, ReadOnlyMemory<byte>.Empty);
        server.Statistics.Reads.Should().Be(0);
        server.Statistics.Writes.Should().Be(0);
    }

    internal static byte[] Pattern(int length, int seed)
    {
        var bytes = new byte[length];
        new Random(seed).NextBytes(bytes);
        return bytes;
    }

    internal static async Task WaitFor(Func<bool> condition, int seconds = 10)
    {
        var deadline = DateTime.UtcNow.AddSeconds(seconds);
        while (!condition())
        {
            DateTime.UtcNow.Should().BeBefore(deadline, "the condition should become true in time");
            await Task.Delay(10);
        }
    }
}
