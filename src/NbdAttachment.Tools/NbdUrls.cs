using NbdAttachment.Client;

namespace NbdAttachment.Tools;

/// <summary>NBD URL helpers shared by the commands.</summary>
internal static class NbdUrls
{
    /// <summary>Whether a copy operand is an NBD URL (rather than a file path or <c>-</c>).</summary>
    public static bool IsUrl(string text) => text.Contains("://", StringComparison.Ordinal);

    /// <summary>Parses an NBD URL or throws a usage error naming the problem.</summary>
    public static NbdUri Parse(string text)
    {
        if (!NbdUri.TryParse(text, out var uri, out var problem))
        {
            throw new ToolUsageException($"invalid NBD URL '{text}': {problem}");
        }

        return uri!;
    }

    /// <summary>The same URL with another export name; host, port, socket and TLS parameters stay.</summary>
    public static NbdUri WithExport(NbdUri uri, string name)
    {
        var text = uri.ToString();
        var query = text.IndexOf('?', StringComparison.Ordinal);
        var head = query < 0 ? text : text[..query];
        var tail = query < 0 ? string.Empty : text[query..];
        var authorityEnd = head.IndexOf('/', head.IndexOf("://", StringComparison.Ordinal) + 3);
        var root = authorityEnd < 0 ? head : head[..authorityEnd];
        return NbdUri.Parse(root + "/" + Uri.EscapeDataString(name) + tail);
    }

    /// <summary>Client options for a one-shot command: a bounded connect, no reconnecting.</summary>
    public static NbdClientOptions OneShotOptions(IReadOnlyList<string>? metaContexts = null) => NbdClientOptions.Default with
    {
        ConnectTimeout = TimeSpan.FromSeconds(10),
        Reconnect = NbdReconnectPolicy.Disabled,
        MetaContexts = metaContexts ?? ["base:allocation"],
    };
}
