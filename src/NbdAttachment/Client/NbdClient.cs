using Microsoft.Extensions.Logging;
using NbdAttachment.Diagnostics;
using NbdAttachment.Engine;

namespace NbdAttachment.Client;

/// <summary>
/// A pipelined NBD client for one export: many requests in flight, replies matched by cookie in any order,
/// large requests split to the server's limits, unaligned I/O handled, and transparent reconnect after
/// transport failures (requests in flight are re-sent). With <see cref="NbdClientOptions.Connections"/> above 1 and
/// a server that offers multi-conn, requests are spread over several connections. Thread-safe. Dispose to drain
/// and disconnect.
/// </summary>
public sealed partial class NbdClient : IAsyncDisposable
{
    private readonly NbdClientOptions _options;
    private readonly ILogger _logger;
    private readonly NbdConnection[] _connections;
    private readonly NbdConnection _connection; // the first: its export is the client's
    private readonly CancellationTokenSource _closing = new();
    private readonly Task[] _supervisors;
    private readonly Timer? _heartbeat;
    private readonly OrderedCallbackQueue _events;
    private int _state;
    private int _disposed;
    private int _reconnecting;
    private uint _next;
    private int _reconnectCount;

    private NbdClient(NbdUri uri, NbdClientOptions options, ILogger logger, List<(Stream Stream, NbdExportInfo Export)> sessions)
    {
        Uri = uri;
        _options = options;
        _logger = logger;
        _events = new OrderedCallbackQueue(error => Log.EventHandlerFailed(logger, uri.ToString(), error));
        _state = (int)NbdClientState.Connected;
        _connections = new NbdConnection[sessions.Count];
        _supervisors = new Task[sessions.Count];
        for (var i = 0; i < sessions.Count; i++)
        {
            var (stream, export) = sessions[i];
            var connection = new NbdConnection(sessions[0].Export, options.MaxInFlightRequests, logger, options.WriteJournalCapacity);
            _connections[i] = connection;
            var wire = new NbdWire(stream, connection, export);
            _supervisors[i] = Task.Run(() => SuperviseAsync(connection, wire));
        }

        _connection = _connections[0];
        if (options.RequestTimeout != Timeout.InfiniteTimeSpan)
        {
            var period = TimeSpan.FromMilliseconds(Math.Clamp(options.RequestTimeout.TotalMilliseconds / 4, 10, 1000));
            _heartbeat = new Timer(static state => ((NbdClient)state!).OnHeartbeat(), this, period, period);
        }
    }

    /// <summary>Raised after every state change: on the thread pool (never on the I/O loops), one at a time, in order.</summary>
    public event EventHandler<NbdClientStateChangedEventArgs>? StateChanged;

    /// <summary>The URL this client is connected to.</summary>
    public NbdUri Uri { get; }

    /// <summary>What was negotiated for the export.</summary>
    public NbdExportInfo Export => _connection.Export;

    /// <summary>The current life-cycle state.</summary>
    public NbdClientState State => (NbdClientState)Volatile.Read(ref _state);

    /// <summary>The error that failed the client, when <see cref="State"/> is <see cref="NbdClientState.Failed"/>.</summary>
    public Exception? Failure => State == NbdClientState.Failed ? Array.Find(_connections, c => c.Failure is not null)?.Failure : null;

    /// <summary>How many times the client has reconnected (over all its connections).</summary>
    public int ReconnectCount => Volatile.Read(ref _reconnectCount);

    /// <summary>Requests currently holding an in-flight slot (over all connections).</summary>
    public int InFlightRequests
    {
        get
        {
            var total = 0;
            foreach (var connection in _connections)
            {
                total += connection.InFlight;
            }

            return total;
        }
    }

    /// <summary>How many connections the client spreads its requests over (1 unless multi-conn was asked for and offered).</summary>
    public int ConnectionCount => _connections.Length;

    /// <summary>Connects to <paramref name="uri"/>, negotiates, and returns a ready client.</summary>
    /// <param name="uri">An NBD URL (<c>nbd://</c>, <c>nbds://</c>, <c>nbd+unix://</c>, <c>nbds+unix://</c>).</param>
    /// <param name="options">Settings; <see cref="NbdClientOptions.Default"/> when null.</param>
    /// <param name="cancellationToken">Cancels the connect.</param>
    /// <exception cref="NbdUriFormatException">The URL is not valid.</exception>
    /// <exception cref="NbdNegotiationException">The server refused the export, TLS, or the handshake.</exception>
    /// <exception cref="NbdConnectionException">The server cannot be reached.</exception>
    /// <exception cref="NbdTimeoutException">Connecting took longer than <see cref="NbdClientOptions.ConnectTimeout"/>.</exception>
    public static ValueTask<NbdClient> ConnectAsync(Uri uri, NbdClientOptions? options = null, CancellationToken cancellationToken = default) =>
        ConnectAsync(NbdUri.Parse(uri), options, cancellationToken);

    /// <summary>Connects to a parsed NBD URL, negotiates, and returns a ready client.</summary>
    /// <param name="uri">The parsed URL.</param>
    /// <param name="options">Settings; <see cref="NbdClientOptions.Default"/> when null.</param>
    /// <param name="cancellationToken">Cancels the connect.</param>
    public static async ValueTask<NbdClient> ConnectAsync(NbdUri uri, NbdClientOptions? options = null, CancellationToken cancellationToken = default)
    {
        ArgumentNullException.ThrowIfNull(uri);
        options ??= NbdClientOptions.Default;
        options.Validate();
        var logger = options.LoggerFactory.CreateLogger("NbdAttachment.Client");
        var sessions = new List<(Stream, NbdExportInfo)>(options.Connections);
        var first = await NbdSession.OpenAsync(uri, options, logger, null, cancellationToken).ConfigureAwait(false);
        sessions.Add(first);
        try
        {
            // The safe pattern: only after the first connection shows the server offers multi-conn, open the others.
            var count = first.Export.CanMultiConn ? options.Connections : 1;
            for (var i = 1; i < count; i++)
            {
                sessions.Add(await NbdSession.OpenAsync(uri, options, logger, first.Export, cancellationToken).ConfigureAwait(false));
            }
        }
        catch
        {
            foreach (var (stream, _) in sessions)
            {
                await stream.DisposeAsync().ConfigureAwait(false);
            }

            throw;
        }

        return new NbdClient(uri, options, logger, sessions);
    }

    /// <summary>Lists the exports a server offers (<c>NBD_OPT_LIST</c>).</summary>
    /// <param name="uri">The server's URL; the export name in it is ignored.</param>
    /// <param name="options">Settings; <see cref="NbdClientOptions.Default"/> when null.</param>
    /// <param name="cancellationToken">Cancels the request.</param>
    public static ValueTask<IReadOnlyList<NbdExportListing>> ListExportsAsync(Uri uri, NbdClientOptions? options = null, CancellationToken cancellationToken = default) =>
        ListExportsAsync(NbdUri.Parse(uri), options, cancellationToken);

    /// <summary>Lists the exports a server offers (<c>NBD_OPT_LIST</c>).</summary>
    /// <param name="uri">The server's URL; the export name in it is ignored.</param>
    /// <param name="options">Settings; <see cref="NbdClientOptions.Default"/> when null.</param>
    /// <param name="cancellationToken">Cancels the request.</param>
    public static ValueTask<IReadOnlyList<NbdExportListing>> ListExportsAsync(NbdUri uri, NbdClientOptions? options = null, CancellationToken cancellationToken = default) =>
        NbdSession.NegotiateOnlyAsync(uri, options, static (negotiator, ct) => negotiator.ListAsync(ct), cancellationToken);

    /// <summary>Lists the meta contexts the server offers for the URL's export (<c>NBD_OPT_LIST_META_CONTEXT</c>).</summary>
    /// <param name="uri">The export's URL.</param>
    /// <param name="query">A query such as <c>qemu:</c> or <c>qemu:dirty-bitmap:</c> (a namespace or prefix), or null for every context.</param>
    /// <param name="options">Settings; <see cref="NbdClientOptions.Default"/> when null.</param>
    /// <param name="cancellationToken">Cancels the request.</param>
    /// <returns>The context names, in the server's order, each once.</returns>
    public static ValueTask<IReadOnlyList<string>> ListMetaContextsAsync(Uri uri, string? query = null, NbdClientOptions? options = null, CancellationToken cancellationToken = default) =>
        ListMetaContextsAsync(NbdUri.Parse(uri), query, options, cancellationToken);

    /// <summary>Lists the meta contexts the server offers for the URL's export (<c>NBD_OPT_LIST_META_CONTEXT</c>).</summary>
    /// <param name="uri">The export's URL.</param>
    /// <param name="query">A query such as <c>qemu:</c> or <c>qemu:dirty-bitmap:</c> (a namespace or prefix), or null for every context.</param>
    /// <param name="options">Settings; <see cref="NbdClientOptions.Default"/> when null.</param>
    /// <param name="cancellationToken">Cancels the request.</param>
    /// <returns>The context names, in the server's order, each once.</returns>
    public static ValueTask<IReadOnlyList<string>> ListMetaContextsAsync(NbdUri uri, string? query = null, NbdClientOptions? options = null, CancellationToken cancellationToken = default)
    {
        IReadOnlyList<string> queries = query is null ? [] : [query];
        return NbdSession.NegotiateOnlyAsync(uri, options, (negotiator, ct) => negotiator.ListMetaContextsAsync(queries, ct), cancellationToken);
    }

    /// <summary>Asks the server about the URL's export without entering transmission (<c>NBD_OPT_INFO</c>).</summary>
    /// <param name="uri">The export's URL.</param>
    /// <param name="options">Settings; <see cref="NbdClientOptions.Default"/> when null.</param>
    /// <param name="cancellationToken">Cancels the request.</param>
    public static ValueTask<NbdExportInfo> GetExportInfoAsync(Uri uri, NbdClientOptions? options = null, CancellationToken cancellationToken = default) =>
        GetExportInfoAsync(NbdUri.Parse(uri), options, cancellationToken);

    /// <summary>Asks the server about the URL's export without entering transmission (<c>NBD_OPT_INFO</c>).</summary>
    /// <param name="uri">The export's URL.</param>
    /// <param name="options">Settings; <see cref="NbdClientOptions.Default"/> when null.</param>
    /// <param name="cancellationToken">Cancels the request.</param>
    public static ValueTask<NbdExportInfo> GetExportInfoAsync(NbdUri uri, NbdClientOptions? options = null, CancellationToken cancellationToken = default) =>
        NbdSession.NegotiateOnlyAsync(uri, options, static (negotiator, ct) => negotiator.InfoAsync(ct), cancellationToken);

    /// <summary>Reads <paramref name="buffer"/>.Length bytes at <paramref name="offset"/>.</summary>
    /// <param name="offset">Byte offset in the export.</param>
    /// <param name="buffer">Receives the data.</param>
    /// <param name="cancellationToken">Cancels the wait; the buffer is not written after cancellation returns.</param>
    public ValueTask ReadAsync(long offset, Memory<byte> buffer, CancellationToken cancellationToken = default) =>
        Pick().ReadAsync(offset, buffer, false, cancellationToken);

    /// <summary>Reads <paramref name="buffer"/>.Length bytes at <paramref name="offset"/> with command flags.</summary>
    /// <param name="offset">Byte offset in the export.</param>
    /// <param name="buffer">Receives the data.</param>
    /// <param name="options">Only <see cref="NbdCommandOptions.DontFragment"/> applies.</param>
    /// <param name="cancellationToken">Cancels the wait; the buffer is not written after cancellation returns.</param>
    public ValueTask ReadAsync(long offset, Memory<byte> buffer, NbdCommandOptions options, CancellationToken cancellationToken = default) =>
        Pick().ReadAsync(offset, buffer, (options & NbdCommandOptions.DontFragment) != 0, cancellationToken);

    /// <summary>Writes <paramref name="data"/> at <paramref name="offset"/>.</summary>
    /// <param name="offset">Byte offset in the export.</param>
    /// <param name="data">The bytes to write; must stay unchanged until the task completes.</param>
    /// <param name="options">Only <see cref="NbdCommandOptions.ForceUnitAccess"/> applies.</param>
    /// <param name="cancellationToken">Cancels the wait.</param>
    public ValueTask WriteAsync(long offset, ReadOnlyMemory<byte> data, NbdCommandOptions options = NbdCommandOptions.None, CancellationToken cancellationToken = default) =>
        Pick().WriteAsync(offset, data, (options & NbdCommandOptions.ForceUnitAccess) != 0, cancellationToken);

    /// <summary>Makes every write the server has acknowledged durable (<c>NBD_CMD_FLUSH</c>).</summary>
    /// <param name="cancellationToken">Cancels the wait.</param>
    public ValueTask FlushAsync(CancellationToken cancellationToken = default) =>
        _connections.Length == 1 ? _connection.FlushAsync(cancellationToken) : FlushAllAsync(cancellationToken);

    /// <summary>Tells the server a range is no longer needed (<c>NBD_CMD_TRIM</c>); unaligned edges are left alone.</summary>
    /// <param name="offset">Byte offset in the export.</param>
    /// <param name="length">Bytes to discard.</param>
    /// <param name="options">Only <see cref="NbdCommandOptions.ForceUnitAccess"/> applies.</param>
    /// <param name="cancellationToken">Cancels the wait.</param>
    public ValueTask TrimAsync(long offset, long length, NbdCommandOptions options = NbdCommandOptions.None, CancellationToken cancellationToken = default) =>
        Pick().TrimAsync(offset, length, (options & NbdCommandOptions.ForceUnitAccess) != 0, cancellationToken);

    /// <summary>Makes a range read as zeroes (<c>NBD_CMD_WRITE_ZEROES</c>).</summary>
    /// <param name="offset">Byte offset in the export.</param>
    /// <param name="length">Bytes to zero.</param>
    /// <param name="options"><see cref="NbdCommandOptions.ForceUnitAccess"/>, <see cref="NbdCommandOptions.NoHole"/>, <see cref="NbdCommandOptions.FastZero"/>.</param>
    /// <param name="cancellationToken">Cancels the wait.</param>
    public ValueTask WriteZeroesAsync(long offset, long length, NbdCommandOptions options = NbdCommandOptions.None, CancellationToken cancellationToken = default) =>
        Pick().WriteZeroesAsync(
            offset,
            length,
            (options & NbdCommandOptions.ForceUnitAccess) != 0,
            (options & NbdCommandOptions.NoHole) != 0,
            (options & NbdCommandOptions.FastZero) != 0,
            cancellationToken);

    /// <summary>Asks the server to prefetch a range (<c>NBD_CMD_CACHE</c>).</summary>
    /// <param name="offset">Byte offset in the export.</param>
    /// <param name="length">Bytes to prefetch.</param>
    /// <param name="cancellationToken">Cancels the wait.</param>
    public ValueTask CacheAsync(long offset, long length, CancellationToken cancellationToken = default) =>
        Pick().CacheAsync(offset, length, cancellationToken);

    /// <summary>
    /// One <c>NBD_CMD_BLOCK_STATUS</c> request: the extents the server reports for <paramref name="context"/>,
    /// starting at <paramref name="offset"/>. The server may cover less than <paramref name="length"/>; ask again from the end.
    /// </summary>
    /// <param name="offset">Byte offset in the export.</param>
    /// <param name="length">Bytes to describe (a hint).</param>
    /// <param name="context">A granted meta context, for example <c>base:allocation</c>.</param>
    /// <param name="singleExtent">Set <c>NBD_CMD_FLAG_REQ_ONE</c>: exactly one extent.</param>
    /// <param name="cancellationToken">Cancels the wait.</param>
    public async ValueTask<IReadOnlyList<NbdExtent>> GetBlockStatusAsync(long offset, long length, string context = "base:allocation", bool singleExtent = false, CancellationToken cancellationToken = default)
    {
        var extents = new List<NbdExtent>();
        await Pick().BlockStatusAsync(offset, length, context, singleExtent, extents, cancellationToken).ConfigureAwait(false);
        return extents;
    }

    /// <summary>
    /// Closes gracefully: waits (up to <see cref="NbdClientOptions.DrainTimeout"/>) for requests in flight,
    /// sends <c>NBD_CMD_DISC</c>, and closes the connection. Later I/O fails with <see cref="ObjectDisposedException"/>.
    /// </summary>
    public async ValueTask DisposeAsync()
    {
        if (Interlocked.Exchange(ref _disposed, 1) != 0)
        {
            return;
        }

        if (_heartbeat is not null)
        {
            await _heartbeat.DisposeAsync().ConfigureAwait(false);
        }

        await DrainAsync().ConfigureAwait(false);
        _closing.Cancel();
        var connected = State == NbdClientState.Connected;
        var closed = new ObjectDisposedException(nameof(NbdClient), "The NBD client was disposed.");
        var disconnected = false;
        foreach (var connection in _connections)
        {
            disconnected |= connected && connection.RequestDisconnect();
        }

        var supervisors = Task.WhenAll(_supervisors);
        if (disconnected)
        {
            await Task.WhenAny(supervisors, Task.Delay(TimeSpan.FromSeconds(2))).ConfigureAwait(false);
        }

        foreach (var connection in _connections)
        {
            connection.Fail(closed);
        }

        await supervisors.ConfigureAwait(false);
        if (State != NbdClientState.Failed)
        {
            SetState(NbdClientState.Closed, null);
        }

        Log.Disconnected(_logger, Uri.ToString());
        _closing.Dispose();
    }

    /// <summary>The connection for the next request: the one with the fewest requests in flight (round robin on ties).</summary>
    private NbdConnection Pick()
    {
        if (_connections.Length == 1)
        {
            return _connection;
        }

        var start = (int)(Interlocked.Increment(ref _next) % (uint)_connections.Length);
        var best = _connections[start];
        for (var i = 1; i < _connections.Length; i++)
        {
            var candidate = _connections[(start + i) % _connections.Length];
            if (candidate.InFlight < best.InFlight)
            {
                best = candidate;
            }
        }

        return best;
    }

    /// <summary>With several connections, each one flushes: each keeps its own journal of unflushed writes.</summary>
    private async ValueTask FlushAllAsync(CancellationToken cancellationToken)
    {
        var flushes = new Task[_connections.Length];
        for (var i = 0; i < flushes.Length; i++)
        {
            flushes[i] = _connections[i].FlushAsync(cancellationToken).AsTask();
        }

        await Task.WhenAll(flushes).ConfigureAwait(false);
    }

    private async Task DrainAsync()
    {
        var deadline = _options.DrainTimeout == Timeout.InfiniteTimeSpan ? long.MaxValue : Environment.TickCount64 + (long)_options.DrainTimeout.TotalMilliseconds;
        while (InFlightRequests > 0 && Environment.TickCount64 < deadline && State is NbdClientState.Connected or NbdClientState.Reconnecting)
        {
            await Task.Delay(5).ConfigureAwait(false);
        }
    }

    private void SetState(NbdClientState state, Exception? error)
    {
        var previous = (NbdClientState)Interlocked.Exchange(ref _state, (int)state);
        if (previous == state)
        {
            return;
        }

        Log.StateChanged(_logger, Uri.ToString(), previous.ToString(), state.ToString());
        var args = new NbdClientStateChangedEventArgs(previous, state, error);
        _events.Post(() => StateChanged?.Invoke(this, args));
    }
}

/// <summary>Data of <see cref="NbdClient.StateChanged"/>.</summary>
public sealed class NbdClientStateChangedEventArgs : EventArgs
{
    /// <summary>Creates the event data.</summary>
    /// <param name="previous">The state before.</param>
    /// <param name="current">The state now.</param>
    /// <param name="error">The error that caused the change, if any.</param>
    public NbdClientStateChangedEventArgs(NbdClientState previous, NbdClientState current, Exception? error)
    {
        Previous = previous;
        Current = current;
        Error = error;
    }

    /// <summary>The state before the change.</summary>
    public NbdClientState Previous { get; }

    /// <summary>The state after the change.</summary>
    public NbdClientState Current { get; }

    /// <summary>The error that caused the change (a lost connection or a fatal failure), if any.</summary>
    public Exception? Error { get; }
}
