namespace NbdAttachment.Diagnostics;

/// <summary>
/// The public catalogue of log event ids. Ranges: 1000 connection, 2000 negotiation, 3000 I/O,
/// 4000 reconnect and state, 9000 protocol violations. Ids are a contract: they are never reused.
/// </summary>
public static class NbdEventIds
{
    /// <summary>A connection attempt starts.</summary>
    public const int Connecting = 1001;

    /// <summary>A connection is negotiated and ready for I/O.</summary>
    public const int Connected = 1002;

    /// <summary>A connection attempt failed.</summary>
    public const int ConnectFailed = 1003;

    /// <summary>A connection was closed by this client (NBD_CMD_DISC sent).</summary>
    public const int Disconnected = 1004;

    /// <summary>A connection broke (transport failure or protocol violation).</summary>
    public const int ConnectionBroken = 1005;

    /// <summary>The server's greeting was read (handshake flags).</summary>
    public const int Greeting = 2001;

    /// <summary>TLS was started after NBD_OPT_STARTTLS.</summary>
    public const int TlsStarted = 2002;

    /// <summary>The server refused an optional option; the client continues without it.</summary>
    public const int OptionRefused = 2003;

    /// <summary>The server does not support NBD_OPT_GO; the client falls back to NBD_OPT_EXPORT_NAME.</summary>
    public const int ExportNameFallback = 2004;

    /// <summary>The server advertised block sizes that break the protocol's rules; defaults are used.</summary>
    public const int InvalidBlockSizes = 2005;

    /// <summary>Negotiation finished: export size, flags and extensions.</summary>
    public const int Negotiated = 2006;

    /// <summary>The server failed a command with an NBD error.</summary>
    public const int CommandFailed = 3001;

    /// <summary>A reconnect attempt is scheduled after a delay.</summary>
    public const int ReconnectScheduled = 4001;

    /// <summary>A reconnect succeeded; in-flight requests are re-sent.</summary>
    public const int Reconnected = 4002;

    /// <summary>The reconnect policy gave up; the client is failed.</summary>
    public const int ReconnectGaveUp = 4003;

    /// <summary>The client or attachment changed state.</summary>
    public const int StateChanged = 4004;

    /// <summary>After a reconnect, writes acknowledged since the last flush were written again (journal replay).</summary>
    public const int JournalReplayed = 4006;

    /// <summary>A handler of a state-change event threw; the exception was ignored.</summary>
    public const int EventHandlerFailed = 4005;

    /// <summary>The server broke the protocol; the connection was ended.</summary>
    public const int ProtocolViolation = 9001;
}
