using System.Diagnostics;
using NbdAttachment.Diagnostics;
using NbdAttachment.Engine;

namespace NbdAttachment.Client;

public sealed partial class NbdClient
{
    /// <summary>
    /// Owns the life cycle: runs a wire until it ends, then either reconnects (transport failures, under the
    /// reconnect policy) and replays the requests in flight, or fails the client (fatal errors, policy exhausted).
    /// </summary>
    private async Task SuperviseAsync(NbdConnection connection, NbdWire wire)
    {
        try
        {
            await SuperviseLoopAsync(connection, wire).ConfigureAwait(false);
        }
        catch (Exception ex)
        {
            // A bug must not leave callers waiting forever: fail everything with it.
            Fail(ex);
        }
    }

    private async Task SuperviseLoopAsync(NbdConnection connection, NbdWire wire)
    {
        while (true)
        {
            var error = await connection.RunWireAsync(wire).ConfigureAwait(false);
            if (_closing.IsCancellationRequested)
            {
                return;
            }

            error ??= new NbdConnectionException("The server closed the connection.");
            Log.ConnectionBroken(_logger, Uri.ToString(), connection.PendingReplay, error);
            NbdMeter.LostCounter.Add(1, new KeyValuePair<string, object?>("error.type", error.GetType().Name));
            if (error is not NbdException { IsTransient: true } || _options.Reconnect.IsDisabled)
            {
                Fail(error);
                return;
            }

            Interlocked.Increment(ref _reconnecting);
            SetState(NbdClientState.Reconnecting, error);
            var next = await ReconnectAsync(connection, error).ConfigureAwait(false);
            if (next is null)
            {
                return;
            }

            wire = next;
            Interlocked.Increment(ref _reconnectCount);
            NbdMeter.ReconnectCounter.Add(1);
            if (Interlocked.Decrement(ref _reconnecting) == 0)
            {
                SetState(NbdClientState.Connected, null);
            }
        }
    }

    private async Task<NbdWire?> ReconnectAsync(NbdConnection connection, Exception cause)
    {
        var started = Stopwatch.GetTimestamp();
        var last = cause;
        for (var attempt = 1; ; attempt++)
        {
            var delay = _options.Reconnect.GetDelay(attempt, Stopwatch.GetElapsedTime(started));
            if (delay is null)
            {
                Log.ReconnectGaveUp(_logger, Uri.ToString(), attempt - 1, last);
                Fail(new NbdConnectionException($"The connection to {Uri} was lost and {attempt - 1} reconnect attempts failed: {last.Message}", last));
                return null;
            }

            Log.ReconnectScheduled(_logger, attempt, Uri.ToString(), delay.Value);
            try
            {
                await Task.Delay(delay.Value, _closing.Token).ConfigureAwait(false);
                var (stream, negotiated) = await NbdSession.OpenAsync(Uri, _options, _logger, connection.Export, _closing.Token).ConfigureAwait(false);
                Log.Reconnected(_logger, Uri.ToString(), attempt, connection.PendingReplay);
                return new NbdWire(stream, connection, negotiated);
            }
            catch (OperationCanceledException) when (_closing.IsCancellationRequested)
            {
                return null;
            }
            catch (NbdException ex) when (ex.IsTransient)
            {
                last = ex;
            }
            catch (NbdException ex)
            {
                Fail(ex);
                return null;
            }
        }
    }

    private void Fail(Exception error)
    {
        if (_closing.IsCancellationRequested)
        {
            return;
        }

        if (error is NbdProtocolException)
        {
            Log.ProtocolViolation(_logger, Uri.ToString(), error);
        }

        // One failed connection fails the client: its requests could not be moved to another safely.
        foreach (var connection in _connections)
        {
            connection.Fail(error);
        }

        SetState(NbdClientState.Failed, error);
    }

    /// <summary>Declares the wire dead when the oldest request has waited past the timeout with nothing received.</summary>
    private void OnHeartbeat()
    {
        var timeout = _options.RequestTimeout;
        foreach (var connection in _connections)
        {
            var wire = connection.CurrentWire;
            // Any request on the wire counts, the client's own journal replay included.
            if (wire is not null
                && Stopwatch.GetElapsedTime(wire.LastReceiveTimestamp) >= timeout && connection.OldestSentAge() >= timeout)
            {
                wire.Stop(new NbdTimeoutException($"No reply from the server for {timeout.TotalSeconds:0.###} s with requests in flight."));
            }
        }
    }
}
