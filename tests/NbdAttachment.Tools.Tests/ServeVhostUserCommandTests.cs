using System.Net.Sockets;
using NbdAttachment.Testing;

namespace NbdAttachment.Tools.Tests;

public sealed class ServeVhostUserCommandTests
{
    [Fact]
    public async Task Serves_until_the_vmm_disconnects_with_once()
    {
        if (!OperatingSystem.IsLinux())
        {
            return;
        }

        await using var server = await NbdTestServer.StartAsync(new NbdTestServerOptions { Exports = [new NbdTestExportOptions { Size = 16L << 20 }] });
        var socketPath = ToolHarness.TempPath(".sock");
        var output = new SignalWriter();
        var serving = output.WhenWritten("Serving until");
        var run = ToolHarness.RunAsync(["serve-vhost-user", server.Uri.ToString(), "--socket", socketPath, "--once", "--id", "serial-1", "--queues", "2"], null, null, CancellationToken.None, output);

        await Task.WhenAny(serving, run).WaitAsync(TimeSpan.FromSeconds(30));
        run.IsCompleted.Should().BeFalse(output.ToString());
        output.ToString().Should().Contain("vhost-user-blk-pci").And.Contain(socketPath).And.Contain("16 MiB").And.Contain("serial serial-1");

        using (var vmm = new Socket(AddressFamily.Unix, SocketType.Stream, ProtocolType.Unspecified))
        {
            await vmm.ConnectAsync(new UnixDomainSocketEndPoint(socketPath));
        }

        var result = await run.WaitAsync(TimeSpan.FromSeconds(30));
        result.ExitCode.Should().Be(0, result.ToString());
        result.Output.Should().Contain("The VMM disconnected").And.Contain("Stopped.");
    }

    [Fact]
    public async Task Stops_cleanly_when_cancelled()
    {
        if (!OperatingSystem.IsLinux())
        {
            return;
        }

        await using var server = await NbdTestServer.StartAsync(new NbdTestServerOptions { Exports = [new NbdTestExportOptions { Size = 1L << 20 }] });
        var output = new SignalWriter();
        var serving = output.WhenWritten("Serving until Ctrl+C");
        using var stop = new CancellationTokenSource();
        var run = ToolHarness.RunAsync(["serve-vhost-user", server.Uri.ToString(), "--socket", ToolHarness.TempPath(".sock"), "--read-only"], null, null, stop.Token, output);

        await Task.WhenAny(serving, run).WaitAsync(TimeSpan.FromSeconds(30));
        run.IsCompleted.Should().BeFalse(output.ToString());
        output.ToString().Should().Contain("read-only");
        await stop.CancelAsync();

        var result = await run.WaitAsync(TimeSpan.FromSeconds(30));
        result.ExitCode.Should().Be(0, result.ToString());
        result.Output.Should().Contain("Stopped.");
    }

    [Fact]
    public async Task An_unreachable_export_fails_to_start()
    {
        var run = await ToolHarness.RunAsync("serve-vhost-user", $"nbd://127.0.0.1:{ToolHarness.ClosedPort()}/", "--socket", ToolHarness.TempPath(".sock"));

        run.ExitCode.Should().Be(1, run.ToString());
        run.Error.Should().StartWith("nbd: error: ");
    }
}
