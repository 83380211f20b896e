namespace NbdAttachment.Testing;

/// <summary>Describes one export served by <see cref="NbdTestServer"/>.</summary>
public sealed record NbdTestExportOptions
{
    /// <summary>Default export size: 64 MiB.</summary>
    public const long DefaultSize = 64L * 1024 * 1024;

    /// <summary>Creates options for the default export ("" of <see cref="DefaultSize"/> bytes).</summary>
    public NbdTestExportOptions()
    {
    }

    /// <summary>Creates options for an export with the given name and size.</summary>
    /// <param name="name">Export name; "" is the default export.</param>
    /// <param name="size">Export size in bytes.</param>
    public NbdTestExportOptions(string name, long size)
    {
        Name = name;
        Size = size;
    }

    /// <summary>Export name (UTF-8, at most 4096 bytes); "" is the default export.</summary>
    public string Name { get; init; } = string.Empty;

    /// <summary>Export size in bytes. Memory is only used for pages that are written.</summary>
    public long Size { get; init; } = DefaultSize;

    /// <summary>Description sent in NBD_REP_SERVER and NBD_INFO_DESCRIPTION, or null for none.</summary>
    public string? Description { get; init; }

    /// <summary>Advertise NBD_FLAG_READ_ONLY and fail WRITE, TRIM and WRITE_ZEROES with NBD_EPERM.</summary>
    public bool ReadOnly { get; init; }

    /// <summary>Advertise NBD_FLAG_CAN_MULTI_CONN.</summary>
    public bool MultiConn { get; init; }

    /// <summary>
    /// When set, the exact transmission flags sent to clients, replacing the computed ones (to imitate unusual
    /// servers). The server still executes every command it understands; setting the READ_ONLY bit here also
    /// makes writes fail with NBD_EPERM.
    /// </summary>
    public ushort? TransmissionFlagsOverride { get; init; }

    /// <summary>Minimum block size: offsets and lengths must be multiples of it (NBD_EINVAL otherwise).</summary>
    public uint MinimumBlockSize { get; init; } = 1;

    /// <summary>Preferred block size advertised in NBD_INFO_BLOCK_SIZE.</summary>
    public uint PreferredBlockSize { get; init; } = 4096;

    /// <summary>Maximum payload: larger WRITE payloads and READ lengths fail with NBD_EINVAL.</summary>
    public uint MaximumBlockSize { get; init; } = 32 * 1024 * 1024;

    /// <summary>
    /// Send NBD_INFO_BLOCK_SIZE when the client requests it. The constraints are enforced either way.
    /// </summary>
    public bool AdvertiseBlockSize { get; init; } = true;

    /// <summary>
    /// Keep writes in a volatile cache that reaches the backing store only on FLUSH or on a command carrying
    /// FUA (which flushes the whole cache). <see cref="NbdTestExport.LoseUnflushedWrites"/> simulates a crash.
    /// </summary>
    public bool VolatileWriteCache { get; init; }
}
