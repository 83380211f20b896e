using System.Diagnostics;
using NbdAttachment.InteropTests.Servers;
using Xunit.Abstractions;

namespace NbdAttachment.InteropTests.Guest;

/// <summary>
/// The BootGuest sample as a user runs it: it starts its embedded NBD server and the vhost-user-blk backend and
/// prints the QEMU command; a guest booted against the printed socket writes and verifies; when the guest powers
/// off, the sample (with <c>--once</c>) stops and exits 0.
/// </summary>
[Collection(GuestCollection.Name)]
[Trait("Category", "Guest")]
[Trait("Backend", "NbdAttachment.VhostUser")]
public sealed class BootGuestSampleTests(ITestOutputHelper output)
{
    [SkippableFact]
    public async Task The_sample_serves_a_guest_and_exits_when_it_disconnects()
    {
        using var temp = new TempDirectory();
        var socket = temp.Combine("boot.sock");
        var sample = SamplePath();
        var info = new ProcessStartInfo("dotnet")
        {
            ArgumentList = { sample, "--socket", socket, "--size", (GuestAssertions.DiskSize / GuestPattern.MiB).ToString(System.Globalization.CultureInfo.InvariantCulture), "--id", "sample-disk", "--once" },
            RedirectStandardOutput = true,
            RedirectStandardError = true,
        };
        using var process = Process.Start(info)!;
        var lines = new List<string>();
        var serving = new TaskCompletionSource(TaskCreationOptions.RunContinuationsAsynchronously);
        OutputPump.Start(
            process,
            line =>
            {
                if (line is null)
                {
                    return;
                }

                lock (lines)
                {
                    lines.Add(line);
                }

                if (line.Contains("vhost-user-blk-pci", StringComparison.Ordinal))
                {
                    serving.TrySetResult();
                }
            },
            line =>
            {
                if (line is not null)
                {
                    lock (lines)
                    {
                        lines.Add("stderr: " + line);
                    }
                }
            });
        try
        {
            await serving.Task.WaitAsync(TimeSpan.FromSeconds(60));
            var r = await GuestMachine.RunAsync(GuestAssertions.Options(socket, GuestScenarios.WriteVerify, output));
            GuestAssertions.Report(output, "write-verify (BootGuest sample)", r);
            GuestAssertions.WriteVerify(r, imagePath: null);
            r["serial"].Should().Be("sample-disk");
            await process.WaitForExitAsync().WaitAsync(TimeSpan.FromSeconds(30));
            process.ExitCode.Should().Be(0, string.Join('\n', lines));
            lock (lines)
            {
                lines.Should().Contain(l => l.Contains($"path={socket}", StringComparison.Ordinal), "the sample prints the QEMU command line with its socket");
                lines.Should().Contain("The VMM disconnected.");
            }
        }
        finally
        {
            if (!process.HasExited)
            {
                process.Kill(entireProcessTree: true);
            }

            lock (lines)
            {
                foreach (var line in lines)
                {
                    output.WriteLine("sample| " + line);
                }
            }
        }
    }

    /// <summary>BootGuest.dll of the same configuration as this test assembly (built first: the project references it).</summary>
    private static string SamplePath()
    {
        var configuration = new DirectoryInfo(AppContext.BaseDirectory.TrimEnd(Path.DirectorySeparatorChar)).Parent!.Name; // bin/<Configuration>/net10.0/
        var root = AppContext.BaseDirectory;
        while (!File.Exists(Path.Combine(root, "NbdAttachment.sln")))
        {
            root = Path.GetDirectoryName(root.TrimEnd(Path.DirectorySeparatorChar)) ?? throw new InvalidOperationException("The repository root was not found above " + AppContext.BaseDirectory);
        }

        var path = Path.Combine(root, "samples", "BootGuest", "bin", configuration, "net10.0", "BootGuest.dll");
        File.Exists(path).Should().BeTrue($"the sample is built with the tests ({path})");
        return path;
    }
}
