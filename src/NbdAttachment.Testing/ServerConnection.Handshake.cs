using System.Buffers.Binary;
using System.Text;

namespace NbdAttachment.Testing;

/// <summary>Handshake phase: greeting and option haggling.</summary>
internal sealed partial class ServerConnection
{
    /// <summary>Largest option payload accepted; bigger ones get NBD_REP_ERR_TOO_BIG.</summary>
    private const int MaxOptionData = 64 * 1024;

    /// <summary>Bigger option payloads are not even drained: the connection is dropped.</summary>
    private const int MaxDrainedOptionData = 16 * 1024 * 1024;

    private bool _fixedNewstyle;
    private bool _noZeroes;
    private bool _structuredReplies;
    private string? _metaContextExport;
    private uint? _metaContextId;
    private uint _allocationContextId;

    private async Task<NbdTestExport?> OldstyleAsync(CancellationToken token)
    {
        NbdTestExport export = _server.Exports[0];
        await _stream.WriteAsync(ServerWire.OldstyleGreeting(export.Size, export.GetTransmissionFlags(false)), token).ConfigureAwait(false);
        return export;
    }

    private async Task<NbdTestExport?> HandshakeAsync(CancellationToken token)
    {
        _allocationContextId = (uint)NextRandom(1 << 20) + 1;
        ushort handshakeFlags = (ushort)((Options.FixedNewstyle ? ServerWire.FlagFixedNewstyle : 0)
            | (Options.AdvertiseNoZeroes ? ServerWire.FlagNoZeroes : 0));
        await _stream.WriteAsync(ServerWire.NewstyleGreeting(handshakeFlags), token).ConfigureAwait(false);

        uint clientFlags = await ReadUInt32Async(token).ConfigureAwait(false);
        if ((clientFlags & ~(uint)handshakeFlags) != 0)
        {
            throw new InvalidDataException($"Client flags 0x{clientFlags:x8} include bits the server did not advertise (0x{handshakeFlags:x4}).");
        }

        _fixedNewstyle = (clientFlags & ServerWire.ClientFlagFixedNewstyle) != 0;
        _noZeroes = (clientFlags & ServerWire.ClientFlagNoZeroes) != 0;

        while (true)
        {
            byte[] header = await ReadBytesAsync(16, token).ConfigureAwait(false);
            ulong magic = BinaryPrimitives.ReadUInt64BigEndian(header);
            if (magic != ServerWire.IHaveOpt)
            {
                throw new InvalidDataException($"Bad option magic 0x{magic:x16}.");
            }

            uint option = BinaryPrimitives.ReadUInt32BigEndian(header.AsSpan(8));
            uint length = BinaryPrimitives.ReadUInt32BigEndian(header.AsSpan(12));
            Statistics.OptionReceived(option);
            if (!_fixedNewstyle && option != ServerWire.OptExportName)
            {
                throw new InvalidDataException($"Option {option} sent to a non-fixed newstyle session; only NBD_OPT_EXPORT_NAME is allowed.");
            }

            if (length > MaxOptionData)
            {
                if (!_fixedNewstyle || length > MaxDrainedOptionData)
                {
                    throw new InvalidDataException($"Option {option} carries {length} bytes of data; refusing.");
                }

                await DiscardAsync(length, token).ConfigureAwait(false);
                await SendOptionErrorAsync(option, ServerWire.RepErrTooBig, $"option data of {length} bytes exceeds {MaxOptionData}", token).ConfigureAwait(false);
                continue;
            }

            byte[] data = await ReadBytesAsync((int)length, token).ConfigureAwait(false);
            switch (option)
            {
                case ServerWire.OptExportName:
                    return await ExportNameAsync(data, token).ConfigureAwait(false);

                case ServerWire.OptAbort:
                    await SendOptionAsync(ServerWire.OptionReply(option, ServerWire.RepAck, []), token).ConfigureAwait(false);
                    return null;

                case ServerWire.OptList:
                    await ListAsync(data, token).ConfigureAwait(false);
                    break;

                case ServerWire.OptStartTls:
                    await (data.Length != 0
                        ? SendOptionErrorAsync(option, ServerWire.RepErrInvalid, "NBD_OPT_STARTTLS takes no data", token)
                        : SendOptionErrorAsync(option, ServerWire.RepErrPolicy, "TLS is not available on this test server", token)).ConfigureAwait(false);
                    break;

                case ServerWire.OptInfo:
                case ServerWire.OptGo:
                    NbdTestExport? chosen = await InfoOrGoAsync(option, data, token).ConfigureAwait(false);
                    if (chosen is not null && option == ServerWire.OptGo)
                    {
                        return chosen;
                    }

                    break;

                case ServerWire.OptStructuredReply:
                    await StructuredReplyAsync(data, token).ConfigureAwait(false);
                    break;

                case ServerWire.OptListMetaContext:
                case ServerWire.OptSetMetaContext:
                    await MetaContextAsync(option, data, token).ConfigureAwait(false);
                    break;

                default:
                    await SendOptionErrorAsync(option, ServerWire.RepErrUnsup, $"option {option} is not supported", token).ConfigureAwait(false);
                    break;
            }
        }
    }

    private async Task<NbdTestExport?> ExportNameAsync(byte[] data, CancellationToken token)
    {
        if (!TryDecode(data, out string name))
        {
            throw new InvalidDataException("NBD_OPT_EXPORT_NAME carries an invalid export name.");
        }

        NbdTestExport? export = _server.FindExport(name);
        if (export is null)
        {
            // EXPORT_NAME cannot report errors: the only answer is to close.
            return null;
        }

        ushort flags = export.GetTransmissionFlags(_structuredReplies);
        await SendOptionAsync(ServerWire.ExportNameReply(export.Size, flags, _noZeroes), token).ConfigureAwait(false);
        return export;
    }

    private async Task ListAsync(byte[] data, CancellationToken token)
    {
        const uint option = ServerWire.OptList;
        if (data.Length != 0)
        {
            await SendOptionErrorAsync(option, ServerWire.RepErrInvalid, "NBD_OPT_LIST takes no data", token).ConfigureAwait(false);
            return;
        }

        if (!Options.SupportList)
        {
            await SendOptionErrorAsync(option, ServerWire.RepErrPolicy, "listing exports is disabled", token).ConfigureAwait(false);
            return;
        }

        foreach (NbdTestExport export in _server.Exports)
        {
            await SendOptionAsync(ServerWire.ServerReply(export.Name, export.Options.Description), token).ConfigureAwait(false);
        }

        await SendOptionAsync(ServerWire.OptionReply(option, ServerWire.RepAck, []), token).ConfigureAwait(false);
    }

    private async Task StructuredReplyAsync(byte[] data, CancellationToken token)
    {
        const uint option = ServerWire.OptStructuredReply;
        if (data.Length != 0)
        {
            await SendOptionErrorAsync(option, ServerWire.RepErrInvalid, "NBD_OPT_STRUCTURED_REPLY takes no data", token).ConfigureAwait(false);
        }
        else if (!Options.SupportStructuredReplies)
        {
            await SendOptionErrorAsync(option, ServerWire.RepErrUnsup, "structured replies are disabled", token).ConfigureAwait(false);
        }
        else if (_structuredReplies)
        {
            await SendOptionErrorAsync(option, ServerWire.RepErrInvalid, "structured replies are already negotiated", token).ConfigureAwait(false);
        }
        else
        {
            _structuredReplies = true;
            await SendOptionAsync(ServerWire.OptionReply(option, ServerWire.RepAck, []), token).ConfigureAwait(false);
        }
    }

    /// <summary>Handles INFO and GO; returns the export after a successful ACK.</summary>
    private async Task<NbdTestExport?> InfoOrGoAsync(uint option, byte[] data, CancellationToken token)
    {
        if (!Options.SupportGo)
        {
            await SendOptionErrorAsync(option, ServerWire.RepErrUnsup, "NBD_OPT_INFO and NBD_OPT_GO are disabled", token).ConfigureAwait(false);
            return null;
        }

        if (!TryParseInfoRequest(data, out string name, out List<ushort> requests, out string problem))
        {
            await SendOptionErrorAsync(option, ServerWire.RepErrInvalid, problem, token).ConfigureAwait(false);
            return null;
        }

        NbdTestExport? export = _server.FindExport(name);
        if (export is null)
        {
            await SendOptionErrorAsync(option, ServerWire.RepErrUnknown, $"export '{name}' does not exist", token).ConfigureAwait(false);
            return null;
        }

        NbdTestExportOptions o = export.Options;
        bool blockSizeRequested = requests.Contains(ServerWire.InfoBlockSize);
        byte[] blockSizeInfo = ServerWire.InfoBlockSizeReply(option, o.MinimumBlockSize, o.PreferredBlockSize, o.MaximumBlockSize);
        if (option == ServerWire.OptGo && Options.RequireBlockSizeInfo && !blockSizeRequested)
        {
            await SendOptionAsync(blockSizeInfo, token).ConfigureAwait(false);
            await SendOptionErrorAsync(option, ServerWire.RepErrBlockSizeReqd, "this server requires NBD_INFO_BLOCK_SIZE", token).ConfigureAwait(false);
            return null;
        }

        await SendOptionAsync(ServerWire.InfoExportReply(option, export.Size, export.GetTransmissionFlags(_structuredReplies)), token).ConfigureAwait(false);
        if (requests.Contains(ServerWire.InfoName))
        {
            await SendOptionAsync(ServerWire.InfoStringReply(option, ServerWire.InfoName, export.Name), token).ConfigureAwait(false);
        }

        if (requests.Contains(ServerWire.InfoDescription) && o.Description is not null)
        {
            await SendOptionAsync(ServerWire.InfoStringReply(option, ServerWire.InfoDescription, o.Description), token).ConfigureAwait(false);
        }

        if ((blockSizeRequested && o.AdvertiseBlockSize) || Options.RequireBlockSizeInfo)
        {
            await SendOptionAsync(blockSizeInfo, token).ConfigureAwait(false);
        }

        await SendOptionAsync(ServerWire.OptionReply(option, ServerWire.RepAck, []), token).ConfigureAwait(false);
        return export;
    }

    private static bool TryParseInfoRequest(byte[] data, out string name, out List<ushort> requests, out string problem)
    {
        name = string.Empty;
        requests = [];
        problem = string.Empty;
        if (data.Length < 6)
        {
            problem = "INFO/GO data shorter than 6 bytes";
            return false;
        }

        uint nameLength = BinaryPrimitives.ReadUInt32BigEndian(data);
        if (nameLength > data.Length - 6)
        {
            problem = "export name length runs past the option data";
            return false;
        }

        int count = BinaryPrimitives.ReadUInt16BigEndian(data.AsSpan(4 + (int)nameLength));
        if (data.Length != 4 + (int)nameLength + 2 + (2 * count))
        {
            problem = "option length does not match the number of information requests";
            return false;
        }

        if (!TryDecode(data.AsSpan(4, (int)nameLength), out name))
        {
            problem = "export name is not valid UTF-8 (or contains NUL)";
            return false;
        }

        for (int i = 0; i < count; i++)
        {
            ushort type = BinaryPrimitives.ReadUInt16BigEndian(data.AsSpan(6 + (int)nameLength + (2 * i)));
            if (requests.Contains(type))
            {
                problem = $"information request {type} appears twice";
                return false;
            }

            requests.Add(type);
        }

        return true;
    }

    private async Task MetaContextAsync(uint option, byte[] data, CancellationToken token)
    {
        bool set = option == ServerWire.OptSetMetaContext;
        if (set)
        {
            // SET replaces the selection even when it fails.
            _metaContextExport = null;
            _metaContextId = null;
        }

        if (!Options.SupportMetaContexts)
        {
            await SendOptionErrorAsync(option, ServerWire.RepErrUnsup, "metadata contexts are disabled", token).ConfigureAwait(false);
            return;
        }

        if (set && !_structuredReplies)
        {
            await SendOptionErrorAsync(option, ServerWire.RepErrInvalid, "NBD_OPT_SET_META_CONTEXT requires structured replies", token).ConfigureAwait(false);
            return;
        }

        if (!TryParseMetaRequest(data, out string exportName, out List<string> queries, out string problem))
        {
            await SendOptionErrorAsync(option, ServerWire.RepErrInvalid, problem, token).ConfigureAwait(false);
            return;
        }

        if (_server.FindExport(exportName) is null)
        {
            await SendOptionErrorAsync(option, ServerWire.RepErrUnknown, $"export '{exportName}' does not exist", token).ConfigureAwait(false);
            return;
        }

        bool matched = set
            ? queries.Contains(ServerWire.BaseAllocation)
            : queries.Count == 0 || queries.Any(q => q is "base:" or ServerWire.BaseAllocation);
        if (matched)
        {
            uint id = set ? _allocationContextId : 0;
            await SendOptionAsync(ServerWire.MetaContextReply(option, id, ServerWire.BaseAllocation), token).ConfigureAwait(false);
            if (set)
            {
                _metaContextExport = exportName;
                _metaContextId = id;
            }
        }

        await SendOptionAsync(ServerWire.OptionReply(option, ServerWire.RepAck, []), token).ConfigureAwait(false);
    }

    private static bool TryParseMetaRequest(byte[] data, out string exportName, out List<string> queries, out string problem)
    {
        exportName = string.Empty;
        queries = [];
        problem = "malformed metadata context request";
        if (data.Length < 8)
        {
            return false;
        }

        uint nameLength = BinaryPrimitives.ReadUInt32BigEndian(data);
        if (nameLength > data.Length - 8 || !TryDecode(data.AsSpan(4, (int)nameLength), out exportName))
        {
            return false;
        }

        int position = 4 + (int)nameLength;
        uint count = BinaryPrimitives.ReadUInt32BigEndian(data.AsSpan(position));
        position += 4;
        for (uint i = 0; i < count; i++)
        {
            if (data.Length - position < 4)
            {
                return false;
            }

            uint length = BinaryPrimitives.ReadUInt32BigEndian(data.AsSpan(position));
            position += 4;
            if (length > data.Length - position || !TryDecode(data.AsSpan(position, (int)length), out string query))
            {
                return false;
            }

            if (query.IndexOf(':', StringComparison.Ordinal) <= 0)
            {
                problem = $"query '{query}' does not start with a namespace and a colon";
                return false;
            }

            queries.Add(query);
            position += (int)length;
        }

        return position == data.Length;
    }

    private static bool TryDecode(ReadOnlySpan<byte> bytes, out string text)
    {
        text = string.Empty;
        if (bytes.Length > ServerWire.MaxStringLength)
        {
            return false;
        }

        try
        {
            text = ServerWire.StrictUtf8.GetString(bytes);
        }
        catch (DecoderFallbackException)
        {
            return false;
        }

        return !text.Contains('\0', StringComparison.Ordinal);
    }

    private Task SendOptionErrorAsync(uint option, uint error, string message, CancellationToken token) =>
        SendOptionAsync(ServerWire.OptionError(option, error, message), token);

    private async Task SendOptionAsync(byte[] bytes, CancellationToken token)
    {
        if (Faults.TakeOptionReplyCorruption() is { } transform)
        {
            bytes = transform(bytes);
        }

        await _stream.WriteAsync(bytes, token).ConfigureAwait(false);
    }
}
