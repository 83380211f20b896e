namespace NbdAttachment.Tools;

/// <summary>Where the tool reads and writes: text output, errors, and the binary standard streams used by <c>nbd copy -</c>.</summary>
internal sealed class ToolContext
{
    public ToolContext(TextWriter output, TextWriter error)
    {
        Output = output;
        Error = error;
    }

    public TextWriter Output { get; }

    public TextWriter Error { get; }

    /// <summary>Opens the binary standard input (a copy source of <c>-</c>).</summary>
    public Func<Stream> OpenStandardInput { get; init; } = Console.OpenStandardInput;

    /// <summary>Opens the binary standard output (a copy destination of <c>-</c>).</summary>
    public Func<Stream> OpenStandardOutput { get; init; } = Console.OpenStandardOutput;

    /// <summary>Whether <see cref="Output"/> is a terminal (progress bars instead of plain lines).</summary>
    public bool OutputIsTerminal { get; init; }

    /// <summary>Whether <see cref="Error"/> is a terminal.</summary>
    public bool ErrorIsTerminal { get; init; }

    public static ToolContext ForConsole() => new(Console.Out, Console.Error)
    {
        OutputIsTerminal = !Console.IsOutputRedirected,
        ErrorIsTerminal = !Console.IsErrorRedirected,
    };
}
