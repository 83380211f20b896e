namespace NbdAttachment;

/// <summary>Why the client refused a request before sending it.</summary>
public enum NbdRequestRejectReason
{
    /// <summary>The export is read-only (by the server's flags or because it was forced read-only).</summary>
    ReadOnly,

    /// <summary>The range runs past the end of the export, or is negative.</summary>
    OutOfBounds,

    /// <summary>The server did not advertise the command or flag.</summary>
    NotSupported,

    /// <summary>The arguments are not valid (for example a zero length where none is allowed).</summary>
    InvalidArgument,
}

/// <summary>The client refused a request locally; nothing was sent to the server.</summary>
public sealed class NbdRequestRejectedException : NbdException
{
    /// <summary>Creates the exception.</summary>
    /// <param name="reason">Why the request was refused.</param>
    /// <param name="message">What was refused, as a sentence.</param>
    public NbdRequestRejectedException(NbdRequestRejectReason reason, string message)
        : base(message)
    {
        Reason = reason;
    }

    /// <summary>Why the request was refused.</summary>
    public NbdRequestRejectReason Reason { get; }
}
