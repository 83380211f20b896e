// BootGuest: serve an NBD export to a real VM (QEMU, cloud-hypervisor) as a vhost-user-blk disk.
// Usage: dotnet run --project samples/BootGuest [nbd-url] [--socket PATH] [--read-only] [--id SERIAL] [--size MIB] [--once] [--verbose]
// Without a URL an in-process NBD server with a 256 MiB export (--size) is started. The program prints the VMM command
// line to use and serves until Ctrl+C (or until the VMM disconnects, with --once).
using Microsoft.Extensions.Logging;
using NbdAttachment;
using NbdAttachment.Testing;
using NbdAttachment.VhostUser;
using NbdAttachment.Virtualization;

string? url = null;
var socketPath = Path.Combine(Path.GetTempPath(), $"nbd-vhost-{Environment.ProcessId}.sock");
var readOnly = false;
var once = false;
var verbose = false;
var identifier = "nbd-disk";
var sizeMiB = 256L;
for (var i = 0; i < args.Length; i++)
{
    switch (args[i])
    {
        case "--socket" when i + 1 < args.Length: socketPath = args[++i]; break;
        case "--id" when i + 1 < args.Length: identifier = args[++i]; break;
        case "--size" when i + 1 < args.Length && long.TryParse(args[i + 1], out var mib) && mib > 0: sizeMiB = mib; i++; break;
        case "--read-only": readOnly = true; break;
        case "--once": once = true; break;
        case "--verbose": verbose = true; break;
        case var a when !a.StartsWith("--", StringComparison.Ordinal) && url is null: url = a; break;
        default:
            Console.Error.WriteLine($"Unknown argument '{args[i]}'. Usage: BootGuest [nbd-url] [--socket PATH] [--read-only] [--id SERIAL] [--size MIB] [--once] [--verbose]");
            return 2;
    }
}

if (!OperatingSystem.IsLinux())
{
    Console.Error.WriteLine("vhost-user-blk needs Linux.");
    return 1;
}

using var loggerFactory = LoggerFactory.Create(b => b.AddSimpleConsole(o => o.SingleLine = true).SetMinimumLevel(verbose ? LogLevel.Debug : LogLevel.Information));
NbdTestServer? server = null;
try
{
    if (url is null)
    {
        server = await NbdTestServer.StartAsync(new NbdTestServerOptions { Exports = [new NbdTestExportOptions { Size = sizeMiB * 1024 * 1024 }] });
        url = server.Uri.ToString();
        Console.WriteLine($"Started an in-process NBD server: {url}");
    }

    if (!NetworkBlockDeviceStorageDeviceAttachment.TryValidate(new Uri(url, UriKind.RelativeOrAbsolute), out var problem))
    {
        Console.Error.WriteLine($"Invalid NBD URL: {problem}");
        return 1;
    }

    var attachment = new NetworkBlockDeviceStorageDeviceAttachment(new Uri(url), TimeSpan.FromSeconds(10), readOnly, DiskSynchronizationMode.Full, NbdAttachmentOptions.Default with { LoggerFactory = loggerFactory });
    var configuration = new VirtualMachineConfiguration
    {
        StorageDevices = { new VirtioBlockDeviceConfiguration(attachment) { BlockDeviceIdentifier = identifier } },
        LoggerFactory = loggerFactory,
    };
    await using var vm = new VhostUserVirtualMachine(configuration, [socketPath], VhostUserBlockBackendOptions.Default with { LoggerFactory = loggerFactory });
    await vm.StartAsync();
    var disk = vm.Machine.BlockDevices[0];
    Console.WriteLine($"Serving {url} ({disk.Capacity / (1024 * 1024)} MiB{(disk.IsReadOnly ? ", read-only" : string.Empty)}) on {socketPath}");
    Console.WriteLine("Start a guest with:");
    Console.WriteLine($"  qemu-system-x86_64 -m 1G -object memory-backend-memfd,id=mem,size=1G,share=on -numa node,memdev=mem \\");
    Console.WriteLine($"    -chardev socket,id=disk0,path={socketPath} -device vhost-user-blk-pci,chardev=disk0 ...");
    Console.WriteLine("or:");
    Console.WriteLine($"  cloud-hypervisor --memory size=1G,shared=on --disk vhost_user=true,socket={socketPath} ...");

    var done = new TaskCompletionSource(TaskCreationOptions.RunContinuationsAsynchronously);
    Console.CancelKeyPress += (_, e) =>
    {
        e.Cancel = true;
        done.TrySetResult();
    };
    var backend = vm.Backends[0];
    backend.FrontEndConnected += (_, _) => Console.WriteLine("The VMM connected.");
    backend.FrontEndDisconnected += (_, e) =>
    {
        Console.WriteLine($"The VMM disconnected{(e.Error is null ? string.Empty : $": {e.Error.Message}")}.");
        if (once)
        {
            done.TrySetResult();
        }
    };
    await done.Task;
    Console.WriteLine("Stopping ...");
    await vm.StopAsync();
    return 0;
}
catch (Exception ex) when (ex is NbdException or InvalidOperationException or IOException or UriFormatException)
{
    Console.Error.WriteLine($"BootGuest failed: {ex.Message}");
    return 1;
}
finally
{
    if (server is not null)
    {
        await server.DisposeAsync();
    }
}
