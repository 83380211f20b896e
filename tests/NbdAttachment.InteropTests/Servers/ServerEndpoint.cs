using System.Globalization;
using System.Net;
using System.Net.Sockets;

namespace NbdAttachment.InteropTests.Servers;

/// <summary>Where a test server listens. Tests only ever use loopback or Unix sockets.</summary>
public enum ListenKind
{
    /// <summary>TCP on 127.0.0.1, a free port picked at start.</summary>
    Tcp,

    /// <summary>TCP on ::1, a free port picked at start.</summary>
    TcpIPv6,

    /// <summary>A Unix domain socket in the server's temporary directory.</summary>
    Unix,
}

/// <summary>A resolved listening endpoint. It stays the same across restarts.</summary>
public sealed record ServerEndpoint(ListenKind Kind, string? Host, int Port, string? SocketPath)
{
    public bool IsUnix => Kind == ListenKind.Unix;

    /// <summary>Host as written in a URI authority (IPv6 in brackets).</summary>
    public string UriHost => Kind == ListenKind.TcpIPv6 ? $"[{Host}]" : Host ?? string.Empty;

    public EndPoint ToEndPoint() => Kind switch
    {
        ListenKind.Unix => new UnixDomainSocketEndPoint(SocketPath!),
        _ => new IPEndPoint(IPAddress.Parse(Host!), Port),
    };

    /// <summary>
    /// The NBD URI of <paramref name="exportName"/> on this endpoint (the NBD URI spec:
    /// nbd[s]://host:port/export or nbd[s]+unix:///export?socket=PATH).
    /// </summary>
    public Uri UriFor(string exportName, bool tls = false, string? extraQuery = null)
    {
        var export = Uri.EscapeDataString(exportName);
        string text;
        if (IsUnix)
        {
            text = $"{(tls ? "nbds" : "nbd")}+unix:///{export}?socket={SocketPath}";
            if (extraQuery is not null)
            {
                text += "&" + extraQuery;
            }
        }
        else
        {
            text = $"{(tls ? "nbds" : "nbd")}://{UriHost}:{Port.ToString(CultureInfo.InvariantCulture)}/{export}";
            if (extraQuery is not null)
            {
                text += "?" + extraQuery;
            }
        }

        return new Uri(text);
    }

    internal static ServerEndpoint Allocate(ListenKind kind, string directory) => kind switch
    {
        ListenKind.Tcp => new ServerEndpoint(kind, "127.0.0.1", FreePort(IPAddress.Loopback), null),
        ListenKind.TcpIPv6 => new ServerEndpoint(kind, "::1", FreePort(IPAddress.IPv6Loopback), null),
        ListenKind.Unix => new ServerEndpoint(kind, null, 0, Path.Combine(directory, "nbd.sock")),
        _ => throw new ArgumentOutOfRangeException(nameof(kind)),
    };

    internal ServerEndpoint WithNewPort() =>
        IsUnix ? this : this with { Port = FreePort(IPAddress.Parse(Host!)) };

    private static int FreePort(IPAddress address)
    {
        using var listener = new Socket(address.AddressFamily, SocketType.Stream, ProtocolType.Tcp);
        listener.Bind(new IPEndPoint(address, 0));
        return ((IPEndPoint)listener.LocalEndPoint!).Port;
    }

    /// <summary>
    /// True once something listens on this endpoint. Uses /proc/net (no connection, so servers
    /// that count clients or fork per client are not disturbed); falls back to a connect probe.
    /// </summary>
    internal async Task<bool> IsListeningAsync(CancellationToken cancellationToken)
    {
        try
        {
            return IsUnix ? UnixListening() : TcpListening();
        }
        catch (IOException)
        {
        }
        catch (UnauthorizedAccessException)
        {
        }

        return await CanConnectAsync(cancellationToken).ConfigureAwait(false);
    }

    internal async Task<bool> CanConnectAsync(CancellationToken cancellationToken)
    {
        var ep = ToEndPoint();
        using var socket = new Socket(ep.AddressFamily, SocketType.Stream, IsUnix ? ProtocolType.Unspecified : ProtocolType.Tcp);
        try
        {
            await socket.ConnectAsync(ep, cancellationToken).ConfigureAwait(false);
            return true;
        }
        catch (SocketException)
        {
            return false;
        }
    }

    private bool TcpListening()
    {
        // /proc/net/tcp{,6}: "sl local_address rem_address st ..." with local "HEXADDR:HEXPORT", st 0A = LISTEN.
        var file = Kind == ListenKind.TcpIPv6 ? "/proc/net/tcp6" : "/proc/net/tcp";
        var portHex = ":" + Port.ToString("X4", CultureInfo.InvariantCulture);
        foreach (var line in File.ReadLines(file).Skip(1))
        {
            var f = line.Split(' ', StringSplitOptions.RemoveEmptyEntries);
            if (f.Length > 3 && f[3] == "0A" && f[1].EndsWith(portHex, StringComparison.Ordinal))
            {
                return true;
            }
        }

        return false;
    }

    private bool UnixListening()
    {
        // /proc/net/unix: "Num RefCount Protocol Flags Type St Inode Path"; Flags 00010000 = listening.
        if (!File.Exists(SocketPath))
        {
            return false;
        }

        foreach (var line in File.ReadLines("/proc/net/unix").Skip(1))
        {
            var f = line.Split(' ', 8, StringSplitOptions.RemoveEmptyEntries);
            if (f.Length == 8 && f[7] == SocketPath && f[3] == "00010000")
            {
                return true;
            }
        }

        return false;
    }
}

/// <summary>A temporary directory (short path, so Unix socket paths fit in 108 bytes), deleted on dispose.</summary>
public sealed class TempDirectory : IDisposable
{
    public TempDirectory(string prefix = "nbd-interop-")
    {
        var root = System.IO.Path.GetTempPath();
        if (root.Length > 40)
        {
            root = "/tmp";
        }

        Path = Directory.CreateDirectory(
            System.IO.Path.Combine(root, prefix + Guid.NewGuid().ToString("N")[..12])).FullName;
    }

    public string Path { get; }

    public string Combine(string name) => System.IO.Path.Combine(Path, name);

    public void Dispose()
    {
        for (var attempt = 0; attempt < 3; attempt++)
        {
            try
            {
                if (Directory.Exists(Path))
                {
                    Directory.Delete(Path, recursive: true);
                }

                return;
            }
            catch (IOException)
            {
                Thread.Sleep(20);
            }
            catch (UnauthorizedAccessException)
            {
                Thread.Sleep(20);
            }
        }
    }
}
