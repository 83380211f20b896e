using System.Buffers;
using NbdAttachment.Protocol;

namespace NbdAttachment.Engine;

internal sealed partial class NbdWire
{
    /// <summary>
    /// The single writer: sends replayed requests first, then whatever the owner's queue holds, coalescing every
    /// request that is ready into one flush.
    /// </summary>
    private async Task WriteLoopAsync(IReadOnlyList<NbdRequest> replay)
    {
        try
        {
            foreach (var request in replay)
            {
                WriteRequest(request);
            }

            if (replay.Count > 0)
            {
                await FlushAsync().ConfigureAwait(false);
            }

            var queue = _owner.Queue;
            while (await queue.WaitToReadAsync(_stop.Token).ConfigureAwait(false))
            {
                var wrote = false;
                while (queue.TryRead(out var request))
                {
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
        catch (Exception ex) when (ex is IOException or ObjectDisposedException or System.Net.Sockets.SocketException or InvalidOperationException)
        {
            Stop(new NbdConnectionException($"Sending to the server failed: {ex.Message}", ex));
        }
    }

    private bool WriteRequest(NbdRequest request)
    {
        if (!request.TryMarkSent())
        {
            return false; // abandoned while queued
        }

        var header = new NbdRequestHeader(request.Command, request.Flags, request.Cookie, request.Offset, request.Length);
        header.WriteTo(_writer.GetSpan(NbdRequestHeader.Size));
        _writer.Advance(NbdRequestHeader.Size);
        if (request.Command == NbdCommand.Write)
        {
            _writer.Write(request.Payload.Span);
        }

        return true;
    }

    private void WriteDisconnect()
    {
        var header = new NbdRequestHeader(NbdCommand.Disconnect, NbdCommandFlags.None, 0, 0, 0);
        header.WriteTo(_writer.GetSpan(NbdRequestHeader.Size));
        _writer.Advance(NbdRequestHeader.Size);
    }

    private async ValueTask FlushAsync()
    {
        var result = await _writer.FlushAsync(_stop.Token).ConfigureAwait(false);
        if (result.IsCanceled || result.IsCompleted)
        {
            throw new OperationCanceledException();
        }
    }
}
