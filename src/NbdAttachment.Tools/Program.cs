namespace NbdAttachment.Tools;

/// <summary>The process entry point of the <c>nbd</c> tool: wires Ctrl+C to cancellation and runs <see cref="NbdTool"/>.</summary>
internal static class Program
{
    private static async Task<int> Main(string[] args)
    {
        using var cancellation = new CancellationTokenSource();
        Console.CancelKeyPress += (_, e) =>
        {
            // The first Ctrl+C cancels cleanly (a copy flushes and disconnects); a second one ends the process.
            if (!cancellation.IsCancellationRequested)
            {
                e.Cancel = true;
                cancellation.Cancel();
            }
        };

        return await NbdTool.RunAsync(args, ToolContext.ForConsole(), cancellation.Token).ConfigureAwait(false);
    }
}
