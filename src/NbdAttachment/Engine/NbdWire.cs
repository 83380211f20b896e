using System.IO.Pipelines;
using NbdAttachment.Client;

namespace NbdAttachment.Engine;

/// <summary>
/// One negotiated transport session in the transmission phase: the stream, its pipes, and the reader and
/// writer loops. When either loop ends, both are stopped and the stream is closed; the owning
/// <see cref="NbdConnection"/> then replays or fails whatever was in flight.
/// </summary>
internal sealed partial class NbdWire : IAsyncDisposable
{
    /// <summary>
    /// Payloads at least this large move directly between the socket and the caller's memory, skipping the
    /// copy through the pipe buffers; smaller ones are batched through the pipes.
    /// </summary>
    internal const int DirectTransferThreshold = 64 * 1024;

    private readonly Stream _stream;
    private readonly PipeReader _reader;
    private readonly PipeWriter _writer;
    private readonly NbdConnection _owner;
    private readonly IReadOnlyDictionary<string, uint> _contextIds;
    private readonly RequestTable _table;
    private readonly CancellationTokenSource _stop = new();
    private readonly SegmentPool _segments = new();
    private Exception? _firstError;
    private int _disconnectSent;

    /// <param name="stream">The negotiated stream.</param>
    /// <param name="owner">The logical connection whose requests this wire carries.</param>
    /// <param name="negotiated">What this session negotiated; meta context ids are only valid on it.</param>
    public NbdWire(Stream stream, NbdConnection owner, NbdExportInfo negotiated)
    {
        _stream = stream;
        Export = owner.Export;
        _contextIds = negotiated.MetaContextIds;
        _owner = owner;
        _table = owner.Table;
        _reader = PipeReader.Create(stream, new StreamPipeReaderOptions(_segments, SegmentPool.BlockSize, minimumReadSize: 16 * 1024, leaveOpen: true));
        _writer = PipeWriter.Create(stream, new StreamPipeWriterOptions(_segments, SegmentPool.BlockSize, leaveOpen: true));
    }

    public NbdExportInfo Export { get; }

    /// <summary>Cancelled when the wire stops.</summary>
    internal CancellationToken StopToken => _stop.Token;

    /// <summary>Ticks of the last byte received, for the dead-connection check.</summary>
    public long LastReceiveTimestamp { get; private set; } = System.Diagnostics.Stopwatch.GetTimestamp();

    /// <summary>True once NBD_CMD_DISC went out: an end of stream is then the expected close.</summary>
    public bool DisconnectSent => Volatile.Read(ref _disconnectSent) != 0;

    /// <summary>Runs both loops until the wire breaks or closes; returns the first error (null after a clean disconnect).</summary>
    /// <param name="replay">Requests of a broken wire to send again, after the prelude.</param>
    /// <param name="prelude">Runs on the writer before anything else is sent (journal replay); may be null.</param>
    public async Task<Exception?> RunAsync(IReadOnlyList<NbdRequest> replay, Func<NbdWire, Task>? prelude)
    {
        // The reader blocks in recv() (see BlockingSocketStream), so it gets a thread of its own.
        var readTask = Transport.NbdTransport.RunBlockingAsync(ReadLoopAsync);
        var writeTask = Task.Run(() => WriteLoopAsync(replay, prelude));
        var first = await Task.WhenAny(readTask, writeTask).ConfigureAwait(false);
        await first.ConfigureAwait(false);
        Stop(null);
        await Task.WhenAll(readTask, writeTask).ConfigureAwait(false);
        return _firstError;
    }

    /// <summary>Ends the wire with an error (idempotent: the first reason wins).</summary>
    public void Stop(Exception? error)
    {
        if (error is not null)
        {
            Interlocked.CompareExchange(ref _firstError, error, null);
        }

        if (!_stop.IsCancellationRequested)
        {
            try
            {
                _stop.Cancel();
            }
            catch (ObjectDisposedException)
            {
            }

            _stream.Dispose();
            _owner.WakeWriter();
        }
    }

    public async ValueTask DisposeAsync()
    {
        Stop(null);

        // The stream is closed already: whatever the writer still buffers is dropped (those requests are
        // marked sent and will be replayed or failed by the owner), so completion errors are expected here.
        try
        {
            await _writer.CompleteAsync().ConfigureAwait(false);
        }
        catch (Exception ex) when (ex is IOException or ObjectDisposedException or OperationCanceledException or System.Net.Sockets.SocketException)
        {
        }

        try
        {
            await _reader.CompleteAsync().ConfigureAwait(false);
        }
        catch (Exception ex) when (ex is IOException or ObjectDisposedException or OperationCanceledException or System.Net.Sockets.SocketException)
        {
        }

        _stop.Dispose();
        _segments.Dispose();
    }
}
