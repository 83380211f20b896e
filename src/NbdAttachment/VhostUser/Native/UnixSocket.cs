using System.Text;

namespace NbdAttachment.VhostUser.Native;

/// <summary>
/// A Unix stream socket used through raw system calls, so file descriptors can be received (SCM_RIGHTS). Blocking
/// calls wait in poll() together with a wake-up eventfd: <see cref="Wake"/> makes every waiter return.
/// </summary>
internal sealed unsafe class UnixSocket : IDisposable
{
    /// <summary>The most descriptors one vhost-user message carries (SET_MEM_TABLE: 8 regions).</summary>
    public const int MaxFds = 8;

    private readonly object _lifetime = new();
    private readonly int _wakeFd;
    private int _fd;

    private UnixSocket(int fd)
    {
        _fd = fd;
        _wakeFd = LibC.EventFd(0, LibC.EFD_CLOEXEC | LibC.EFD_NONBLOCK);
        if (_wakeFd < 0)
        {
            var errno = LibC.Errno;
            _ = LibC.Close(fd);
            throw new IOException($"eventfd failed: {LibC.Describe(errno)}");
        }
    }

    /// <summary>Binds and listens on <paramref name="path"/> (a stale socket file there is removed first).</summary>
    public static UnixSocket Listen(string path)
    {
        var bytes = Encoding.UTF8.GetBytes(path);
        if (bytes.Length > 107)
        {
            throw new ArgumentException($"The socket path is {bytes.Length} bytes long; Unix sockets allow at most 107.", nameof(path));
        }

        if (File.Exists(path) || Directory.Exists(path))
        {
            if ((File.GetAttributes(path) & FileAttributes.Directory) != 0)
            {
                throw new IOException($"The socket path '{path}' is a directory.");
            }

            File.Delete(path);
        }

        var fd = LibC.Socket(LibC.AF_UNIX, LibC.SOCK_STREAM | LibC.SOCK_CLOEXEC, 0);
        if (fd < 0)
        {
            throw new IOException($"socket(AF_UNIX) failed: {LibC.Describe(LibC.Errno)}");
        }

        var address = stackalloc byte[110];
        new Span<byte>(address, 110).Clear();
        *(ushort*)address = LibC.AF_UNIX;
        bytes.CopyTo(new Span<byte>(address + 2, 108));
        if (LibC.Bind(fd, address, 2 + bytes.Length + 1) != 0 || LibC.Listen(fd, 4) != 0)
        {
            var errno = LibC.Errno;
            _ = LibC.Close(fd);
            throw new IOException($"Unable to listen on '{path}': {LibC.Describe(errno)}");
        }

        return new UnixSocket(fd);
    }

    /// <summary>Waits for a connection; returns null when woken by <see cref="Wake"/> or closed.</summary>
    public UnixSocket? Accept()
    {
        while (WaitReadable())
        {
            var client = LibC.Accept4(_fd, null, null, LibC.SOCK_CLOEXEC);
            if (client >= 0)
            {
                return new UnixSocket(client);
            }

            var errno = LibC.Errno;
            if (errno is not (LibC.EINTR or LibC.EAGAIN or 103 /* ECONNABORTED */))
            {
                throw new IOException($"accept failed: {LibC.Describe(errno)}");
            }
        }

        return null;
    }

    /// <summary>
    /// Receives exactly <paramref name="buffer"/>.Length bytes, collecting descriptors sent with them into
    /// <paramref name="fds"/>. Returns the bytes read: fewer than asked only at end of stream or on wake-up.
    /// </summary>
    public int ReceiveExactly(Span<byte> buffer, List<int> fds)
    {
        var done = 0;
        var control = stackalloc byte[sizeof(LibC.CMsgHdr) + (MaxFds * sizeof(int)) + 8];
        var controlLength = sizeof(LibC.CMsgHdr) + (MaxFds * sizeof(int)) + 8;
        fixed (byte* start = buffer)
        {
            while (done < buffer.Length)
            {
                if (!WaitReadable())
                {
                    return done;
                }

                var iov = new LibC.IoVec { Base = start + done, Length = (nuint)(buffer.Length - done) };
                var message = new LibC.MsgHdr { Iov = &iov, IovLength = 1, Control = control, ControlLength = (nuint)controlLength };
                var n = LibC.RecvMsg(_fd, &message, LibC.MSG_CMSG_CLOEXEC);
                if (n < 0)
                {
                    var errno = LibC.Errno;
                    if (errno is LibC.EINTR or LibC.EAGAIN)
                    {
                        continue;
                    }

                    throw new IOException($"recvmsg failed: {LibC.Describe(errno)}");
                }

                CollectFds(&message, fds);
                if ((message.Flags & LibC.MSG_CTRUNC) != 0)
                {
                    throw new VhostUserProtocolException($"The front-end sent more than {MaxFds} file descriptors with one message.");
                }

                if (n == 0)
                {
                    return done;
                }

                done += (int)n;
            }
        }

        return done;
    }

    /// <summary>Sends all of <paramref name="data"/>.</summary>
    public void Send(ReadOnlySpan<byte> data)
    {
        fixed (byte* start = data)
        {
            var done = 0;
            while (done < data.Length)
            {
                var n = LibC.Send(_fd, start + done, (nuint)(data.Length - done), LibC.MSG_NOSIGNAL);
                if (n < 0)
                {
                    var errno = LibC.Errno;
                    if (errno == LibC.EINTR)
                    {
                        continue;
                    }

                    throw new IOException($"send failed: {LibC.Describe(errno)}");
                }

                done += (int)n;
            }
        }
    }

    /// <summary>Makes every blocked and future wait return (the socket reads as closed).</summary>
    public void Wake()
    {
        // Under the lock: after Dispose the descriptor numbers may already belong to something else.
        lock (_lifetime)
        {
            if (_fd < 0)
            {
                return;
            }

            LibC.Signal(_wakeFd);
            _ = LibC.Shutdown(_fd, LibC.SHUT_RDWR);
        }
    }

    public void Dispose()
    {
        lock (_lifetime)
        {
            if (_fd < 0)
            {
                return;
            }

            _fd = LibC.CloseQuietly(_fd);
            LibC.CloseQuietly(_wakeFd);
        }
    }

    private static void CollectFds(LibC.MsgHdr* message, List<int> fds)
    {
        var offset = 0;
        var control = (byte*)message->Control;
        var length = (int)message->ControlLength;
        while (offset + sizeof(LibC.CMsgHdr) <= length)
        {
            var header = (LibC.CMsgHdr*)(control + offset);
            var cmsgLength = (int)header->Length;
            if (cmsgLength < sizeof(LibC.CMsgHdr) || offset + cmsgLength > length)
            {
                break;
            }

            if (header->Level == LibC.SOL_SOCKET && header->Type == LibC.SCM_RIGHTS)
            {
                var count = (cmsgLength - sizeof(LibC.CMsgHdr)) / sizeof(int);
                var data = (int*)(header + 1);
                for (var i = 0; i < count; i++)
                {
                    fds.Add(data[i]);
                }
            }

            offset += (cmsgLength + 7) & ~7;
        }
    }

    /// <summary>Waits until the socket is readable; false when woken or the socket is closed.</summary>
    private bool WaitReadable()
    {
        var fd = Volatile.Read(ref _fd);
        if (fd < 0)
        {
            return false;
        }

        var polls = stackalloc LibC.PollFd[2];
        polls[0] = new LibC.PollFd { Fd = fd, Events = LibC.POLLIN };
        polls[1] = new LibC.PollFd { Fd = _wakeFd, Events = LibC.POLLIN };
        while (true)
        {
            var n = LibC.Poll(polls, 2, -1);
            if (n < 0)
            {
                if (LibC.Errno == LibC.EINTR)
                {
                    continue;
                }

                throw new IOException($"poll failed: {LibC.Describe(LibC.Errno)}");
            }

            if (polls[1].Revents != 0)
            {
                return false;
            }

            // Readable, or hung up / in error: the read that follows reports which.
            return polls[0].Revents != 0;
        }
    }
}
