using System.Diagnostics;
using System.Globalization;
using Spectre.Console;

namespace NbdAttachment.Tools.Copy;

/// <summary>Shows a copy's progress: a Spectre.Console bar on a terminal, plain lines (about one a second) when redirected.</summary>
internal static class ProgressReporter
{
    private static readonly TimeSpan PlainInterval = TimeSpan.FromSeconds(1);

    public static Task ShowAsync(Task run, Copier copier, TextWriter writer, bool terminal, CancellationToken cancellationToken) =>
        terminal ? ShowBarAsync(run, copier, writer) : ShowLinesAsync(run, copier, writer, cancellationToken);

    private static async Task ShowBarAsync(Task run, Copier copier, TextWriter writer)
    {
        var console = AnsiConsole.Create(new AnsiConsoleSettings { Out = new AnsiConsoleOutput(writer) });
        await console.Progress()
            .AutoClear(false)
            .Columns(new TaskDescriptionColumn(), new ProgressBarColumn(), new PercentageColumn(), new TransferSpeedColumn(), new RemainingTimeColumn())
            .StartAsync(async progress =>
            {
                var total = copier.Total ?? 0;
                var task = progress.AddTask("copy", maxValue: Math.Max(1, total));
                task.IsIndeterminate = copier.Total is null;
                while (!run.IsCompleted)
                {
                    task.Value = copier.Done;
                    await Task.WhenAny(run, Task.Delay(100, CancellationToken.None)).ConfigureAwait(false);
                }

                task.Value = run.IsCompletedSuccessfully ? Math.Max(1, total) : copier.Done;
                task.StopTask();
            }).ConfigureAwait(false);
    }

    private static async Task ShowLinesAsync(Task run, Copier copier, TextWriter writer, CancellationToken cancellationToken)
    {
        var stopwatch = Stopwatch.StartNew();
        using var timer = new PeriodicTimer(PlainInterval);
        while (!run.IsCompleted)
        {
            var tick = timer.WaitForNextTickAsync(CancellationToken.None).AsTask();
            if (await Task.WhenAny(run, tick).ConfigureAwait(false) == run)
            {
                break;
            }

            await writer.WriteLineAsync(Describe(copier.Done, copier.Total, stopwatch.Elapsed)).ConfigureAwait(false);
        }

        if (run.IsCompletedSuccessfully && !cancellationToken.IsCancellationRequested)
        {
            await writer.WriteLineAsync(Describe(copier.Done, copier.Total, stopwatch.Elapsed)).ConfigureAwait(false);
        }
    }

    /// <summary>One progress line: bytes done, percentage, rate and ETA.</summary>
    internal static string Describe(long done, long? total, TimeSpan elapsed)
    {
        var rate = elapsed.TotalSeconds > 0 ? done / elapsed.TotalSeconds : 0;
        var mib = rate / (1024 * 1024);
        if (total is not { } size)
        {
            return string.Create(CultureInfo.InvariantCulture, $"progress: {done:N0} bytes, {mib:0.0} MiB/s");
        }

        var percent = size == 0 ? 100 : 100.0 * done / size;
        var eta = rate > 0 ? TimeSpan.FromSeconds(Math.Max(0, size - done) / rate) : (TimeSpan?)null;
        var etaText = eta is { } e ? e.ToString(@"hh\:mm\:ss", CultureInfo.InvariantCulture) : "--:--:--";
        return string.Create(CultureInfo.InvariantCulture, $"progress: {done:N0} / {size:N0} bytes ({percent:0.0}%), {mib:0.0} MiB/s, ETA {etaText}");
    }
}
