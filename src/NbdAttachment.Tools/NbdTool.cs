using System.CommandLine;
using NbdAttachment.Tools.Commands;

namespace NbdAttachment.Tools;

/// <summary>The <c>nbd</c> tool, callable in-process: parses the arguments, runs the command and returns the exit code (see <see cref="ExitCodes"/>).</summary>
public static class NbdTool
{
    /// <summary>Shows stack traces of errors; every command accepts it.</summary>
    internal static readonly Option<bool> VerboseOption = new("--verbose", "-v")
    {
        Description = "Print stack traces of errors.",
        Recursive = true,
    };

    /// <summary>Runs the tool with <paramref name="args"/>, writing text to <paramref name="stdout"/> and <paramref name="stderr"/>.</summary>
    /// <param name="args">The command line, without the program name.</param>
    /// <param name="stdout">Where results go.</param>
    /// <param name="stderr">Where errors go.</param>
    /// <param name="cancellationToken">Cancels the command (as Ctrl+C does); the result is then <see cref="ExitCodes.Cancelled"/>.</param>
    /// <returns>The exit code.</returns>
    public static Task<int> RunAsync(string[] args, TextWriter stdout, TextWriter stderr, CancellationToken cancellationToken = default) =>
        RunAsync(args, new ToolContext(stdout, stderr), cancellationToken);

    internal static async Task<int> RunAsync(string[] args, ToolContext context, CancellationToken cancellationToken)
    {
        ArgumentNullException.ThrowIfNull(args);
        var root = CreateRootCommand(context);
        var parse = root.Parse(args);
        if (parse.Errors.Count > 0)
        {
            foreach (var error in parse.Errors)
            {
                await context.Error.WriteLineAsync($"nbd: usage error: {error.Message}").ConfigureAwait(false);
            }

            await context.Error.WriteLineAsync("Try 'nbd --help'.").ConfigureAwait(false);
            return ExitCodes.Usage;
        }

        var configuration = new InvocationConfiguration
        {
            Output = context.Output,
            Error = context.Error,
            EnableDefaultExceptionHandler = false,
            ProcessTerminationTimeout = null, // Program wires Ctrl+C to the token itself.
        };
        try
        {
            return await parse.InvokeAsync(configuration, cancellationToken).ConfigureAwait(false);
        }
        catch (Exception ex)
        {
            return ErrorFormatter.Report(ex, context.Error, parse.GetValue(VerboseOption), cancellationToken);
        }
    }

    internal static RootCommand CreateRootCommand(ToolContext context)
    {
        var root = new RootCommand("nbd: describe, copy and serve Network Block Device (NBD) exports.")
        {
            InfoCommand.Create(context),
            CopyCommand.Create(context),
            ServeVhostUserCommand.Create(context),
        };
        root.Options.Add(VerboseOption);
        return root;
    }
}
