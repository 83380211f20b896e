namespace NbdAttachment;

/// <summary>
/// Writes the server had acknowledged, but not yet made durable, could not be written again after a reconnect:
/// the export may have lost them. The client is failed rather than continuing on data it cannot vouch for.
/// </summary>
public sealed class NbdDataLossException : NbdException
{
    /// <summary>Creates the exception.</summary>
    /// <param name="message">What could not be restored.</param>
    /// <param name="innerException">The cause, if any.</param>
    public NbdDataLossException(string message, Exception? innerException = null)
        : base(message, innerException)
    {
    }
}
