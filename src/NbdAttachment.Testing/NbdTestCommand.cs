namespace NbdAttachment.Testing;

/// <summary>NBD command types, as sent in the request <c>type</c> field.</summary>
public enum NbdTestCommand : ushort
{
    /// <summary>NBD_CMD_READ.</summary>
    Read = 0,

    /// <summary>NBD_CMD_WRITE.</summary>
    Write = 1,

    /// <summary>NBD_CMD_DISC.</summary>
    Disconnect = 2,

    /// <summary>NBD_CMD_FLUSH.</summary>
    Flush = 3,

    /// <summary>NBD_CMD_TRIM.</summary>
    Trim = 4,

    /// <summary>NBD_CMD_CACHE.</summary>
    Cache = 5,

    /// <summary>NBD_CMD_WRITE_ZEROES.</summary>
    WriteZeroes = 6,

    /// <summary>NBD_CMD_BLOCK_STATUS.</summary>
    BlockStatus = 7,
}
