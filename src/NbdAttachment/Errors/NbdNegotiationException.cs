namespace NbdAttachment;

/// <summary>Option haggling with the server failed: the server refused an option, the export, or TLS.</summary>
public sealed class NbdNegotiationException : NbdException
{
    /// <summary>Creates the exception.</summary>
    /// <param name="error">Why negotiation failed.</param>
    /// <param name="option">The option being negotiated (for example <c>NBD_OPT_GO</c>), if any.</param>
    /// <param name="message">What happened, as a sentence.</param>
    /// <param name="serverMessage">The human-readable text the server sent with its error, if any.</param>
    /// <param name="innerException">The cause, if any.</param>
    public NbdNegotiationException(NbdNegotiationError error, string? option, string message, string? serverMessage = null, Exception? innerException = null)
        : base(string.IsNullOrEmpty(serverMessage) ? message : $"{message} Server said: {serverMessage}", innerException)
    {
        Error = error;
        Option = option;
        ServerMessage = serverMessage;
    }

    /// <summary>Why negotiation failed.</summary>
    public NbdNegotiationError Error { get; }

    /// <summary>The option being negotiated when it failed (for example <c>NBD_OPT_GO</c>), if any.</summary>
    public string? Option { get; }

    /// <summary>The human-readable text the server sent with its error reply, if any.</summary>
    public string? ServerMessage { get; }
}
