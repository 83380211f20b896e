using System.CommandLine;
using System.Globalization;
using System.Text.Json;
using System.Text.Json.Nodes;
using NbdAttachment.Client;

namespace NbdAttachment.Tools.Commands;

/// <summary><c>nbd info URL [--json] [--list] [--map] [--context NAME]</c>: describe an export, list exports, print an extent map.</summary>
internal static class InfoCommand
{
    public const string AllocationContext = "base:allocation";

    // Relaxed escaping keeps URLs readable ("nbd+unix:", not "nbd\u002Bunix:"); the output is not embedded in HTML.
    private static readonly JsonSerializerOptions Indented = new() { WriteIndented = true, Encoder = System.Text.Encodings.Web.JavaScriptEncoder.UnsafeRelaxedJsonEscaping };

    public static Command Create(ToolContext context)
    {
        var url = new Argument<string>("URL") { Description = "The export: nbd://host[:port]/export, nbds://..., nbd+unix:///export?socket=PATH." };
        var json = new Option<bool>("--json") { Description = "Machine-readable output (the shape is documented in docs/tools.md)." };
        var list = new Option<bool>("--list") { Description = "List the server's exports instead of describing one." };
        var map = new Option<bool>("--map") { Description = "Print the extent map (offset, length, type, description per line)." };
        var contexts = new Option<bool>("--contexts") { Description = "List every meta context the server offers for the export (NBD_OPT_LIST_META_CONTEXT)." };
        var metaContext = new Option<string>("--context")
        {
            Description = "The meta context of --map (default base:allocation, e.g. qemu:dirty-bitmap:NAME).",
            DefaultValueFactory = _ => AllocationContext,
        };
        var command = new Command("info", "Describe an NBD export: size, flags, block sizes, handshake, TLS, meta contexts.")
        {
            url, json, list, map, metaContext, contexts,
        };
        command.SetAction((parse, cancellationToken) => RunAsync(
            context,
            parse.GetRequiredValue(url),
            parse.GetValue(json),
            parse.GetValue(list),
            parse.GetValue(contexts),
            parse.GetValue(map),
            parse.GetValue(metaContext) ?? AllocationContext,
            cancellationToken));
        return command;
    }

    private static async Task<int> RunAsync(ToolContext context, string url, bool json, bool list, bool contexts, bool map, string metaContext, CancellationToken cancellationToken)
    {
        var uri = NbdUrls.Parse(url);
        var options = NbdUrls.OneShotOptions(metaContext == AllocationContext ? [AllocationContext] : [AllocationContext, metaContext]);
        var output = context.Output;
        if (list)
        {
            await ListAsync(output, uri, options, json, cancellationToken).ConfigureAwait(false);
            return ExitCodes.Success;
        }

        if (contexts)
        {
            var names = await NbdClient.ListMetaContextsAsync(uri, query: null, options, cancellationToken).ConfigureAwait(false);
            if (json)
            {
                var array = new JsonArray();
                foreach (var name in names)
                {
                    array.Add((JsonNode?)JsonValue.Create(name));
                }

                await output.WriteLineAsync(new JsonObject { ["url"] = uri.ToString(), ["meta_contexts"] = array }.ToJsonString(Indented)).ConfigureAwait(false);
            }
            else
            {
                foreach (var name in names)
                {
                    await output.WriteLineAsync(name).ConfigureAwait(false);
                }
            }

            return ExitCodes.Success;
        }

        var client = await NbdClient.ConnectAsync(uri, options, cancellationToken).ConfigureAwait(false);
        await using (client.ConfigureAwait(false))
        {
            var export = client.Export;
            List<NbdExtent>? extents = null;
            if (map)
            {
                if (!export.MetaContexts.Contains(metaContext))
                {
                    throw new ToolException($"the server did not agree to the meta context '{metaContext}' (agreed: {(export.MetaContexts.Count == 0 ? "none" : string.Join(", ", export.MetaContexts))})");
                }

                extents = [];
                await foreach (var extent in client.GetExtentsAsync(0, export.Size, metaContext, cancellationToken).ConfigureAwait(false))
                {
                    extents.Add(extent);
                }
            }

            if (json)
            {
                var node = Describe(uri, export);
                if (extents is not null)
                {
                    var array = new JsonArray();
                    foreach (var extent in extents)
                    {
                        array.Add((JsonNode)new JsonObject
                        {
                            ["offset"] = extent.Offset,
                            ["length"] = extent.Length,
                            ["type"] = extent.Flags,
                            ["description"] = DescribeExtent(metaContext, extent.Flags),
                        });
                    }

                    node["map"] = new JsonObject { ["context"] = metaContext, ["extents"] = array };
                }

                await output.WriteLineAsync(node.ToJsonString(Indented)).ConfigureAwait(false);
            }
            else if (extents is not null)
            {
                // Like nbdinfo --map: offset, length, type, description.
                foreach (var extent in extents)
                {
                    await output.WriteLineAsync(string.Create(CultureInfo.InvariantCulture, $"{extent.Offset,12}  {extent.Length,12}  {extent.Flags,3}  {DescribeExtent(metaContext, extent.Flags)}")).ConfigureAwait(false);
                }
            }
            else
            {
                await PrintTextAsync(output, uri, export).ConfigureAwait(false);
            }
        }

        return ExitCodes.Success;
    }

    private static async Task ListAsync(TextWriter output, NbdUri uri, NbdClientOptions options, bool json, CancellationToken cancellationToken)
    {
        var exports = await NbdClient.ListExportsAsync(uri, options, cancellationToken).ConfigureAwait(false);
        var rows = new List<(NbdExportListing Listing, NbdExportInfo? Info, string? Error)>();
        foreach (var listing in exports)
        {
            try
            {
                var info = await NbdClient.GetExportInfoAsync(NbdUrls.WithExport(uri, listing.Name), options, cancellationToken).ConfigureAwait(false);
                rows.Add((listing, info, null));
            }
            catch (NbdException ex)
            {
                rows.Add((listing, null, ErrorFormatter.Describe(ex)));
            }
        }

        var server = NbdUrls.WithExport(uri, string.Empty).ToString();
        if (json)
        {
            var array = new JsonArray();
            foreach (var (listing, info, error) in rows)
            {
                var node = new JsonObject { ["name"] = listing.Name, ["description"] = listing.Description };
                if (info is not null)
                {
                    node["size"] = info.Size;
                    node["read_only"] = info.IsReadOnly;
                }
                else
                {
                    node["error"] = error;
                }

                array.Add((JsonNode)node);
            }

            await output.WriteLineAsync(new JsonObject { ["server"] = server, ["exports"] = array }.ToJsonString(Indented)).ConfigureAwait(false);
            return;
        }

        await output.WriteLineAsync(FormattableString.Invariant($"{rows.Count} export(s) on {server}:")).ConfigureAwait(false);
        foreach (var (listing, info, error) in rows)
        {
            var name = listing.Name.Length == 0 ? "(default)" : listing.Name;
            var detail = info is not null
                ? string.Create(CultureInfo.InvariantCulture, $"{info.Size,15:N0} bytes{(info.IsReadOnly ? "  read-only" : string.Empty)}")
                : $"(info unavailable: {error})";
            var description = string.IsNullOrEmpty(listing.Description) ? string.Empty : $"  \"{listing.Description}\"";
            await output.WriteLineAsync($"  {name,-20} {detail}{description}").ConfigureAwait(false);
        }
    }

    /// <summary>The JSON description of an export (the "export" shape of docs/tools.md).</summary>
    internal static JsonObject Describe(NbdUri uri, NbdExportInfo export)
    {
        var contexts = new JsonArray();
        foreach (var name in export.MetaContexts.Order(StringComparer.Ordinal))
        {
            contexts.Add((JsonNode?)JsonValue.Create(name));
        }

        return new JsonObject
        {
            ["url"] = uri.ToString(),
            ["export_name"] = export.ExportName,
            ["canonical_name"] = export.CanonicalName,
            ["description"] = export.Description,
            ["size"] = export.Size,
            ["handshake"] = export.HandshakeStyle.ToString(),
            ["tls"] = export.IsTlsActive,
            ["structured_replies"] = export.StructuredReplies,
            ["transmission_flags"] = (int)export.Flags,
            ["flags"] = new JsonObject
            {
                ["read_only"] = export.IsReadOnly,
                ["can_flush"] = export.CanFlush,
                ["can_fua"] = export.CanFua,
                ["can_trim"] = export.CanTrim,
                ["can_write_zeroes"] = export.CanWriteZeroes,
                ["can_fast_zero"] = export.CanFastZero,
                ["can_cache"] = export.CanCache,
                ["can_df"] = export.CanDontFragment,
                ["can_multi_conn"] = export.CanMultiConn,
                ["can_block_status"] = export.CanBlockStatus,
                ["rotational"] = (export.Flags & NbdTransmissionFlags.Rotational) != 0,
            },
            ["block_size"] = new JsonObject
            {
                ["advertised"] = export.BlockSizesAdvertised,
                ["minimum"] = export.MinimumBlockSize,
                ["preferred"] = export.PreferredBlockSize,
                ["maximum_payload"] = export.MaximumPayloadSize,
            },
            ["contexts"] = contexts,
        };
    }

    private static async Task PrintTextAsync(TextWriter output, NbdUri uri, NbdExportInfo export)
    {
        var supported = new List<string>();
        void Add(bool on, string name)
        {
            if (on)
            {
                supported.Add(name);
            }
        }

        Add(export.CanFlush, "flush");
        Add(export.CanFua, "fua");
        Add(export.CanTrim, "trim");
        Add(export.CanWriteZeroes, "write_zeroes");
        Add(export.CanFastZero, "fast_zero");
        Add(export.CanCache, "cache");
        Add(export.CanDontFragment, "df");
        Add(export.CanMultiConn, "multi_conn");
        Add(export.CanBlockStatus, "block_status");
        Add((export.Flags & NbdTransmissionFlags.Rotational) != 0, "rotational");

        var lines = new List<string>
        {
            $"url:                {uri}",
            $"export:             {(export.ExportName.Length == 0 ? "(default)" : export.ExportName)}",
        };
        if (export.CanonicalName is { Length: > 0 } canonical && canonical != export.ExportName)
        {
            lines.Add($"canonical name:     {canonical}");
        }

        if (!string.IsNullOrEmpty(export.Description))
        {
            lines.Add($"description:        {export.Description}");
        }

        lines.Add(string.Create(CultureInfo.InvariantCulture, $"size:               {export.Size:N0} bytes ({FormatSize(export.Size)})"));
        lines.Add($"read-only:          {(export.IsReadOnly ? "yes" : "no")}");
        lines.Add($"supports:           {(supported.Count == 0 ? "(nothing optional)" : string.Join(' ', supported))}");
        lines.Add(string.Create(CultureInfo.InvariantCulture, $"transmission flags: 0x{(int)export.Flags:x4}"));
        lines.Add(string.Create(CultureInfo.InvariantCulture, $"block sizes:        minimum {export.MinimumBlockSize}, preferred {export.PreferredBlockSize}, maximum payload {export.MaximumPayloadSize}{(export.BlockSizesAdvertised ? string.Empty : " (not advertised; defaults)")}"));
        lines.Add($"meta contexts:      {(export.MetaContexts.Count == 0 ? "(none)" : string.Join(' ', export.MetaContexts.Order(StringComparer.Ordinal)))}");
        lines.Add($"handshake:          {export.HandshakeStyle}, structured replies {(export.StructuredReplies ? "on" : "off")}");
        lines.Add($"tls:                {(export.IsTlsActive ? "yes" : "no")}");
        foreach (var line in lines)
        {
            await output.WriteLineAsync(line).ConfigureAwait(false);
        }
    }

    /// <summary>The description of an extent's type, as nbdinfo --map prints it.</summary>
    internal static string DescribeExtent(string metaContext, uint flags)
    {
        if (metaContext == AllocationContext)
        {
            return flags switch
            {
                0 => "data",
                1 => "hole",
                2 => "zero",
                3 => "hole,zero",
                _ => string.Create(CultureInfo.InvariantCulture, $"unknown 0x{flags:x}"),
            };
        }

        if (metaContext.StartsWith("qemu:dirty-bitmap:", StringComparison.Ordinal))
        {
            return (flags & 1) != 0 ? "dirty" : "clean";
        }

        return string.Create(CultureInfo.InvariantCulture, $"0x{flags:x}");
    }

    internal static string FormatSize(long bytes)
    {
        string[] units = ["B", "KiB", "MiB", "GiB", "TiB", "PiB"];
        double value = bytes;
        var unit = 0;
        while (value >= 1024 && unit < units.Length - 1)
        {
            value /= 1024;
            unit++;
        }

        return unit == 0 ? FormattableString.Invariant($"{bytes} B") : FormattableString.Invariant($"{value:0.##} {units[unit]}");
    }
}
