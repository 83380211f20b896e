using NbdAttachment.Testing;

namespace NbdAttachment.Tools.Tests;

public sealed class ErrorTests
{
    [Fact]
    public async Task A_bad_url_is_a_usage_error()
    {
        var run = await ToolHarness.RunAsync("info", "not-a-url");

        run.ExitCode.Should().Be(ExitCodes.Usage, run.ToString());
        run.Error.Should().Contain("invalid NBD URL 'not-a-url'");
        run.Error.Should().NotContain("   at ", "no stack trace without --verbose");
    }

    [Fact]
    public async Task A_bad_copy_url_is_a_usage_error()
    {
        var run = await ToolHarness.RunAsync("copy", "ftp://127.0.0.1/disk", ToolHarness.TempPath(".img"));

        run.ExitCode.Should().Be(ExitCodes.Usage, run.ToString());
        run.Error.Should().Contain("invalid NBD URL");
    }

    [Fact]
    public async Task An_unreachable_server_is_a_runtime_error_with_a_clear_message()
    {
        var port = ToolHarness.ClosedPort();
        var run = await ToolHarness.RunAsync("info", $"nbd://127.0.0.1:{port}/disk");

        run.ExitCode.Should().Be(ExitCodes.Error, run.ToString());
        run.Error.Should().StartWith("nbd: error: ").And.Contain($"127.0.0.1:{port}").And.Contain("NbdConnectionException");
        run.Error.Should().NotContain("   at ");
    }

    [Fact]
    public async Task Verbose_adds_the_stack_trace()
    {
        var port = ToolHarness.ClosedPort();
        var run = await ToolHarness.RunAsync("info", $"nbd://127.0.0.1:{port}/", "--verbose");

        run.ExitCode.Should().Be(ExitCodes.Error, run.ToString());
        run.Error.Should().Contain("   at ");
    }

    [Fact]
    public async Task An_unknown_export_names_the_nbd_error()
    {
        await using var server = await NbdTestServer.StartAsync(new NbdTestServerOptions { Exports = [new NbdTestExportOptions("disk", 1 << 20)] });
        var run = await ToolHarness.RunAsync("info", server.GetUri("nope").ToString());

        run.ExitCode.Should().Be(ExitCodes.Error, run.ToString());
        run.Error.Should().StartWith("nbd: error: ").And.Contain("UnknownExport");
        run.Error.Split('\n', StringSplitOptions.RemoveEmptyEntries).Should().HaveCount(1);
    }

    [Theory]
    [InlineData("info", "--bogus")]
    [InlineData("frobnicate")]
    [InlineData("copy", "a")]
    [InlineData("copy", "a", "b", "--connections", "0")]
    [InlineData("copy", "a", "b", "--connections", "many")]
    [InlineData("serve-vhost-user", "nbd://127.0.0.1/")]
    [InlineData]
    public async Task Bad_usage_exits_2_with_a_message(params string[] args)
    {
        var run = await ToolHarness.RunAsync(args);

        run.ExitCode.Should().Be(ExitCodes.Usage, run.ToString());
        run.Error.Should().Contain("nbd: usage error: ").And.Contain("--help");
    }

    [Fact]
    public async Task Help_exits_0()
    {
        var run = await ToolHarness.RunAsync("--help");

        run.ExitCode.Should().Be(0, run.ToString());
        run.Output.Should().Contain("info").And.Contain("copy").And.Contain("serve-vhost-user");
    }

    [Fact]
    public async Task A_cancelled_command_exits_130()
    {
        await using var server = await NbdTestServer.StartAsync();
        using var cancelled = new CancellationTokenSource();
        await cancelled.CancelAsync();
        var run = await ToolHarness.RunAsync(["copy", server.GetUri().ToString(), ToolHarness.TempPath(".img")], null, null, cancelled.Token);

        run.ExitCode.Should().Be(ExitCodes.Cancelled, run.ToString());
        run.Error.Should().Contain("cancelled");
    }
}
