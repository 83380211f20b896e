using System.Buffers.Binary;

namespace NbdAttachment.Testing;

/// <summary>
/// One decoded transmission request. <see cref="Sequence"/> numbers requests in arrival order on the connection;
/// <see cref="PreError"/> is set when the payload was refused.
/// </summary>
internal readonly record struct NbdRequest(long Sequence, ushort Flags, ushort Type, ulong Cookie, ulong Offset, uint Length, byte[]? Payload, uint PreError);

/// <summary>Transmission phase: reading requests, validating and executing them, building replies.</summary>
internal sealed partial class ServerConnection
{
    /// <summary>WRITE payloads and READ lengths above this are always refused, whatever the advertised maximum.</summary>
    private const uint PayloadHardLimit = 64 * 1024 * 1024;

    /// <summary>Most extents returned in one block-status chunk.</summary>
    private const int MaxExtentsPerReply = 64 * 1024;

    private NbdTestExport? _export;
    private uint? _activeContextId;
    private long _requestSequence;

    private NbdTestExport Export => _export!;

    private async Task TransmissionAsync(NbdTestExport export, CancellationToken token)
    {
        _export = export;
        _activeContextId = _structuredReplies && _metaContextExport == export.Name ? _metaContextId : null;
        var header = new byte[ServerWire.RequestHeaderSize];
        while (true)
        {
            await _slots.WaitAsync(token).ConfigureAwait(false);
            bool launched = false;
            try
            {
                try
                {
                    await _stream.ReadExactlyAsync(header, token).ConfigureAwait(false);
                }
                catch (EndOfStreamException)
                {
                    return; // The client closed without NBD_CMD_DISC.
                }

                NbdRequest request = await ReadRequestAsync(header, token).ConfigureAwait(false);
                Statistics.CommandReceived(request.Type, request.Flags);
                if (request.Type == (ushort)NbdTestCommand.Disconnect)
                {
                    // Finish what is in flight, then close.
                    await WaitForInFlightAsync().ConfigureAwait(false);
                    await ReleaseHeldRepliesAsync(token).ConfigureAwait(false);
                    return;
                }

                launched = true;
                if (Faults.ConsumeRequestForDrop())
                {
                    await DropRepliesAsync(token).ConfigureAwait(false);
                    Statistics.ObserveConcurrency(Interlocked.Increment(ref _inFlightCount));
                    await HandleRequestAsync(request).ConfigureAwait(false);
                    Abort();
                    return;
                }

                Launch(request);
            }
            finally
            {
                if (!launched)
                {
                    _slots.Release();
                }
            }
        }
    }

    private async Task<NbdRequest> ReadRequestAsync(byte[] header, CancellationToken token)
    {
        uint magic = BinaryPrimitives.ReadUInt32BigEndian(header);
        if (magic != ServerWire.RequestMagic)
        {
            throw new InvalidDataException($"Bad request magic 0x{magic:x8}.");
        }

        ushort flags = BinaryPrimitives.ReadUInt16BigEndian(header.AsSpan(4));
        ushort type = BinaryPrimitives.ReadUInt16BigEndian(header.AsSpan(6));
        ulong cookie = BinaryPrimitives.ReadUInt64BigEndian(header.AsSpan(8));
        ulong offset = BinaryPrimitives.ReadUInt64BigEndian(header.AsSpan(16));
        uint length = BinaryPrimitives.ReadUInt32BigEndian(header.AsSpan(24));
        byte[]? payload = null;
        uint preError = 0;
        if (type == (ushort)NbdTestCommand.Write)
        {
            if (length > Math.Min(Export.Options.MaximumBlockSize, PayloadHardLimit))
            {
                await DiscardAsync(length, token).ConfigureAwait(false);
                preError = ServerWire.EInval;
            }
            else
            {
                payload = await ReadBytesAsync((int)length, token).ConfigureAwait(false);
            }
        }

        return new NbdRequest(++_requestSequence, flags, type, cookie, offset, length, payload, preError);
    }

    private byte[] Execute(NbdRequest request)
    {
        (uint error, string message) = request.PreError != 0
            ? (request.PreError, $"payload of {request.Length} bytes exceeds the maximum block size")
            : Validate(request);
        if (error != 0)
        {
            return ErrorReply(request, error, message);
        }

        SparseMemoryStore store = Export.Store;
        long offset = (long)request.Offset;
        bool fua = (request.Flags & ServerWire.CmdFlagFua) != 0;
        switch ((NbdTestCommand)request.Type)
        {
            case NbdTestCommand.Read:
                return ReadReply(request);

            case NbdTestCommand.Write:
                store.Write(offset, request.Payload ?? [], durable: false);
                Statistics.BytesWrittenAdded(request.Length);
                break;

            case NbdTestCommand.Flush:
                store.Flush();
                break;

            case NbdTestCommand.Trim:
                store.Zero(offset, request.Length, keepAllocated: false);
                break;

            case NbdTestCommand.WriteZeroes:
                store.Zero(offset, request.Length, keepAllocated: (request.Flags & ServerWire.CmdFlagNoHole) != 0);
                break;

            case NbdTestCommand.BlockStatus:
                return BlockStatusReply(request);

            default:
                break; // CACHE: nothing to prefetch in memory.
        }

        if (fua)
        {
            store.Flush();
        }

        return ServerWire.SimpleReply(0, request.Cookie);
    }

    private (uint Error, string Message) Validate(NbdRequest request)
    {
        var command = (NbdTestCommand)request.Type;
        ushort allowed = command switch
        {
            NbdTestCommand.Read => ServerWire.CmdFlagFua | ServerWire.CmdFlagDf,
            NbdTestCommand.Write or NbdTestCommand.Flush or NbdTestCommand.Trim or NbdTestCommand.Cache => ServerWire.CmdFlagFua,
            NbdTestCommand.WriteZeroes => ServerWire.CmdFlagFua | ServerWire.CmdFlagNoHole | ServerWire.CmdFlagFastZero,
            NbdTestCommand.BlockStatus => ServerWire.CmdFlagFua | ServerWire.CmdFlagReqOne,
            _ => 0,
        };
        if (allowed == 0)
        {
            return (ServerWire.EInval, $"unknown command type {request.Type}");
        }

        if ((request.Flags & ~allowed) != 0)
        {
            return (ServerWire.EInval, $"flags 0x{request.Flags:x4} are not valid for {command}");
        }

        ushort exportFlags = Export.GetTransmissionFlags(_structuredReplies);
        if ((request.Flags & ServerWire.CmdFlagDf) != 0 && !_structuredReplies)
        {
            return (ServerWire.EInval, "NBD_CMD_FLAG_DF requires structured replies");
        }

        if ((request.Flags & ServerWire.CmdFlagFastZero) != 0 && (exportFlags & ServerWire.TxSendFastZero) == 0)
        {
            return (ServerWire.EInval, "NBD_CMD_FLAG_FAST_ZERO was not advertised");
        }

        if (command is NbdTestCommand.Write or NbdTestCommand.Trim or NbdTestCommand.WriteZeroes && Export.IsReadOnly)
        {
            return (ServerWire.EPerm, "the export is read-only");
        }

        if (command == NbdTestCommand.Flush)
        {
            return (0, string.Empty);
        }

        if (command == NbdTestCommand.Read && request.Length > Math.Min(Export.Options.MaximumBlockSize, PayloadHardLimit))
        {
            return (ServerWire.EInval, $"read of {request.Length} bytes exceeds the maximum block size");
        }

        if (command == NbdTestCommand.BlockStatus)
        {
            if (_activeContextId is null)
            {
                return (ServerWire.EInval, "no metadata context was negotiated for this export");
            }

            if (request.Length == 0)
            {
                return (ServerWire.EInval, "block status of length 0");
            }
        }

        ulong size = (ulong)Export.Size;
        if (request.Offset > size || request.Length > size - request.Offset)
        {
            return command is NbdTestCommand.Write or NbdTestCommand.WriteZeroes
                ? (ServerWire.ENoSpc, "request extends beyond the end of the export")
                : (ServerWire.EInval, "request extends beyond the end of the export");
        }

        uint minimum = Export.Options.MinimumBlockSize;
        bool endsAtTail = request.Offset + request.Length == size;
        if (request.Offset % minimum != 0 || (request.Length % minimum != 0 && !endsAtTail))
        {
            return (ServerWire.EInval, $"request is not aligned to the minimum block size {minimum}");
        }

        return (0, string.Empty);
    }

    private byte[] ErrorReply(NbdRequest request, uint error, string message)
    {
        Statistics.ErrorReplied();
        return _structuredReplies
            ? ServerWire.ErrorChunk(request.Cookie, error, message)
            : ServerWire.SimpleReply(error, request.Cookie);
    }

    private byte[] ReadReply(NbdRequest request)
    {
        long offset = (long)request.Offset;
        int length = (int)request.Length;
        SparseMemoryStore store = Export.Store;
        Statistics.BytesReadAdded(length);
        if (!_structuredReplies)
        {
            var simple = new byte[ServerWire.SimpleReplyHeaderSize + length];
            ServerWire.WriteSimpleReplyHeader(simple, 0, request.Cookie);
            store.Read(offset, simple.AsSpan(ServerWire.SimpleReplyHeaderSize));
            return simple;
        }

        if (length == 0)
        {
            return ServerWire.NoneChunk(request.Cookie);
        }

        if ((request.Flags & ServerWire.CmdFlagDf) != 0 || !Options.SplitReads)
        {
            var single = new byte[ServerWire.ChunkHeaderSize + 8 + length];
            WriteDataChunk(single, ServerWire.ReplyFlagDone, request.Cookie, offset, length);
            return single;
        }

        return SplitReadReply(request.Cookie, offset, length);
    }

    /// <summary>OFFSET_DATA / OFFSET_HOLE chunks of at most MaxChunkSize, shuffled; DONE on the last chunk or a trailing NONE.</summary>
    private byte[] SplitReadReply(ulong cookie, long offset, int length)
    {
        var pieces = new List<(long Offset, int Length, bool Hole)>();
        foreach (StoreExtent extent in Export.Store.GetExtents(offset, length, int.MaxValue))
        {
            long end = extent.Offset + extent.Length;
            for (long position = extent.Offset; position < end; position += Options.MaxChunkSize)
            {
                pieces.Add((position, (int)Math.Min(Options.MaxChunkSize, end - position), extent.State != PageState.Data));
            }
        }

        for (int i = pieces.Count - 1; i > 0; i--)
        {
            int j = NextRandom(i + 1);
            (pieces[i], pieces[j]) = (pieces[j], pieces[i]);
        }

        bool trailingNone = NextRandom(2) == 0;
        long total = trailingNone ? ServerWire.ChunkHeaderSize : 0;
        foreach ((long _, int pieceLength, bool hole) in pieces)
        {
            total += ServerWire.ChunkHeaderSize + (hole ? 12 : 8 + pieceLength);
        }

        var reply = new byte[total];
        int cursor = 0;
        for (int i = 0; i < pieces.Count; i++)
        {
            (long pieceOffset, int pieceLength, bool hole) = pieces[i];
            ushort flags = !trailingNone && i == pieces.Count - 1 ? ServerWire.ReplyFlagDone : (ushort)0;
            Span<byte> chunk = reply.AsSpan(cursor);
            if (hole)
            {
                ServerWire.WriteChunkHeader(chunk, flags, ServerWire.ChunkOffsetHole, cookie, 12);
                BinaryPrimitives.WriteUInt64BigEndian(chunk[ServerWire.ChunkHeaderSize..], (ulong)pieceOffset);
                BinaryPrimitives.WriteUInt32BigEndian(chunk[(ServerWire.ChunkHeaderSize + 8)..], (uint)pieceLength);
                cursor += ServerWire.ChunkHeaderSize + 12;
            }
            else
            {
                WriteDataChunk(chunk, flags, cookie, pieceOffset, pieceLength);
                cursor += ServerWire.ChunkHeaderSize + 8 + pieceLength;
            }
        }

        if (trailingNone)
        {
            ServerWire.WriteChunkHeader(reply.AsSpan(cursor), ServerWire.ReplyFlagDone, ServerWire.ChunkNone, cookie, 0);
        }

        return reply;
    }

    private void WriteDataChunk(Span<byte> destination, ushort flags, ulong cookie, long offset, int length)
    {
        ServerWire.WriteChunkHeader(destination, flags, ServerWire.ChunkOffsetData, cookie, (uint)(8 + length));
        BinaryPrimitives.WriteUInt64BigEndian(destination[ServerWire.ChunkHeaderSize..], (ulong)offset);
        Export.Store.Read(offset, destination.Slice(ServerWire.ChunkHeaderSize + 8, length));
    }

    private byte[] BlockStatusReply(NbdRequest request)
    {
        bool reqOne = (request.Flags & ServerWire.CmdFlagReqOne) != 0;
        List<StoreExtent> extents = Export.Store.GetExtents((long)request.Offset, request.Length, reqOne ? 1 : MaxExtentsPerReply);
        int payloadLength = 4 + (8 * extents.Count);
        var reply = new byte[ServerWire.ChunkHeaderSize + payloadLength];
        ServerWire.WriteChunkHeader(reply, ServerWire.ReplyFlagDone, ServerWire.ChunkBlockStatus, request.Cookie, (uint)payloadLength);
        Span<byte> payload = reply.AsSpan(ServerWire.ChunkHeaderSize);
        BinaryPrimitives.WriteUInt32BigEndian(payload, _activeContextId!.Value);
        for (int i = 0; i < extents.Count; i++)
        {
            uint status = extents[i].State switch
            {
                PageState.Hole => ServerWire.StateHole | ServerWire.StateZero,
                PageState.Zero => ServerWire.StateZero,
                _ => 0,
            };
            BinaryPrimitives.WriteUInt32BigEndian(payload[(4 + (8 * i))..], (uint)extents[i].Length);
            BinaryPrimitives.WriteUInt32BigEndian(payload[(8 + (8 * i))..], status);
        }

        return reply;
    }
}
