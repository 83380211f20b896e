namespace NbdAttachment.Client;

/// <summary>What was negotiated for an export: its size, flags, block-size constraints and extensions.</summary>
public sealed class NbdExportInfo
{
    internal NbdExportInfo(
        string exportName,
        string? canonicalName,
        string? description,
        long size,
        NbdTransmissionFlags flags,
        uint minimumBlockSize,
        uint preferredBlockSize,
        uint maximumPayloadSize,
        bool blockSizesAdvertised,
        bool structuredReplies,
        IReadOnlyDictionary<string, uint> metaContexts,
        NbdHandshakeStyle handshakeStyle,
        bool isTlsActive)
    {
        ExportName = exportName;
        CanonicalName = canonicalName;
        Description = description;
        Size = size;
        Flags = flags;
        MinimumBlockSize = minimumBlockSize;
        PreferredBlockSize = preferredBlockSize;
        MaximumPayloadSize = maximumPayloadSize;
        BlockSizesAdvertised = blockSizesAdvertised;
        StructuredReplies = structuredReplies;
        MetaContextIds = metaContexts;
        HandshakeStyle = handshakeStyle;
        IsTlsActive = isTlsActive;
    }

    /// <summary>The export name the client asked for ("" is the default export).</summary>
    public string ExportName { get; }

    /// <summary>The canonical name the server reported (<c>NBD_INFO_NAME</c>), if any.</summary>
    public string? CanonicalName { get; }

    /// <summary>The description the server reported (<c>NBD_INFO_DESCRIPTION</c>), if any.</summary>
    public string? Description { get; }

    /// <summary>The export size in bytes.</summary>
    public long Size { get; }

    /// <summary>The transmission flags in force (after the client dropped flags that cannot apply).</summary>
    public NbdTransmissionFlags Flags { get; }

    /// <summary>The smallest addressable unit and alignment, in bytes (1 when the server advertised none).</summary>
    public uint MinimumBlockSize { get; }

    /// <summary>The block size that avoids read-modify-write on the server, in bytes (4096 by default).</summary>
    public uint PreferredBlockSize { get; }

    /// <summary>The largest READ or WRITE payload the client sends in one request; larger requests are split.</summary>
    public uint MaximumPayloadSize { get; }

    /// <summary><see langword="true"/> when the server advertised block-size constraints (<c>NBD_INFO_BLOCK_SIZE</c>).</summary>
    public bool BlockSizesAdvertised { get; }

    /// <summary><see langword="true"/> when structured replies were negotiated.</summary>
    public bool StructuredReplies { get; }

    /// <summary>The metadata contexts the server granted, by name.</summary>
    public IReadOnlyCollection<string> MetaContexts => (IReadOnlyCollection<string>)MetaContextIds.Keys;

    /// <summary>The handshake style the server spoke.</summary>
    public NbdHandshakeStyle HandshakeStyle { get; }

    /// <summary><see langword="true"/> when the connection is protected by TLS.</summary>
    public bool IsTlsActive { get; }

    /// <summary>The export is read-only on the server.</summary>
    public bool IsReadOnly => (Flags & NbdTransmissionFlags.ReadOnly) != 0;

    /// <summary>FLUSH is supported.</summary>
    public bool CanFlush => (Flags & NbdTransmissionFlags.SendFlush) != 0;

    /// <summary>The FUA flag is supported.</summary>
    public bool CanFua => (Flags & NbdTransmissionFlags.SendFua) != 0;

    /// <summary>TRIM is supported.</summary>
    public bool CanTrim => (Flags & NbdTransmissionFlags.SendTrim) != 0;

    /// <summary>WRITE_ZEROES is supported.</summary>
    public bool CanWriteZeroes => (Flags & NbdTransmissionFlags.SendWriteZeroes) != 0;

    /// <summary>The FAST_ZERO flag of WRITE_ZEROES is supported.</summary>
    public bool CanFastZero => (Flags & NbdTransmissionFlags.SendFastZero) != 0;

    /// <summary>CACHE is supported.</summary>
    public bool CanCache => (Flags & NbdTransmissionFlags.SendCache) != 0;

    /// <summary>The DF (don't fragment) read flag is supported.</summary>
    public bool CanDontFragment => (Flags & NbdTransmissionFlags.SendDontFragment) != 0;

    /// <summary>Several connections to this export are coherent (<c>NBD_FLAG_CAN_MULTI_CONN</c>).</summary>
    public bool CanMultiConn => (Flags & NbdTransmissionFlags.CanMultiConn) != 0;

    /// <summary>BLOCK_STATUS can be used: structured replies are on and at least one meta context was granted.</summary>
    public bool CanBlockStatus => StructuredReplies && MetaContextIds.Count > 0;

    internal IReadOnlyDictionary<string, uint> MetaContextIds { get; }

    /// <inheritdoc />
    public override string ToString() =>
        $"export '{ExportName}' size={Size} flags={Flags} blocks={MinimumBlockSize}/{PreferredBlockSize}/{MaximumPayloadSize} structured={StructuredReplies} tls={IsTlsActive}";
}

/// <summary>The handshake style a server spoke.</summary>
public enum NbdHandshakeStyle
{
    /// <summary>Fixed newstyle: options with replies (the modern protocol).</summary>
    FixedNewstyle,

    /// <summary>Newstyle without the fixed flag: only <c>NBD_OPT_EXPORT_NAME</c> is possible.</summary>
    Newstyle,

    /// <summary>Oldstyle: no options, no export names, no TLS.</summary>
    Oldstyle,
}

/// <summary>An export a server listed in answer to <c>NBD_OPT_LIST</c>.</summary>
/// <param name="Name">The export name.</param>
/// <param name="Description">The server's description of it (may be empty).</param>
public sealed record NbdExportListing(string Name, string Description);
