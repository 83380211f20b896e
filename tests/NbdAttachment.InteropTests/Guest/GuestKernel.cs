using System.Diagnostics;
using System.Text;
using NbdAttachment.InteropTests.Servers;

namespace NbdAttachment.InteropTests.Guest;

/// <summary>
/// The Linux kernel the test guest boots: Debian's cloud kernel (<c>linux-image-cloud-amd64</c>), whose
/// virtio drivers are loadable modules. Found, in order: under <see cref="DirectoryVariable"/> (an unpacked
/// package: <c>boot/vmlinuz-*</c> and <c>lib/modules/RELEASE/</c>); in the cache folder
/// (<see cref="CacheVariable"/>, default <c>/tmp/nbdattachment-guest-cache</c>); otherwise fetched into the cache
/// with <c>apt-get download</c> (no root needed, no installation) and unpacked with <c>dpkg-deb -x</c>, under a
/// file lock so parallel test processes do not race. A missing kernel skips the test, or fails it under
/// <c>NBD_INTEROP_REQUIRED=1</c>.
/// </summary>
public sealed class GuestKernel
{
    /// <summary>Use this unpacked kernel package instead of fetching one.</summary>
    public const string DirectoryVariable = "NBD_GUEST_KERNEL_DIR";

    /// <summary>Cache folder for fetched kernels.</summary>
    public const string CacheVariable = "NBD_GUEST_CACHE";

    /// <summary>The meta package; its dependency is the versioned kernel package that is fetched.</summary>
    public const string MetaPackage = "linux-image-cloud-amd64";

    private const string CompleteMarker = ".complete";
    private static readonly SemaphoreSlim InProcess = new(1, 1);
    private static GuestKernel? _cached;

    private GuestKernel(string root, string kernelPath, string modulesDirectory, string source)
    {
        Root = root;
        KernelPath = kernelPath;
        ModulesDirectory = modulesDirectory;
        Release = Path.GetFileName(modulesDirectory);
        Source = source;
    }

    /// <summary>The unpacked package folder.</summary>
    public string Root { get; }

    /// <summary>The bzImage (<c>boot/vmlinuz-RELEASE</c>).</summary>
    public string KernelPath { get; }

    /// <summary><c>lib/modules/RELEASE</c>.</summary>
    public string ModulesDirectory { get; }

    /// <summary>The kernel release, e.g. <c>6.1.0-57-cloud-amd64</c>.</summary>
    public string Release { get; }

    /// <summary>Where the kernel came from (for logs).</summary>
    public string Source { get; }

    /// <summary>The cache root.</summary>
    public static string CacheRoot =>
        Environment.GetEnvironmentVariable(CacheVariable) is { Length: > 0 } dir ? dir : Path.Combine("/tmp", "nbdattachment-guest-cache");

    /// <summary>Returns the kernel, fetching it on first use; skips (or fails under NBD_INTEROP_REQUIRED=1) when impossible.</summary>
    public static async Task<GuestKernel> RequireOrSkipAsync(CancellationToken cancellationToken = default)
    {
        if (Volatile.Read(ref _cached) is { } cached)
        {
            return cached;
        }

        await InProcess.WaitAsync(cancellationToken).ConfigureAwait(false);
        try
        {
            if (_cached is not null)
            {
                return _cached;
            }

            var (kernel, problem) = await LocateAsync(cancellationToken).ConfigureAwait(false);
            if (kernel is null)
            {
                ServerBinaries.SkipOrFail($"No guest kernel: {problem} (set {DirectoryVariable} to an unpacked {MetaPackage} dependency, or make 'apt-get download' work).");
                throw new UnreachableException();
            }

            Volatile.Write(ref _cached, kernel);
            return kernel;
        }
        finally
        {
            InProcess.Release();
        }
    }

    /// <summary>Full path of module <paramref name="name"/> (<c>virtio_blk</c>), or null when it is not a module of this kernel.</summary>
    public string? FindModule(string name)
    {
        var file = name.Replace('-', '_') + ".ko";
        return Directory.EnumerateFiles(Path.Combine(ModulesDirectory, "kernel"), "*.ko", SearchOption.AllDirectories)
            .FirstOrDefault(f => string.Equals(Path.GetFileName(f).Replace('-', '_'), file, StringComparison.Ordinal));
    }

    /// <summary>True when <paramref name="name"/> is built into the kernel (listed in modules.builtin).</summary>
    public bool IsBuiltIn(string name)
    {
        var builtin = Path.Combine(ModulesDirectory, "modules.builtin");
        var file = "/" + name.Replace('-', '_') + ".ko";
        return File.Exists(builtin) &&
               File.ReadLines(builtin).Any(l => l.Replace('-', '_').EndsWith(file, StringComparison.Ordinal));
    }

    /// <summary>
    /// The modules to insmod, dependencies first, for <paramref name="wanted"/>. Dependencies come from each
    /// module's own <c>depends=</c> modinfo string (the package ships no modules.dep; depmod runs at install).
    /// Built-in modules are left out.
    /// </summary>
    public IReadOnlyList<(string Name, string Path)> ResolveModules(IEnumerable<string> wanted)
    {
        var order = new List<(string, string)>();
        var visiting = new HashSet<string>(StringComparer.Ordinal);
        var done = new HashSet<string>(StringComparer.Ordinal);

        void Visit(string name)
        {
            name = name.Replace('-', '_');
            if (done.Contains(name) || IsBuiltIn(name))
            {
                return;
            }

            if (!visiting.Add(name))
            {
                throw new InvalidOperationException($"Module dependency cycle at {name}.");
            }

            var path = FindModule(name) ?? throw new InvalidOperationException(
                $"Kernel {Release} has neither a module nor a built-in driver '{name}'.");
            foreach (var dependency in ReadDepends(path))
            {
                Visit(dependency);
            }

            done.Add(name);
            order.Add((name, path));
        }

        foreach (var name in wanted)
        {
            Visit(name);
        }

        return order;
    }

    private static IEnumerable<string> ReadDepends(string modulePath)
    {
        // The .modinfo section is a list of NUL-terminated "key=value" strings; depends= is always present.
        var bytes = File.ReadAllBytes(modulePath);
        var key = "\0depends="u8;
        var at = bytes.AsSpan().IndexOf(key);
        if (at < 0)
        {
            return [];
        }

        var start = at + key.Length;
        var end = bytes.AsSpan(start).IndexOf((byte)0);
        var value = Encoding.ASCII.GetString(bytes, start, end < 0 ? bytes.Length - start : end);
        return value.Split(',', StringSplitOptions.RemoveEmptyEntries | StringSplitOptions.TrimEntries);
    }

    private static async Task<(GuestKernel? Kernel, string Problem)> LocateAsync(CancellationToken cancellationToken)
    {
        if (Environment.GetEnvironmentVariable(DirectoryVariable) is { Length: > 0 } given)
        {
            return TryOpen(given, $"{DirectoryVariable}={given}") is { } k
                ? (k, string.Empty)
                : (null, $"{DirectoryVariable}={given} holds no boot/vmlinuz-* with lib/modules/*");
        }

        Directory.CreateDirectory(CacheRoot);
        var (package, resolveProblem) = await ResolvePackageAsync(cancellationToken).ConfigureAwait(false);
        if (package is null)
        {
            // Offline or no apt lists: reuse whatever kernel a previous run fetched.
            var any = Directory.EnumerateDirectories(CacheRoot)
                .Where(d => File.Exists(Path.Combine(d, CompleteMarker)))
                .OrderByDescending(d => d, StringComparer.Ordinal)
                .Select(d => TryOpen(d, $"cache {d}"))
                .FirstOrDefault(k => k is not null);
            return any is not null ? (any, string.Empty) : (null, resolveProblem);
        }

        var target = Path.Combine(CacheRoot, package);
        if (File.Exists(Path.Combine(target, CompleteMarker)) && TryOpen(target, $"cache {target}") is { } hit)
        {
            return (hit, string.Empty);
        }

        await using var fileLock = await AcquireLockAsync(Path.Combine(CacheRoot, package + ".lock"), cancellationToken).ConfigureAwait(false);
        if (File.Exists(Path.Combine(target, CompleteMarker)) && TryOpen(target, $"cache {target}") is { } raced)
        {
            return (raced, string.Empty);
        }

        var aptGet = ServerBinaries.TryFind(ServerBinaries.AptGet);
        var dpkgDeb = ServerBinaries.TryFind(ServerBinaries.DpkgDeb);
        if (aptGet is null || dpkgDeb is null)
        {
            return (null, "apt-get or dpkg-deb is missing");
        }

        var work = Path.Combine(CacheRoot, package + ".work");
        if (Directory.Exists(work))
        {
            Directory.Delete(work, recursive: true);
        }

        Directory.CreateDirectory(work);
        var download = await ProcessUtilities.RunToolAsync(aptGet, ["download", "-q", package], TimeSpan.FromMinutes(5), work, cancellationToken)
            .ConfigureAwait(false);
        var deb = Directory.EnumerateFiles(work, "*.deb").FirstOrDefault();
        if (download.ExitCode != 0 || deb is null)
        {
            return (null, $"'apt-get download {package}' failed (exit {download.ExitCode}): {download.StandardError.Trim()}");
        }

        var unpacked = Path.Combine(work, "root");
        var extract = await ProcessUtilities.RunToolAsync(dpkgDeb, ["-x", deb, unpacked], TimeSpan.FromMinutes(2), work, cancellationToken)
            .ConfigureAwait(false);
        if (extract.ExitCode != 0)
        {
            return (null, $"'dpkg-deb -x {deb}' failed: {extract.StandardError.Trim()}");
        }

        if (Directory.Exists(target))
        {
            Directory.Delete(target, recursive: true);
        }

        Directory.Move(unpacked, target);
        Directory.Delete(work, recursive: true);
        await File.WriteAllTextAsync(Path.Combine(target, CompleteMarker), Path.GetFileName(deb), cancellationToken).ConfigureAwait(false);
        return TryOpen(target, $"apt-get download {package}") is { } fetched
            ? (fetched, string.Empty)
            : (null, $"{Path.GetFileName(deb)} holds no boot/vmlinuz-* with lib/modules/*");
    }

    /// <summary>The versioned package the meta package depends on, from <c>apt-cache depends</c> (offline, fast).</summary>
    private static async Task<(string? Package, string Problem)> ResolvePackageAsync(CancellationToken cancellationToken)
    {
        if (ServerBinaries.TryFind(ServerBinaries.AptCache) is not { } aptCache)
        {
            return (null, "apt-cache is missing and no kernel is cached");
        }

        var r = await ProcessUtilities.RunToolAsync(aptCache, ["depends", MetaPackage], TimeSpan.FromSeconds(30), cancellationToken: cancellationToken)
            .ConfigureAwait(false);
        var package = r.StandardOutput.Split('\n')
            .Select(l => l.Trim())
            .Where(l => l.StartsWith("Depends:", StringComparison.Ordinal))
            .Select(l => l["Depends:".Length..].Trim())
            .FirstOrDefault(p => p.StartsWith("linux-image-", StringComparison.Ordinal) && !p.Contains('<', StringComparison.Ordinal));
        return package is null
            ? (null, $"'apt-cache depends {MetaPackage}' names no kernel package (exit {r.ExitCode}; run apt-get update?) and no kernel is cached")
            : (package, string.Empty);
    }

    private static GuestKernel? TryOpen(string root, string source)
    {
        var modules = Path.Combine(root, "lib", "modules");
        var boot = Path.Combine(root, "boot");
        if (!Directory.Exists(modules) || !Directory.Exists(boot))
        {
            return null;
        }

        foreach (var release in Directory.EnumerateDirectories(modules).OrderByDescending(d => d, StringComparer.Ordinal))
        {
            var vmlinuz = Path.Combine(boot, "vmlinuz-" + Path.GetFileName(release));
            if (File.Exists(vmlinuz))
            {
                return new GuestKernel(root, vmlinuz, release, source);
            }
        }

        return null;
    }

    /// <summary>An exclusive lock file (FileShare.None is an flock on Linux), polled with a bound.</summary>
    private static async Task<FileStream> AcquireLockAsync(string path, CancellationToken cancellationToken)
    {
        var clock = Stopwatch.StartNew();
        while (true)
        {
            try
            {
                return new FileStream(path, FileMode.OpenOrCreate, FileAccess.ReadWrite, FileShare.None);
            }
            catch (IOException) when (clock.Elapsed < TimeSpan.FromMinutes(5))
            {
                await Task.Delay(100, cancellationToken).ConfigureAwait(false);
            }
        }
    }
}
