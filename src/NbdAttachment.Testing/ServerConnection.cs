using System.Buffers.Binary;
using System.Net.Sockets;

namespace NbdAttachment.Testing;

/// <summary>
/// One client connection: handshake (<c>ServerConnection.Handshake.cs</c>), then transmission
/// (<c>ServerConnection.Transmission.cs</c>) with replies sent through <c>ServerConnection.Replies.cs</c>.
/// Any protocol violation by the client ends the connection, never the process.
/// </summary>
internal sealed partial class ServerConnection
{
    private readonly NbdTestServer _server;
    private readonly Socket _socket;
    private readonly NetworkStream _stream;
    private readonly CancellationTokenSource _cts;
    private readonly Random _random;
    private readonly Lock _randomLock = new();
    private Task _completion = Task.CompletedTask;

    public ServerConnection(NbdTestServer server, Socket socket, long id)
    {
        _server = server;
        _socket = socket;
        _stream = new NetworkStream(socket, ownsSocket: true);
        _cts = CancellationTokenSource.CreateLinkedTokenSource(server.ShutdownToken);
        _random = new Random(unchecked((server.Options.RandomSeed * 397) + (int)id));
        _slots = new SemaphoreSlim(server.Options.MaxInFlightRequestsPerConnection);
    }

    /// <summary>Completes when the connection is closed and all its requests have finished.</summary>
    public Task Completion => _completion;

    private NbdTestServerOptions Options => _server.Options;

    private NbdTestServerStatistics Statistics => _server.Statistics;

    private NbdFaultInjector Faults => _server.Faults;

    /// <summary>Runs the connection in the background; <paramref name="onFinished"/> runs at the very end.</summary>
    public void Start(Action onFinished)
    {
        _completion = Task.Run(async () =>
        {
            try
            {
                await RunAsync().ConfigureAwait(false);
            }
            finally
            {
                onFinished();
            }
        });
    }

    /// <summary>Closes the connection at once, abandoning pending replies.</summary>
    public void Abort()
    {
        try
        {
            _cts.Cancel();
        }
        catch (ObjectDisposedException)
        {
            // Already finished.
        }

        _stream.Dispose();
    }

    private async Task RunAsync()
    {
        CancellationToken token = _cts.Token;
        try
        {
            NbdTestExport? export = Options.Oldstyle
                ? await OldstyleAsync(token).ConfigureAwait(false)
                : await HandshakeAsync(token).ConfigureAwait(false);
            if (export is not null)
            {
                await TransmissionAsync(export, token).ConfigureAwait(false);
            }
        }
        catch (InvalidDataException ex)
        {
            Statistics.ProtocolError(ex.Message);
        }
        catch (Exception ex) when (ex is IOException or SocketException or OperationCanceledException
            or ObjectDisposedException or EndOfStreamException)
        {
            // The peer went away or the server is shutting down.
        }
#pragma warning disable CA1031 // A test server must survive anything a client sends.
        catch (Exception ex)
        {
            Statistics.ProtocolError($"internal server error: {ex}");
        }
#pragma warning restore CA1031
        finally
        {
            await CloseAsync().ConfigureAwait(false);
        }
    }

    private async Task CloseAsync()
    {
        await _cts.CancelAsync().ConfigureAwait(false);
        await WaitForInFlightAsync().ConfigureAwait(false);
        _stream.Dispose();
        _cts.Dispose();
        _slots.Dispose();
        _writeLock.Dispose();
    }

    private async Task<byte[]> ReadBytesAsync(int count, CancellationToken token)
    {
        var buffer = new byte[count];
        await _stream.ReadExactlyAsync(buffer, token).ConfigureAwait(false);
        return buffer;
    }

    private async Task<uint> ReadUInt32Async(CancellationToken token) =>
        BinaryPrimitives.ReadUInt32BigEndian(await ReadBytesAsync(4, token).ConfigureAwait(false));

    private async Task DiscardAsync(long count, CancellationToken token)
    {
        var buffer = new byte[(int)Math.Min(count, 64 * 1024)];
        while (count > 0)
        {
            int chunk = (int)Math.Min(count, buffer.Length);
            await _stream.ReadExactlyAsync(buffer.AsMemory(0, chunk), token).ConfigureAwait(false);
            count -= chunk;
        }
    }

    private int NextRandom(int maxExclusive)
    {
        lock (_randomLock)
        {
            return _random.Next(maxExclusive);
        }
    }
}
