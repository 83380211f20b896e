namespace NbdAttachment;

/// <summary>The root of every error this library raises about NBD URLs, negotiation, transport and commands.</summary>
public abstract class NbdException : Exception
{
    /// <summary>Creates the exception with a message and an optional inner exception.</summary>
    /// <param name="message">What went wrong.</param>
    /// <param name="innerException">The cause, if any.</param>
    protected NbdException(string message, Exception? innerException = null)
        : base(message, innerException)
    {
    }

    /// <summary>
    /// <see langword="true"/> when the failure is a transport failure that a reconnect may cure
    /// (EOF, socket error, timeout); <see langword="false"/> for protocol violations, refusals and bad input.
    /// </summary>
    public virtual bool IsTransient => false;
}
