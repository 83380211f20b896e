using System.Runtime.InteropServices;

namespace NbdAttachment.VhostUser.Native;

/// <summary>The Linux system calls the vhost-user backend uses (x86-64 and arm64 layouts; both are LP64).</summary>
internal static unsafe partial class LibC
{
    public const int AF_UNIX = 1;
    public const int SOCK_STREAM = 1;
    public const int SOCK_CLOEXEC = 0x80000;
    public const int SOL_SOCKET = 1;
    public const int SCM_RIGHTS = 1;
    public const int MSG_CTRUNC = 0x8;
    public const int MSG_NOSIGNAL = 0x4000;
    public const int MSG_CMSG_CLOEXEC = 0x40000000;
    public const int SHUT_RDWR = 2;
    public const int EFD_CLOEXEC = 0x80000;
    public const int EFD_NONBLOCK = 0x800;
    public const int PROT_READ = 1;
    public const int PROT_WRITE = 2;
    public const int MAP_SHARED = 1;
    public const short POLLIN = 1;
    public const short POLLERR = 8;
    public const short POLLHUP = 16;
    public const short POLLNVAL = 32;
    public const int SEEK_END = 2;
    public const int EINTR = 4;
    public const int EAGAIN = 11;

    private const string Lib = "libc";

    [LibraryImport(Lib, EntryPoint = "socket", SetLastError = true)]
    public static partial int Socket(int domain, int type, int protocol);

    [LibraryImport(Lib, EntryPoint = "bind", SetLastError = true)]
    public static partial int Bind(int fd, void* address, int length);

    [LibraryImport(Lib, EntryPoint = "listen", SetLastError = true)]
    public static partial int Listen(int fd, int backlog);

    [LibraryImport(Lib, EntryPoint = "accept4", SetLastError = true)]
    public static partial int Accept4(int fd, void* address, void* length, int flags);

    [LibraryImport(Lib, EntryPoint = "recvmsg", SetLastError = true)]
    public static partial nint RecvMsg(int fd, MsgHdr* message, int flags);

    [LibraryImport(Lib, EntryPoint = "send", SetLastError = true)]
    public static partial nint Send(int fd, void* buffer, nuint length, int flags);

    [LibraryImport(Lib, EntryPoint = "shutdown", SetLastError = true)]
    public static partial int Shutdown(int fd, int how);

    [LibraryImport(Lib, EntryPoint = "poll", SetLastError = true)]
    public static partial int Poll(PollFd* fds, nuint count, int timeoutMilliseconds);

    [LibraryImport(Lib, EntryPoint = "eventfd", SetLastError = true)]
    public static partial int EventFd(uint initialValue, int flags);

    [LibraryImport(Lib, EntryPoint = "read", SetLastError = true)]
    public static partial nint Read(int fd, void* buffer, nuint length);

    [LibraryImport(Lib, EntryPoint = "write", SetLastError = true)]
    public static partial nint Write(int fd, void* buffer, nuint length);

    [LibraryImport(Lib, EntryPoint = "close", SetLastError = true)]
    public static partial int Close(int fd);

    [LibraryImport(Lib, EntryPoint = "mmap", SetLastError = true)]
    public static partial void* Mmap(void* address, nuint length, int protection, int flags, int fd, long offset);

    [LibraryImport(Lib, EntryPoint = "lseek", SetLastError = true)]
    public static partial long LSeek(int fd, long offset, int whence);

    [LibraryImport(Lib, EntryPoint = "munmap", SetLastError = true)]
    public static partial int Munmap(void* address, nuint length);

    /// <summary>The errno of the last failed call on this thread.</summary>
    public static int Errno => Marshal.GetLastPInvokeError();

    /// <summary>A readable description of an errno value.</summary>
    public static string Describe(int errno) => $"{Marshal.GetPInvokeErrorMessage(errno)} (errno {errno})";

    /// <summary>Writes 1 to an eventfd, ignoring a full counter.</summary>
    public static void Signal(int eventFd)
    {
        ulong one = 1;
        _ = Write(eventFd, &one, sizeof(ulong));
    }

    /// <summary>Reads (and so resets) an eventfd counter; returns false when nothing was pending.</summary>
    public static bool Drain(int eventFd)
    {
        ulong value;
        return Read(eventFd, &value, sizeof(ulong)) == sizeof(ulong);
    }

    /// <summary>Closes a descriptor if it is valid; returns -1 to assign back.</summary>
    public static int CloseQuietly(int fd)
    {
        if (fd >= 0)
        {
            _ = Close(fd);
        }

        return -1;
    }

    [StructLayout(LayoutKind.Sequential)]
    public struct MsgHdr
    {
        public void* Name;
        public uint NameLength;
        public IoVec* Iov;
        public nuint IovLength;
        public void* Control;
        public nuint ControlLength;
        public int Flags;
    }

    [StructLayout(LayoutKind.Sequential)]
    public struct IoVec
    {
        public void* Base;
        public nuint Length;
    }

    [StructLayout(LayoutKind.Sequential)]
    public struct CMsgHdr
    {
        public nuint Length;
        public int Level;
        public int Type;
    }

    [StructLayout(LayoutKind.Sequential)]
    public struct PollFd
    {
        public int Fd;
        public short Events;
        public short Revents;
    }
}
