namespace NbdAttachment;

/// <summary>Error numbers an NBD server returns for a command (the NBD protocol's <c>NBD_E*</c> values).</summary>
public enum NbdError
{
    /// <summary>Success.</summary>
    None = 0,

    /// <summary><c>NBD_EPERM</c>: operation not permitted, for example a write to a read-only export.</summary>
    PermissionDenied = 1,

    /// <summary><c>NBD_EIO</c>: input/output error.</summary>
    IOError = 5,

    /// <summary><c>NBD_ENOMEM</c>: the server ran out of memory.</summary>
    OutOfMemory = 12,

    /// <summary><c>NBD_EINVAL</c>: invalid argument. Unknown error numbers from a server map here too.</summary>
    InvalidArgument = 22,

    /// <summary><c>NBD_ENOSPC</c>: no space left, or a write beyond the end of the export.</summary>
    NoSpace = 28,

    /// <summary><c>NBD_EOVERFLOW</c>: the request is too large for the server.</summary>
    Overflow = 75,

    /// <summary><c>NBD_ENOTSUP</c>: a fast zero request that would not be fast.</summary>
    NotSupported = 95,

    /// <summary><c>NBD_ESHUTDOWN</c>: the server is shutting down.</summary>
    Shutdown = 108,
}
