namespace NbdAttachment;

/// <summary>
/// Receives the life-cycle callbacks of a <see cref="NetworkBlockDeviceStorageDeviceAttachment"/>. Unlike Apple's
/// delegate, the attachment holds it strongly. Callbacks run on the thread pool, one at a time, in order.
/// </summary>
public interface INetworkBlockDeviceStorageDeviceAttachmentDelegate
{
    /// <summary>Called after the first successful connect and again after every successful reconnect.</summary>
    /// <param name="attachment">The attachment.</param>
    void AttachmentWasConnected(NetworkBlockDeviceStorageDeviceAttachment attachment);

    /// <summary>Called once, when the attachment hits an error it cannot recover from and becomes non-functional.</summary>
    /// <param name="attachment">The attachment.</param>
    /// <param name="error">The error, with code 20001 (negotiation failed) or 20002 (disconnected).</param>
    void DidEncounterError(NetworkBlockDeviceStorageDeviceAttachment attachment, NbdAttachmentException error);
}

/// <summary>Data of <see cref="NetworkBlockDeviceStorageDeviceAttachment.StateChanged"/>.</summary>
public sealed class NbdAttachmentStateChangedEventArgs : EventArgs
{
    /// <summary>Creates the event data.</summary>
    /// <param name="previous">The state before.</param>
    /// <param name="current">The state now.</param>
    /// <param name="error">The error that caused the change, if any.</param>
    public NbdAttachmentStateChangedEventArgs(NbdAttachmentState previous, NbdAttachmentState current, Exception? error)
    {
        Previous = previous;
        Current = current;
        Error = error;
    }

    /// <summary>The state before the change.</summary>
    public NbdAttachmentState Previous { get; }

    /// <summary>The state after the change.</summary>
    public NbdAttachmentState Current { get; }

    /// <summary>The error that caused the change (a lost connection or a fatal failure), if any.</summary>
    public Exception? Error { get; }
}

/// <summary>Data of <see cref="NetworkBlockDeviceStorageDeviceAttachment.ErrorEncountered"/>.</summary>
public sealed class NbdAttachmentErrorEventArgs : EventArgs
{
    /// <summary>Creates the event data.</summary>
    /// <param name="error">The non-recoverable error.</param>
    public NbdAttachmentErrorEventArgs(NbdAttachmentException error)
    {
        Error = error;
    }

    /// <summary>The non-recoverable error.</summary>
    public NbdAttachmentException Error { get; }
}
