namespace NbdAttachment.Client;

/// <summary>How an <see cref="NbdUri"/> reaches its server.</summary>
public enum NbdTransportKind
{
    /// <summary>TCP/IP: the <c>nbd://</c> and <c>nbds://</c> schemes.</summary>
    Tcp,

    /// <summary>A Unix domain socket: the <c>nbd+unix://</c> and <c>nbds+unix://</c> schemes.</summary>
    UnixSocket,

    /// <summary>AF_VSOCK (host/guest sockets): the <c>nbd+vsock://</c> and <c>nbds+vsock://</c> schemes.</summary>
    Vsock,
}
