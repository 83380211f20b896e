using System.Diagnostics;
using NbdAttachment.Client;
using NbdAttachment.InteropTests.Servers;
using static NbdAttachment.InteropTests.Client.ClientTestSupport;

namespace NbdAttachment.InteropTests.Client;

/// <summary>Server-side faults: injected errors, slow replies, a killed and restarted server.</summary>
public sealed class FaultClientTests
{
    private const int MiB = 1024 * 1024;

    [SkippableTheory]
    [InlineData(true)]
    [InlineData(false)]
    public Task Error_filter_surfaces_typed_server_errors(bool structured) => Bounded(async () =>
    {
        await using var server = await NbdkitProcess.StartAsync(new NbdkitOptions
        {
            Plugin = "memory",
            PluginArguments = ["size=1M", "error=EIO", "error-pread-rate=1", "error-pwrite=ENOSPC", "error-pwrite-rate=1"],
            Filters = ["error"],
        });
        await using var client = await ConnectAsync(server.Uri, Plain with { RequestStructuredReplies = structured });

        var read = (await FluentActions.Awaiting(async () => await client.ReadAsync(0, new byte[4096]))
            .Should().ThrowAsync<NbdServerException>()).Which;
        read.Error.Should().Be(NbdError.IOError);

        var write = (await FluentActions.Awaiting(async () => await client.WriteAsync(0, new byte[4096]))
            .Should().ThrowAsync<NbdServerException>()).Which;
        write.Error.Should().Be(NbdError.NoSpace);

        // Errors are per request: the connection stays up and other commands still work.
        client.State.Should().Be(NbdClientState.Connected);
        await client.FlushAsync();

        // Many concurrent failing reads (several split into chunks) all complete; nothing hangs.
        var reads = Enumerable.Range(0, 32).Select(async i =>
        {
            try
            {
                await client.ReadAsync(i * 1024, new byte[i % 2 == 0 ? 1024 : 3 * (int)client.Export.MaximumPayloadSize / 2 % (MiB - (i * 1024))]);
                return false;
            }
            catch (NbdServerException)
            {
                return true;
            }
        });
        (await Task.WhenAll(reads)).Should().OnlyContain(failed => failed);
        client.State.Should().Be(NbdClientState.Connected);
    });

    /// <summary>
    /// delay-read=2 (seconds) with RequestTimeout=500 ms and reconnect disabled. What is asserted: the read
    /// fails within 1.9 s (before the delayed reply could arrive) with <see cref="NbdTimeoutException"/>
    /// (the client declares the connection dead), the client ends Failed (no reconnect allowed), and later
    /// I/O fails immediately rather than hanging.
    /// </summary>
    [SkippableFact]
    public Task Delay_filter_with_request_timeout_fails_fast() => Bounded(async () =>
    {
        await using var server = await NbdkitProcess.StartAsync(new NbdkitOptions
        {
            Plugin = "memory", PluginArguments = ["size=1M", "delay-read=2"], Filters = ["delay"],
        });
        await using var client = await ConnectAsync(server.Uri, Plain with { RequestTimeout = TimeSpan.FromMilliseconds(500) });

        await client.WriteAsync(0, new byte[] { 1, 2, 3 }); // writes are not delayed
        var clock = Stopwatch.StartNew();
        var ex = await FluentActions.Awaiting(async () => await client.ReadAsync(0, new byte[512]))
            .Should().ThrowAsync<NbdException>();
        clock.Elapsed.Should().BeLessThan(TimeSpan.FromSeconds(1.9));
        ex.Which.Should().BeOfType<NbdTimeoutException>();
        client.State.Should().Be(NbdClientState.Failed, "reconnect is disabled");

        // Later I/O fails at once instead of hanging.
        await FluentActions.Awaiting(async () => await client.WriteAsync(0, new byte[1]))
            .Should().ThrowAsync<Exception>();
    }, TimeSpan.FromSeconds(20));

    /// <summary>
    /// qemu-nbd on a raw file (the data survives the process) is SIGKILLed and restarted during a write
    /// workload; the client reconnects and replays. Writes are issued with FUA so every acknowledged write is
    /// on disk: a killed server may lose acknowledged-but-unflushed data, which would make verification
    /// meaningless. Every write task must complete, ReconnectCount ≥ 1, and a fresh connection reads back
    /// exactly what was written.
    /// </summary>
    [SkippableFact]
    public Task Server_killed_and_restarted_during_writes_all_writes_complete() => Bounded(async () =>
    {
        await using var server = await QemuNbdProcess.StartAsync(new QemuNbdOptions { ImageSize = 8 * MiB, Shared = 4 });
        var options = Plain with
        {
            Reconnect = new NbdReconnectPolicy
            {
                MaxDuration = TimeSpan.FromSeconds(10), InitialDelay = TimeSpan.FromMilliseconds(50), MaxDelay = TimeSpan.FromMilliseconds(500),
            },
            RequestTimeout = TimeSpan.FromSeconds(5),
        };
        await using var client = await ConnectAsync(server.Uri, options);
        var fua = client.Export.CanFua ? NbdCommandOptions.ForceUnitAccess : NbdCommandOptions.None;

        const int blocks = 256;
        const int blockSize = 32 * 1024;
        var expected = RandomBytes(blocks * blockSize, 99);
        var written = 0;
        var workload = Task.Run(async () =>
        {
            // 4 writers in flight at a time, in order, so the kill lands mid-workload.
            for (var i = 0; i < blocks; i += 4)
            {
                await Task.WhenAll(Enumerable.Range(i, 4).Select(b =>
                    client.WriteAsync((long)b * blockSize, expected.AsMemory(b * blockSize, blockSize), fua).AsTask()));
                Interlocked.Add(ref written, 4);
                await Task.Delay(2);
            }
        });

        var deadline = Stopwatch.StartNew();
        while (Volatile.Read(ref written) < blocks / 4 && !workload.IsCompleted && deadline.Elapsed < TimeSpan.FromSeconds(10))
        {
            await Task.Delay(5);
        }

        workload.IsCompleted.Should().BeFalse("the kill must land in the middle of the workload");
        await server.RestartAsync(TimeSpan.FromMilliseconds(300));
        await workload.WaitAsync(TimeSpan.FromSeconds(30));
        if (fua == NbdCommandOptions.None)
        {
            await client.FlushAsync();
        }

        client.ReconnectCount.Should().BeGreaterThanOrEqualTo(1);
        client.State.Should().Be(NbdClientState.Connected);

        await using var verifier = await ConnectAsync(server.Uri);
        var back = new byte[expected.Length];
        await verifier.ReadAsync(0, back);
        back.ShouldEqualBytes(expected);
    });
}
