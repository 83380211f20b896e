using System.Net;
using System.Net.Sockets;
using System.Text;
using NbdAttachment.Tools;

namespace NbdAttachment.Tools.Tests;

/// <summary>Runs the tool in-process and captures what it prints.</summary>
internal sealed class ToolRun
{
    public int ExitCode { get; init; }

    public string Output { get; init; } = string.Empty;

    public string Error { get; init; } = string.Empty;

    public override string ToString() => $"exit {ExitCode}\nstdout:\n{Output}\nstderr:\n{Error}";
}

internal static class ToolHarness
{
    public static async Task<ToolRun> RunAsync(params string[] args) => await RunAsync(args, stdin: null, stdout: null, CancellationToken.None);

    public static async Task<ToolRun> RunAsync(string[] args, Stream? stdin, Stream? stdout, CancellationToken cancellationToken, TextWriter? output = null)
    {
        output ??= new StringWriter();
        var error = new StringWriter();
        var context = new ToolContext(output, error)
        {
            OpenStandardInput = () => stdin ?? Stream.Null,
            OpenStandardOutput = () => stdout ?? Stream.Null,
        };
        using var timeout = CancellationTokenSource.CreateLinkedTokenSource(cancellationToken);
        timeout.CancelAfter(TimeSpan.FromSeconds(60));
        var code = await NbdTool.RunAsync(args, context, timeout.Token);
        return new ToolRun { ExitCode = code, Output = output.ToString()!, Error = error.ToString() };
    }

    /// <summary>A 127.0.0.1 port nothing listens on (bound, then closed).</summary>
    public static int ClosedPort()
    {
        using var listener = new TcpListener(IPAddress.Loopback, 0);
        listener.Start();
        var port = ((IPEndPoint)listener.LocalEndpoint).Port;
        listener.Stop();
        return port;
    }

    public static string TempPath(string suffix) => Path.Combine(Path.GetTempPath(), $"nbd-tool-tests-{Guid.NewGuid():N}{suffix}");
}

/// <summary>A thread-safe text writer that completes a task when a given text has been written.</summary>
internal sealed class SignalWriter : TextWriter
{
    private readonly StringBuilder _text = new();
    private readonly List<(string Text, TaskCompletionSource Signal)> _waits = [];

    public override Encoding Encoding => Encoding.UTF8;

    public Task WhenWritten(string text)
    {
        lock (_text)
        {
            var signal = new TaskCompletionSource(TaskCreationOptions.RunContinuationsAsynchronously);
            if (_text.ToString().Contains(text, StringComparison.Ordinal))
            {
                signal.TrySetResult();
            }
            else
            {
                _waits.Add((text, signal));
            }

            return signal.Task;
        }
    }

    public override void Write(char value) => Append(value.ToString());

    public override void Write(string? value) => Append(value ?? string.Empty);

    public override void Write(char[] buffer, int index, int count) => Append(new string(buffer, index, count));

    public override string ToString()
    {
        lock (_text)
        {
            return _text.ToString();
        }
    }

    private void Append(string value)
    {
        lock (_text)
        {
            _text.Append(value);
            var all = _text.ToString();
            foreach (var wait in _waits.Where(w => all.Contains(w.Text, StringComparison.Ordinal)).ToList())
            {
                wait.Signal.TrySetResult();
                _waits.Remove(wait);
            }
        }
    }
}
