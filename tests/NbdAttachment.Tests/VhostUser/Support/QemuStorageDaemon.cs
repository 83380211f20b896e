using System.Diagnostics;
using System.Net.Sockets;

namespace NbdAttachment.Tests.VhostUser.Support;

/// <summary>
/// qemu-storage-daemon exporting a raw image as vhost-user-blk: the reference back-end the test front-end is proven
/// against. Started with --daemonize, so it is listening once the launcher exits; stopped by its pid.
/// </summary>
public sealed class QemuStorageDaemon : IAsyncDisposable
{
    public const string Binary = "/usr/bin/qemu-storage-daemon";

    private readonly string _directory;
    private int _pid;

    private QemuStorageDaemon(string directory, string imagePath, string socketPath)
    {
        _directory = directory;
        ImagePath = imagePath;
        SocketPath = socketPath;
    }

    public static bool IsAvailable => File.Exists(Binary);

    public string ImagePath { get; }

    public string SocketPath { get; }

    public static async Task<QemuStorageDaemon> StartAsync(long imageSize, int queues = 1, bool writable = true, int logicalBlockSize = 512)
    {
        // Unix socket paths are limited to 107 bytes: keep the directory short.
        var directory = Path.Combine("/tmp", "vuref-" + Guid.NewGuid().ToString("N")[..12]);
        Directory.CreateDirectory(directory);
        var image = Path.Combine(directory, "disk.raw");
        await using (var file = File.Create(image))
        {
            file.SetLength(imageSize);
        }

        var daemon = new QemuStorageDaemon(directory, image, Path.Combine(directory, "vu.sock"));
        var pidFile = Path.Combine(directory, "qsd.pid");
        var start = new ProcessStartInfo(Binary)
        {
            RedirectStandardError = true,
            RedirectStandardOutput = true,
            UseShellExecute = false,
        };
        foreach (var argument in new[]
        {
            "--blockdev", $"driver=file,filename={image},node-name=disk,discard=unmap,cache.direct=off",
            "--export", $"type=vhost-user-blk,id=e0,node-name=disk,addr.type=unix,addr.path={daemon.SocketPath},writable={(writable ? "on" : "off")},num-queues={queues},logical-block-size={logicalBlockSize}",
            "--pidfile", pidFile,
            "--daemonize",
        })
        {
            start.ArgumentList.Add(argument);
        }

        using var launcher = Process.Start(start) ?? throw new InvalidOperationException("qemu-storage-daemon did not start.");
        var stderr = launcher.StandardError.ReadToEndAsync();
        using var cts = new CancellationTokenSource(TimeSpan.FromSeconds(20));
        await launcher.WaitForExitAsync(cts.Token);
        if (launcher.ExitCode != 0)
        {
            await daemon.DisposeAsync();
            throw new InvalidOperationException($"qemu-storage-daemon failed ({launcher.ExitCode}): {await stderr}");
        }

        daemon._pid = int.Parse((await File.ReadAllTextAsync(pidFile)).Trim(), System.Globalization.CultureInfo.InvariantCulture);
        return daemon;
    }

    /// <summary>
    /// Connects a front-end. qemu-storage-daemon serves one client at a time and, for a moment after a client leaves,
    /// refuses new connections (it stops polling its listener, backlog 1): retry a refused connect within a bound.
    /// </summary>
    public async Task<TestFrontEnd> ConnectAsync(FrontEndOptions? options = null)
    {
        var deadline = DateTime.UtcNow + TimeSpan.FromSeconds(30); // qemu-storage-daemon re-listens only after it has finished with the previous front-end
        while (true)
        {
            try
            {
                return await TestFrontEnd.ConnectAsync(SocketPath, options);
            }
            catch (SocketException ex) when (ex.SocketErrorCode is SocketError.ConnectionRefused or SocketError.TryAgain or SocketError.WouldBlock && DateTime.UtcNow < deadline)
            {
                await Task.Delay(20);
            }
        }
    }

    /// <summary>Whether the daemon process is still alive (it must survive everything the front-end does).</summary>
    public bool IsRunning
    {
        get
        {
            try
            {
                using var p = Process.GetProcessById(_pid);
                return !p.HasExited;
            }
            catch (ArgumentException)
            {
                return false;
            }
        }
    }

    public byte[] ReadImage(long offset, int length)
    {
        using var file = new FileStream(ImagePath, FileMode.Open, FileAccess.Read, FileShare.ReadWrite);
        var buffer = new byte[length];
        file.Position = offset;
        file.ReadExactly(buffer);
        return buffer;
    }

    public void WriteImage(long offset, byte[] data)
    {
        using var file = new FileStream(ImagePath, FileMode.Open, FileAccess.Write, FileShare.ReadWrite);
        file.Position = offset;
        file.Write(data);
    }

    public async ValueTask DisposeAsync()
    {
        if (_pid > 0)
        {
            try
            {
                using var p = Process.GetProcessById(_pid);
                p.Kill();
                using var cts = new CancellationTokenSource(TimeSpan.FromSeconds(10));
                await p.WaitForExitAsync(cts.Token);
            }
            catch (ArgumentException)
            {
                // Already gone.
            }

            _pid = 0;
        }

        try
        {
            Directory.Delete(_directory, recursive: true);
        }
        catch (IOException)
        {
        }
    }
}
