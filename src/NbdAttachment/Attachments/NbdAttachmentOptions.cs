using Microsoft.Extensions.Logging;
using Microsoft.Extensions.Logging.Abstractions;
using NbdAttachment.Client;

namespace NbdAttachment;

/// <summary>Advanced settings of a <see cref="NetworkBlockDeviceStorageDeviceAttachment"/>. Immutable; use <c>with</c> for variations.</summary>
public sealed record NbdAttachmentOptions
{
    /// <summary>The defaults, as documented on each property.</summary>
    public static NbdAttachmentOptions Default { get; } = new();

    /// <summary>How to retry the first connect and reconnect after transport failures. Default: <see cref="NbdReconnectPolicy.Default"/>.</summary>
    public NbdReconnectPolicy Reconnect { get; init; } = NbdReconnectPolicy.Default;

    /// <summary>Time allowed for one connect and negotiation. Default: <see langword="null"/>, meaning the attachment's <c>Timeout</c>.</summary>
    public TimeSpan? ConnectTimeout { get; init; }

    /// <summary>
    /// How long requests may go unanswered before the connection is declared dead and a reconnect starts.
    /// Default: <see langword="null"/>, meaning the attachment's <c>Timeout</c>.
    /// </summary>
    public TimeSpan? RequestTimeout { get; init; }

    /// <summary>Queue depth: requests in flight before guest I/O waits. Default: 64. Range: 1 to 4096.</summary>
    public int MaxInFlightRequests { get; init; } = 64;

    /// <summary>TLS settings for <c>nbds</c> URLs. Default: <see cref="NbdTlsOptions.Default"/>.</summary>
    public NbdTlsOptions Tls { get; init; } = NbdTlsOptions.Default;

    /// <summary>Where log events go. Default: <see cref="NullLoggerFactory.Instance"/>.</summary>
    public ILoggerFactory LoggerFactory { get; init; } = NullLoggerFactory.Instance;

    /// <summary>Metadata contexts to negotiate. Default: <c>base:allocation</c>.</summary>
    public IReadOnlyList<string> MetaContexts { get; init; } = ["base:allocation"];

    /// <summary>Connections to spread guest I/O over when the server offers multi-conn. Default: 1. See <see cref="NbdClientOptions.Connections"/>.</summary>
    public int Connections { get; init; } = 1;

    /// <summary>
    /// Bytes of acknowledged, unflushed writes kept to write again after a reconnect (a server restart may lose them).
    /// Default: 64 MiB; 0 disables. See <see cref="NbdClientOptions.WriteJournalCapacity"/>.
    /// </summary>
    public long WriteJournalCapacity { get; init; } = NbdClientOptions.Default.WriteJournalCapacity;

    /// <summary>Builds the client settings for an attachment with the given timeout; validates them.</summary>
    internal NbdClientOptions ToClientOptions(TimeSpan timeout)
    {
        var options = new NbdClientOptions
        {
            Reconnect = Reconnect,
            ConnectTimeout = ConnectTimeout ?? timeout,
            RequestTimeout = RequestTimeout ?? timeout,
            MaxInFlightRequests = MaxInFlightRequests,
            Tls = Tls,
            LoggerFactory = LoggerFactory,
            MetaContexts = MetaContexts,
            Connections = Connections,
            WriteJournalCapacity = WriteJournalCapacity,
        };
        options.Validate();
        return options;
    }
}
