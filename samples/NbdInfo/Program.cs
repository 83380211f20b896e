// NbdInfo: describe an NBD export (size, flags, block sizes, meta contexts, handshake, TLS),
// list a server's exports, or print its allocation map.
// Usage: dotnet run --project samples/NbdInfo -- [URL] [--json] [--map [CONTEXT]] [--list]
// Without a URL an in-process test server with two exports and some data is started.
using System.Text.Json;
using System.Text.Json.Nodes;
using NbdAttachment;
using NbdAttachment.Client;
using NbdAttachment.Testing;

string? url = null;
bool json = false, map = false, list = false;
string context = "base:allocation";
for (var i = 0; i < args.Length; i++)
{
    switch (args[i])
    {
        case "--json":
            json = true;
            break;
        case "--list":
            list = true;
            break;
        case "--map":
            map = true;
            if (i + 1 < args.Length && !args[i + 1].StartsWith("--", StringComparison.Ordinal) && args[i + 1].Contains(':', StringComparison.Ordinal) && !args[i + 1].Contains("://", StringComparison.Ordinal))
            {
                context = args[++i];
            }

            break;
        case "-h" or "--help":
            Console.WriteLine("Usage: NbdInfo [URL] [--json] [--map [CONTEXT]] [--list]");
            Console.WriteLine("  URL     nbd://host[:port]/export, nbds://..., nbd+unix:///export?socket=PATH (default: an in-process demo server)");
            Console.WriteLine("  --list  list the server's exports");
            Console.WriteLine("  --map   print the extents of CONTEXT (default base:allocation)");
            Console.WriteLine("  --json  machine-readable output");
            return 0;
        default:
            if (args[i].StartsWith("--", StringComparison.Ordinal) || url is not null)
            {
                Console.Error.WriteLine($"nbdinfo: unexpected argument '{args[i]}' (try --help)");
                return 1;
            }

            url = args[i];
            break;
    }
}

NbdTestServer? server = null;
try
{
    if (url is null)
    {
        server = await StartDemoServerAsync();
        url = server.GetUri("disk").ToString();
        if (!json)
        {
            Console.WriteLine($"(no URL given: started an in-process NBD server; describing {url})");
        }
    }

    if (!NbdUri.TryParse(url, out var uri, out var problem))
    {
        Console.Error.WriteLine($"nbdinfo: invalid NBD URL '{url}': {problem}");
        return 1;
    }

    var options = NbdClientOptions.Default with
    {
        ConnectTimeout = TimeSpan.FromSeconds(10),
        Reconnect = NbdReconnectPolicy.Disabled,
        MetaContexts = context == "base:allocation" ? ["base:allocation"] : ["base:allocation", context],
    };
    using var timeout = new CancellationTokenSource(TimeSpan.FromSeconds(60));

    if (list)
    {
        var exports = await NbdClient.ListExportsAsync(uri, options, timeout.Token);
        var rows = new List<(NbdExportListing Listing, NbdExportInfo? Info, string? Error)>();
        foreach (var listing in exports)
        {
            try
            {
                var info = await NbdClient.GetExportInfoAsync(WithExport(uri, listing.Name), options, timeout.Token);
                rows.Add((listing, info, null));
            }
            catch (NbdException ex)
            {
                rows.Add((listing, null, ex.Message));
            }
        }

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

                array.Add(node);
            }

            Print(new JsonObject { ["server"] = WithExport(uri, string.Empty).ToString(), ["exports"] = array });
        }
        else
        {
            Console.WriteLine($"{rows.Count} export(s) on {WithExport(uri, string.Empty)}:");
            foreach (var (listing, info, error) in rows)
            {
                var name = listing.Name.Length == 0 ? "(default)" : listing.Name;
                var detail = info is not null ? $"{info.Size,15:N0} bytes{(info.IsReadOnly ? "  read-only" : string.Empty)}" : $"(info unavailable: {error})";
                var description = string.IsNullOrEmpty(listing.Description) ? string.Empty : $"  \"{listing.Description}\"";
                Console.WriteLine($"  {name,-20} {detail}{description}");
            }
        }

        return 0;
    }

    await using var client = await NbdClient.ConnectAsync(uri, options, timeout.Token);
    var export = client.Export;
    List<NbdExtent>? extents = null;
    if (map)
    {
        extents = [];
        await foreach (var extent in client.GetExtentsAsync(0, export.Size, context, timeout.Token))
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
                array.Add(new JsonObject
                {
                    ["offset"] = extent.Offset,
                    ["length"] = extent.Length,
                    ["flags"] = extent.Flags,
                    ["description"] = DescribeFlags(context, extent.Flags),
                });
            }

            node["map"] = new JsonObject { ["context"] = context, ["extents"] = array };
        }

        Print(node);
    }
    else
    {
        PrintText(uri, export);
        if (extents is not null)
        {
            Console.WriteLine($"map ({context}):");
            Console.WriteLine($"  {"offset",15} {"length",15}  flags  description");
            foreach (var extent in extents)
            {
                Console.WriteLine($"  {extent.Offset,15} {extent.Length,15}  {extent.Flags,5}  {DescribeFlags(context, extent.Flags)}");
            }
        }
    }

    return 0;
}
catch (Exception ex) when (ex is NbdException or OperationCanceledException or ArgumentException)
{
    Console.Error.WriteLine($"nbdinfo: {ex.GetType().Name}: {ex.Message}");
    return 1;
}
finally
{
    if (server is not null)
    {
        await server.DisposeAsync();
    }
}

static async Task<NbdTestServer> StartDemoServerAsync()
{
    var server = await NbdTestServer.StartAsync(new NbdTestServerOptions
    {
        Exports =
        [
            new NbdTestExportOptions("disk", 16L * 1024 * 1024) { Description = "a writable demo disk", MultiConn = true },
            new NbdTestExportOptions("iso", 4L * 1024 * 1024) { Description = "a read-only demo image", ReadOnly = true, MinimumBlockSize = 512 },
        ],
    });
    var data = new byte[256 * 1024];
    new Random(42).NextBytes(data);
    server.GetExport("disk").WriteBytes(0, data.AsSpan(0, 64 * 1024));
    server.GetExport("disk").WriteBytes(5L * 1024 * 1024, data);
    server.GetExport("disk").WriteBytes(16L * 1024 * 1024 - 4096, data.AsSpan(0, 4096));
    server.GetExport("iso").WriteBytes(0, data);
    return server;
}

static NbdUri WithExport(NbdUri uri, string name)
{
    // Rebuild the URL with another export name; the rest (host, port, socket, TLS parameters) stays.
    var text = uri.ToString();
    var query = text.IndexOf('?', StringComparison.Ordinal);
    var head = query < 0 ? text : text[..query];
    var tail = query < 0 ? string.Empty : text[query..];
    var authorityEnd = head.IndexOf('/', head.IndexOf("://", StringComparison.Ordinal) + 3);
    var root = authorityEnd < 0 ? head : head[..authorityEnd];
    return NbdUri.Parse(root + "/" + Uri.EscapeDataString(name) + tail);
}

static JsonObject Describe(NbdUri uri, NbdExportInfo export)
{
    var contexts = new JsonArray();
    foreach (var name in export.MetaContexts.Order(StringComparer.Ordinal))
    {
        contexts.Add(name);
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

static void PrintText(NbdUri uri, NbdExportInfo export)
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
    Add((export.Flags & NbdTransmissionFlags.Rotational) != 0, "rotational");

    Console.WriteLine($"url:                {uri}");
    Console.WriteLine($"export:             {(export.ExportName.Length == 0 ? "(default)" : export.ExportName)}");
    if (export.CanonicalName is { Length: > 0 } canonical && canonical != export.ExportName)
    {
        Console.WriteLine($"canonical name:     {canonical}");
    }

    if (!string.IsNullOrEmpty(export.Description))
    {
        Console.WriteLine($"description:        {export.Description}");
    }

    Console.WriteLine($"size:               {export.Size:N0} bytes ({FormatSize(export.Size)})");
    Console.WriteLine($"read-only:          {(export.IsReadOnly ? "yes" : "no")}");
    Console.WriteLine($"supports:           {(supported.Count == 0 ? "(nothing optional)" : string.Join(' ', supported))}");
    Console.WriteLine($"transmission flags: 0x{(int)export.Flags:x4}");
    Console.WriteLine($"block sizes:        minimum {export.MinimumBlockSize}, preferred {export.PreferredBlockSize}, maximum payload {export.MaximumPayloadSize}{(export.BlockSizesAdvertised ? string.Empty : " (not advertised; defaults)")}");
    Console.WriteLine($"meta contexts:      {(export.MetaContexts.Count == 0 ? "(none)" : string.Join(' ', export.MetaContexts.Order(StringComparer.Ordinal)))}");
    Console.WriteLine($"handshake:          {export.HandshakeStyle}, structured replies {(export.StructuredReplies ? "on" : "off")}");
    Console.WriteLine($"tls:                {(export.IsTlsActive ? "yes" : "no")}");
}

static string DescribeFlags(string context, uint flags)
{
    if (context == "base:allocation")
    {
        return flags switch
        {
            0 => "data",
            1 => "hole",
            2 => "zero",
            3 => "hole,zero",
            _ => $"unknown 0x{flags:x}",
        };
    }

    if (context.StartsWith("qemu:dirty-bitmap:", StringComparison.Ordinal))
    {
        return (flags & 1) != 0 ? "dirty" : "clean";
    }

    return $"0x{flags:x}";
}

static string FormatSize(long bytes)
{
    string[] units = ["B", "KiB", "MiB", "GiB", "TiB", "PiB"];
    double value = bytes;
    var unit = 0;
    while (value >= 1024 && unit < units.Length - 1)
    {
        value /= 1024;
        unit++;
    }

    return unit == 0 ? $"{bytes} B" : $"{value:0.##} {units[unit]}";
}

static void Print(JsonNode node) => Console.WriteLine(node.ToJsonString(new JsonSerializerOptions { WriteIndented = true }));
