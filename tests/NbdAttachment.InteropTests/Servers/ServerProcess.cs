using System.Collections.Concurrent;
using System.Diagnostics;
using System.Globalization;
using System.Text;

namespace NbdAttachment.InteropTests.Servers;

/// <summary>A server process failed to start (exited early or never listened).</summary>
public sealed class ServerStartException : Exception
{
    public ServerStartException(string message)
        : base(message)
    {
    }

    public ServerStartException(string message, Exception innerException)
        : base(message, innerException)
    {
    }

    public ServerStartException()
    {
    }
}

/// <summary>
/// Base of the real-server fixtures: one external NBD server on a unique loopback port or Unix
/// socket, with its own temporary directory. Start waits until the endpoint listens (bounded);
/// Kill/Restart keep the same endpoint (for reconnect tests); DisposeAsync kills the process
/// tree and deletes the temporary directory.
/// </summary>
public abstract class ServerProcess : IAsyncDisposable
{
    private static readonly ConcurrentDictionary<ServerProcess, byte> Live = new();
    private readonly object _logLock = new();
    private readonly StringBuilder _log = new();
    private readonly StringBuilder _stderr = new();
    private readonly bool _ownsTemp;
    private Process? _process;
    private int? _daemonPid;
    private bool _disposed;

    static ServerProcess()
    {
        // Last line of defence against orphans (qemu-nbd has no --exit-with-parent and
        // nbd-server daemonizes): kill whatever is still running when the test host exits.
        AppDomain.CurrentDomain.ProcessExit += (_, _) =>
        {
            foreach (var server in Live.Keys)
            {
                server.KillNow();
            }
        };
    }

    protected ServerProcess(ListenKind listen, TempDirectory? temp)
    {
        _ownsTemp = temp is null;
        Temp = temp ?? new TempDirectory();
        Endpoint = ServerEndpoint.Allocate(listen, Temp.Path);
    }

    /// <summary>Short program name, e.g. "nbdkit".</summary>
    public abstract string Name { get; }

    /// <summary>Export name the default <see cref="Uri"/> points at.</summary>
    public abstract string ExportName { get; }

    /// <summary>True when the server requires or offers TLS (the default URI uses nbds).</summary>
    public abstract bool UsesTls { get; }

    /// <summary>The listening endpoint; stable across <see cref="RestartAsync"/>.</summary>
    public ServerEndpoint Endpoint { get; private set; }

    /// <summary>Per-server temporary directory (sockets, images, config, pid files).</summary>
    public TempDirectory Temp { get; }

    /// <summary>NBD URI of <see cref="ExportName"/> (nbds when <see cref="UsesTls"/>).</summary>
    public Uri Uri => UriFor(ExportName);

    public Uri UriFor(string exportName, string? extraQuery = null) => Endpoint.UriFor(exportName, UsesTls, extraQuery);

    /// <summary>Bound on how long <see cref="StartAsync"/> waits for the server to listen.</summary>
    public TimeSpan StartTimeout { get; init; } = TimeSpan.FromSeconds(10);

    /// <summary>Command line of the most recent start.</summary>
    public string? CommandLine { get; private set; }

    /// <summary>Number of successful starts so far.</summary>
    public int StartCount { get; private set; }

    /// <summary>Pid of the serving process (the daemon for nbd-server), or null when stopped.</summary>
    public int? ProcessId => _daemonPid ?? (_process is { HasExited: false } p ? p.Id : null);

    public bool IsRunning => ProcessId is { } pid && ProcessUtilities.IsAlive(pid);

    /// <summary>Standard error of the current/most recent run.</summary>
    public string StandardError
    {
        get
        {
            lock (_logLock)
            {
                return _stderr.ToString();
            }
        }
    }

    /// <summary>Everything the server printed across all runs, with start markers.</summary>
    public string Log
    {
        get
        {
            lock (_logLock)
            {
                return _log.ToString();
            }
        }
    }

    /// <summary>Program path and arguments for a start.</summary>
    protected abstract (string FileName, IReadOnlyList<string> Arguments) BuildCommand();

    /// <summary>True for servers that fork into the background and write <see cref="PidFile"/>.</summary>
    protected virtual bool Daemonizes => false;

    /// <summary>Pid file a daemonizing server writes.</summary>
    protected string PidFile => Temp.Combine(Name + ".pid");

    /// <summary>Hook run before every start (create images, write config...).</summary>
    protected virtual Task PrepareAsync(CancellationToken cancellationToken) => Task.CompletedTask;

    /// <summary>Starts a freshly constructed server; disposes it (processes, temp files) if the start fails.</summary>
    protected static async Task<T> StartOrDisposeAsync<T>(T server, CancellationToken cancellationToken)
        where T : ServerProcess
    {
        try
        {
            await server.StartAsync(cancellationToken).ConfigureAwait(false);
            return server;
        }
        catch
        {
            await server.DisposeAsync().ConfigureAwait(false);
            throw;
        }
    }

    /// <summary>Starts the server and waits until it listens; a no-op if it is already running.</summary>
    public async Task StartAsync(CancellationToken cancellationToken = default)
    {
        ObjectDisposedException.ThrowIf(_disposed, this);
        if (IsRunning)
        {
            return;
        }

        // A free port picked by the OS can be taken by someone else before the server binds it;
        // on the very first start retry with a new port.
        for (var attempt = 1; ; attempt++)
        {
            try
            {
                await StartOnceAsync(cancellationToken).ConfigureAwait(false);
                StartCount++;
                return;
            }
            catch (ServerStartException) when (attempt < 3 && StartCount == 0 && !Endpoint.IsUnix &&
                                                StandardError.Contains("in use", StringComparison.OrdinalIgnoreCase))
            {
                Endpoint = Endpoint.WithNewPort();
            }
        }
    }

    private async Task StartOnceAsync(CancellationToken cancellationToken)
    {
        if (Endpoint.SocketPath is { } sock && File.Exists(sock))
        {
            File.Delete(sock); // stale socket of a killed run
        }

        if (File.Exists(PidFile))
        {
            File.Delete(PidFile);
        }

        await PrepareAsync(cancellationToken).ConfigureAwait(false);
        var (fileName, arguments) = BuildCommand();
        var info = new ProcessStartInfo(fileName)
        {
            UseShellExecute = false,
            RedirectStandardOutput = true,
            RedirectStandardError = true,
            RedirectStandardInput = true,
            WorkingDirectory = Temp.Path,
        };
        foreach (var a in arguments)
        {
            info.ArgumentList.Add(a);
        }

        CommandLine = ProcessUtilities.FormatCommandLine(info);
        lock (_logLock)
        {
            _stderr.Clear();
            _log.Append(CultureInfo.InvariantCulture, $"--- start #{StartCount + 1}: {CommandLine}").AppendLine();
        }

        _daemonPid = null;
        var process = await ProcessLauncher.StartAsync(info).ConfigureAwait(false);
        _process = process;
        Live.TryAdd(this, 0);
        OutputPump.Start(process, line => Append(line, stderr: false), line => Append(line, stderr: true));

        var clock = Stopwatch.StartNew();
        while (true)
        {
            cancellationToken.ThrowIfCancellationRequested();
            if (Daemonizes)
            {
                if (process.HasExited && process.ExitCode != 0)
                {
                    await FailAsync($"exited with code {process.ExitCode} before daemonizing").ConfigureAwait(false);
                }

                if (_daemonPid is null && TryReadPidFile() is { } pid)
                {
                    _daemonPid = pid;
                }

                if (_daemonPid is { } d && !ProcessUtilities.IsAlive(d))
                {
                    await FailAsync($"daemon (pid {d}) exited").ConfigureAwait(false);
                }

                if (_daemonPid is not null && await Endpoint.IsListeningAsync(cancellationToken).ConfigureAwait(false))
                {
                    return;
                }
            }
            else
            {
                if (process.HasExited)
                {
                    await FailAsync($"exited with code {process.ExitCode}").ConfigureAwait(false);
                }

                if (await Endpoint.IsListeningAsync(cancellationToken).ConfigureAwait(false))
                {
                    return;
                }
            }

            if (clock.Elapsed > StartTimeout)
            {
                await FailAsync($"did not listen on {Describe()} within {StartTimeout.TotalSeconds:0.#} s").ConfigureAwait(false);
            }

            await Task.Delay(10, cancellationToken).ConfigureAwait(false);
        }
    }

    private async Task FailAsync(string what)
    {
        await KillAsync().ConfigureAwait(false);
        throw new ServerStartException(
            $"{Name} {what}.{Environment.NewLine}Command: {CommandLine}{Environment.NewLine}stderr:{Environment.NewLine}{StandardError}");
    }

    private string Describe() => Endpoint.IsUnix ? Endpoint.SocketPath! : $"{Endpoint.Host}:{Endpoint.Port}";

    private int? TryReadPidFile()
    {
        try
        {
            var text = File.ReadAllText(PidFile).Trim();
            return int.TryParse(text, NumberStyles.None, CultureInfo.InvariantCulture, out var pid) && pid > 0 ? pid : null;
        }
        catch (IOException)
        {
            return null;
        }
    }

    private void Append(string? line, bool stderr)
    {
        if (line is null)
        {
            return;
        }

        lock (_logLock)
        {
            if (stderr)
            {
                _stderr.AppendLine(line);
            }

            _log.AppendLine(line);
        }
    }

    /// <summary>
    /// Kills the server and all its children with SIGKILL (an abrupt crash: connections drop
    /// without a clean shutdown) and waits, bounded, until they are gone.
    /// </summary>
    public Task KillAsync() => StopCoreAsync(ProcessUtilities.SigKill, TimeSpan.Zero);

    /// <summary>SIGTERM (clean shutdown), escalating to SIGKILL after <paramref name="grace"/>.</summary>
    public Task StopAsync(TimeSpan? grace = null) =>
        StopCoreAsync(ProcessUtilities.SigTerm, grace ?? TimeSpan.FromSeconds(5));

    /// <summary>Kills the server, optionally stays down for <paramref name="downtime"/>, starts it again on the same endpoint.</summary>
    public async Task RestartAsync(TimeSpan downtime = default, CancellationToken cancellationToken = default)
    {
        await KillAsync().ConfigureAwait(false);
        if (downtime > TimeSpan.Zero)
        {
            await Task.Delay(downtime, cancellationToken).ConfigureAwait(false);
        }

        await StartAsync(cancellationToken).ConfigureAwait(false);
    }

    private async Task StopCoreAsync(int signal, TimeSpan grace)
    {
        var pids = CollectPids();
        if (pids.Count > 0)
        {
            // Children first would race with the parent respawning nothing; signalling all at
            // once is fine: none of these servers restarts its workers.
            foreach (var pid in pids)
            {
                ProcessUtilities.Signal(pid, signal);
            }

            if (signal != ProcessUtilities.SigKill &&
                !await ProcessUtilities.WaitForExitAsync(pids, grace).ConfigureAwait(false))
            {
                foreach (var pid in CollectPids())
                {
                    ProcessUtilities.Signal(pid, ProcessUtilities.SigKill);
                }
            }

            if (!await ProcessUtilities.WaitForExitAsync(pids, TimeSpan.FromSeconds(10)).ConfigureAwait(false))
            {
                throw new InvalidOperationException($"{Name} (pids {string.Join(',', pids)}) did not exit after SIGKILL.");
            }
        }

        if (_process is { } p)
        {
            using var cts = new CancellationTokenSource(TimeSpan.FromSeconds(10));
            try
            {
                await p.WaitForExitAsync(cts.Token).ConfigureAwait(false); // reap + drain output
            }
            catch (OperationCanceledException)
            {
            }

            p.Dispose();
            _process = null;
        }

        _daemonPid = null;
        Live.TryRemove(this, out _);
    }

    private List<int> CollectPids()
    {
        var roots = new List<int>();
        if (_process is { } p)
        {
            try
            {
                if (!p.HasExited)
                {
                    roots.Add(p.Id);
                }
            }
            catch (InvalidOperationException)
            {
            }
        }

        if (_daemonPid is { } d)
        {
            roots.Add(d);
        }
        else if (Daemonizes && TryReadPidFile() is { } fromFile)
        {
            roots.Add(fromFile);
        }

        var all = new List<int>();
        foreach (var root in roots.Where(ProcessUtilities.IsAlive))
        {
            all.Add(root);
            try
            {
                all.AddRange(ProcessUtilities.Descendants(root));
            }
            catch (IOException)
            {
            }
        }

        return all.Distinct().ToList();
    }

    private void KillNow()
    {
        foreach (var pid in CollectPids())
        {
            ProcessUtilities.Signal(pid, ProcessUtilities.SigKill);
        }
    }

    public async ValueTask DisposeAsync()
    {
        if (_disposed)
        {
            return;
        }

        _disposed = true;
        try
        {
            await KillAsync().ConfigureAwait(false);
        }
        finally
        {
            Live.TryRemove(this, out _);
            if (_ownsTemp)
            {
                Temp.Dispose();
            }
        }

        GC.SuppressFinalize(this);
    }

    public override string ToString() => $"{Name} {Uri}";

    /// <summary>Prefix that makes the kernel SIGKILL the child when the test host dies (setpriv --pdeathsig), if available.</summary>
    protected internal static (string FileName, List<string> Arguments) WithParentDeathSignal(string fileName)
    {
        if (ServerBinaries.TryFind(ServerBinaries.Setpriv) is { } setpriv && SetprivSupportsPdeathsig.Value)
        {
            return (setpriv, ["--pdeathsig", "KILL", "--", fileName]);
        }

        return (fileName, []);
    }

    private static readonly Lazy<bool> SetprivSupportsPdeathsig = new(() =>
    {
        try
        {
            var r = ProcessUtilities.RunToolAsync(ServerBinaries.TryFind(ServerBinaries.Setpriv)!, ["--help"], TimeSpan.FromSeconds(5))
                .GetAwaiter().GetResult();
            return r.StandardOutput.Contains("--pdeathsig", StringComparison.Ordinal);
        }
        catch (Exception ex) when (ex is InvalidOperationException or TimeoutException or System.ComponentModel.Win32Exception)
        {
            return false;
        }
    });
}
