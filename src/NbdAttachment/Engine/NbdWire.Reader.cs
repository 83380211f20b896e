using System.Runtime.CompilerServices;
using System.Buffers;
using System.Buffers.Binary;
using NbdAttachment.Client;
using NbdAttachment.Protocol;

namespace NbdAttachment.Engine;

internal sealed partial class NbdWire
{
    private enum ReadPhase
    {
        Header,
        SimpleData,
        DataOffset,
        ChunkData,
        ChunkPayload,
        Skip,
    }

    private ReadPhase _phase;
    private NbdReplyHeader _header;
    private NbdRequest? _current;
    private long _remaining;
    private long _destination;

    /// <summary>
    /// The reader: parses replies as bytes arrive, streams read data straight into the caller's buffer,
    /// and completes requests by cookie in whatever order the server answers.
    /// </summary>
    private async Task ReadLoopAsync()
    {
        try
        {
            while (true)
            {
                var result = await _reader.ReadAsync(_stop.Token).ConfigureAwait(false);
                var buffer = result.Buffer;
                if (!buffer.IsEmpty)
                {
                    LastReceiveTimestamp = System.Diagnostics.Stopwatch.GetTimestamp();
                }

                Process(ref buffer);
                _reader.AdvanceTo(buffer.Start, buffer.End);
                if (buffer.IsEmpty && !result.IsCompleted && _remaining >= DirectTransferThreshold
                    && _phase is ReadPhase.SimpleData or ReadPhase.ChunkData && _current is { } request)
                {
                    await ReceiveDirectAsync(request).ConfigureAwait(false);
                    continue;
                }

                if (result.IsCompleted)
                {
                    if (DisconnectSent)
                    {
                        return;
                    }

                    var midReply = _phase != ReadPhase.Header || !buffer.IsEmpty;
                    Stop(new NbdConnectionException(midReply
                        ? "The server closed the connection in the middle of a reply."
                        : "The server closed the connection."));
                    return;
                }
            }
        }
        catch (OperationCanceledException) when (_stop.IsCancellationRequested)
        {
        }
        catch (NbdException ex)
        {
            Stop(ex);
        }
        catch (Exception ex) when (ex is IOException or ObjectDisposedException or System.Net.Sockets.SocketException or InvalidOperationException)
        {
            if (!DisconnectSent)
            {
                Stop(new NbdConnectionException($"Receiving from the server failed: {ex.Message}", ex));
            }
        }
    }

    /// <summary>
    /// Receives the rest of a large data payload straight into the caller's buffer. The pipe holds no unread
    /// bytes at this point, so reading the stream directly keeps the byte order.
    /// </summary>
    [AsyncMethodBuilder(typeof(PoolingAsyncValueTaskMethodBuilder))]
    private async ValueTask ReceiveDirectAsync(NbdRequest request)
    {
        if (!request.TryBeginTransfer(this))
        {
            return; // abandoned: the pipe path discards its data
        }

        try
        {
            while (_remaining > 0)
            {
                var destination = request.ReadBuffer.Slice((int)_destination, (int)_remaining);
                var received = await _stream.ReadAsync(destination, _stop.Token).ConfigureAwait(false);
                if (received == 0)
                {
                    throw new NbdConnectionException("The server closed the connection in the middle of a reply.");
                }

                LastReceiveTimestamp = System.Diagnostics.Stopwatch.GetTimestamp();
                _remaining -= received;
                _destination += received;
            }
        }
        finally
        {
            request.EndTransfer();
        }

        EndOfData();
    }

    private void Process(ref ReadOnlySequence<byte> buffer)
    {
        while (true)
        {
            switch (_phase)
            {
                case ReadPhase.Header:
                    var status = NbdReplyHeader.TryRead(buffer, out _header);
                    if (status == OperationStatus.NeedMoreData)
                    {
                        return;
                    }

                    if (status == OperationStatus.InvalidData)
                    {
                        throw new NbdProtocolException($"Bad reply magic 0x{NbdReplyHeader.PeekMagic(buffer):x8}: the stream from the server lost sync.");
                    }

                    buffer = buffer.Slice(_header.HeaderSize);
                    OnHeader();
                    break;

                case ReadPhase.SimpleData:
                case ReadPhase.ChunkData:
                case ReadPhase.Skip:
                    if (buffer.IsEmpty)
                    {
                        return;
                    }

                    var take = Math.Min(buffer.Length, _remaining);
                    if (_phase != ReadPhase.Skip && _current is not null)
                    {
                        _current.CopyToReadBuffer(buffer.Slice(0, take), _destination);
                    }

                    buffer = buffer.Slice(take);
                    _remaining -= take;
                    _destination += take;
                    if (_remaining == 0)
                    {
                        EndOfData();
                    }

                    break;

                case ReadPhase.DataOffset:
                case ReadPhase.ChunkPayload:
                    if (buffer.Length < _remaining)
                    {
                        return;
                    }

                    var payload = buffer.Slice(0, _remaining);
                    buffer = buffer.Slice(_remaining);
                    OnPayload(payload);
                    break;
            }
        }
    }

    private void OnHeader()
    {
        var request = _table.Find(_header.Cookie);
        _current = request;
        if (!_header.IsStructured)
        {
            OnSimpleHeader(request);
            return;
        }

        var length = _header.PayloadLength;
        if (request is null)
        {
            // Unknown cookie: chunks are self-describing, so skip the payload by its length.
            Expect(length <= NbdLimits.HardMaxPayload + 8u, $"a {length}-byte chunk for unknown cookie {_header.Cookie:x}");
            Begin(length == 0 ? ReadPhase.Header : ReadPhase.Skip, length);
            return;
        }

        if (!Export.StructuredReplies)
        {
            throw new NbdProtocolException("The server sent a structured reply although structured replies were not negotiated.");
        }

        switch (_header.ChunkType)
        {
            case NbdChunkType.None:
                Expect(length == 0, $"a NONE chunk with {length} bytes of payload");
                Expect(_header.IsDone, "a NONE chunk without the DONE flag");
                FinishReply(request);
                break;
            case NbdChunkType.OffsetData:
                Expect(request.Command == NbdCommand.Read, $"an OFFSET_DATA chunk in reply to {NbdNames.Command(request.Command)}");
                Expect(length >= 8 && length - 8 <= request.Length, $"an OFFSET_DATA chunk of {length} bytes for a {request.Length}-byte read");
                Begin(ReadPhase.DataOffset, 8);
                break;
            case NbdChunkType.OffsetHole:
                Expect(request.Command == NbdCommand.Read, $"an OFFSET_HOLE chunk in reply to {NbdNames.Command(request.Command)}");
                Expect(length == 12, $"an OFFSET_HOLE chunk of {length} bytes (must be 12)");
                Begin(ReadPhase.ChunkPayload, length);
                break;
            case NbdChunkType.BlockStatus:
                Expect(request.Command == NbdCommand.BlockStatus, $"a BLOCK_STATUS chunk in reply to {NbdNames.Command(request.Command)}");
                Expect(length >= 12 && (length - 4) % 8 == 0 && length <= NbdLimits.MaxStatusChunk, $"a BLOCK_STATUS chunk of {length} bytes");
                Begin(ReadPhase.ChunkPayload, length);
                break;
            case NbdChunkType.Error:
            case NbdChunkType.ErrorOffset:
                Expect(length >= (_header.ChunkType == NbdChunkType.Error ? 6u : 14u) && length <= NbdLimits.MaxString + 14u, $"an error chunk of {length} bytes");
                Begin(ReadPhase.ChunkPayload, length);
                break;
            default:
                Expect(((ushort)_header.ChunkType & (ushort)NbdChunkType.ErrorBit) != 0, $"unknown chunk type {(ushort)_header.ChunkType}");
                Expect(length >= 6 && length <= NbdLimits.MaxString + 64u, $"an unknown error chunk of {length} bytes");
                Begin(ReadPhase.ChunkPayload, length);
                break;
        }
    }

    private void OnSimpleHeader(NbdRequest? request)
    {
        if (request is null)
        {
            // Without structured replies the stream is not self-describing: a success for an unknown cookie
            // may be followed by read data we cannot size, so the stream is lost.
            Expect(_header.Error != 0 || Export.StructuredReplies, $"a simple reply for unknown cookie {_header.Cookie:x}");
            return;
        }

        if (_header.Error != 0)
        {
            request.Complete(ServerError(request, _header.Error, null));
            return;
        }

        if (request.Command == NbdCommand.Read)
        {
            Expect(!Export.StructuredReplies, "a simple reply to READ after structured replies were negotiated");
            Begin(ReadPhase.SimpleData, request.Length);
            if (request.Length == 0)
            {
                request.Complete(null);
            }

            return;
        }

        request.Complete(request.Command == NbdCommand.BlockStatus
            ? new NbdProtocolException("The server answered BLOCK_STATUS with a simple reply and no status.")
            : null);
    }

    private void Begin(ReadPhase phase, long length)
    {
        _phase = phase;
        _remaining = length;
        _destination = 0;
    }

    private void EndOfData()
    {
        var phase = _phase;
        _phase = ReadPhase.Header;
        var request = _current;
        if (request is null || phase == ReadPhase.Skip)
        {
            return;
        }

        if (phase == ReadPhase.SimpleData)
        {
            request.Complete(null);
            return;
        }

        request.Covered += _header.PayloadLength - 8;
        if (_header.IsDone)
        {
            FinishReply(request);
        }
    }

    private void OnPayload(ReadOnlySequence<byte> payload)
    {
        var request = _current!;
        Span<byte> small = stackalloc byte[64];
        if (_phase == ReadPhase.DataOffset)
        {
            payload.CopyTo(small);
            var offset = BinaryPrimitives.ReadUInt64BigEndian(small);
            var dataLength = _header.PayloadLength - 8u;
            Expect(offset >= request.Offset && offset - request.Offset + dataLength <= request.Length, $"an OFFSET_DATA chunk at {offset} (+{dataLength}) outside the read of {request.Length} bytes at {request.Offset}");
            Begin(ReadPhase.ChunkData, dataLength);
            _destination = (long)(offset - request.Offset);
            if (dataLength == 0)
            {
                EndOfData();
            }

            return;
        }

        _phase = ReadPhase.Header;
        switch (_header.ChunkType)
        {
            case NbdChunkType.OffsetHole:
                payload.CopyTo(small);
                var offset = BinaryPrimitives.ReadUInt64BigEndian(small);
                var holeLength = BinaryPrimitives.ReadUInt32BigEndian(small[8..]);
                Expect(holeLength > 0 && offset >= request.Offset && offset - request.Offset + holeLength <= request.Length, $"an OFFSET_HOLE chunk at {offset} (+{holeLength}) outside the read of {request.Length} bytes at {request.Offset}");
                request.ZeroReadBuffer((long)(offset - request.Offset), (int)holeLength);
                request.Covered += holeLength;
                break;
            case NbdChunkType.BlockStatus:
                ParseBlockStatus(request, payload);
                break;
            default:
                ParseError(request, payload);
                break;
        }

        if (_header.IsDone)
        {
            FinishReply(request);
        }
    }

    private void ParseBlockStatus(NbdRequest request, ReadOnlySequence<byte> payload)
    {
        var reader = new SequenceReader<byte>(payload);
        reader.TryReadBigEndian(out int contextId);
        if (!_contextIds.TryGetValue(request.Context!, out var wanted) || (uint)contextId != wanted)
        {
            return; // a context we did not ask about in this request: ignore it
        }

        var at = request.Offset;
        var end = request.Offset + request.Length;
        var count = 0;
        while (reader.TryReadBigEndian(out int length) && reader.TryReadBigEndian(out int flags))
        {
            Expect(length != 0, "a zero-length block status extent");
            if (at >= end)
            {
                break; // extents past the request end are allowed only for the last one; ignore the rest
            }

            request.AddExtent(new NbdExtent((long)at, (uint)length, (uint)flags));
            at += (uint)length;
            count++;
        }

        request.Covered += count;
    }

    private void ParseError(NbdRequest request, ReadOnlySequence<byte> payload)
    {
        Span<byte> head = stackalloc byte[6];
        payload.Slice(0, 6).CopyTo(head);
        var error = BinaryPrimitives.ReadUInt32BigEndian(head);
        var messageLength = BinaryPrimitives.ReadUInt16BigEndian(head[4..]);
        var fixedTail = _header.ChunkType == NbdChunkType.ErrorOffset ? 8 : 0;
        string? message = null;
        if (6 + messageLength + fixedTail <= payload.Length)
        {
            var bytes = payload.Slice(6, messageLength).ToArray();
            message = NbdOptionCodec.DecodeMessage(bytes);
        }

        if (request.Error is null)
        {
            request.Error = error == 0
                ? new NbdProtocolException($"The server sent an error chunk with error number 0 for {NbdNames.Command(request.Command)}.")
                : ServerError(request, error, message);
        }
    }

    private void FinishReply(NbdRequest request)
    {
        _phase = ReadPhase.Header;
        var error = request.Error;
        if (error is null && request.Command == NbdCommand.Read && request.Covered != request.Length)
        {
            error = new NbdProtocolException($"The server's reply covered {request.Covered} of the {request.Length} bytes read.");
        }
        else if (error is null && request.Command == NbdCommand.BlockStatus && request.Covered == 0)
        {
            error = new NbdProtocolException("The server's block status reply had no extent for the requested context.");
        }

        request.Complete(error);
    }

    private NbdServerException ServerError(NbdRequest request, uint error, string? message)
    {
        var mapped = NbdNames.Error(error);
        Diagnostics.Log.CommandFailed(_owner.Logger, NbdNames.Command(request.Command), request.Offset, mapped);
        return new NbdServerException(NbdNames.Command(request.Command), mapped, message);
    }

    private static void Expect(bool condition, string what)
    {
        if (!condition)
        {
            throw Violation(what);
        }
    }

    /// <summary>Checks a rule; the interpolated message is only formatted when the rule is broken, never per reply.</summary>
    private static void Expect(bool condition, [InterpolatedStringHandlerArgument(nameof(condition))] ref ViolationMessage what)
    {
        if (!condition)
        {
            throw Violation(what.ToStringAndClear());
        }
    }

    private static NbdProtocolException Violation(string what) => new($"Protocol violation: the server sent {what}.");

    /// <summary>An interpolated-string handler that formats nothing while the checked condition holds.</summary>
    [InterpolatedStringHandler]
    private ref struct ViolationMessage
    {
        private DefaultInterpolatedStringHandler _inner;

        public ViolationMessage(int literalLength, int formattedCount, bool condition, out bool shouldAppend)
        {
            shouldAppend = !condition;
            _inner = shouldAppend ? new DefaultInterpolatedStringHandler(literalLength, formattedCount) : default;
        }

        public void AppendLiteral(string value) => _inner.AppendLiteral(value);

        public void AppendFormatted<T>(T value) => _inner.AppendFormatted(value);

        public void AppendFormatted<T>(T value, string? format) => _inner.AppendFormatted(value, format);

        public string ToStringAndClear() => _inner.ToStringAndClear();
    }
}
