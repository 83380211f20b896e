namespace NbdAttachment;

/// <summary>The transport to the server failed or closed (refused, reset, end of stream). A reconnect may cure it.</summary>
public sealed class NbdConnectionException : NbdException
{
    /// <summary>Creates the exception.</summary>
    /// <param name="message">What failed.</param>
    /// <param name="innerException">The socket or stream error, if any.</param>
    public NbdConnectionException(string message, Exception? innerException = null)
        : base(message, innerException)
    {
    }

    /// <inheritdoc />
    public override bool IsTransient => true;
}
