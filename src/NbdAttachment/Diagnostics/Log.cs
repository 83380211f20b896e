using Microsoft.Extensions.Logging;

namespace NbdAttachment.Diagnostics;

/// <summary>All log messages of the library, bound to <see cref="NbdEventIds"/>. Never logs payload bytes.</summary>
internal static partial class Log
{
    [LoggerMessage(NbdEventIds.Connecting, LogLevel.Debug, "Connecting to {Endpoint}")]
    public static partial void Connecting(ILogger logger, string endpoint);

    [LoggerMessage(NbdEventIds.Connected, LogLevel.Information, "Connected to {Endpoint}: export '{Export}', {Size} bytes")]
    public static partial void Connected(ILogger logger, string endpoint, string export, long size);

    [LoggerMessage(NbdEventIds.ConnectFailed, LogLevel.Warning, "Connecting to {Endpoint} failed")]
    public static partial void ConnectFailed(ILogger logger, string endpoint, Exception exception);

    [LoggerMessage(NbdEventIds.Disconnected, LogLevel.Debug, "Disconnected from {Endpoint}")]
    public static partial void Disconnected(ILogger logger, string endpoint);

    [LoggerMessage(NbdEventIds.ConnectionBroken, LogLevel.Warning, "Connection to {Endpoint} broke with {InFlight} requests in flight")]
    public static partial void ConnectionBroken(ILogger logger, string endpoint, int inFlight, Exception exception);

    [LoggerMessage(NbdEventIds.Greeting, LogLevel.Trace, "Server greeting: fixed newstyle {FixedNewstyle}, no zeroes {NoZeroes}")]
    public static partial void Greeting(ILogger logger, bool fixedNewstyle, bool noZeroes);

    [LoggerMessage(NbdEventIds.TlsStarted, LogLevel.Debug, "TLS started")]
    public static partial void TlsStarted(ILogger logger);

    [LoggerMessage(NbdEventIds.OptionRefused, LogLevel.Debug, "Server refused {Option} with {Reply}: {Message}")]
    public static partial void OptionRefused(ILogger logger, string option, string reply, string message);

    [LoggerMessage(NbdEventIds.ExportNameFallback, LogLevel.Debug, "Server lacks NBD_OPT_GO; falling back to NBD_OPT_EXPORT_NAME")]
    public static partial void ExportNameFallback(ILogger logger);

    [LoggerMessage(NbdEventIds.InvalidBlockSizes, LogLevel.Warning, "Ignoring invalid block sizes from the server: {Problem}")]
    public static partial void InvalidBlockSizes(ILogger logger, string problem);

    [LoggerMessage(NbdEventIds.Negotiated, LogLevel.Debug, "Negotiated export '{Export}': {Size} bytes, flags {Flags}, structured replies {Structured}, {Contexts} meta contexts, TLS {Tls}")]
    public static partial void Negotiated(ILogger logger, string export, long size, string flags, bool structured, int contexts, bool tls);

    [LoggerMessage(NbdEventIds.CommandFailed, LogLevel.Debug, "Server failed {Command} at offset {Offset} with {Error}")]
    public static partial void CommandFailed(ILogger logger, string command, ulong offset, NbdError error);

    [LoggerMessage(NbdEventIds.ReconnectScheduled, LogLevel.Information, "Reconnect attempt {Attempt} to {Endpoint} in {Delay}")]
    public static partial void ReconnectScheduled(ILogger logger, int attempt, string endpoint, TimeSpan delay);

    [LoggerMessage(NbdEventIds.Reconnected, LogLevel.Information, "Reconnected to {Endpoint} after {Attempts} attempts; re-sending {Requests} requests")]
    public static partial void Reconnected(ILogger logger, string endpoint, int attempts, int requests);

    [LoggerMessage(NbdEventIds.JournalReplayed, LogLevel.Information, "Wrote {Writes} acknowledged, unflushed writes ({Bytes} bytes journalled) again after reconnecting")]
    public static partial void JournalReplayed(ILogger logger, int writes, long bytes);

    [LoggerMessage(NbdEventIds.ReconnectGaveUp, LogLevel.Error, "Gave up reconnecting to {Endpoint} after {Attempts} attempts")]
    public static partial void ReconnectGaveUp(ILogger logger, string endpoint, int attempts, Exception exception);

    [LoggerMessage(NbdEventIds.StateChanged, LogLevel.Debug, "{Endpoint}: state {From} -> {To}")]
    public static partial void StateChanged(ILogger logger, string endpoint, string from, string to);

    [LoggerMessage(NbdEventIds.EventHandlerFailed, LogLevel.Warning, "{Endpoint}: a state-change event handler threw")]
    public static partial void EventHandlerFailed(ILogger logger, string endpoint, Exception exception);

    [LoggerMessage(NbdEventIds.ProtocolViolation, LogLevel.Error, "Server at {Endpoint} broke the protocol")]
    public static partial void ProtocolViolation(ILogger logger, string endpoint, Exception exception);
}
