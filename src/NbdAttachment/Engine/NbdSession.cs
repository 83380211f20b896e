using Microsoft.Extensions.Logging;
using NbdAttachment.Client;
using NbdAttachment.Diagnostics;
using NbdAttachment.Transport;

namespace NbdAttachment.Engine;

/// <summary>Opens a transport and negotiates on it, bounded by the connect timeout.</summary>
internal static class NbdSession
{
    /// <summary>
    /// Connects and negotiates up to transmission. With <paramref name="existing"/> (a reconnect) the export must
    /// still match what was negotiated first: a changed size, read-only flag or lost meta context is fatal.
    /// Returns this session's negotiation (its meta context ids apply to this session only).
    /// </summary>
    public static async ValueTask<(Stream Stream, NbdExportInfo Export)> OpenAsync(NbdUri uri, NbdClientOptions options, ILogger logger, NbdExportInfo? existing, CancellationToken cancellationToken)
    {
        var (stream, export) = await NegotiateAsync(uri, options, logger, static (n, ct) => n.GoAsync(ct), cancellationToken).ConfigureAwait(false);
        if (existing is not null && ChangedFrom(existing, export) is { } change)
        {
            await stream.DisposeAsync().ConfigureAwait(false);
            throw new NbdNegotiationException(
                NbdNegotiationError.UnusableExport,
                null,
                $"After reconnecting, export '{uri.ExportName}' changed ({change}); the client will not use it.");
        }

        Log.Connected(logger, uri.ToString(), export.ExportName, export.Size);
        return (stream, export);
    }

    /// <summary>What differs between the first negotiation and a later one, or null when the export is the same.</summary>
    private static string? ChangedFrom(NbdExportInfo first, NbdExportInfo now)
    {
        if (now.Size != first.Size)
        {
            return $"size {first.Size} -> {now.Size}";
        }

        if (now.IsReadOnly != first.IsReadOnly)
        {
            return $"read-only {first.IsReadOnly} -> {now.IsReadOnly}";
        }

        var missing = first.MetaContexts.Where(c => !now.MetaContextIds.ContainsKey(c)).ToList();
        return missing.Count == 0 ? null : $"meta contexts no longer granted: {string.Join(", ", missing)}";
    }

    /// <summary>Connects, negotiates with <paramref name="action"/>, and closes (for LIST and INFO).</summary>
    public static async ValueTask<T> NegotiateOnlyAsync<T>(NbdUri uri, NbdClientOptions? options, Func<NbdNegotiator, CancellationToken, ValueTask<T>> action, CancellationToken cancellationToken)
    {
        ArgumentNullException.ThrowIfNull(uri);
        options ??= NbdClientOptions.Default;
        options.Validate();
        var logger = options.LoggerFactory.CreateLogger("NbdAttachment.Client");
        var (stream, result) = await NegotiateAsync(uri, options, logger, action, cancellationToken).ConfigureAwait(false);
        await stream.DisposeAsync().ConfigureAwait(false);
        return result;
    }

    private static async ValueTask<(Stream Stream, T Result)> NegotiateAsync<T>(NbdUri uri, NbdClientOptions options, ILogger logger, Func<NbdNegotiator, CancellationToken, ValueTask<T>> action, CancellationToken cancellationToken)
    {
        using var timeout = CancellationTokenSource.CreateLinkedTokenSource(cancellationToken);
        if (options.ConnectTimeout != Timeout.InfiniteTimeSpan)
        {
            timeout.CancelAfter(options.ConnectTimeout);
        }

        Log.Connecting(logger, uri.ToString());
        Stream? stream = null;
        NbdNegotiator? negotiator = null;
        try
        {
            stream = await NbdTransport.ConnectAsync(uri, timeout.Token).ConfigureAwait(false);

            // The socket blocks (see BlockingSocketStream): negotiate on a thread of its own, neither the caller's
            // nor a pool thread (many connects at once would starve the pool), and close the socket when the
            // caller cancels or the connect timeout fires, which ends any blocked call.
            await using var unblock = timeout.Token.UnsafeRegister(static s => ((Stream)s!).Dispose(), stream).ConfigureAwait(false);
            negotiator = new NbdNegotiator(stream, uri, options, logger);
            var result = await NbdTransport.RunBlockingAsync(() => action(negotiator, timeout.Token).AsTask()).ConfigureAwait(false);
            return (negotiator.Stream, result);
        }
        catch (Exception ex) when (timeout.IsCancellationRequested)
        {
            await DisposeAsync(negotiator?.Stream ?? stream).ConfigureAwait(false);
            if (cancellationToken.IsCancellationRequested)
            {
                Log.ConnectFailed(logger, uri.ToString(), ex);
                throw ex as OperationCanceledException ?? new OperationCanceledException("Connecting was cancelled.", ex, cancellationToken);
            }

            var error = new NbdTimeoutException($"Connecting to {uri} did not finish within {options.ConnectTimeout.TotalSeconds:0.###} s.", ex);
            Log.ConnectFailed(logger, uri.ToString(), error);
            throw error;
        }
        catch (Exception ex)
        {
            await DisposeAsync(negotiator?.Stream ?? stream).ConfigureAwait(false);
            Log.ConnectFailed(logger, uri.ToString(), ex);
            throw;
        }
    }

    private static async ValueTask DisposeAsync(Stream? stream)
    {
        if (stream is not null)
        {
            await stream.DisposeAsync().ConfigureAwait(false);
        }
    }
}
