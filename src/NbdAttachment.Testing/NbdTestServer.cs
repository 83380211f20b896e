using System.Collections.Concurrent;
using System.Globalization;
using System.Net;
using System.Net.Sockets;
using System.Text;

namespace NbdAttachment.Testing;

/// <summary>
/// An in-process, memory-backed NBD server listening on 127.0.0.1 (ephemeral port) and optionally on a Unix
/// domain socket. Meant for tests and samples; supports fault injection through <see cref="Faults"/>.
/// </summary>
public sealed class NbdTestServer : IAsyncDisposable
{
    private readonly Dictionary<string, NbdTestExport> _exports;
    private readonly CancellationTokenSource _shutdown = new();
    private readonly ConcurrentDictionary<long, ServerConnection> _connections = new();
    private readonly List<Socket> _listeners = [];
    private readonly List<Task> _acceptLoops = [];
    private long _nextConnectionId;
    private int _disposed;

    private NbdTestServer(NbdTestServerOptions options)
    {
        Options = options;
        Exports = [.. options.Exports.Select(o => new NbdTestExport(o))];
        _exports = new Dictionary<string, NbdTestExport>(StringComparer.Ordinal);
        foreach (NbdTestExport export in Exports)
        {
            if (!_exports.TryAdd(export.Name, export))
            {
                throw new ArgumentException($"Duplicate export name '{export.Name}'.", nameof(options));
            }
        }
    }

    /// <summary>The options the server was started with.</summary>
    public NbdTestServerOptions Options { get; }

    /// <summary>Every export, in the order of <see cref="NbdTestServerOptions.Exports"/>.</summary>
    public IReadOnlyList<NbdTestExport> Exports { get; }

    /// <summary>TCP port on 127.0.0.1.</summary>
    public int Port { get; private set; }

    /// <summary>Path of the Unix domain socket, or null when not listening on one.</summary>
    public string? UnixSocketPath { get; private set; }

    /// <summary>URI of the default export over TCP: <c>nbd://127.0.0.1:PORT/</c>.</summary>
    public Uri Uri => GetUri();

    /// <summary>Counters of what the server has seen.</summary>
    public NbdTestServerStatistics Statistics { get; } = new();

    /// <summary>Fault injection controls.</summary>
    public NbdFaultInjector Faults { get; } = new();

    /// <summary>Number of connections currently open.</summary>
    public int ActiveConnections => _connections.Count;

    internal CancellationToken ShutdownToken => _shutdown.Token;

    /// <summary>Starts a server and begins accepting connections.</summary>
    /// <param name="options">Configuration; <see cref="NbdTestServerOptions.Default"/> when null.</param>
    /// <param name="cancellationToken">Cancels the start-up.</param>
    /// <returns>The running server; dispose it to stop.</returns>
    public static Task<NbdTestServer> StartAsync(NbdTestServerOptions? options = null, CancellationToken cancellationToken = default)
    {
        cancellationToken.ThrowIfCancellationRequested();
        options ??= NbdTestServerOptions.Default;
        Validate(options);
        var server = new NbdTestServer(options);
        try
        {
            server.Listen();
        }
        catch
        {
            server.CloseListeners();
            throw;
        }

        return Task.FromResult(server);
    }

    /// <summary>Finds an export by name.</summary>
    /// <param name="name">Export name; "" is the default export.</param>
    /// <returns>The export.</returns>
    /// <exception cref="KeyNotFoundException">No export has that name.</exception>
    public NbdTestExport GetExport(string name = "") =>
        _exports.TryGetValue(name, out NbdTestExport? export)
            ? export
            : throw new KeyNotFoundException($"No export named '{name}'.");

    /// <summary>
    /// Builds an NBD URI for an export: <c>nbd://127.0.0.1:PORT/NAME</c>, or
    /// <c>nbd+unix:///NAME?socket=PATH</c> when <paramref name="unixSocket"/> is true. The name is percent-encoded
    /// (including '/'). <see cref="System.Uri"/> removes dot segments, so for an export named exactly "." or ".."
    /// read <see cref="Uri.OriginalString"/>.
    /// </summary>
    /// <param name="exportName">Export name; "" is the default export.</param>
    /// <param name="unixSocket">Build the Unix domain socket form.</param>
    /// <returns>The URI.</returns>
    public Uri GetUri(string exportName = "", bool unixSocket = false)
    {
        ArgumentNullException.ThrowIfNull(exportName);
        string path = Escape(exportName, keepSlash: false);
        if (!unixSocket)
        {
            return new Uri(string.Create(CultureInfo.InvariantCulture, $"nbd://127.0.0.1:{Port}/{path}"));
        }

        string socket = UnixSocketPath ?? throw new InvalidOperationException("The server is not listening on a Unix domain socket.");
        return new Uri($"nbd+unix:///{path}?socket={Escape(socket, keepSlash: true)}");
    }

    /// <summary>Stops listening, closes every connection and waits for them to finish.</summary>
    /// <returns>A task completing when everything is closed.</returns>
    public async ValueTask DisposeAsync()
    {
        if (Interlocked.Exchange(ref _disposed, 1) != 0)
        {
            return;
        }

        await _shutdown.CancelAsync().ConfigureAwait(false);
        CloseListeners();
        await Task.WhenAll(_acceptLoops).ConfigureAwait(false);
        foreach (ServerConnection connection in _connections.Values)
        {
            connection.Abort();
        }

        await Task.WhenAll(_connections.Values.Select(c => c.Completion)).ConfigureAwait(false);
        if (UnixSocketPath is not null)
        {
            try
            {
                File.Delete(UnixSocketPath);
            }
            catch (IOException)
            {
                // Best effort.
            }
            catch (UnauthorizedAccessException)
            {
                // Best effort.
            }
        }

        _shutdown.Dispose();
    }

    internal NbdTestExport? FindExport(string name) => _exports.GetValueOrDefault(name);

    private static void Validate(NbdTestServerOptions options)
    {
        if (options.Exports is null || options.Exports.Count == 0)
        {
            throw new ArgumentException("At least one export is required.", nameof(options));
        }

        foreach (NbdTestExportOptions export in options.Exports)
        {
            ArgumentNullException.ThrowIfNull(export, nameof(options));
            if (export.Name is null || Encoding.UTF8.GetByteCount(export.Name) > ServerWire.MaxStringLength || export.Name.Contains('\0', StringComparison.Ordinal))
            {
                throw new ArgumentException("Export names must be non-null, NUL-free and at most 4096 UTF-8 bytes.", nameof(options));
            }

            if (export.Size < 0 || export.MinimumBlockSize == 0 || export.MaximumBlockSize < export.MinimumBlockSize)
            {
                throw new ArgumentException($"Export '{export.Name}' has an invalid size or block sizes.", nameof(options));
            }
        }

        ArgumentOutOfRangeException.ThrowIfLessThan(options.MaxChunkSize, 1, nameof(options));
        ArgumentOutOfRangeException.ThrowIfLessThan(options.MaxInFlightRequestsPerConnection, 1, nameof(options));
    }

    private static string Escape(string value, bool keepSlash)
    {
        var builder = new StringBuilder();
        foreach (byte b in Encoding.UTF8.GetBytes(value))
        {
            char c = (char)b;
            if (char.IsAsciiLetterOrDigit(c) || c is '-' or '_' or '~' or '.' || (keepSlash && c == '/'))
            {
                builder.Append(c);
            }
            else
            {
                builder.Append(CultureInfo.InvariantCulture, $"%{b:X2}");
            }
        }

        return builder.ToString();
    }

    private void Listen()
    {
        var tcp = new Socket(AddressFamily.InterNetwork, SocketType.Stream, ProtocolType.Tcp);
        _listeners.Add(tcp);
        tcp.Bind(new IPEndPoint(IPAddress.Loopback, 0));
        tcp.Listen(128);
        Port = ((IPEndPoint)tcp.LocalEndPoint!).Port;

        if (Options.ListenOnUnixSocket || Options.UnixSocketPath is not null)
        {
            string path = Options.UnixSocketPath
                ?? Path.Combine(Path.GetTempPath(), $"nbdtest-{Guid.NewGuid():N}.sock");
            var unix = new Socket(AddressFamily.Unix, SocketType.Stream, ProtocolType.Unspecified);
            _listeners.Add(unix);
            unix.Bind(new UnixDomainSocketEndPoint(path));
            UnixSocketPath = path;
            unix.Listen(128);
        }

        foreach (Socket listener in _listeners)
        {
            _acceptLoops.Add(Task.Run(() => AcceptLoopAsync(listener)));
        }
    }

    private void CloseListeners()
    {
        foreach (Socket listener in _listeners)
        {
            listener.Dispose();
        }
    }

    private async Task AcceptLoopAsync(Socket listener)
    {
        while (!_shutdown.IsCancellationRequested)
        {
            Socket socket;
            try
            {
                socket = await listener.AcceptAsync(_shutdown.Token).ConfigureAwait(false);
            }
            catch (OperationCanceledException)
            {
                return;
            }
            catch (ObjectDisposedException)
            {
                return;
            }
            catch (SocketException)
            {
                if (_shutdown.IsCancellationRequested)
                {
                    return;
                }

                // Transient failure (for example out of descriptors): back off briefly instead of spinning.
                await Task.Delay(10, CancellationToken.None).ConfigureAwait(false);
                continue;
            }

            if (Faults.TryConsumeRefusal())
            {
                Statistics.ConnectionRefused();
                socket.Dispose();
                continue;
            }

            Statistics.ConnectionAccepted();
            if (socket.AddressFamily != AddressFamily.Unix)
            {
                socket.NoDelay = true;
            }

            long id = Interlocked.Increment(ref _nextConnectionId);
            var connection = new ServerConnection(this, socket, id);
            _connections[id] = connection;
            connection.Start(() => _connections.TryRemove(id, out _));
        }
    }
}
