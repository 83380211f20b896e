using Microsoft.Extensions.Logging;

namespace NbdAttachment.Diagnostics;

/// <summary>Log messages of attachments and the virtual-machine model, bound to <see cref="NbdAttachmentEventIds"/>.</summary>
internal static partial class AttachmentLog
{
    [LoggerMessage(NbdAttachmentEventIds.AttachmentConnecting, LogLevel.Debug, "Attachment connecting to {Url}")]
    public static partial void Connecting(ILogger logger, string url);

    [LoggerMessage(NbdAttachmentEventIds.AttachmentConnected, LogLevel.Information, "Attachment connected to {Url} (reconnects: {Reconnects})")]
    public static partial void Connected(ILogger logger, string url, int reconnects);

    [LoggerMessage(NbdAttachmentEventIds.AttachmentConnectRetry, LogLevel.Warning, "Attachment connect attempt {Attempt} to {Url} failed; retrying in {Delay}")]
    public static partial void ConnectRetry(ILogger logger, int attempt, string url, TimeSpan delay, Exception exception);

    [LoggerMessage(NbdAttachmentEventIds.AttachmentFailed, LogLevel.Error, "Attachment to {Url} failed with code {Code}")]
    public static partial void Failed(ILogger logger, string url, int code, Exception exception);

    [LoggerMessage(NbdAttachmentEventIds.AttachmentClosed, LogLevel.Debug, "Attachment to {Url} closed")]
    public static partial void Closed(ILogger logger, string url);

    [LoggerMessage(NbdAttachmentEventIds.AttachmentHandlerFailed, LogLevel.Error, "An attachment event handler for {Url} threw")]
    public static partial void HandlerFailed(ILogger logger, string url, Exception exception);

    [LoggerMessage(NbdAttachmentEventIds.VirtualMachineStarting, LogLevel.Debug, "Virtual machine starting with {Devices} storage devices")]
    public static partial void VmStarting(ILogger logger, int devices);

    [LoggerMessage(NbdAttachmentEventIds.VirtualMachineStarted, LogLevel.Information, "Virtual machine running with {Devices} storage devices")]
    public static partial void VmStarted(ILogger logger, int devices);

    [LoggerMessage(NbdAttachmentEventIds.VirtualMachineStartFailed, LogLevel.Error, "Virtual machine failed to start")]
    public static partial void VmStartFailed(ILogger logger, Exception exception);

    [LoggerMessage(NbdAttachmentEventIds.VirtualMachineStopped, LogLevel.Information, "Virtual machine stopped")]
    public static partial void VmStopped(ILogger logger);
}
