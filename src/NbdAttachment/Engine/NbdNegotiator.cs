using System.Buffers.Binary;
using Microsoft.Extensions.Logging;
using NbdAttachment.Client;
using NbdAttachment.Diagnostics;
using NbdAttachment.Protocol;
using NbdAttachment.Transport;

namespace NbdAttachment.Engine;

/// <summary>
/// Drives the handshake and option haggling on a fresh stream: greeting, client flags, STARTTLS,
/// structured replies, meta contexts, then GO (falling back to EXPORT_NAME), INFO or LIST.
/// Options go strictly one at a time; every reply is framed and length-checked before use.
/// </summary>
internal sealed class NbdNegotiator
{
    private static readonly NbdInfoType[] GoInfos = [NbdInfoType.BlockSize, NbdInfoType.Name, NbdInfoType.Description];

    private readonly NbdUri _uri;
    private readonly NbdClientOptions _options;
    private readonly ILogger _logger;
    private readonly byte[] _small = new byte[NbdOptionReplyHeader.Size];
    private Stream _stream;
    private bool _fixedNewstyle;
    private bool _noZeroes;
    private bool _tls;
    private bool _structured;
    private Dictionary<string, uint> _contexts = new(StringComparer.Ordinal);

    public NbdNegotiator(Stream stream, NbdUri uri, NbdClientOptions options, ILogger logger)
    {
        _stream = stream;
        _uri = uri;
        _options = options;
        _logger = logger;
    }

    /// <summary>The stream to use after negotiation (a TLS stream when STARTTLS succeeded).</summary>
    public Stream Stream => _stream;

    /// <summary>Negotiates up to the transmission phase for the URL's export.</summary>
    /// <summary>The most meta contexts a LIST answer may name (a bound on a hostile server).</summary>
    private const int MaxListedContexts = 65536;

    public async ValueTask<NbdExportInfo> GoAsync(CancellationToken cancellationToken)
    {
        var oldstyle = await OpenAsync(cancellationToken).ConfigureAwait(false);
        if (oldstyle is not null)
        {
            return oldstyle;
        }

        if (!_fixedNewstyle)
        {
            return await ExportNameAsync(NbdHandshakeStyle.Newstyle, cancellationToken).ConfigureAwait(false);
        }

        await PrepareAsync(cancellationToken).ConfigureAwait(false);
        var details = new NbdExportDetails();
        var reply = await InfoOrGoAsync(NbdOption.Go, details, cancellationToken).ConfigureAwait(false);
        if (reply == NbdOptionReplyType.ErrUnsup)
        {
            Log.ExportNameFallback(_logger);
            return await ExportNameAsync(NbdHandshakeStyle.FixedNewstyle, cancellationToken).ConfigureAwait(false);
        }

        return Build(details, NbdHandshakeStyle.FixedNewstyle);
    }

    /// <summary>Asks for the export's details with <c>NBD_OPT_INFO</c>, then ends the session with <c>NBD_OPT_ABORT</c>.</summary>
    public async ValueTask<NbdExportInfo> InfoAsync(CancellationToken cancellationToken)
    {
        var oldstyle = await OpenAsync(cancellationToken).ConfigureAwait(false);
        if (oldstyle is not null)
        {
            return oldstyle;
        }

        RequireFixedNewstyle(NbdOption.Info);
        await PrepareAsync(cancellationToken).ConfigureAwait(false);
        var details = new NbdExportDetails();
        var reply = await InfoOrGoAsync(NbdOption.Info, details, cancellationToken).ConfigureAwait(false);
        if (reply == NbdOptionReplyType.ErrUnsup)
        {
            throw new NbdNegotiationException(NbdNegotiationError.Unsupported, NbdNames.Option(NbdOption.Info), "The server does not support NBD_OPT_INFO.");
        }

        var info = Build(details, NbdHandshakeStyle.FixedNewstyle);
        await AbortAsync(cancellationToken).ConfigureAwait(false);
        return info;
    }

    /// <summary>Lists the server's exports with <c>NBD_OPT_LIST</c>, then ends the session with <c>NBD_OPT_ABORT</c>.</summary>
    public async ValueTask<IReadOnlyList<NbdExportListing>> ListAsync(CancellationToken cancellationToken)
    {
        var oldstyle = await OpenAsync(cancellationToken).ConfigureAwait(false);
        if (oldstyle is not null)
        {
            throw new NbdNegotiationException(NbdNegotiationError.UnsupportedHandshake, null, "An oldstyle server cannot list exports.");
        }

        RequireFixedNewstyle(NbdOption.List);
        await StartTlsIfWantedAsync(cancellationToken).ConfigureAwait(false);
        await SendOptionAsync(NbdOption.List, default, cancellationToken).ConfigureAwait(false);
        var exports = new List<NbdExportListing>();
        await ReadListAsync(NbdOption.List, NbdOptionReplyType.Server, payload =>
        {
            var (name, description) = NbdOptionCodec.ParseServer(payload);
            exports.Add(new NbdExportListing(name, description));
        }, cancellationToken).ConfigureAwait(false);
        return exports;
    }

    /// <summary>
    /// Lists the meta contexts the server offers for the URL's export (<c>NBD_OPT_LIST_META_CONTEXT</c>), for
    /// <paramref name="queries"/> (none: every context), then ends the session with <c>NBD_OPT_ABORT</c>.
    /// Structured replies are negotiated first, since servers may answer only after them.
    /// </summary>
    public async ValueTask<IReadOnlyList<string>> ListMetaContextsAsync(IReadOnlyList<string> queries, CancellationToken cancellationToken)
    {
        var oldstyle = await OpenAsync(cancellationToken).ConfigureAwait(false);
        if (oldstyle is not null)
        {
            throw new NbdNegotiationException(NbdNegotiationError.UnsupportedHandshake, null, "An oldstyle server cannot list meta contexts.");
        }

        RequireFixedNewstyle(NbdOption.ListMetaContext);
        await StartTlsIfWantedAsync(cancellationToken).ConfigureAwait(false);
        _ = await SimpleOptionAsync(NbdOption.StructuredReply, cancellationToken).ConfigureAwait(false);
        await SendOptionAsync(NbdOption.ListMetaContext, NbdOptionCodec.BuildMetaContextData(_uri.ExportName, queries), cancellationToken).ConfigureAwait(false);
        var names = new List<string>();
        var seen = new HashSet<string>(StringComparer.Ordinal);
        await ReadListAsync(NbdOption.ListMetaContext, NbdOptionReplyType.MetaContext, payload =>
        {
            var (_, name) = NbdOptionCodec.ParseMetaContext(payload);
            if (seen.Add(name))
            {
                names.Add(name);
            }

            if (names.Count > MaxListedContexts)
            {
                throw new NbdProtocolException($"The server listed more than {MaxListedContexts} meta contexts.");
            }
        }, cancellationToken).ConfigureAwait(false);
        return names;
    }

    /// <summary>Reads the replies of a listing option up to ACK, handing each <paramref name="itemType"/> payload to <paramref name="onItem"/>; then aborts the session.</summary>
    private async ValueTask ReadListAsync(NbdOption option, NbdOptionReplyType itemType, Action<byte[]> onItem, CancellationToken cancellationToken)
    {
        while (true)
        {
            var (header, payload) = await ReadReplyAsync(option, cancellationToken).ConfigureAwait(false);
            if (header.Type == itemType)
            {
                onItem(payload);
            }
            else if (header.Type == NbdOptionReplyType.Ack)
            {
                break;
            }
            else
            {
                ThrowIfError(header, payload);
                throw Unexpected(header);
            }
        }

        await AbortAsync(cancellationToken).ConfigureAwait(false);
    }

    /// <summary>Reads the greeting and sends client flags. Returns the export info for an oldstyle server, else null.</summary>
    private async ValueTask<NbdExportInfo?> OpenAsync(CancellationToken cancellationToken)
    {
        var greeting = new byte[NbdOptionCodec.GreetingSize];
        await ReadExactAsync(greeting, "greeting", cancellationToken).ConfigureAwait(false);
        var magic = BinaryPrimitives.ReadUInt64BigEndian(greeting);
        var style = BinaryPrimitives.ReadUInt64BigEndian(greeting.AsSpan(8));
        if (magic != NbdMagic.InitPassword)
        {
            throw new NbdNegotiationException(NbdNegotiationError.NotAnNbdServer, null, $"The peer is not an NBD server: greeting magic 0x{magic:x16}.");
        }

        if (style == NbdMagic.OldstyleMagic)
        {
            return await OldstyleAsync(cancellationToken).ConfigureAwait(false);
        }

        if (style != NbdMagic.IHaveOpt)
        {
            throw new NbdNegotiationException(NbdNegotiationError.NotAnNbdServer, null, $"The peer is not an NBD server: handshake magic 0x{style:x16}.");
        }

        await ReadExactAsync(_small.AsMemory(0, 2), "handshake flags", cancellationToken).ConfigureAwait(false);
        var serverFlags = (NbdHandshakeFlags)BinaryPrimitives.ReadUInt16BigEndian(_small);
        var clientFlags = serverFlags & (NbdHandshakeFlags.FixedNewstyle | NbdHandshakeFlags.NoZeroes);
        _fixedNewstyle = (clientFlags & NbdHandshakeFlags.FixedNewstyle) != 0;
        _noZeroes = (clientFlags & NbdHandshakeFlags.NoZeroes) != 0;
        BinaryPrimitives.WriteUInt32BigEndian(_small, (uint)clientFlags);
        await WriteAsync(_small.AsMemory(0, 4), cancellationToken).ConfigureAwait(false);
        Log.Greeting(_logger, _fixedNewstyle, _noZeroes);
        if (!_fixedNewstyle && WantsTls(out _))
        {
            throw new NbdNegotiationException(
                NbdNegotiationError.TlsFailed,
                null,
                "TLS is required but the server does not speak fixed newstyle, so it cannot start TLS.");
        }

        return null;
    }

    private async ValueTask<NbdExportInfo> OldstyleAsync(CancellationToken cancellationToken)
    {
        if (WantsTls(out _))
        {
            throw new NbdNegotiationException(NbdNegotiationError.TlsFailed, null, "TLS is required but the server speaks the oldstyle handshake, which has no TLS.");
        }

        if (_uri.ExportName.Length != 0)
        {
            throw new NbdNegotiationException(
                NbdNegotiationError.UnsupportedHandshake,
                null,
                $"The server speaks the oldstyle handshake, which has no export names, but export '{_uri.ExportName}' was asked for.");
        }

        var rest = new byte[NbdOptionCodec.OldstyleRestSize];
        await ReadExactAsync(rest, "oldstyle greeting", cancellationToken).ConfigureAwait(false);
        var flags = BinaryPrimitives.ReadUInt32BigEndian(rest.AsSpan(8));
        if ((flags >> 16) != 0)
        {
            throw new NbdProtocolException($"The oldstyle server set handshake flags 0x{flags >> 16:x4}, which must be zero.");
        }

        var details = new NbdExportDetails();
        details.SetExport(BinaryPrimitives.ReadUInt64BigEndian(rest), (ushort)flags);
        return Build(details, NbdHandshakeStyle.Oldstyle);
    }

    private void RequireFixedNewstyle(NbdOption option)
    {
        if (!_fixedNewstyle)
        {
            throw new NbdNegotiationException(
                NbdNegotiationError.UnsupportedHandshake,
                NbdNames.Option(option),
                "The server does not speak fixed newstyle, so it only accepts NBD_OPT_EXPORT_NAME.");
        }
    }

    /// <summary>STARTTLS when wanted, then structured replies and meta contexts (after TLS, as the spec asks).</summary>
    private async ValueTask PrepareAsync(CancellationToken cancellationToken)
    {
        await StartTlsIfWantedAsync(cancellationToken).ConfigureAwait(false);
        if (_options.RequestStructuredReplies)
        {
            var (header, payload) = await SimpleOptionAsync(NbdOption.StructuredReply, cancellationToken).ConfigureAwait(false);
            _structured = header.Type == NbdOptionReplyType.Ack;
            if (!_structured)
            {
                Log.OptionRefused(_logger, NbdNames.Option(NbdOption.StructuredReply), header.Type.ToString(), NbdOptionCodec.DecodeMessage(payload));
            }
        }

        if (_structured && _options.MetaContexts.Count > 0)
        {
            await SetMetaContextsAsync(cancellationToken).ConfigureAwait(false);
        }
    }

    private bool WantsTls(out bool required)
    {
        required = _uri.RequiresTls;
        return required || _options.Tls.Opportunistic;
    }

    private async ValueTask StartTlsIfWantedAsync(CancellationToken cancellationToken)
    {
        if (!WantsTls(out var required))
        {
            return;
        }

        var (header, payload) = await SimpleOptionAsync(NbdOption.StartTls, cancellationToken).ConfigureAwait(false);
        if (header.Type != NbdOptionReplyType.Ack)
        {
            var message = NbdOptionCodec.DecodeMessage(payload);
            if (required)
            {
                await AbortAsync(cancellationToken).ConfigureAwait(false);
                throw new NbdNegotiationException(
                    NbdNegotiationError.TlsFailed,
                    NbdNames.Option(NbdOption.StartTls),
                    $"TLS is required by the {_uri.Scheme}:// URL but the server refused STARTTLS ({header.Type}).",
                    message);
            }

            Log.OptionRefused(_logger, NbdNames.Option(NbdOption.StartTls), header.Type.ToString(), message);
            return;
        }

        _stream = await NbdTlsUpgrade.AuthenticateAsync(_stream, _uri, _options.Tls, cancellationToken).ConfigureAwait(false);
        _tls = true;
        Log.TlsStarted(_logger);
    }

    private async ValueTask SetMetaContextsAsync(CancellationToken cancellationToken)
    {
        var data = NbdOptionCodec.BuildMetaContextData(_uri.ExportName, _options.MetaContexts);
        await SendOptionAsync(NbdOption.SetMetaContext, data, cancellationToken).ConfigureAwait(false);
        var granted = new Dictionary<string, uint>(StringComparer.Ordinal);
        while (true)
        {
            var (header, payload) = await ReadReplyAsync(NbdOption.SetMetaContext, cancellationToken).ConfigureAwait(false);
            if (header.Type == NbdOptionReplyType.MetaContext)
            {
                var (id, name) = NbdOptionCodec.ParseMetaContext(payload);
                if (!granted.TryAdd(name, id) || granted.Count > _options.MetaContexts.Count * 64)
                {
                    throw new NbdProtocolException($"The server granted meta context '{name}' twice or granted too many contexts.");
                }
            }
            else if (header.Type == NbdOptionReplyType.Ack)
            {
                _contexts = granted;
                return;
            }
            else if (header.IsError)
            {
                // A failed SET selects nothing; block status is then unavailable, which is not fatal.
                Log.OptionRefused(_logger, NbdNames.Option(NbdOption.SetMetaContext), header.Type.ToString(), NbdOptionCodec.DecodeMessage(payload));
                _contexts = new(StringComparer.Ordinal);
                return;
            }
            else
            {
                throw Unexpected(header);
            }
        }
    }

    /// <summary>Sends INFO or GO and reads INFO replies up to ACK. Returns ACK, or ErrUnsup for the fallback; throws on other errors.</summary>
    private async ValueTask<NbdOptionReplyType> InfoOrGoAsync(NbdOption option, NbdExportDetails details, CancellationToken cancellationToken)
    {
        await SendOptionAsync(option, NbdOptionCodec.BuildGoData(_uri.ExportName, GoInfos), cancellationToken).ConfigureAwait(false);
        while (true)
        {
            var (header, payload) = await ReadReplyAsync(option, cancellationToken).ConfigureAwait(false);
            switch (header.Type)
            {
                case NbdOptionReplyType.Info:
                    details.ApplyInfo(payload);
                    continue;
                case NbdOptionReplyType.Ack:
                    if (!details.HasExport)
                    {
                        throw new NbdProtocolException($"The server acknowledged {NbdNames.Option(option)} without sending NBD_INFO_EXPORT.");
                    }

                    return NbdOptionReplyType.Ack;
                case NbdOptionReplyType.ErrUnsup when option == NbdOption.Go:
                    return NbdOptionReplyType.ErrUnsup;
                default:
                    if (header.IsError)
                    {
                        await AbortAsync(cancellationToken).ConfigureAwait(false);
                    }

                    ThrowIfError(header, payload);
                    throw Unexpected(header);
            }
        }
    }

    private async ValueTask<NbdExportInfo> ExportNameAsync(NbdHandshakeStyle style, CancellationToken cancellationToken)
    {
        await SendOptionAsync(NbdOption.ExportName, System.Text.Encoding.UTF8.GetBytes(_uri.ExportName), cancellationToken).ConfigureAwait(false);
        var reply = new byte[_noZeroes ? NbdOptionCodec.ExportNameReplyShort : NbdOptionCodec.ExportNameReplyLong];
        try
        {
            await ReadExactAsync(reply, "NBD_OPT_EXPORT_NAME reply", cancellationToken).ConfigureAwait(false);
        }
        catch (NbdConnectionException ex)
        {
            throw new NbdNegotiationException(
                NbdNegotiationError.ExportRefused,
                NbdNames.Option(NbdOption.ExportName),
                $"The server closed the connection in answer to export '{_uri.ExportName}': the export probably does not exist.",
                innerException: ex);
        }

        var details = new NbdExportDetails();
        details.SetExport(BinaryPrimitives.ReadUInt64BigEndian(reply), BinaryPrimitives.ReadUInt16BigEndian(reply.AsSpan(8)));
        return Build(details, style);
    }

    private NbdExportInfo Build(NbdExportDetails details, NbdHandshakeStyle style)
    {
        var flags = (NbdTransmissionFlags)details.Flags;
        if ((flags & NbdTransmissionFlags.HasFlags) == 0)
        {
            throw new NbdNegotiationException(
                NbdNegotiationError.UnusableExport,
                null,
                $"The server sent transmission flags 0x{details.Flags:x4} without NBD_FLAG_HAS_FLAGS.");
        }

        if (details.Size > long.MaxValue)
        {
            throw new NbdProtocolException($"The server reported an export size of {details.Size} bytes, beyond 2^63.");
        }

        if (!_structured)
        {
            flags &= ~NbdTransmissionFlags.SendDontFragment;
        }

        if ((flags & NbdTransmissionFlags.SendWriteZeroes) == 0)
        {
            flags &= ~NbdTransmissionFlags.SendFastZero;
        }

        flags &= ~NbdTransmissionFlags.BlockStatusPayload; // extended headers only

        uint min = NbdLimits.DefaultMinimumBlock, preferred = NbdLimits.DefaultPreferredBlock, max = NbdLimits.DefaultMaxPayload;
        var advertised = false;
        if (details.HasBlockSize)
        {
            var problem = details.ValidateBlockSizes();
            if (problem is null)
            {
                advertised = true;
                min = details.MinimumBlock;
                preferred = details.PreferredBlock;
                max = Math.Min(details.MaximumPayload, NbdLimits.HardMaxPayload);
                max -= max % min;
            }
            else
            {
                Log.InvalidBlockSizes(_logger, problem);
            }
        }

        var info = new NbdExportInfo(
            _uri.ExportName,
            details.CanonicalName,
            details.Description,
            (long)details.Size,
            flags,
            min,
            preferred,
            max,
            advertised,
            _structured,
            _contexts,
            style,
            _tls);
        Log.Negotiated(_logger, info.ExportName, info.Size, info.Flags.ToString(), info.StructuredReplies, info.MetaContexts.Count, info.IsTlsActive);
        return info;
    }

    private async ValueTask<(NbdOptionReplyHeader Header, byte[] Payload)> SimpleOptionAsync(NbdOption option, CancellationToken cancellationToken)
    {
        await SendOptionAsync(option, default, cancellationToken).ConfigureAwait(false);
        var (header, payload) = await ReadReplyAsync(option, cancellationToken).ConfigureAwait(false);
        if (header.Type == NbdOptionReplyType.Ack || header.IsError)
        {
            return (header, payload);
        }

        throw Unexpected(header);
    }

    /// <summary>Soft disconnect: send ABORT and do not wait for the reply (servers may not send one).</summary>
    private async ValueTask AbortAsync(CancellationToken cancellationToken)
    {
        try
        {
            await SendOptionAsync(NbdOption.Abort, default, cancellationToken).ConfigureAwait(false);
        }
        catch (NbdConnectionException)
        {
            // The server may already be gone; the caller reports the real error.
        }
    }

    private ValueTask SendOptionAsync(NbdOption option, ReadOnlyMemory<byte> data, CancellationToken cancellationToken) =>
        WriteAsync(NbdOptionCodec.BuildOption(option, data.Span), cancellationToken);

    private async ValueTask<(NbdOptionReplyHeader Header, byte[] Payload)> ReadReplyAsync(NbdOption option, CancellationToken cancellationToken)
    {
        await ReadExactAsync(_small, "option reply", cancellationToken).ConfigureAwait(false);
        var header = NbdOptionReplyHeader.ReadFrom(_small);
        if (header.Option != option)
        {
            throw new NbdProtocolException($"The server answered {NbdNames.Option(header.Option)} while {NbdNames.Option(option)} was pending.");
        }

        if (header.Length > NbdLimits.MaxOptionReply)
        {
            throw new NbdProtocolException($"The server sent a {header.Length}-byte reply to {NbdNames.Option(option)}; the limit is {NbdLimits.MaxOptionReply}.");
        }

        if (header.Type == NbdOptionReplyType.Ack && header.Length != 0)
        {
            throw new NbdProtocolException($"The server sent an ACK to {NbdNames.Option(option)} with {header.Length} bytes of data; it must have none.");
        }

        var payload = header.Length == 0 ? [] : new byte[header.Length];
        await ReadExactAsync(payload, "option reply data", cancellationToken).ConfigureAwait(false);
        return (header, payload);
    }

    private static void ThrowIfError(NbdOptionReplyHeader header, byte[] payload)
    {
        if (!header.IsError)
        {
            return;
        }

        var error = NbdNames.NegotiationError(header.Type);
        var option = NbdNames.Option(header.Option);
        var message = error switch
        {
            NbdNegotiationError.UnknownExport => "The server has no such export.",
            NbdNegotiationError.TlsRequired => "The server requires TLS for this export; use an nbds:// URL.",
            NbdNegotiationError.Shutdown => "The server is shutting down.",
            NbdNegotiationError.Policy => "The server refused the request by policy.",
            _ => $"The server refused {option} with {error} (0x{(uint)header.Type:x8}).",
        };
        throw new NbdNegotiationException(error, option, message, payload.Length == 0 ? null : NbdOptionCodec.DecodeMessage(payload));
    }

    private static NbdProtocolException Unexpected(NbdOptionReplyHeader header) =>
        new($"Unexpected reply type 0x{(uint)header.Type:x8} to {NbdNames.Option(header.Option)}.");

    private async ValueTask ReadExactAsync(Memory<byte> buffer, string what, CancellationToken cancellationToken)
    {
        try
        {
            await _stream.ReadExactlyAsync(buffer, cancellationToken).ConfigureAwait(false);
        }
        catch (EndOfStreamException ex)
        {
            throw new NbdConnectionException($"The server closed the connection during negotiation (while reading the {what}).", ex);
        }
        catch (IOException ex)
        {
            throw new NbdConnectionException($"The connection failed during negotiation (while reading the {what}): {ex.Message}", ex);
        }
    }

    private async ValueTask WriteAsync(ReadOnlyMemory<byte> buffer, CancellationToken cancellationToken)
    {
        try
        {
            await _stream.WriteAsync(buffer, cancellationToken).ConfigureAwait(false);
            await _stream.FlushAsync(cancellationToken).ConfigureAwait(false);
        }
        catch (IOException ex)
        {
            throw new NbdConnectionException($"The connection failed during negotiation: {ex.Message}", ex);
        }
    }
}
