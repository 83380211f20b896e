using System.CommandLine;
using NbdAttachment.Tools.Copy;

namespace NbdAttachment.Tools.Commands;

/// <summary><c>nbd copy SRC DST [--connections N] [--no-sparse] [--flush] [--progress]</c>: copy between NBD exports, files and pipes.</summary>
internal static class CopyCommand
{
    public const string StandardStream = "-";

    public static Command Create(ToolContext context)
    {
        var source = new Argument<string>("SRC") { Description = "An NBD URL, a file, or - for standard input." };
        var destination = new Argument<string>("DST") { Description = "An NBD URL, a file (created or truncated), or - for standard output." };
        var connections = new Option<int>("--connections", "-C")
        {
            Description = "NBD connections per export when the server allows multi-conn (1 to 16; default 4).",
            DefaultValueFactory = _ => 4,
        };
        connections.Validators.Add(result =>
        {
            if (result.Tokens.Count > 0 && int.TryParse(result.Tokens[^1].Value, System.Globalization.CultureInfo.InvariantCulture, out var value) && value is < 1 or > 16)
            {
                result.AddError("--connections must be from 1 to 16.");
            }
        });
        var noSparse = new Option<bool>("--no-sparse") { Description = "Copy every byte, even ranges that are holes or read as zeroes." };
        var flush = new Option<bool>("--flush") { Description = "Flush the destination to stable storage at the end." };
        var progress = new Option<bool>("--progress", "-p") { Description = "Show progress (a bar on a terminal, plain lines otherwise) with rate and ETA." };
        var command = new Command("copy", "Copy SRC to DST (sparse-aware, multi-connection).")
        {
            source, destination, connections, noSparse, flush, progress,
        };
        command.SetAction((parse, cancellationToken) => RunAsync(
            context,
            parse.GetRequiredValue(source),
            parse.GetRequiredValue(destination),
            parse.GetValue(connections),
            !parse.GetValue(noSparse),
            parse.GetValue(flush),
            parse.GetValue(progress),
            cancellationToken));
        return command;
    }

    private static async Task<int> RunAsync(ToolContext context, string sourceName, string destinationName, int connections, bool sparse, bool flush, bool progress, CancellationToken cancellationToken)
    {
        // Reject bad URLs before connecting anywhere.
        foreach (var operand in new[] { sourceName, destinationName })
        {
            if (NbdUrls.IsUrl(operand))
            {
                NbdUrls.Parse(operand);
            }
        }

        if (sourceName == StandardStream && destinationName == StandardStream)
        {
            throw new ToolUsageException("SRC and DST cannot both be - (standard input and output)");
        }

        var toStandardOutput = destinationName == StandardStream;
        var report = toStandardOutput ? context.Error : context.Output;
        var reportIsTerminal = toStandardOutput ? context.ErrorIsTerminal : context.OutputIsTerminal;

        var source = await OpenSourceAsync(context, sourceName, connections, cancellationToken).ConfigureAwait(false);
        await using (source.ConfigureAwait(false))
        {
            var destination = await OpenDestinationAsync(context, destinationName, source.Size, connections, sparse, cancellationToken).ConfigureAwait(false);
            await using (destination.ConfigureAwait(false))
            {
                var copier = new Copier(source, destination, Math.Min(64, connections * 4), sparse);
                var run = copier.RunAsync(cancellationToken);
                try
                {
                    if (progress)
                    {
                        await ProgressReporter.ShowAsync(run, copier, report, reportIsTerminal, cancellationToken).ConfigureAwait(false);
                    }

                    var summary = await run.ConfigureAwait(false);
                    if (flush || destination.IsSequential)
                    {
                        await destination.FlushAsync(cancellationToken).ConfigureAwait(false);
                    }

                    await report.WriteLineAsync($"{Describe(source)} -> {Describe(destination)}: {summary}").ConfigureAwait(false);
                    return ExitCodes.Success;
                }
                catch (OperationCanceledException) when (cancellationToken.IsCancellationRequested)
                {
                    // Ctrl+C: make what was written durable, then disconnect (the awaits using blocks) and report 130.
                    await FlushQuietlyAsync(destination).ConfigureAwait(false);
                    throw;
                }
            }
        }
    }

    private static async Task<Endpoint> OpenSourceAsync(ToolContext context, string name, int connections, CancellationToken cancellationToken)
    {
        if (name == StandardStream)
        {
            return new StreamEndpoint("standard input", context.OpenStandardInput());
        }

        if (NbdUrls.IsUrl(name))
        {
            return await NbdEndpoint.OpenAsync(name, connections, cancellationToken).ConfigureAwait(false);
        }

        return FileEndpoint.OpenRead(name);
    }

    private static async Task<Endpoint> OpenDestinationAsync(ToolContext context, string name, long? sourceSize, int connections, bool sparse, CancellationToken cancellationToken)
    {
        if (name == StandardStream)
        {
            return new StreamEndpoint("standard output", context.OpenStandardOutput());
        }

        if (!NbdUrls.IsUrl(name))
        {
            return FileEndpoint.Create(name, sourceSize, sparse);
        }

        var nbd = await NbdEndpoint.OpenAsync(name, connections, cancellationToken).ConfigureAwait(false);
        if (nbd.Export.IsReadOnly)
        {
            await nbd.DisposeAsync().ConfigureAwait(false);
            throw new ToolException($"the destination {name} is read-only");
        }

        if (sourceSize is { } size && nbd.Export.Size < size)
        {
            var exportSize = nbd.Export.Size;
            await nbd.DisposeAsync().ConfigureAwait(false);
            throw new ToolException(FormattableString.Invariant($"the destination ({exportSize:N0} bytes) is smaller than the source ({size:N0} bytes)"));
        }

        return nbd;
    }

    private static async Task FlushQuietlyAsync(Endpoint destination)
    {
        using var timeout = new CancellationTokenSource(TimeSpan.FromSeconds(10));
        try
        {
            await destination.FlushAsync(timeout.Token).ConfigureAwait(false);
        }
        catch (Exception ex) when (ex is NbdException or IOException or OperationCanceledException or ObjectDisposedException or InvalidOperationException)
        {
            // Best effort: the copy is being cancelled anyway.
        }
    }

    private static string Describe(Endpoint endpoint) =>
        endpoint is NbdEndpoint nbd ? $"{nbd.Name} ({nbd.Connections} connection{(nbd.Connections == 1 ? string.Empty : "s")})" : endpoint.Name;
}
