namespace NbdAttachment;

/// <summary>The life-cycle state of a <see cref="NetworkBlockDeviceStorageDeviceAttachment"/>.</summary>
public enum NbdAttachmentState
{
    /// <summary>Constructed and not connected: no network I/O yet, or the first connect was cancelled (it may be started again).</summary>
    Created,

    /// <summary>The first connect is in progress (retried under the reconnect policy while the server is unreachable).</summary>
    Connecting,

    /// <summary>Connected; guest I/O flows.</summary>
    Connected,

    /// <summary>The connection was lost; guest I/O waits while the client reconnects.</summary>
    Reconnecting,

    /// <summary>A non-recoverable error happened; the attachment is non-functional and its I/O fails.</summary>
    Failed,

    /// <summary>Closed by its owner (virtual machine stopped or attachment disposed).</summary>
    Closed,
}
