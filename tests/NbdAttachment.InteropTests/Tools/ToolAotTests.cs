using NbdAttachment.InteropTests.Servers;
using Xunit.Abstractions;

namespace NbdAttachment.InteropTests.Tools;

/// <summary>
/// Publishes the <c>nbd</c> tool once with <c>PublishAot=true</c> for linux-x64 (into a private artifacts folder,
/// so it never touches the solution's bin/ and obj/) and shares the native binary with the tests.
/// </summary>
public sealed class AotToolFixture : IAsyncLifetime
{
    private readonly TempDirectory _temp = new();

    /// <summary>The native binary, or null with <see cref="Problem"/> when the publish failed.</summary>
    public string? Binary { get; private set; }

    public string? Problem { get; private set; }

    public async Task InitializeAsync()
    {
        var root = AppContext.BaseDirectory;
        while (!File.Exists(Path.Combine(root, "NbdAttachment.sln")))
        {
            root = Path.GetDirectoryName(root.TrimEnd(Path.DirectorySeparatorChar)) ?? throw new InvalidOperationException("The repository root was not found.");
        }

        var dotnet = Environment.GetEnvironmentVariable("DOTNET_HOST_PATH") is { Length: > 0 } host && File.Exists(host) ? host : "dotnet";
        var output = _temp.Combine("publish");
        var result = await ProcessUtilities.RunToolAsync(
            dotnet,
            ["publish", Path.Combine(root, "src", "NbdAttachment.Tools", "NbdAttachment.Tools.csproj"), "-c", "Release", "-r", "linux-x64",
             "-p:PublishAot=true", "--artifacts-path", _temp.Combine("artifacts"), "-o", output, "--disable-build-servers", "-nodeReuse:false"],
            TimeSpan.FromMinutes(8));
        var binary = Path.Combine(output, "NbdAttachment.Tools");
        if (result.ExitCode == 0 && File.Exists(binary))
        {
            Binary = binary;
        }
        else
        {
            Problem = $"dotnet publish -p:PublishAot=true failed (exit {result.ExitCode}):\n{result.StandardOutput}\n{result.StandardError}";
        }
    }

    public Task DisposeAsync()
    {
        _temp.Dispose();
        return Task.CompletedTask;
    }
}

/// <summary>The native-AOT <c>nbd</c> binary against real servers: nbdkit for info and a sparse copy round trip, qemu-nbd for the map compared with libnbd's nbdinfo.</summary>
[Trait("Category", "Tool")]
public sealed class ToolAotTests(AotToolFixture tool, ITestOutputHelper output) : IClassFixture<AotToolFixture>
{
    private static readonly TimeSpan Bound = TimeSpan.FromSeconds(60);

    [SkippableFact]
    public async Task Aot_binary_describes_an_nbdkit_export_and_copies_file_to_nbdkit_to_file_byte_identical_and_sparse()
    {
        var nbd = Binary();
        using var temp = new TempDirectory();
        const long size = 32L << 20;
        var source = temp.Combine("source.img");
        await using (var file = File.Create(source))
        {
            file.SetLength(size);
            var data = new byte[1 << 20];
            new Random(42).NextBytes(data);
            file.Position = 0;
            await file.WriteAsync(data);
            file.Position = 20L << 20;
            await file.WriteAsync(data.AsMemory(0, 256 << 10));
        }

        await using var nbdkit = await NbdkitProcess.StartAsync(new NbdkitOptions { Plugin = "memory", PluginArguments = [$"size={size}"], Listen = ListenKind.Unix });
        var url = nbdkit.Uri.ToString();

        var info = await RunAsync(nbd, "info", url);
        info.StandardOutput.Should().Contain("33,554,432 bytes");
        (await RunAsync(nbd, "info", "--json", url)).StandardOutput.Should().Contain("\"size\": 33554432");

        await RunAsync(nbd, "copy", source, url);
        var destination = temp.Combine("copy.img");
        await RunAsync(nbd, "copy", url, destination);

        var copied = await File.ReadAllBytesAsync(destination);
        var original = await File.ReadAllBytesAsync(source);
        copied.AsSpan().SequenceEqual(original).Should().BeTrue("the round trip is byte-identical");
        (await AllocatedBytesAsync(destination)).Should().BeLessThan(4L << 20, "only the 1.25 MiB of data is written; the zeroes stay holes");
    }

    [SkippableFact]
    public async Task Aot_binary_map_agrees_with_nbdinfo_against_qemu_nbd()
    {
        var nbd = Binary();
        using var temp = new TempDirectory();
        var image = temp.Combine("map.raw");
        await using (var file = File.Create(image))
        {
            file.SetLength(16L << 20);
            var data = new byte[64 << 10];
            Array.Fill(data, (byte)0x5a);
            file.Position = 0;
            await file.WriteAsync(data);
            file.Position = 8L << 20;
            await file.WriteAsync(data);
        }

        await using var qemu = await QemuNbdProcess.StartAsync(new QemuNbdOptions { ImagePath = image, Format = "raw", ReadOnly = true });
        var ours = await RunAsync(nbd, "info", "--map", qemu.Uri.ToString());
        var reference = await Nbdinfo.RunAsync(["--map", qemu.Uri.ToString()]);
        reference.ExitCode.Should().Be(0, reference.StandardError);
        Tokens(ours.StandardOutput).Should().Equal(Tokens(reference.StandardOutput), "both print offset, length, type and description per extent");
        Tokens(ours.StandardOutput).Should().HaveCountGreaterThan(1, "the image has data and holes");
    }

    private static List<string> Tokens(string map) =>
        map.Split('\n', StringSplitOptions.RemoveEmptyEntries).Select(l => string.Join(' ', l.Split(' ', StringSplitOptions.RemoveEmptyEntries))).ToList();

    private static async Task<long> AllocatedBytesAsync(string path)
    {
        var du = await ProcessUtilities.RunToolAsync("du", ["-B1", path], TimeSpan.FromSeconds(10));
        return long.Parse(du.StandardOutput.Split('\t')[0], System.Globalization.CultureInfo.InvariantCulture);
    }

    private string Binary()
    {
        if (tool.Binary is null)
        {
            ServerBinaries.SkipOrFail(tool.Problem ?? "the nbd tool could not be published with native AOT");
        }

        return tool.Binary!;
    }

    private async Task<ToolResult> RunAsync(string nbd, params string[] arguments)
    {
        var result = await ProcessUtilities.RunToolAsync(nbd, arguments, Bound);
        output.WriteLine($"$ nbd {string.Join(' ', arguments)} -> {result.ExitCode}\n{result.StandardOutput}{result.StandardError}");
        result.ExitCode.Should().Be(0, result.StandardError);
        return result;
    }
}
