using System.CommandLine;
using NbdAttachment.Client;
using NbdAttachment.VhostUser;
using NbdAttachment.Virtualization;

namespace NbdAttachment.Tools.Commands;

/// <summary><c>nbd serve-vhost-user URL --socket PATH [--read-only] [--id SERIAL] [--queues N] [--once]</c>: serve an export to a VMM as a vhost-user-blk disk.</summary>
internal static class ServeVhostUserCommand
{
    public static Command Create(ToolContext context)
    {
        var url = new Argument<string>("URL") { Description = "The NBD export to serve." };
        var socket = new Option<string>("--socket", "-s") { Description = "The vhost-user Unix socket to listen on (the VMM connects to it).", Required = true };
        var readOnly = new Option<bool>("--read-only", "-r") { Description = "Serve the disk read-only." };
        var identifier = new Option<string>("--id")
        {
            Description = "The disk's serial (virtio-blk device identifier; default nbd-disk).",
            DefaultValueFactory = _ => "nbd-disk",
        };
        var queues = new Option<int>("--queues", "-q")
        {
            Description = $"The most virtqueues the VMM may use (1 to {VhostUserBlockBackendOptions.MaxQueueCount}; default {VhostUserBlockBackendOptions.Default.QueueCount}).",
            DefaultValueFactory = _ => VhostUserBlockBackendOptions.Default.QueueCount,
        };
        queues.Validators.Add(result =>
        {
            if (result.Tokens.Count > 0 && int.TryParse(result.Tokens[^1].Value, System.Globalization.CultureInfo.InvariantCulture, out var value) && value is < 1 or > VhostUserBlockBackendOptions.MaxQueueCount)
            {
                result.AddError($"--queues must be from 1 to {VhostUserBlockBackendOptions.MaxQueueCount}.");
            }
        });
        var once = new Option<bool>("--once") { Description = "Exit when the VMM disconnects instead of waiting for the next one." };
        var command = new Command("serve-vhost-user", "Serve an NBD export to a VMM (QEMU, cloud-hypervisor) as a vhost-user-blk disk until Ctrl+C (Linux).")
        {
            url, socket, readOnly, identifier, queues, once,
        };
        command.SetAction((parse, cancellationToken) => RunAsync(
            context,
            parse.GetRequiredValue(url),
            parse.GetRequiredValue(socket),
            parse.GetValue(readOnly),
            parse.GetValue(identifier) ?? "nbd-disk",
            parse.GetValue(queues),
            parse.GetValue(once),
            cancellationToken));
        return command;
    }

    private static async Task<int> RunAsync(ToolContext context, string url, string socketPath, bool readOnly, string identifier, int queues, bool once, CancellationToken cancellationToken)
    {
        if (!OperatingSystem.IsLinux())
        {
            throw new PlatformNotSupportedException("vhost-user-blk needs Linux");
        }

        var parsed = NbdUrls.Parse(url);
        var nbdUri = parsed.ToUri();
        if (!NetworkBlockDeviceStorageDeviceAttachment.TryValidate(nbdUri, out var problem))
        {
            throw new ToolUsageException($"invalid NBD URL '{url}': {problem}");
        }

        // Fail fast with the typed error (unreachable server, unknown export) before the attachment's reconnect policy takes over.
        await NbdClient.GetExportInfoAsync(parsed, NbdUrls.OneShotOptions(), cancellationToken).ConfigureAwait(false);
        var output = context.Output;
        var attachment = new NetworkBlockDeviceStorageDeviceAttachment(nbdUri, TimeSpan.FromSeconds(10), readOnly, DiskSynchronizationMode.Full, NbdAttachmentOptions.Default);
        var configuration = new VirtualMachineConfiguration
        {
            StorageDevices = { new VirtioBlockDeviceConfiguration(attachment) { BlockDeviceIdentifier = identifier } },
        };
        var vm = new VhostUserVirtualMachine(configuration, [socketPath], VhostUserBlockBackendOptions.Default with { QueueCount = queues });
        await using (vm.ConfigureAwait(false))
        {
            var done = new TaskCompletionSource(TaskCreationOptions.RunContinuationsAsynchronously);
            await vm.StartAsync(cancellationToken).ConfigureAwait(false);
            var backend = vm.Backends[0];
            backend.FrontEndConnected += (_, _) => output.WriteLine("The VMM connected.");
            backend.FrontEndDisconnected += (_, e) =>
            {
                output.WriteLine($"The VMM disconnected{(e.Error is null ? string.Empty : $": {e.Error.Message}")}.");
                if (once)
                {
                    done.TrySetResult();
                }
            };

            var disk = vm.Machine.BlockDevices[0];
            await output.WriteLineAsync(FormattableString.Invariant($"Serving {url} ({disk.Capacity / (1024 * 1024)} MiB{(disk.IsReadOnly ? ", read-only" : string.Empty)}, serial {identifier}, up to {queues} queues) on {socketPath}")).ConfigureAwait(false);
            await output.WriteLineAsync("Start a guest with:").ConfigureAwait(false);
            await output.WriteLineAsync("  qemu-system-x86_64 -m 1G -object memory-backend-memfd,id=mem,size=1G,share=on -numa node,memdev=mem \\").ConfigureAwait(false);
            await output.WriteLineAsync(FormattableString.Invariant($"    -chardev socket,id=disk0,path={socketPath} -device vhost-user-blk-pci,chardev=disk0,num-queues={Math.Min(queues, 8)} ...")).ConfigureAwait(false);
            await output.WriteLineAsync("or:").ConfigureAwait(false);
            await output.WriteLineAsync($"  cloud-hypervisor --memory size=1G,shared=on --disk vhost_user=true,socket={socketPath} ...").ConfigureAwait(false);
            await output.WriteLineAsync(once ? "Serving until the VMM disconnects (or Ctrl+C)." : "Serving until Ctrl+C.").ConfigureAwait(false);

            using (cancellationToken.Register(() => done.TrySetResult()))
            {
                await done.Task.ConfigureAwait(false);
            }

            await output.WriteLineAsync("Stopping ...").ConfigureAwait(false);
            using var stopTimeout = new CancellationTokenSource(TimeSpan.FromSeconds(30));
            await vm.StopAsync(stopTimeout.Token).ConfigureAwait(false);
            await output.WriteLineAsync("Stopped.").ConfigureAwait(false);
        }

        // Ctrl+C is how a server is stopped: a clean stop is success.
        return ExitCodes.Success;
    }
}
