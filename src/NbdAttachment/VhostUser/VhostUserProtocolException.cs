namespace NbdAttachment.VhostUser;

/// <summary>
/// A vhost-user front-end (the VMM) broke the protocol: a malformed or oversized message, a request out of order, a
/// memory region that cannot be mapped, or a virtqueue that points outside guest memory. The front-end is disconnected;
/// the backend keeps listening.
/// </summary>
public sealed class VhostUserProtocolException : IOException
{
    /// <summary>Creates the exception.</summary>
    /// <param name="message">What was wrong.</param>
    public VhostUserProtocolException(string message)
        : base(message)
    {
    }

    /// <summary>Creates the exception with its cause.</summary>
    /// <param name="message">What was wrong.</param>
    /// <param name="innerException">The cause.</param>
    public VhostUserProtocolException(string message, Exception innerException)
        : base(message, innerException)
    {
    }
}
