using Microsoft.Extensions.Logging;
using NbdAttachment.Diagnostics;

namespace NbdAttachment.Virtualization;

/// <summary>The life-cycle state of a <see cref="VirtualMachine"/>.</summary>
public enum VirtualMachineState
{
    /// <summary>Not running; no attachment is open.</summary>
    Stopped,

    /// <summary>Opening the attachments.</summary>
    Starting,

    /// <summary>Running; <see cref="VirtualMachine.BlockDevices"/> serve guest I/O.</summary>
    Running,

    /// <summary>Draining I/O and closing the attachments.</summary>
    Stopping,

    /// <summary>Starting failed; the attachments that had opened were closed.</summary>
    Error,
}

/// <summary>
/// The storage side of a virtual machine: opens each device's attachment at start (the first network I/O happens
/// here) and exposes the guest I/O surface of each device; closes them at stop.
/// </summary>
public sealed class VirtualMachine : IAsyncDisposable
{
    private readonly ILogger _logger;
    private readonly SemaphoreSlim _lifecycle = new(1, 1);
    private IReadOnlyList<IBlockDevice> _devices = [];
    private int _state;

    /// <summary>Creates a stopped virtual machine. Validates nothing yet and does no I/O.</summary>
    /// <param name="configuration">The configuration; validated by <see cref="StartAsync"/>.</param>
    public VirtualMachine(VirtualMachineConfiguration configuration)
    {
        ArgumentNullException.ThrowIfNull(configuration);
        Configuration = configuration;
        _logger = (configuration.LoggerFactory ?? Microsoft.Extensions.Logging.Abstractions.NullLoggerFactory.Instance).CreateLogger("NbdAttachment.VirtualMachine");
    }

    /// <summary>The configuration.</summary>
    public VirtualMachineConfiguration Configuration { get; }

    /// <summary>The current state.</summary>
    public VirtualMachineState State => (VirtualMachineState)Volatile.Read(ref _state);

    /// <summary>The opened devices while running, in configuration order; empty otherwise.</summary>
    public IReadOnlyList<IBlockDevice> BlockDevices => Volatile.Read(ref _devices);

    /// <summary>Validates the configuration and opens every attachment (in parallel). If one fails, the others are closed.</summary>
    /// <param name="cancellationToken">Cancels the start.</param>
    /// <exception cref="InvalidOperationException">The configuration is invalid, or the machine is not stopped.</exception>
    /// <exception cref="NbdAttachmentException">A network block device could not be connected (20001 or 20002).</exception>
    public async Task StartAsync(CancellationToken cancellationToken = default)
    {
        await _lifecycle.WaitAsync(cancellationToken).ConfigureAwait(false);
        try
        {
            if (State != VirtualMachineState.Stopped)
            {
                throw new InvalidOperationException($"The virtual machine is {State}; only a stopped machine can start.");
            }

            Configuration.Validate();
            var devices = Configuration.StorageDevices.ToArray();
            SetState(VirtualMachineState.Starting);
            AttachmentLog.VmStarting(_logger, devices.Length);
            var opens = devices.Select(d => OpenAsync(d.Attachment, cancellationToken)).ToArray();
            try
            {
                await Task.WhenAll(opens).ConfigureAwait(false);
            }
            catch (Exception ex)
            {
                foreach (var open in opens)
                {
                    if (open.IsCompletedSuccessfully)
                    {
                        await open.Result.DisposeAsync().ConfigureAwait(false);
                    }
                }

                SetState(VirtualMachineState.Error);
                AttachmentLog.VmStartFailed(_logger, ex);
                var first = opens.Select(o => o.Exception?.InnerException).FirstOrDefault(e => e is not null and not OperationCanceledException) ?? ex;
                System.Runtime.ExceptionServices.ExceptionDispatchInfo.Throw(first);
                throw;
            }

            Volatile.Write(ref _devices, opens.Select(o => o.Result).ToArray());
            SetState(VirtualMachineState.Running);
            AttachmentLog.VmStarted(_logger, devices.Length);
        }
        finally
        {
            _lifecycle.Release();
        }
    }

    /// <summary>Drains the I/O in flight and closes every device (NBD devices send <c>NBD_CMD_DISC</c>).</summary>
    /// <param name="cancellationToken">Cancels waiting to begin the stop.</param>
    public async Task StopAsync(CancellationToken cancellationToken = default)
    {
        await _lifecycle.WaitAsync(cancellationToken).ConfigureAwait(false);
        try
        {
            if (State != VirtualMachineState.Running)
            {
                return;
            }

            SetState(VirtualMachineState.Stopping);
            var devices = BlockDevices;
            Volatile.Write(ref _devices, []);
            await Task.WhenAll(devices.Select(d => d.DisposeAsync().AsTask())).ConfigureAwait(false);
            SetState(VirtualMachineState.Stopped);
            AttachmentLog.VmStopped(_logger);
        }
        finally
        {
            _lifecycle.Release();
        }
    }

    /// <summary>Stops the machine if it is running.</summary>
    public async ValueTask DisposeAsync()
    {
        await StopAsync().ConfigureAwait(false);
    }

    private static async Task<IBlockDevice> OpenAsync(StorageDeviceAttachment attachment, CancellationToken cancellationToken) =>
        await attachment.OpenAsync(cancellationToken).ConfigureAwait(false);

    private void SetState(VirtualMachineState state) => Volatile.Write(ref _state, (int)state);
}
