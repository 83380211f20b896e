using System.Collections.Concurrent;
using System.Diagnostics;
using System.Globalization;
using System.Runtime.InteropServices;
using System.Text;

namespace NbdAttachment.InteropTests.Servers;

/// <summary>
/// Reads a child's standard output and error line by line on two dedicated threads. Process.BeginOutputReadLine
/// blocks a thread-pool thread per stream on Linux; with a QEMU guest, nbdkit and qemu-storage-daemon running that
/// is more than the pool's minimum on two cores, and the starved pool then delays every completion of the client
/// under test (guest writes measured 3-7x slower). Each callback gets null once, at end of stream.
/// </summary>
internal static class OutputPump
{
    public static void Start(Process process, Action<string?> onOutput, Action<string?> onError)
    {
        Pump(process.StandardOutput, onOutput, "stdout");
        Pump(process.StandardError, onError, "stderr");
    }

    private static void Pump(StreamReader reader, Action<string?> onLine, string name)
    {
        var thread = new Thread(() =>
        {
            try
            {
                while (reader.ReadLine() is { } line)
                {
                    onLine(line);
                }
            }
            catch (Exception ex) when (ex is IOException or ObjectDisposedException or InvalidOperationException)
            {
            }

            onLine(null);
        })
        {
            IsBackground = true,
            Name = "interop-output-" + name,
        };
        thread.Start();
    }
}

/// <summary>
/// Starts server processes from one dedicated, never-ending thread. Linux ties
/// <c>PR_SET_PDEATHSIG</c> (nbdkit <c>--exit-with-parent</c>, <c>setpriv --pdeathsig</c>) to the
/// <em>thread</em> that forked the child, so starting from a thread-pool thread would kill the
/// server as soon as the pool retires that thread.
/// </summary>
internal static class ProcessLauncher
{
    private static readonly BlockingCollection<(ProcessStartInfo Info, TaskCompletionSource<Process> Done)> Queue = new();

    static ProcessLauncher()
    {
        var thread = new Thread(Run) { IsBackground = true, Name = "interop-process-launcher" };
        thread.Start();
    }

    public static Task<Process> StartAsync(ProcessStartInfo info)
    {
        var done = new TaskCompletionSource<Process>(TaskCreationOptions.RunContinuationsAsynchronously);
        Queue.Add((info, done));
        return done.Task;
    }

    private static void Run()
    {
        foreach (var (info, done) in Queue.GetConsumingEnumerable())
        {
            try
            {
                var process = new Process { StartInfo = info, EnableRaisingEvents = true };
                process.Start();
                done.SetResult(process);
            }
            catch (Exception ex)
            {
                done.SetException(ex);
            }
        }
    }
}

/// <summary>Linux process helpers: liveness (zombie-aware), descendants, signals.</summary>
internal static partial class ProcessUtilities
{
    public const int SigTerm = 15;
    public const int SigKill = 9;

    [LibraryImport("libc", EntryPoint = "kill", SetLastError = true)]
    private static partial int SysKill(int pid, int signal);

    public static void Signal(int pid, int signal) => _ = SysKill(pid, signal);

    /// <summary>True if <paramref name="pid"/> exists and is neither a zombie nor dead.</summary>
    public static bool IsAlive(int pid)
    {
        var state = TryReadStat(pid, out _);
        return state is not null and not 'Z' and not 'X';
    }

    /// <summary>All descendants of <paramref name="pid"/> (children first is not guaranteed).</summary>
    public static List<int> Descendants(int pid)
    {
        var parents = new Dictionary<int, List<int>>();
        foreach (var dir in Directory.EnumerateDirectories("/proc"))
        {
            if (!int.TryParse(Path.GetFileName(dir), NumberStyles.None, CultureInfo.InvariantCulture, out var child))
            {
                continue;
            }

            if (TryReadStat(child, out var ppid) is not null)
            {
                if (!parents.TryGetValue(ppid, out var list))
                {
                    parents[ppid] = list = [];
                }

                list.Add(child);
            }
        }

        var result = new List<int>();
        var stack = new Stack<int>();
        stack.Push(pid);
        while (stack.Count > 0)
        {
            if (parents.TryGetValue(stack.Pop(), out var children))
            {
                foreach (var c in children)
                {
                    result.Add(c);
                    stack.Push(c);
                }
            }
        }

        return result;
    }

    /// <summary>Sends <paramref name="signal"/> to <paramref name="pid"/> and all its descendants.</summary>
    public static void SignalTree(int pid, int signal)
    {
        List<int> descendants;
        try
        {
            descendants = Descendants(pid);
        }
        catch (IOException)
        {
            descendants = [];
        }

        Signal(pid, signal);
        foreach (var d in descendants)
        {
            Signal(d, signal);
        }
    }

    /// <summary>Polls until every pid is gone (or a zombie), or the timeout elapses.</summary>
    public static async Task<bool> WaitForExitAsync(IReadOnlyCollection<int> pids, TimeSpan timeout)
    {
        var deadline = Stopwatch.StartNew();
        while (pids.Any(IsAlive))
        {
            if (deadline.Elapsed > timeout)
            {
                return false;
            }

            await Task.Delay(10).ConfigureAwait(false);
        }

        return true;
    }

    private static char? TryReadStat(int pid, out int ppid)
    {
        ppid = 0;
        string stat;
        try
        {
            stat = File.ReadAllText($"/proc/{pid.ToString(CultureInfo.InvariantCulture)}/stat");
        }
        catch (IOException)
        {
            return null;
        }
        catch (UnauthorizedAccessException)
        {
            return null;
        }

        // "pid (comm) S ppid ..." — comm may contain spaces and parentheses.
        var close = stat.LastIndexOf(')');
        if (close < 0 || close + 4 > stat.Length)
        {
            return null;
        }

        var fields = stat[(close + 2)..].Split(' ', 3);
        if (fields.Length < 2)
        {
            return null;
        }

        _ = int.TryParse(fields[1], NumberStyles.None, CultureInfo.InvariantCulture, out ppid);
        return fields[0].Length > 0 ? fields[0][0] : null;
    }

    /// <summary>Runs a short-lived tool to completion with a bounded time; returns exit code and output.</summary>
    public static async Task<ToolResult> RunToolAsync(
        string fileName, IEnumerable<string> arguments, TimeSpan timeout, string? workingDirectory = null,
        CancellationToken cancellationToken = default)
    {
        var info = new ProcessStartInfo(fileName)
        {
            UseShellExecute = false,
            RedirectStandardOutput = true,
            RedirectStandardError = true,
            RedirectStandardInput = true,
            WorkingDirectory = workingDirectory ?? string.Empty,
        };
        foreach (var a in arguments)
        {
            info.ArgumentList.Add(a);
        }

        var commandLine = FormatCommandLine(info);
        using var process = Process.Start(info) ?? throw new InvalidOperationException($"Could not start {commandLine}");
        process.StandardInput.Close();
        var stdout = process.StandardOutput.ReadToEndAsync(cancellationToken);
        var stderr = process.StandardError.ReadToEndAsync(cancellationToken);
        using var cts = CancellationTokenSource.CreateLinkedTokenSource(cancellationToken);
        cts.CancelAfter(timeout);
        try
        {
            await process.WaitForExitAsync(cts.Token).ConfigureAwait(false);
        }
        catch (OperationCanceledException)
        {
            try
            {
                process.Kill(entireProcessTree: true);
            }
            catch (InvalidOperationException)
            {
            }

            cancellationToken.ThrowIfCancellationRequested();
            throw new TimeoutException($"'{commandLine}' did not finish within {timeout.TotalSeconds:0.#} s.");
        }

        return new ToolResult(commandLine, process.ExitCode, await stdout.ConfigureAwait(false), await stderr.ConfigureAwait(false));
    }

    public static string FormatCommandLine(ProcessStartInfo info)
    {
        var sb = new StringBuilder(Quote(info.FileName));
        foreach (var a in info.ArgumentList)
        {
            sb.Append(' ').Append(Quote(a));
        }

        return sb.ToString();
    }

    private static string Quote(string s) =>
        s.Length > 0 && s.All(c => char.IsAsciiLetterOrDigit(c) || "-_=./:,+@%".Contains(c, StringComparison.Ordinal))
            ? s
            : "'" + s.Replace("'", "'\\''", StringComparison.Ordinal) + "'";
}

/// <summary>Result of a short-lived tool run.</summary>
public sealed record ToolResult(string CommandLine, int ExitCode, string StandardOutput, string StandardError)
{
    public ToolResult EnsureSuccess()
    {
        if (ExitCode != 0)
        {
            throw new InvalidOperationException(
                $"'{CommandLine}' exited with code {ExitCode}.{Environment.NewLine}stderr:{Environment.NewLine}{StandardError}{Environment.NewLine}stdout:{Environment.NewLine}{StandardOutput}");
        }

        return this;
    }
}
