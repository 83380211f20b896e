using NbdAttachment.Testing;

namespace NbdAttachment.Tools.Tests;

public sealed class CopyCommandTests
{
    private const long Size = 8L * 1024 * 1024 + 4096 * 3;

    private static readonly (long Offset, int Length)[] DataRegions = [(0, 300_000), (3L << 20, 1 << 20), (6L << 20, 123_457), (Size - 5000, 5000)];

    private static byte[] Image()
    {
        var image = new byte[Size];
        var random = new Random(7);
        foreach (var (offset, length) in DataRegions)
        {
            random.NextBytes(image.AsSpan((int)offset, length));
        }

        return image;
    }

    private static Task<NbdTestServer> StartServerAsync() => NbdTestServer.StartAsync(new NbdTestServerOptions
    {
        Exports =
        [
            new NbdTestExportOptions("disk", Size) { MultiConn = true },
            new NbdTestExportOptions("small", 1 << 20),
            new NbdTestExportOptions("ro", Size) { ReadOnly = true },
        ],
    });

    private static void Fill(NbdTestExport export, byte[] image)
    {
        foreach (var (offset, length) in DataRegions)
        {
            export.WriteBytes(offset, image.AsSpan((int)offset, length));
        }
    }

    [Fact]
    public async Task Nbd_to_file_is_byte_identical_and_sparse()
    {
        await using var server = await StartServerAsync();
        var image = Image();
        Fill(server.GetExport("disk"), image);
        var path = ToolHarness.TempPath(".img");
        try
        {
            var run = await ToolHarness.RunAsync("copy", server.GetUri("disk").ToString(), path, "--connections", "2", "--flush");

            run.ExitCode.Should().Be(0, run.ToString());
            (await File.ReadAllBytesAsync(path)).AsSpan().SequenceEqual(image).Should().BeTrue();
            run.Output.Should().Contain("(2 connections)");
            server.Statistics.BlockStatus.Should().BeGreaterThan(0);
            server.Statistics.BytesRead.Should().BeLessThan(Size / 2, "zero extents are not read");
            server.Statistics.ConnectionsAccepted.Should().Be(2, "multi-conn through NbdClientOptions.Connections");
        }
        finally
        {
            File.Delete(path);
        }
    }

    [Fact]
    public async Task File_to_nbd_is_byte_identical_and_sparse()
    {
        await using var server = await StartServerAsync();
        var image = Image();
        var path = ToolHarness.TempPath(".img");
        await File.WriteAllBytesAsync(path, image);
        try
        {
            var run = await ToolHarness.RunAsync("copy", path, server.GetUri("disk").ToString(), "--progress");

            run.ExitCode.Should().Be(0, run.ToString());
            server.GetExport("disk").ReadBytes(0, (int)Size).AsSpan().SequenceEqual(image).Should().BeTrue();
            server.Statistics.WriteZeroes.Should().BeGreaterThan(0);
            server.Statistics.BytesWritten.Should().BeLessThan(Size / 2, "zero chunks are not sent as data");
            server.GetExport("disk").AllocatedBytes.Should().BeLessThan(Size / 2);
            run.Output.Should().Contain("progress: ").And.Contain("(100.0%)").And.Contain("MiB/s").And.Contain("ETA");
        }
        finally
        {
            File.Delete(path);
        }
    }

    [Fact]
    public async Task No_sparse_writes_every_byte()
    {
        await using var server = await StartServerAsync();
        var image = Image();
        var path = ToolHarness.TempPath(".img");
        await File.WriteAllBytesAsync(path, image);
        try
        {
            var run = await ToolHarness.RunAsync("copy", path, server.GetUri("disk").ToString(), "--no-sparse");

            run.ExitCode.Should().Be(0, run.ToString());
            server.Statistics.BytesWritten.Should().Be(Size);
            server.Statistics.WriteZeroes.Should().Be(0);
        }
        finally
        {
            File.Delete(path);
        }
    }

    [Fact]
    public async Task Nbd_to_stdout_and_stdin_to_nbd()
    {
        await using var server = await StartServerAsync();
        var image = Image();
        Fill(server.GetExport("disk"), image);

        var stdout = new MemoryStream();
        var down = await ToolHarness.RunAsync(["copy", server.GetUri("disk").ToString(), "-"], null, stdout, CancellationToken.None);
        down.ExitCode.Should().Be(0, down.ToString());
        stdout.ToArray().AsSpan().SequenceEqual(image).Should().BeTrue();
        down.Output.Should().BeEmpty("the data owns standard output; the summary goes to standard error");
        down.Error.Should().Contain("copied");

        await using var second = await StartServerAsync();
        var up = await ToolHarness.RunAsync(["copy", "-", second.GetUri("disk").ToString()], new MemoryStream(image), null, CancellationToken.None);
        up.ExitCode.Should().Be(0, up.ToString());
        second.GetExport("disk").ReadBytes(0, (int)Size).AsSpan().SequenceEqual(image).Should().BeTrue();
    }

    [Fact]
    public async Task Nbd_to_nbd()
    {
        await using var server = await StartServerAsync();
        await using var target = await StartServerAsync();
        var image = Image();
        Fill(server.GetExport("disk"), image);

        var run = await ToolHarness.RunAsync("copy", server.GetUri("disk").ToString(), target.GetUri("disk").ToString());

        run.ExitCode.Should().Be(0, run.ToString());
        target.GetExport("disk").ReadBytes(0, (int)Size).AsSpan().SequenceEqual(image).Should().BeTrue();
    }

    [Fact]
    public async Task A_read_only_or_too_small_destination_is_refused()
    {
        await using var server = await StartServerAsync();
        var readOnly = await ToolHarness.RunAsync("copy", server.GetUri("disk").ToString(), server.GetUri("ro").ToString());
        readOnly.ExitCode.Should().Be(1, readOnly.ToString());
        readOnly.Error.Should().Contain("read-only");

        var small = await ToolHarness.RunAsync("copy", server.GetUri("disk").ToString(), server.GetUri("small").ToString());
        small.ExitCode.Should().Be(1, small.ToString());
        small.Error.Should().Contain("smaller than the source");
    }

    [Fact]
    public async Task A_missing_source_file_is_a_runtime_error()
    {
        await using var server = await StartServerAsync();
        var run = await ToolHarness.RunAsync("copy", ToolHarness.TempPath(".missing"), server.GetUri("disk").ToString());

        run.ExitCode.Should().Be(1, run.ToString());
        run.Error.Should().StartWith("nbd: error: ").And.Contain("FileNotFoundException");
    }
}
