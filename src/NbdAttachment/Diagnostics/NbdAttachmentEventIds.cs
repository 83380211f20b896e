namespace NbdAttachment.Diagnostics;

/// <summary>
/// The public catalogue of log event ids of attachments and the virtual-machine model (range 5000-5099).
/// Ids are a contract: they are never reused.
/// </summary>
public static class NbdAttachmentEventIds
{
    /// <summary>An attachment starts its first connect.</summary>
    public const int AttachmentConnecting = 5001;

    /// <summary>An attachment connected (first connect or reconnect).</summary>
    public const int AttachmentConnected = 5002;

    /// <summary>The first connect of an attachment failed with a transient error and is retried.</summary>
    public const int AttachmentConnectRetry = 5003;

    /// <summary>An attachment failed for good.</summary>
    public const int AttachmentFailed = 5004;

    /// <summary>An attachment was closed.</summary>
    public const int AttachmentClosed = 5005;

    /// <summary>An attachment event handler or delegate threw; the exception was swallowed.</summary>
    public const int AttachmentHandlerFailed = 5006;

    /// <summary>A virtual machine is starting.</summary>
    public const int VirtualMachineStarting = 5020;

    /// <summary>A virtual machine is running.</summary>
    public const int VirtualMachineStarted = 5021;

    /// <summary>A virtual machine failed to start.</summary>
    public const int VirtualMachineStartFailed = 5022;

    /// <summary>A virtual machine stopped.</summary>
    public const int VirtualMachineStopped = 5023;
}
