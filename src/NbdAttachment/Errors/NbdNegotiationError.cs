namespace NbdAttachment;

/// <summary>Why option negotiation with a server failed.</summary>
public enum NbdNegotiationError
{
    /// <summary>A reply with an error bit the protocol does not define.</summary>
    Other = 0,

    /// <summary><c>NBD_REP_ERR_UNSUP</c>: the server does not know the option.</summary>
    Unsupported,

    /// <summary><c>NBD_REP_ERR_POLICY</c>: the server refuses the option by policy.</summary>
    Policy,

    /// <summary><c>NBD_REP_ERR_INVALID</c>: the server found the option invalid.</summary>
    Invalid,

    /// <summary><c>NBD_REP_ERR_PLATFORM</c>: the server cannot do this on its platform.</summary>
    Platform,

    /// <summary><c>NBD_REP_ERR_TLS_REQD</c>: the server requires TLS first.</summary>
    TlsRequired,

    /// <summary><c>NBD_REP_ERR_UNKNOWN</c>: the export does not exist.</summary>
    UnknownExport,

    /// <summary><c>NBD_REP_ERR_SHUTDOWN</c>: the server is shutting down.</summary>
    Shutdown,

    /// <summary><c>NBD_REP_ERR_BLOCK_SIZE_REQD</c>: the server requires the client to honour block sizes.</summary>
    BlockSizeRequired,

    /// <summary><c>NBD_REP_ERR_TOO_BIG</c>: the request or reply is too large.</summary>
    TooBig,

    /// <summary><c>NBD_REP_ERR_EXT_HEADER_REQD</c>: the server requires extended headers.</summary>
    ExtendedHeadersRequired,

    /// <summary>The peer is not an NBD server (bad greeting magic).</summary>
    NotAnNbdServer,

    /// <summary>The server speaks a handshake style this client does not support (oldstyle).</summary>
    UnsupportedHandshake,

    /// <summary>TLS was required by the URL but the server cannot provide it, or the TLS handshake failed.</summary>
    TlsFailed,

    /// <summary>The server closed the connection in answer to the export name (the <c>EXPORT_NAME</c> fallback cannot report why).</summary>
    ExportRefused,

    /// <summary>The server's export cannot be used by this client (for example transmission flags of zero).</summary>
    UnusableExport,
}
