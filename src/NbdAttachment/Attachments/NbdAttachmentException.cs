namespace NbdAttachment;

/// <summary>Apple-compatible error codes of a network block device attachment.</summary>
public enum NbdAttachmentErrorCode
{
    /// <summary>Connecting to, or negotiating with, the NBD server failed (refusal, protocol violation, TLS).</summary>
    NegotiationFailed = 20001,

    /// <summary>The connection to the server was lost and could not be re-established (timeouts, policy exhausted).</summary>
    Disconnected = 20002,
}

/// <summary>A non-recoverable attachment error; <see cref="Exception.InnerException"/> is the client's error.</summary>
public sealed class NbdAttachmentException : NbdException
{
    /// <summary>Creates the exception.</summary>
    /// <param name="code">The error code.</param>
    /// <param name="message">What happened.</param>
    /// <param name="innerException">The underlying client error.</param>
    public NbdAttachmentException(NbdAttachmentErrorCode code, string message, Exception? innerException = null)
        : base(message, innerException)
    {
        Code = code;
        HResult = (int)code;
    }

    /// <summary>The Apple-compatible error code.</summary>
    public NbdAttachmentErrorCode Code { get; }

    /// <summary>Classifies a client error: negotiation, protocol and URL errors are 20001, everything else 20002.</summary>
    internal static NbdAttachmentErrorCode Classify(Exception error) => error switch
    {
        NbdNegotiationException or NbdProtocolException or NbdUriFormatException => NbdAttachmentErrorCode.NegotiationFailed,
        System.Security.Authentication.AuthenticationException => NbdAttachmentErrorCode.NegotiationFailed,
        _ => NbdAttachmentErrorCode.Disconnected,
    };

    /// <summary>Wraps a client error with its classified code.</summary>
    internal static NbdAttachmentException From(Uri url, Exception error)
    {
        if (error is NbdAttachmentException same)
        {
            return same;
        }

        var code = Classify(error);
        var what = code == NbdAttachmentErrorCode.NegotiationFailed
            ? $"Connecting to or negotiating with the NBD server at {url} failed: {error.Message}"
            : $"The NBD attachment to {url} is disconnected: {error.Message}";
        return new NbdAttachmentException(code, what, error);
    }
}
