using System.ComponentModel;
using System.Runtime.InteropServices;

namespace NbdAttachment.Tests.VhostUser.Support;

/// <summary>The few Linux (64-bit) calls the test front-end needs: memfd, mmap, eventfd, poll, sendmsg with SCM_RIGHTS.</summary>
internal static unsafe partial class Native
{
    public const int MfdCloexec = 0x0001;
    public const int ProtRead = 0x1;
    public const int ProtWrite = 0x2;
    public const int MapShared = 0x01;
    public const int EfdCloexec = 0x80000;
    public const int EfdNonblock = 0x800;
    public const short PollIn = 0x001;
    public const short PollOut = 0x004;
    public const int MsgNoSignal = 0x4000;
    public const int SolSocket = 1;
    public const int ScmRights = 1;
    public const int EAgain = 11;
    public const int EIntr = 4;

    [StructLayout(LayoutKind.Sequential)]
    public struct PollFd
    {
        public int Fd;
        public short Events;
        public short REvents;
    }

    [StructLayout(LayoutKind.Sequential)]
    private struct IoVec
    {
        public void* Base;
        public nuint Length;
    }

    [StructLayout(LayoutKind.Sequential)]
    private struct MsgHdr
    {
        public void* Name;
        public uint NameLength;
        public void* Iov;
        public nuint IovLength;
        public void* Control;
        public nuint ControlLength;
        public int Flags;
    }

    [LibraryImport("libc", EntryPoint = "memfd_create", SetLastError = true, StringMarshalling = StringMarshalling.Utf8)]
    private static partial int MemfdCreateRaw(string name, uint flags);

    [LibraryImport("libc", EntryPoint = "ftruncate", SetLastError = true)]
    private static partial int FtruncateRaw(int fd, long length);

    [LibraryImport("libc", EntryPoint = "mmap", SetLastError = true)]
    private static partial nint MmapRaw(nint address, nuint length, int protection, int flags, int fd, long offset);

    [LibraryImport("libc", EntryPoint = "munmap", SetLastError = true)]
    private static partial int MunmapRaw(nint address, nuint length);

    [LibraryImport("libc", EntryPoint = "eventfd", SetLastError = true)]
    private static partial int EventfdRaw(uint initial, int flags);

    [LibraryImport("libc", EntryPoint = "read", SetLastError = true)]
    private static partial nint ReadRaw(int fd, void* buffer, nuint count);

    [LibraryImport("libc", EntryPoint = "write", SetLastError = true)]
    private static partial nint WriteRaw(int fd, void* buffer, nuint count);

    [LibraryImport("libc", EntryPoint = "close", SetLastError = true)]
    private static partial int CloseRaw(int fd);

    [LibraryImport("libc", EntryPoint = "poll", SetLastError = true)]
    private static partial int PollRaw(PollFd* fds, nuint count, int timeoutMilliseconds);

    [LibraryImport("libc", EntryPoint = "sendmsg", SetLastError = true)]
    private static partial nint SendMsgRaw(int fd, MsgHdr* message, int flags);

    public static int MemfdCreate(string name)
    {
        var fd = MemfdCreateRaw(name, MfdCloexec);
        return fd >= 0 ? fd : throw Error("memfd_create");
    }

    public static void Ftruncate(int fd, long length)
    {
        if (FtruncateRaw(fd, length) != 0)
        {
            throw Error("ftruncate");
        }
    }

    public static nint MapSharedMemory(int fd, long length)
    {
        var address = MmapRaw(0, (nuint)length, ProtRead | ProtWrite, MapShared, fd, 0);
        return address != -1 ? address : throw Error("mmap");
    }

    public static void Unmap(nint address, long length) => _ = MunmapRaw(address, (nuint)length);

    public static int EventFd()
    {
        var fd = EventfdRaw(0, EfdCloexec | EfdNonblock);
        return fd >= 0 ? fd : throw Error("eventfd");
    }

    /// <summary>Adds one to an eventfd counter.</summary>
    public static void Signal(int eventFd)
    {
        ulong one = 1;
        while (WriteRaw(eventFd, &one, 8) != 8)
        {
            var errno = Marshal.GetLastPInvokeError();
            if (errno != EIntr)
            {
                throw new Win32Exception(errno, "eventfd write");
            }
        }
    }

    /// <summary>Reads (and clears) a non-blocking eventfd counter; 0 when it was not signalled.</summary>
    public static ulong Drain(int eventFd)
    {
        ulong value = 0;
        var n = ReadRaw(eventFd, &value, 8);
        return n == 8 ? value : 0;
    }

    public static void Close(int fd)
    {
        if (fd >= 0)
        {
            _ = CloseRaw(fd);
        }
    }

    /// <summary>poll(2); returns the number of ready descriptors (0 on timeout).</summary>
    public static int Poll(Span<PollFd> fds, int timeoutMilliseconds)
    {
        fixed (PollFd* p = fds)
        {
            while (true)
            {
                var n = PollRaw(p, (nuint)fds.Length, timeoutMilliseconds);
                if (n >= 0)
                {
                    return n;
                }

                var errno = Marshal.GetLastPInvokeError();
                if (errno != EIntr)
                {
                    throw new Win32Exception(errno, "poll");
                }
            }
        }
    }

    /// <summary>
    /// Sends all of <paramref name="data"/> on a stream socket, the file descriptors (if any) as SCM_RIGHTS with the
    /// first byte. Waits (bounded) when the socket is non-blocking and full.
    /// </summary>
    public static void SendWithFds(int socketFd, ReadOnlySpan<byte> data, ReadOnlySpan<int> fds, int timeoutMilliseconds)
    {
        var controlLength = fds.Length == 0 ? 0 : 16 + (((fds.Length * 4) + 7) & ~7);
        Span<byte> control = stackalloc byte[Math.Max(controlLength, 8)];
        control.Clear();
        if (fds.Length > 0)
        {
            MemoryMarshal.Write(control, (ulong)(16 + (fds.Length * 4)));
            MemoryMarshal.Write(control[8..], SolSocket);
            MemoryMarshal.Write(control[12..], ScmRights);
            MemoryMarshal.Cast<int, byte>(fds).CopyTo(control[16..]);
        }

        var sent = 0;
        var fdsPending = fds.Length > 0;
        var deadline = Environment.TickCount64 + timeoutMilliseconds;
        fixed (byte* dataPointer = data)
        fixed (byte* controlPointer = control)
        {
            while (sent < data.Length || fdsPending)
            {
                var iov = new IoVec { Base = dataPointer + sent, Length = (nuint)(data.Length - sent) };
                var header = new MsgHdr
                {
                    Iov = &iov,
                    IovLength = 1,
                    Control = fdsPending ? controlPointer : null,
                    ControlLength = fdsPending ? (nuint)controlLength : 0,
                };
                var n = SendMsgRaw(socketFd, &header, MsgNoSignal);
                if (n >= 0)
                {
                    sent += (int)n;
                    fdsPending = false;
                    continue;
                }

                var errno = Marshal.GetLastPInvokeError();
                if (errno == EIntr)
                {
                    continue;
                }

                if (errno != EAgain)
                {
                    throw new IOException($"sendmsg failed: {new Win32Exception(errno).Message}", errno);
                }

                var remaining = (int)Math.Max(0, deadline - Environment.TickCount64);
                Span<PollFd> pollFd = [new PollFd { Fd = socketFd, Events = PollOut }];
                if (remaining == 0 || Poll(pollFd, remaining) == 0)
                {
                    throw new TimeoutException("The socket stayed full.");
                }
            }
        }
    }

    private static Win32Exception Error(string call) => new(Marshal.GetLastPInvokeError(), call);
}
