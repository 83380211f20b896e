using System.Text.Json;

namespace NbdAttachment.InteropTests.Servers;

/// <summary>What nbdinfo --json reported about one export.</summary>
public sealed record NbdinfoExport(
    string Protocol,
    bool Tls,
    bool StructuredReplies,
    string ExportName,
    long Size,
    bool ReadOnly,
    IReadOnlyList<string> MetaContexts,
    JsonElement Raw);

/// <summary>
/// Runs libnbd's nbdinfo against a server — an independent client that proves the harness
/// (the lead replaces it with NbdAttachment's own client). TLS: nbds://...?tls-certificates=DIR.
/// </summary>
public static class Nbdinfo
{
    public static readonly TimeSpan DefaultTimeout = TimeSpan.FromSeconds(15);

    /// <summary>nbdinfo --json URI; throws with nbdinfo's stderr if it fails.</summary>
    public static async Task<NbdinfoExport> JsonAsync(Uri uri, CancellationToken cancellationToken = default)
    {
        var result = await RunAsync(["--json", uri.OriginalString], cancellationToken).ConfigureAwait(false);
        result.EnsureSuccess();
        return Parse(result.StandardOutput);
    }

    /// <summary>
    /// nbdinfo --size URI. Prefer this for nbd-server: its NBD_OPT_INFO reply (used by
    /// nbdinfo --json) reports size 0, while NBD_OPT_GO reports the real size.
    /// </summary>
    public static async Task<long> SizeAsync(Uri uri, CancellationToken cancellationToken = default)
    {
        var result = await RunAsync(["--size", uri.OriginalString], cancellationToken).ConfigureAwait(false);
        result.EnsureSuccess();
        return long.Parse(result.StandardOutput.Trim(), System.Globalization.CultureInfo.InvariantCulture);
    }

    /// <summary>nbdinfo --list --json URI: the export names the server lists.</summary>
    public static async Task<IReadOnlyList<string>> ListAsync(Uri uri, CancellationToken cancellationToken = default)
    {
        var result = await RunAsync(["--list", "--json", uri.OriginalString], cancellationToken).ConfigureAwait(false);
        result.EnsureSuccess();
        using var doc = JsonDocument.Parse(result.StandardOutput);
        return doc.RootElement.GetProperty("exports").EnumerateArray()
            .Select(e => e.GetProperty("export-name").GetString()!).ToList();
    }

    /// <summary>nbdinfo ARGS; returns the result whatever the exit code.</summary>
    public static Task<ToolResult> RunAsync(IEnumerable<string> arguments, CancellationToken cancellationToken = default)
    {
        var binary = ServerBinaries.RequireOrSkip(ServerBinaries.Nbdinfo);
        return ProcessUtilities.RunToolAsync(binary, arguments, DefaultTimeout, cancellationToken: cancellationToken);
    }

    /// <summary>The libnbd URI that adds the client's certificate directory (libnbd-specific query parameter).</summary>
    public static Uri WithTlsCertificates(Uri uri, string directory)
    {
        ArgumentNullException.ThrowIfNull(uri);
        var text = uri.OriginalString;
        return new Uri(text + (text.Contains('?', StringComparison.Ordinal) ? "&" : "?") + "tls-certificates=" + directory);
    }

    public static NbdinfoExport Parse(string json)
    {
        using var doc = JsonDocument.Parse(json);
        var root = doc.RootElement.Clone();
        var export = root.GetProperty("exports")[0];
        var contexts = export.TryGetProperty("contexts", out var c)
            ? c.EnumerateArray().Select(e => e.GetString()!).ToList()
            : [];
        return new NbdinfoExport(
            root.GetProperty("protocol").GetString()!,
            root.GetProperty("TLS").GetBoolean(),
            root.TryGetProperty("structured", out var s) && s.GetBoolean(),
            export.GetProperty("export-name").GetString()!,
            export.GetProperty("export-size").GetInt64(),
            export.TryGetProperty("is_read_only", out var ro) && ro.GetBoolean(),
            contexts,
            root);
    }
}
