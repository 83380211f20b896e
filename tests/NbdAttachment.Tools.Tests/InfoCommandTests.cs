using System.Text.Json;
using NbdAttachment.Testing;

namespace NbdAttachment.Tools.Tests;

public sealed class InfoCommandTests
{
    private static async Task<NbdTestServer> StartServerAsync()
    {
        var server = await NbdTestServer.StartAsync(new NbdTestServerOptions
        {
            Exports =
            [
                new NbdTestExportOptions("disk", 16L * 1024 * 1024) { Description = "a writable disk", MultiConn = true },
                new NbdTestExportOptions("iso", 4L * 1024 * 1024) { Description = "a read-only image", ReadOnly = true, MinimumBlockSize = 512 },
            ],
            ListenOnUnixSocket = true,
        });
        server.GetExport("disk").WriteBytes(0, new byte[64 * 1024].Select((_, i) => (byte)(i % 251 + 1)).ToArray());
        return server;
    }

    [Fact]
    public async Task Info_describes_the_export_in_text()
    {
        await using var server = await StartServerAsync();
        var run = await ToolHarness.RunAsync("info", server.GetUri("disk").ToString());

        run.ExitCode.Should().Be(0, run.ToString());
        run.Output.Should().Contain("size:               16,777,216 bytes (16 MiB)")
            .And.Contain("description:        a writable disk")
            .And.Contain("multi_conn")
            .And.Contain("meta contexts:      base:allocation")
            .And.Contain("tls:                no");
    }

    [Fact]
    public async Task Info_contexts_lists_the_meta_contexts_in_text_and_json()
    {
        await using var server = await StartServerAsync();
        var text = await ToolHarness.RunAsync("info", "--contexts", server.GetUri("disk").ToString());
        text.ExitCode.Should().Be(0, text.ToString());
        text.Output.Trim().Should().Be("base:allocation");

        var json = await ToolHarness.RunAsync("info", "--contexts", "--json", server.GetUri("disk").ToString());
        json.ExitCode.Should().Be(0, json.ToString());
        using var document = JsonDocument.Parse(json.Output);
        document.RootElement.GetProperty("meta_contexts").EnumerateArray().Select(e => e.GetString()).Should().Equal("base:allocation");
    }

    [Fact]
    public async Task Info_json_parses_back_over_a_unix_socket()
    {
        await using var server = await StartServerAsync();
        var url = server.GetUri("iso", unixSocket: true).ToString();
        var run = await ToolHarness.RunAsync("info", url, "--json");

        run.ExitCode.Should().Be(0, run.ToString());
        using var json = JsonDocument.Parse(run.Output);
        var root = json.RootElement;
        root.GetProperty("url").GetString().Should().Be(url);
        root.GetProperty("export_name").GetString().Should().Be("iso");
        root.GetProperty("description").GetString().Should().Be("a read-only image");
        root.GetProperty("size").GetInt64().Should().Be(4L * 1024 * 1024);
        root.GetProperty("tls").GetBoolean().Should().BeFalse();
        root.GetProperty("flags").GetProperty("read_only").GetBoolean().Should().BeTrue();
        root.GetProperty("block_size").GetProperty("minimum").GetInt64().Should().Be(512);
        root.GetProperty("contexts").EnumerateArray().Select(e => e.GetString()).Should().Contain("base:allocation");
        root.TryGetProperty("map", out _).Should().BeFalse();
    }

    [Fact]
    public async Task Info_list_lists_every_export()
    {
        await using var server = await StartServerAsync();
        var text = await ToolHarness.RunAsync("info", server.GetUri().ToString(), "--list");
        text.ExitCode.Should().Be(0, text.ToString());
        text.Output.Should().Contain("2 export(s)").And.Contain("disk").And.Contain("iso").And.Contain("read-only").And.Contain("\"a writable disk\"");

        var json = await ToolHarness.RunAsync("info", server.GetUri().ToString(), "--list", "--json");
        json.ExitCode.Should().Be(0, json.ToString());
        using var document = JsonDocument.Parse(json.Output);
        var exports = document.RootElement.GetProperty("exports").EnumerateArray().ToList();
        exports.Select(e => e.GetProperty("name").GetString()).Should().BeEquivalentTo("disk", "iso");
        exports.Single(e => e.GetProperty("name").GetString() == "iso").GetProperty("read_only").GetBoolean().Should().BeTrue();
        exports.Single(e => e.GetProperty("name").GetString() == "disk").GetProperty("size").GetInt64().Should().Be(16L * 1024 * 1024);
    }

    [Fact]
    public async Task Info_map_prints_data_and_zero_extents()
    {
        await using var server = await StartServerAsync();
        var run = await ToolHarness.RunAsync("info", server.GetUri("disk").ToString(), "--map");

        run.ExitCode.Should().Be(0, run.ToString());
        var lines = run.Output.Split('\n', StringSplitOptions.RemoveEmptyEntries);
        lines[0].Split(' ', StringSplitOptions.RemoveEmptyEntries).Should().Equal("0", "65536", "0", "data");
        lines.Skip(1).Should().OnlyContain(l => l.Contains("zero", StringComparison.Ordinal));
        lines.Select(l => long.Parse(l.Split(' ', StringSplitOptions.RemoveEmptyEntries)[1], System.Globalization.CultureInfo.InvariantCulture)).Sum().Should().Be(16L * 1024 * 1024);

        var json = await ToolHarness.RunAsync("info", server.GetUri("disk").ToString(), "--map", "--json", "--context", "base:allocation");
        json.ExitCode.Should().Be(0, json.ToString());
        using var document = JsonDocument.Parse(json.Output);
        var map = document.RootElement.GetProperty("map");
        map.GetProperty("context").GetString().Should().Be("base:allocation");
        var first = map.GetProperty("extents").EnumerateArray().First();
        first.GetProperty("offset").GetInt64().Should().Be(0);
        first.GetProperty("length").GetInt64().Should().Be(65536);
        first.GetProperty("type").GetInt32().Should().Be(0);
        first.GetProperty("description").GetString().Should().Be("data");
    }

    [Fact]
    public async Task Info_map_of_a_context_the_server_lacks_fails_clearly()
    {
        await using var server = await StartServerAsync();
        var run = await ToolHarness.RunAsync("info", server.GetUri("disk").ToString(), "--map", "--context", "qemu:dirty-bitmap:nope");

        run.ExitCode.Should().Be(1, run.ToString());
        run.Error.Should().Contain("qemu:dirty-bitmap:nope");
    }
}
