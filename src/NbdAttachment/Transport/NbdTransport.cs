using System.Net;
using System.Net.Sockets;
using NbdAttachment.Client;

namespace NbdAttachment.Transport;

/// <summary>Opens the byte stream to a server: TCP (with TCP_NODELAY) or a Unix domain socket.</summary>
internal static class NbdTransport
{
    public static async ValueTask<Stream> ConnectAsync(NbdUri uri, CancellationToken cancellationToken)
    {
        switch (uri.Transport)
        {
            case NbdTransportKind.Tcp:
                return await ConnectTcpAsync(uri.Host ?? "localhost", uri.Port, cancellationToken).ConfigureAwait(false);
            case NbdTransportKind.UnixSocket:
                return await ConnectSocketAsync(
                    new Socket(AddressFamily.Unix, SocketType.Stream, ProtocolType.Unspecified),
                    new UnixDomainSocketEndPoint(uri.SocketPath!),
                    $"Unix socket '{uri.SocketPath}'",
                    cancellationToken).ConfigureAwait(false);
            default:
                throw new NbdNegotiationException(
                    NbdNegotiationError.Platform,
                    null,
                    $"The {uri.Scheme} transport (AF_VSOCK) is not supported on this platform by this client.");
        }
    }

    private static async ValueTask<Stream> ConnectTcpAsync(string host, int port, CancellationToken cancellationToken)
    {
        IPAddress[] addresses;
        if (IPAddress.TryParse(host, out var literal))
        {
            addresses = [literal];
        }
        else
        {
            try
            {
                addresses = await Dns.GetHostAddressesAsync(host, cancellationToken).ConfigureAwait(false);
            }
            catch (SocketException ex)
            {
                throw new NbdConnectionException($"Cannot resolve host '{host}': {ex.Message}", ex);
            }
        }

        NbdConnectionException? last = null;
        foreach (var address in addresses)
        {
            try
            {
                var socket = new Socket(address.AddressFamily, SocketType.Stream, ProtocolType.Tcp) { NoDelay = true };
                return await ConnectSocketAsync(socket, new IPEndPoint(address, port), $"{FormatHost(address)}:{port}", cancellationToken).ConfigureAwait(false);
            }
            catch (NbdConnectionException ex)
            {
                last = ex;
            }
        }

        throw last ?? new NbdConnectionException($"Host '{host}' has no addresses.");
    }

    private static async ValueTask<Stream> ConnectSocketAsync(Socket socket, EndPoint endPoint, string what, CancellationToken cancellationToken)
    {
        try
        {
            await ConnectBlockingAsync(socket, endPoint, cancellationToken).ConfigureAwait(false);
            return new BlockingSocketStream(socket);
        }
        catch (SocketException ex)
        {
            socket.Dispose();
            throw new NbdConnectionException($"Cannot connect to {what}: {ex.Message}", ex);
        }
        catch
        {
            socket.Dispose();
            throw;
        }
    }

    /// <summary>
    /// Connects with a blocking call on a thread of its own, so the socket never meets the socket event engine (see
    /// <see cref="BlockingSocketStream"/>; a socket once made non-blocking stays so underneath). Cancelling closes
    /// the socket, which ends the blocked connect.
    /// </summary>
    private static async ValueTask ConnectBlockingAsync(Socket socket, EndPoint endPoint, CancellationToken cancellationToken)
    {
        using var unblock = cancellationToken.UnsafeRegister(static s => ((Socket)s!).Dispose(), socket);
        try
        {
            await RunBlockingAsync(() =>
            {
                socket.Connect(endPoint);
                return Task.CompletedTask;
            }).ConfigureAwait(false);
        }
        catch (Exception ex) when (cancellationToken.IsCancellationRequested && ex is SocketException or ObjectDisposedException)
        {
            throw new OperationCanceledException("Connecting was cancelled.", ex, cancellationToken);
        }
    }

    /// <summary>
    /// Runs work that blocks in socket calls on a thread of its own rather than a pool thread, so that many
    /// connects at once cannot starve the thread pool that the rest of the process (and servers in it) rely on.
    /// </summary>
    public static Task<T> RunBlockingAsync<T>(Func<Task<T>> work) =>
        Task.Factory.StartNew(work, CancellationToken.None, TaskCreationOptions.LongRunning, TaskScheduler.Default).Unwrap();

    /// <inheritdoc cref="RunBlockingAsync{T}(Func{Task{T}})"/>
    public static Task RunBlockingAsync(Func<Task> work) =>
        Task.Factory.StartNew(work, CancellationToken.None, TaskCreationOptions.LongRunning, TaskScheduler.Default).Unwrap();

    private static string FormatHost(IPAddress address) =>
        address.AddressFamily == AddressFamily.InterNetworkV6 ? $"[{address}]" : address.ToString();
}
