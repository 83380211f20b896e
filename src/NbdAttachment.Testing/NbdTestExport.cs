namespace NbdAttachment.Testing;

/// <summary>
/// One memory-backed export of an <see cref="NbdTestServer"/>. Tests use it to seed and check contents
/// directly, bypassing the protocol. Thread-safe.
/// </summary>
public sealed class NbdTestExport
{
    private readonly SparseMemoryStore _store;

    internal NbdTestExport(NbdTestExportOptions options)
    {
        Options = options;
        _store = new SparseMemoryStore(options.Size, options.VolatileWriteCache);
    }

    /// <summary>The options this export was created from.</summary>
    public NbdTestExportOptions Options { get; }

    /// <summary>Export name ("" for the default export).</summary>
    public string Name => Options.Name;

    /// <summary>Export size in bytes.</summary>
    public long Size => Options.Size;

    /// <summary>True when writes are refused with NBD_EPERM.</summary>
    public bool IsReadOnly =>
        Options.ReadOnly || (Options.TransmissionFlagsOverride is { } flags && (flags & ServerWire.TxReadOnly) != 0);

    /// <summary>Bytes currently held by allocated pages (64 KiB granularity), unflushed cache included.</summary>
    public long AllocatedBytes => _store.AllocatedBytes;

    /// <summary>True when the volatile write cache holds changes that a FLUSH has not yet persisted.</summary>
    public bool HasUnflushedWrites => _store.HasUnflushedChanges;

    internal SparseMemoryStore Store => _store;

    /// <summary>Reads the contents a client would see (unflushed writes included).</summary>
    /// <param name="offset">Byte offset.</param>
    /// <param name="destination">Receives the data; unallocated ranges read as zeroes.</param>
    public void ReadBytes(long offset, Span<byte> destination)
    {
        CheckRange(offset, destination.Length);
        _store.Read(offset, destination);
    }

    /// <summary>Reads <paramref name="count"/> bytes a client would see, into a new array.</summary>
    /// <param name="offset">Byte offset.</param>
    /// <param name="count">Number of bytes.</param>
    /// <returns>The data.</returns>
    public byte[] ReadBytes(long offset, int count)
    {
        var buffer = new byte[count];
        ReadBytes(offset, buffer);
        return buffer;
    }

    /// <summary>
    /// Reads what has reached the backing store only, ignoring unflushed writes of a volatile write cache.
    /// </summary>
    /// <param name="offset">Byte offset.</param>
    /// <param name="destination">Receives the data.</param>
    public void ReadPersistedBytes(long offset, Span<byte> destination)
    {
        CheckRange(offset, destination.Length);
        _store.ReadStable(offset, destination);
    }

    /// <summary>Writes data durably (straight to the backing store), allocating pages as needed.</summary>
    /// <param name="offset">Byte offset.</param>
    /// <param name="data">The data.</param>
    public void WriteBytes(long offset, ReadOnlySpan<byte> data)
    {
        CheckRange(offset, data.Length);
        _store.Write(offset, data, durable: true);
    }

    /// <summary>True when the 64 KiB page holding <paramref name="offset"/> is allocated.</summary>
    /// <param name="offset">Byte offset.</param>
    /// <returns>Whether the page is allocated (written, or zeroed with NO_HOLE).</returns>
    public bool IsAllocated(long offset)
    {
        CheckRange(offset, 1);
        return _store.GetState(offset) != PageState.Hole;
    }

    /// <summary>Persists the volatile write cache, as an NBD_CMD_FLUSH would.</summary>
    public void Flush() => _store.Flush();

    /// <summary>Discards every write not yet flushed, simulating a server crash (volatile cache only).</summary>
    public void LoseUnflushedWrites() => _store.DiscardCache();

    /// <summary>The transmission flags this export advertises.</summary>
    /// <param name="structuredReplies">Whether structured replies were negotiated (gates SEND_DF).</param>
    /// <returns>The 16-bit transmission flags.</returns>
    public ushort GetTransmissionFlags(bool structuredReplies)
    {
        if (Options.TransmissionFlagsOverride is { } exact)
        {
            return exact;
        }

        ushort flags = ServerWire.TxHasFlags | ServerWire.TxSendFlush | ServerWire.TxSendFua | ServerWire.TxSendTrim
            | ServerWire.TxSendWriteZeroes | ServerWire.TxSendFastZero | ServerWire.TxSendCache;
        if (structuredReplies)
        {
            flags |= ServerWire.TxSendDf;
        }

        if (Options.MultiConn)
        {
            flags |= ServerWire.TxCanMultiConn;
        }

        if (Options.ReadOnly)
        {
            flags |= ServerWire.TxReadOnly;
        }

        return flags;
    }

    private void CheckRange(long offset, long length)
    {
        if (offset < 0 || length < 0 || offset > Size || length > Size - offset)
        {
            throw new ArgumentOutOfRangeException(nameof(offset), $"Range {offset}+{length} is outside the export ({Size} bytes).");
        }
    }
}
