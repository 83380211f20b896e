using System.Collections.ObjectModel;
using System.Diagnostics;
using System.Globalization;
using System.Text;
using NbdAttachment.InteropTests.Servers;

namespace NbdAttachment.InteropTests.Guest;

/// <summary>How to boot the test guest.</summary>
public sealed record GuestMachineOptions
{
    /// <summary>The vhost-user-blk socket of the backend (it must be listening, or start listening within <see cref="SocketWaitTimeout"/>).</summary>
    public required string VhostUserSocketPath { get; init; }

    /// <summary>The /init scenario: write-verify, read-only, discard, long-write, throughput (see <see cref="GuestScenarios"/>).</summary>
    public required string Scenario { get; init; }

    /// <summary>Extra <c>nbdtest.KEY=VALUE</c> kernel parameters (chunks, chunk_bytes, sync_every, delay_ms, mib).</summary>
    public IReadOnlyDictionary<string, string> Parameters { get; init; } = ReadOnlyDictionary<string, string>.Empty;

    /// <summary>Bound on the whole run (boot, scenario, power-off); the VM is killed when it elapses. Default 90 s.</summary>
    public TimeSpan Timeout { get; init; } = TimeSpan.FromSeconds(90);

    /// <summary>How long to wait for <see cref="VhostUserSocketPath"/> to appear before starting QEMU. Default 10 s.</summary>
    public TimeSpan SocketWaitTimeout { get; init; } = TimeSpan.FromSeconds(10);

    /// <summary>Guest RAM (shared memfd, as vhost-user requires). Default 256 MiB.</summary>
    public int MemoryMiB { get; init; } = 256;

    /// <summary>virtio-blk queues (<c>num-queues</c>). Default 1.</summary>
    public int QueueCount { get; init; } = 1;

    /// <summary>
    /// QEMU accelerator. Default: <see cref="GuestMachine.AcceleratorVariable"/> if set (e.g. "kvm"), else "tcg":
    /// on the CI machines /dev/kvm is a paravirtualised layer on which -cpu host aborts and the default CPU hangs.
    /// </summary>
    public string? Accelerator { get; init; }

    /// <summary>Receives every console line as it arrives (e.g. ITestOutputHelper.WriteLine); optional.</summary>
    public Action<string>? ConsoleLog { get; init; }
}

/// <summary>The outcome of a guest run, parsed from its serial console.</summary>
public sealed class GuestRunResult
{
    internal GuestRunResult(string console, int qemuExitCode, TimeSpan elapsed, TimeSpan? bootTime)
    {
        Console = console;
        QemuExitCode = qemuExitCode;
        Elapsed = elapsed;
        BootTime = bootTime;
        var results = new Dictionary<string, string>(StringComparer.Ordinal);
        var failures = new List<string>();
        var errors = new List<string>();
        foreach (var line in console.Split('\n'))
        {
            var at = line.IndexOf("NBDTEST ", StringComparison.Ordinal);
            if (at < 0)
            {
                continue;
            }

            var body = line[(at + "NBDTEST ".Length)..].TrimEnd();
            if (body.StartsWith("RESULT ", StringComparison.Ordinal) && body.IndexOf('=', StringComparison.Ordinal) is var eq and > 0)
            {
                results[body["RESULT ".Length..eq]] = body[(eq + 1)..];
            }
            else if (body.StartsWith("FAIL ", StringComparison.Ordinal))
            {
                failures.Add(body["FAIL ".Length..]);
            }
            else if (body.StartsWith("ERROR ", StringComparison.Ordinal))
            {
                errors.Add(body["ERROR ".Length..]);
            }
            else if (body.StartsWith("DONE rc=", StringComparison.Ordinal) &&
                     int.TryParse(body["DONE rc=".Length..], NumberStyles.Integer, CultureInfo.InvariantCulture, out var rc))
            {
                GuestExitCode = rc;
            }
        }

        Results = results;
        Failures = failures;
        Errors = errors;
    }

    /// <summary>N of <c>NBDTEST DONE rc=N</c> (the number of failed guest checks), or null when the guest never finished.</summary>
    public int? GuestExitCode { get; }

    public int QemuExitCode { get; }

    /// <summary><c>NBDTEST RESULT key=value</c> lines.</summary>
    public IReadOnlyDictionary<string, string> Results { get; }

    /// <summary>Keys of <c>NBDTEST FAIL key</c> lines (guest checks that said "no").</summary>
    public IReadOnlyList<string> Failures { get; }

    /// <summary><c>NBDTEST ERROR text</c> lines.</summary>
    public IReadOnlyList<string> Errors { get; }

    /// <summary>The full serial console.</summary>
    public string Console { get; }

    /// <summary>QEMU start to power-off.</summary>
    public TimeSpan Elapsed { get; }

    /// <summary>QEMU start to <c>NBDTEST BOOTED</c> (the disk appeared), or null.</summary>
    public TimeSpan? BootTime { get; }

    public string this[string key] => Results.TryGetValue(key, out var v)
        ? v
        : throw new KeyNotFoundException($"The guest printed no RESULT {key}.{Environment.NewLine}{Tail()}");

    public long GetInt64(string key) => long.Parse(this[key], NumberStyles.Integer, CultureInfo.InvariantCulture);

    /// <summary>The last <paramref name="lines"/> console lines.</summary>
    public string Tail(int lines = 40) => string.Join('\n', Console.Split('\n').TakeLast(lines));
}

/// <summary>Scenario names understood by the guest's /init.</summary>
public static class GuestScenarios
{
    public const string WriteVerify = "write-verify";
    public const string ReadOnly = "read-only";
    public const string Discard = "discard";
    public const string LongWrite = "long-write";
    public const string Throughput = "throughput";
}

/// <summary>
/// A throw-away Linux guest (Debian cloud kernel + busybox initramfs) in qemu-system-x86_64, whose only disk is
/// a vhost-user-blk device on <see cref="GuestMachineOptions.VhostUserSocketPath"/>; /init runs one scenario and
/// powers off. The serial console is captured; the run is bounded by <see cref="GuestMachineOptions.Timeout"/>;
/// DisposeAsync kills QEMU and deletes the temporary directory. Missing QEMU, busybox-static or kernel skip the
/// test (fail under NBD_INTEROP_REQUIRED=1).
/// </summary>
public sealed class GuestMachine : IAsyncDisposable
{
    /// <summary>Set to "kvm" (or "kvm:tcg") to try another accelerator than TCG.</summary>
    public const string AcceleratorVariable = "NBD_GUEST_ACCEL";

    private readonly object _gate = new();
    private readonly StringBuilder _console = new();
    private readonly List<(Func<string, bool> Match, TaskCompletionSource<string> Done)> _waiters = [];
    private readonly TaskCompletionSource _exited = new(TaskCreationOptions.RunContinuationsAsynchronously);
    private readonly TempDirectory _temp;
    private readonly Stopwatch _clock = new();
    private Process? _process;
    private TimeSpan? _bootTime;
    private bool _disposed;

    private GuestMachine(GuestMachineOptions options, GuestKernel kernel, TempDirectory temp)
    {
        Options = options;
        Kernel = kernel;
        _temp = temp;
    }

    public GuestMachineOptions Options { get; }

    public GuestKernel Kernel { get; }

    /// <summary>The QEMU command line.</summary>
    public string? CommandLine { get; private set; }

    /// <summary>The console so far.</summary>
    public string Console
    {
        get
        {
            lock (_gate)
            {
                return _console.ToString();
            }
        }
    }

    /// <summary>True until QEMU exits.</summary>
    public bool IsRunning => !_exited.Task.IsCompleted;

    /// <summary>Boots the guest and runs it to power-off; returns the parsed result (throws <see cref="TimeoutException"/> with the console tail on timeout).</summary>
    public static async Task<GuestRunResult> RunAsync(GuestMachineOptions options, CancellationToken cancellationToken = default)
    {
        await using var machine = await StartAsync(options, cancellationToken).ConfigureAwait(false);
        return await machine.WaitForExitAsync(cancellationToken).ConfigureAwait(false);
    }

    /// <summary>Prepares the kernel and initramfs, waits for the backend socket, starts QEMU. Returns once QEMU runs.</summary>
    public static async Task<GuestMachine> StartAsync(GuestMachineOptions options, CancellationToken cancellationToken = default)
    {
        ArgumentNullException.ThrowIfNull(options);
        var qemu = ServerBinaries.RequireOrSkip(ServerBinaries.QemuSystemX86);
        var kernel = await GuestKernel.RequireOrSkipAsync(cancellationToken).ConfigureAwait(false);
        var temp = new TempDirectory("nbd-guest-");
        var machine = new GuestMachine(options, kernel, temp);
        try
        {
            await machine.StartCoreAsync(qemu, cancellationToken).ConfigureAwait(false);
            return machine;
        }
        catch
        {
            await machine.DisposeAsync().ConfigureAwait(false);
            throw;
        }
    }

    /// <summary>Waits (bounded) for a console line that satisfies <paramref name="match"/>, e.g. a PROGRESS line; returns it.</summary>
    /// <exception cref="TimeoutException">No such line within <paramref name="timeout"/>, or QEMU exited first.</exception>
    public async Task<string> WaitForLineAsync(Func<string, bool> match, TimeSpan timeout, CancellationToken cancellationToken = default)
    {
        ArgumentNullException.ThrowIfNull(match);
        var done = new TaskCompletionSource<string>(TaskCreationOptions.RunContinuationsAsynchronously);
        lock (_gate)
        {
            var existing = _console.ToString().Split('\n').FirstOrDefault(match);
            if (existing is not null)
            {
                return existing;
            }

            _waiters.Add((match, done));
        }

        try
        {
            var finished = await Task.WhenAny(done.Task, _exited.Task, Task.Delay(timeout, cancellationToken)).ConfigureAwait(false);
            if (finished == done.Task)
            {
                return await done.Task.ConfigureAwait(false);
            }

            cancellationToken.ThrowIfCancellationRequested();
            throw new TimeoutException(
                $"{(finished == _exited.Task ? "The guest exited" : $"No matching console line within {timeout.TotalSeconds:0.#} s")}.{Environment.NewLine}{Tail()}");
        }
        finally
        {
            lock (_gate)
            {
                _waiters.RemoveAll(w => w.Done == done);
            }
        }
    }

    /// <summary>Convenience: waits for <c>NBDTEST PROGRESS chunk=N</c> with N ≥ <paramref name="chunk"/>.</summary>
    public Task<string> WaitForProgressAsync(int chunk, TimeSpan timeout, CancellationToken cancellationToken = default) =>
        WaitForLineAsync(
            l => l.Contains("NBDTEST PROGRESS chunk=", StringComparison.Ordinal) &&
                 int.TryParse(l[(l.IndexOf("chunk=", StringComparison.Ordinal) + 6)..].Trim(), NumberStyles.Integer, CultureInfo.InvariantCulture, out var n) &&
                 n >= chunk,
            timeout,
            cancellationToken);

    /// <summary>
    /// Waits until QEMU exits (bounded by what is left of <see cref="GuestMachineOptions.Timeout"/>) and returns the
    /// parsed console. On timeout QEMU is killed and a <see cref="TimeoutException"/> carries the console tail.
    /// </summary>
    public async Task<GuestRunResult> WaitForExitAsync(CancellationToken cancellationToken = default)
    {
        var left = Options.Timeout - _clock.Elapsed;
        var finished = await Task.WhenAny(_exited.Task, Task.Delay(left > TimeSpan.Zero ? left : TimeSpan.Zero, cancellationToken)).ConfigureAwait(false);
        if (finished != _exited.Task)
        {
            await KillAsync().ConfigureAwait(false);
            cancellationToken.ThrowIfCancellationRequested();
            throw new TimeoutException(
                $"The guest (scenario {Options.Scenario}) did not power off within {Options.Timeout.TotalSeconds:0.#} s; killed.{Environment.NewLine}Command: {CommandLine}{Environment.NewLine}{Tail()}");
        }

        var p = _process!;
        await p.WaitForExitAsync(CancellationToken.None).ConfigureAwait(false); // drain the output
        return new GuestRunResult(Console, p.ExitCode, _clock.Elapsed, _bootTime);
    }

    /// <summary>Kills QEMU (SIGKILL to the process tree) and waits, bounded, until it is gone.</summary>
    public async Task KillAsync()
    {
        if (_process is not { } p)
        {
            return;
        }

        try
        {
            if (!p.HasExited)
            {
                var pids = new List<int> { p.Id };
                pids.AddRange(ProcessUtilities.Descendants(p.Id));
                ProcessUtilities.SignalTree(p.Id, ProcessUtilities.SigKill);
                await ProcessUtilities.WaitForExitAsync(pids, TimeSpan.FromSeconds(10)).ConfigureAwait(false);
                using var cts = new CancellationTokenSource(TimeSpan.FromSeconds(10));
                await p.WaitForExitAsync(cts.Token).ConfigureAwait(false); // reap, drain output, raise Exited
            }
        }
        catch (InvalidOperationException)
        {
        }
        catch (OperationCanceledException)
        {
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
            if (_process is { } p)
            {
                using var cts = new CancellationTokenSource(TimeSpan.FromSeconds(10));
                try
                {
                    await p.WaitForExitAsync(cts.Token).ConfigureAwait(false);
                }
                catch (OperationCanceledException)
                {
                }

                p.Dispose();
            }
        }
        finally
        {
            _temp.Dispose();
        }
    }

    private string Tail(int lines = 40)
    {
        var text = Console;
        return $"Console (last {lines} lines):{Environment.NewLine}{string.Join('\n', text.Split('\n').TakeLast(lines))}";
    }

    private async Task StartCoreAsync(string qemu, CancellationToken cancellationToken)
    {
        var initrd = _temp.Combine("initrd.cpio");
        await GuestInitramfs.BuildAsync(Kernel, initrd, cancellationToken).ConfigureAwait(false);
        await WaitForSocketAsync(Options.VhostUserSocketPath, Options.SocketWaitTimeout, cancellationToken).ConfigureAwait(false);

        var accel = Options.Accelerator ?? (Environment.GetEnvironmentVariable(AcceleratorVariable) is { Length: > 0 } a ? a : "tcg");
        var append = new StringBuilder("console=ttyS0 panic=-1 quiet loglevel=1 nbdtest.scenario=").Append(Options.Scenario);
        foreach (var (key, value) in Options.Parameters)
        {
            append.Append(CultureInfo.InvariantCulture, $" nbdtest.{key}={value}");
        }

        var mem = Options.MemoryMiB.ToString(CultureInfo.InvariantCulture) + "M";
        var (fileName, args) = ServerProcess.WithParentDeathSignal(qemu);
        args.AddRange(
        [
            "-nodefaults", "-no-user-config", "-display", "none", "-monitor", "none", "-serial", "stdio", "-no-reboot",
            "-accel", accel, "-smp", "1",
            "-object", $"memory-backend-memfd,id=mem,size={mem},share=on", "-numa", "node,memdev=mem", "-m", mem,
            "-kernel", Kernel.KernelPath, "-initrd", initrd, "-append", append.ToString(),
            "-chardev", $"socket,id=vhost0,path={Options.VhostUserSocketPath}",
            "-device", $"vhost-user-blk-pci,chardev=vhost0,num-queues={Options.QueueCount.ToString(CultureInfo.InvariantCulture)}",
        ]);
        var info = new ProcessStartInfo(fileName)
        {
            UseShellExecute = false,
            RedirectStandardOutput = true,
            RedirectStandardError = true,
            RedirectStandardInput = true, // -serial stdio: keep stdin open and empty
            WorkingDirectory = _temp.Path,
        };
        foreach (var arg in args)
        {
            info.ArgumentList.Add(arg);
        }

        CommandLine = ProcessUtilities.FormatCommandLine(info);
        var process = await ProcessLauncher.StartAsync(info).ConfigureAwait(false);
        _clock.Start();
        _process = process;
        process.Exited += (_, _) => _exited.TrySetResult();
        OutputPump.Start(process, line => OnLine(line, null), line => OnLine(line, "[qemu stderr] "));
        if (process.HasExited)
        {
            _exited.TrySetResult();
        }
    }

    private void OnLine(string? data, string? prefix)
    {
        if (data is null)
        {
            return;
        }

        var line = prefix + data.Replace("\r", string.Empty, StringComparison.Ordinal);
        List<TaskCompletionSource<string>> matched = [];
        lock (_gate)
        {
            _console.Append(line).Append('\n');
            if (_bootTime is null && line.Contains("NBDTEST BOOTED", StringComparison.Ordinal))
            {
                _bootTime = _clock.Elapsed;
            }

            foreach (var w in _waiters.Where(w => w.Match(line)).ToList())
            {
                matched.Add(w.Done);
                _waiters.Remove(w);
            }
        }

        foreach (var done in matched)
        {
            done.TrySetResult(line);
        }

        Options.ConsoleLog?.Invoke(line);
    }

    private static async Task WaitForSocketAsync(string path, TimeSpan timeout, CancellationToken cancellationToken)
    {
        var clock = Stopwatch.StartNew();
        while (!File.Exists(path))
        {
            if (clock.Elapsed > timeout)
            {
                throw new TimeoutException($"The vhost-user socket {path} did not appear within {timeout.TotalSeconds:0.#} s.");
            }

            await Task.Delay(20, cancellationToken).ConfigureAwait(false);
        }
    }
}
