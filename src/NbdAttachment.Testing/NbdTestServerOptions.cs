namespace NbdAttachment.Testing;

/// <summary>Configures an <see cref="NbdTestServer"/>. Every property has a protocol-friendly default.</summary>
public sealed record NbdTestServerOptions
{
    /// <summary>The defaults: one 64 MiB export named "", fixed newstyle, every optional feature on.</summary>
    public static NbdTestServerOptions Default { get; } = new();

    /// <summary>The exports served. The first one is used for the oldstyle greeting. Names must be unique.</summary>
    public IReadOnlyList<NbdTestExportOptions> Exports { get; init; } = [new NbdTestExportOptions()];

    /// <summary>
    /// Also listen on a Unix domain socket, at <see cref="UnixSocketPath"/> or at a unique temporary path.
    /// </summary>
    public bool ListenOnUnixSocket { get; init; }

    /// <summary>Path of the Unix domain socket; setting it implies <see cref="ListenOnUnixSocket"/>.</summary>
    public string? UnixSocketPath { get; init; }

    /// <summary>
    /// Advertise fixed newstyle. When false the server is a non-fixed newstyle server: the only option it
    /// accepts is NBD_OPT_EXPORT_NAME and any other option drops the connection.
    /// </summary>
    public bool FixedNewstyle { get; init; } = true;

    /// <summary>
    /// Send the 152-byte oldstyle greeting for the first export and go straight to transmission
    /// (simple replies only).
    /// </summary>
    public bool Oldstyle { get; init; }

    /// <summary>Advertise NBD_FLAG_NO_ZEROES in the newstyle greeting.</summary>
    public bool AdvertiseNoZeroes { get; init; } = true;

    /// <summary>Support NBD_OPT_GO and NBD_OPT_INFO; when false both get NBD_REP_ERR_UNSUP.</summary>
    public bool SupportGo { get; init; } = true;

    /// <summary>Support NBD_OPT_STRUCTURED_REPLY; when false it gets NBD_REP_ERR_UNSUP.</summary>
    public bool SupportStructuredReplies { get; init; } = true;

    /// <summary>Support the base:allocation meta context; when false the meta-context options get NBD_REP_ERR_UNSUP.</summary>
    public bool SupportMetaContexts { get; init; } = true;

    /// <summary>Support NBD_OPT_LIST; when false it gets NBD_REP_ERR_POLICY.</summary>
    public bool SupportList { get; init; } = true;

    /// <summary>
    /// Always send NBD_INFO_BLOCK_SIZE, and answer NBD_OPT_GO without a block-size request with
    /// NBD_REP_ERR_BLOCK_SIZE_REQD.
    /// </summary>
    public bool RequireBlockSizeInfo { get; init; }

    /// <summary>
    /// Answer structured reads (without DF) with several OFFSET_DATA / OFFSET_HOLE chunks of at most
    /// <see cref="MaxChunkSize"/> bytes, sent in shuffled order, holes standing for unallocated ranges.
    /// </summary>
    public bool SplitReads { get; init; }

    /// <summary>Largest chunk produced by <see cref="SplitReads"/>, in bytes.</summary>
    public int MaxChunkSize { get; init; } = 16 * 1024;

    /// <summary>Seed for every random choice (chunk shuffling, meta-context ids), so runs are reproducible.</summary>
    public int RandomSeed { get; init; } = 20250531;

    /// <summary>Requests one connection may have in flight before the server stops reading (bounds memory).</summary>
    public int MaxInFlightRequestsPerConnection { get; init; } = 64;
}
