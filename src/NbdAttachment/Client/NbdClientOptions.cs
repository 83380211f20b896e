using Microsoft.Extensions.Logging;
using Microsoft.Extensions.Logging.Abstractions;

namespace NbdAttachment.Client;

/// <summary>Settings of an <see cref="NbdClient"/>. Immutable; use <c>with</c> for variations.</summary>
public sealed record NbdClientOptions
{
    /// <summary>The defaults, as documented on each property.</summary>
    public static NbdClientOptions Default { get; } = new();

    /// <summary>Where log events go. Default: <see cref="NullLoggerFactory.Instance"/>. Payload bytes are never logged.</summary>
    public ILoggerFactory LoggerFactory { get; init; } = NullLoggerFactory.Instance;

    /// <summary>Requests in flight on one connection before callers wait (back-pressure). Default: 64. Range: 1 to 4096.</summary>
    public int MaxInFlightRequests { get; init; } = 64;

    /// <summary>
    /// Connections to open when the server offers multi-conn (<c>NBD_FLAG_CAN_MULTI_CONN</c>); requests are spread
    /// over them, each with its own in-flight limit. Servers without multi-conn get one. Default: 1. Range: 1 to 16.
    /// </summary>
    public int Connections { get; init; } = 1;

    /// <summary>Time allowed to connect, start TLS and negotiate. Default: 10 seconds.</summary>
    public TimeSpan ConnectTimeout { get; init; } = TimeSpan.FromSeconds(10);

    /// <summary>Ask for structured replies (needed for block status, holes and error messages). Default: <see langword="true"/>.</summary>
    public bool RequestStructuredReplies { get; init; } = true;

    /// <summary>
    /// Metadata contexts to ask for with <c>NBD_OPT_SET_META_CONTEXT</c>, for example <c>base:allocation</c> or
    /// <c>qemu:dirty-bitmap:NAME</c>. Default: <c>base:allocation</c>. Empty asks for none.
    /// </summary>
    public IReadOnlyList<string> MetaContexts { get; init; } = ["base:allocation"];

    /// <summary>TLS settings. Default: <see cref="NbdTlsOptions.Default"/>.</summary>
    public NbdTlsOptions Tls { get; init; } = NbdTlsOptions.Default;

    /// <summary>How to reconnect after a transport failure. Default: <see cref="NbdReconnectPolicy.Default"/>.</summary>
    public NbdReconnectPolicy Reconnect { get; init; } = NbdReconnectPolicy.Default;

    /// <summary>
    /// How long the oldest request may wait for its reply while nothing arrives from the server before the
    /// connection is declared dead and a reconnect starts. Default: <see cref="Timeout.InfiniteTimeSpan"/> (never).
    /// </summary>
    public TimeSpan RequestTimeout { get; init; } = Timeout.InfiniteTimeSpan;

    /// <summary>How long <see cref="NbdClient.DisposeAsync"/> waits for requests in flight before it closes. Default: 5 seconds.</summary>
    public TimeSpan DrainTimeout { get; init; } = TimeSpan.FromSeconds(5);

    /// <summary>
    /// Bytes of writes the server acknowledged but has not made durable (no FLUSH or FUA since) that the client
    /// keeps copies of, to write them again after a reconnect in case the server restarted and lost its cache.
    /// From half this size the client sends a FLUSH of its own to empty the journal, so that writes acknowledged
    /// while the flush is on its way still fit. Only used when the export offers
    /// FLUSH. Default: 64 MiB. 0 disables the journal (a server restart may then silently lose unflushed writes).
    /// </summary>
    public long WriteJournalCapacity { get; init; } = 64L << 20;

    /// <summary>Throws <see cref="ArgumentException"/> when a value is out of range.</summary>
    public void Validate()
    {
        if (WriteJournalCapacity < 0)
        {
            throw new ArgumentOutOfRangeException(nameof(WriteJournalCapacity), WriteJournalCapacity, "WriteJournalCapacity must not be negative.");
        }

        ArgumentNullException.ThrowIfNull(Reconnect);
        Reconnect.Validate();
        if (RequestTimeout <= TimeSpan.Zero && RequestTimeout != Timeout.InfiniteTimeSpan)
        {
            throw new ArgumentOutOfRangeException(nameof(RequestTimeout), RequestTimeout, "RequestTimeout must be positive or infinite.");
        }

        if (DrainTimeout < TimeSpan.Zero && DrainTimeout != Timeout.InfiniteTimeSpan)
        {
            throw new ArgumentOutOfRangeException(nameof(DrainTimeout), DrainTimeout, "DrainTimeout must not be negative.");
        }

        ArgumentNullException.ThrowIfNull(LoggerFactory);
        ArgumentNullException.ThrowIfNull(MetaContexts);
        ArgumentNullException.ThrowIfNull(Tls);
        if (MaxInFlightRequests is < 1 or > 4096)
        {
            throw new ArgumentOutOfRangeException(nameof(MaxInFlightRequests), MaxInFlightRequests, "MaxInFlightRequests must be between 1 and 4096.");
        }

        if (Connections is < 1 or > 16)
        {
            throw new ArgumentOutOfRangeException(nameof(Connections), Connections, "Connections must be between 1 and 16.");
        }

        if (ConnectTimeout <= TimeSpan.Zero && ConnectTimeout != Timeout.InfiniteTimeSpan)
        {
            throw new ArgumentOutOfRangeException(nameof(ConnectTimeout), ConnectTimeout, "ConnectTimeout must be positive or infinite.");
        }

        foreach (var context in MetaContexts)
        {
            if (string.IsNullOrEmpty(context) || context.IndexOf(':', StringComparison.Ordinal) <= 0)
            {
                throw new ArgumentException($"Meta context '{context}' must have the form 'namespace:leaf'.", nameof(MetaContexts));
            }
        }
    }
}
