namespace NbdAttachment.VhostUser;

/// <summary>Data of <see cref="VhostUserBlockBackend.FrontEndDisconnected"/>.</summary>
public sealed class VhostUserSessionEndedEventArgs : EventArgs
{
    /// <summary>Creates the event data.</summary>
    /// <param name="error">Why the session ended, or <see langword="null"/> when the front-end closed the socket.</param>
    public VhostUserSessionEndedEventArgs(Exception? error) => Error = error;

    /// <summary>Why the session ended: a <see cref="VhostUserProtocolException"/>, an I/O error, or <see langword="null"/> for a clean close.</summary>
    public Exception? Error { get; }
}
