namespace NbdAttachment.Client;

/// <summary>Transmission flags a server advertises for an export (<c>NBD_FLAG_*</c>).</summary>
[Flags]
public enum NbdTransmissionFlags : ushort
{
    /// <summary>No flags.</summary>
    None = 0,

    /// <summary><c>NBD_FLAG_HAS_FLAGS</c>: always set by a valid server.</summary>
    HasFlags = 1 << 0,

    /// <summary><c>NBD_FLAG_READ_ONLY</c>: the export is read-only.</summary>
    ReadOnly = 1 << 1,

    /// <summary><c>NBD_FLAG_SEND_FLUSH</c>: FLUSH is supported.</summary>
    SendFlush = 1 << 2,

    /// <summary><c>NBD_FLAG_SEND_FUA</c>: the FUA command flag is supported.</summary>
    SendFua = 1 << 3,

    /// <summary><c>NBD_FLAG_ROTATIONAL</c>: hint that the medium is rotational.</summary>
    Rotational = 1 << 4,

    /// <summary><c>NBD_FLAG_SEND_TRIM</c>: TRIM is supported.</summary>
    SendTrim = 1 << 5,

    /// <summary><c>NBD_FLAG_SEND_WRITE_ZEROES</c>: WRITE_ZEROES (and NO_HOLE) is supported.</summary>
    SendWriteZeroes = 1 << 6,

    /// <summary><c>NBD_FLAG_SEND_DF</c>: the DF (don't fragment) read flag is supported.</summary>
    SendDontFragment = 1 << 7,

    /// <summary><c>NBD_FLAG_CAN_MULTI_CONN</c>: several connections to this export are coherent.</summary>
    CanMultiConn = 1 << 8,

    /// <summary><c>NBD_FLAG_SEND_RESIZE</c>: the experimental RESIZE command is supported.</summary>
    SendResize = 1 << 9,

    /// <summary><c>NBD_FLAG_SEND_CACHE</c>: CACHE is supported.</summary>
    SendCache = 1 << 10,

    /// <summary><c>NBD_FLAG_SEND_FAST_ZERO</c>: the FAST_ZERO flag of WRITE_ZEROES is supported.</summary>
    SendFastZero = 1 << 11,

    /// <summary><c>NBD_FLAG_BLOCK_STATUS_PAYLOAD</c>: block status filter payloads (extended headers only).</summary>
    BlockStatusPayload = 1 << 12,
}
