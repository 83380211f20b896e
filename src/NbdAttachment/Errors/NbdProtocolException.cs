namespace NbdAttachment;

/// <summary>The server broke the NBD protocol (bad magic, bad length, an impossible reply). The connection is ended.</summary>
public sealed class NbdProtocolException : NbdException
{
    /// <summary>Creates the exception.</summary>
    /// <param name="message">Which rule the server broke.</param>
    /// <param name="innerException">The cause, if any.</param>
    public NbdProtocolException(string message, Exception? innerException = null)
        : base(message, innerException)
    {
    }
}
