using System.Runtime.CompilerServices;
using System.Buffers;
using NbdAttachment.Protocol;

namespace NbdAttachment.Engine;

internal sealed partial class NbdWire
{
    /// <summary>
    /// The single writer: sends replayed requests first, then whatever the owner's queue holds, coalescing every
    /// request that is ready into one flush.
    /// </summary>
    private async Task WriteLoopAsync(IReadOnlyList<NbdRequest> replay, Func<NbdWire, Task>? prelude)
    {
        try
        {
            if (prelude is not null)
            {
                await prelude(this).ConfigureAwait(false);
            }

            foreach (var request in replay)
            {
                WriteRequest(request);
            }

            if (replay.Count > 0)
            {
                await FlushAsync().ConfigureAwait(false);
            }

            var queue = _owner.Queue;
            // No token: an uncancellable wait reuses the channel's pooled waiter. Stop() wakes it with a marker.
            while (!_stop.IsCancellationRequested && await queue.WaitToReadAsync(CancellationToken.None).ConfigureAwait(false))
            {
                var wrote = false;
                while (queue.TryRead(out var request))
                {
                    if (request.Command == NbdCommand.Write && request.Payload.Length >= DirectTransferThreshold)
                    {
                        await SendDirectAsync(request).ConfigureAwait(false);
                        wrote = false;
                        continue;
                    }

                    if (ReferenceEquals(request, NbdConnection.WakeMarker))
                    {
                        if (_stop.IsCancellationRequested)
                        {
                            return;
                        }

                        continue;
                    }

                    if (ReferenceEquals(request, NbdConnection.DisconnectMarker))
                    {
                        WriteDisconnect();
                        await FlushAsync().ConfigureAwait(false);
                        Volatile.Write(ref _disconnectSent, 1);
                        return;
                    }

                    wrote |= WriteRequest(request);
                }

                if (wrote)
                {
                    await FlushAsync().ConfigureAwait(false);
                }
            }
        }
        catch (OperationCanceledException) when (_stop.IsCancellationRequested)
        {
        }
        catch (NbdException ex)
        {
            Stop(ex);
        }
        catch (Exception ex) when (ex is IOException or ObjectDisposedException or System.Net.Sockets.SocketException or InvalidOperationException)
        {
            Stop(new NbdConnectionException($"Sending to the server failed: {ex.Message}", ex));
        }
    }

    /// <summary>
    /// Sends a large WRITE: the payload goes straight from the caller's memory, without a copy into the pipe;
    /// on a plain socket together with its header in one gathered send.
    /// </summary>
    [AsyncMethodBuilder(typeof(PoolingAsyncValueTaskMethodBuilder))]
    private async ValueTask SendDirectAsync(NbdRequest request)
    {
        if (!request.TryStartSend(this))
        {
            return; // abandoned while queued
        }

        try
        {
            if (_stream is Transport.BlockingSocketStream socket)
            {
                // Header and payload in one gathered send: one system call, and the server wakes once.
                if (_writer.UnflushedBytes > 0)
                {
                    await FlushAsync().ConfigureAwait(false);
                }

                Span<byte> header = stackalloc byte[NbdRequestHeader.Size];
                RequestHeader(request).WriteTo(header);
                socket.Write(header, request.Payload);
            }
            else
            {
                WriteHeader(request);
                await FlushAsync().ConfigureAwait(false);
                await _stream.WriteAsync(request.Payload, _stop.Token).ConfigureAwait(false);
            }
        }
        finally
        {
            request.EndTransfer();
        }
    }

    /// <summary>For a prelude on the writer task: queue one request into the send buffer.</summary>
    internal void WriteNow(NbdRequest request) => WriteRequest(request);

    /// <summary>For a prelude on the writer task: send what is buffered.</summary>
    internal ValueTask FlushNowAsync() => FlushAsync();

    private bool WriteRequest(NbdRequest request)
    {
        if (!request.TryMarkSent())
        {
            return false; // abandoned while queued
        }

        WriteHeader(request);
        if (request.Command == NbdCommand.Write)
        {
            _writer.Write(request.Payload.Span);
        }

        return true;
    }

    private void WriteHeader(NbdRequest request)
    {
        RequestHeader(request).WriteTo(_writer.GetSpan(NbdRequestHeader.Size));
        _writer.Advance(NbdRequestHeader.Size);
    }

    private static NbdRequestHeader RequestHeader(NbdRequest request) =>
        new(request.Command, request.Flags, request.Cookie, request.Offset, request.Length);

    private void WriteDisconnect()
    {
        var header = new NbdRequestHeader(NbdCommand.Disconnect, NbdCommandFlags.None, 0, 0, 0);
        header.WriteTo(_writer.GetSpan(NbdRequestHeader.Size));
        _writer.Advance(NbdRequestHeader.Size);
    }

    [AsyncMethodBuilder(typeof(PoolingAsyncValueTaskMethodBuilder))]
    private async ValueTask FlushAsync()
    {
        var result = await _writer.FlushAsync(_stop.Token).ConfigureAwait(false);
        if (result.IsCanceled || result.IsCompleted)
        {
            throw new OperationCanceledException();
        }
    }
}
