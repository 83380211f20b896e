namespace NbdAttachment;

/// <summary>A connect, negotiation or command did not finish within its configured timeout.</summary>
public sealed class NbdTimeoutException : NbdException
{
    /// <summary>Creates the exception.</summary>
    /// <param name="message">What timed out, and after how long.</param>
    /// <param name="innerException">The cause, if any.</param>
    public NbdTimeoutException(string message, Exception? innerException = null)
        : base(message, innerException)
    {
    }

    /// <inheritdoc />
    public override bool IsTransient => true;
}
