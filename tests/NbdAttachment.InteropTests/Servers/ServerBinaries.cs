using System.Collections.Concurrent;

namespace NbdAttachment.InteropTests.Servers;

/// <summary>
/// Locates the external programs the interop tests drive, and turns a missing program into a
/// skipped test — or, when <c>NBD_INTEROP_REQUIRED=1</c> (CI), into a failed test.
/// </summary>
public static class ServerBinaries
{
    public const string Nbdkit = "nbdkit";
    public const string QemuNbd = "qemu-nbd";
    public const string QemuImg = "qemu-img";
    public const string NbdServer = "nbd-server";
    public const string Nbdinfo = "nbdinfo";
    public const string Certtool = "certtool";
    public const string Openssl = "openssl";
    public const string Setpriv = "setpriv";
    public const string QemuSystemX86 = "qemu-system-x86_64";
    public const string QemuStorageDaemon = "qemu-storage-daemon";
    public const string Busybox = "busybox";
    public const string AptGet = "apt-get";
    public const string AptCache = "apt-cache";
    public const string DpkgDeb = "dpkg-deb";
    public const string Cpio = "cpio";

    /// <summary>Pseudo-program name of the guest kernel package (fetched with apt-get download at test time).</summary>
    public const string GuestKernel = "linux-image-cloud-amd64";

    /// <summary>Environment variable that makes missing interop programs a test failure.</summary>
    public const string RequiredVariable = "NBD_INTEROP_REQUIRED";

    private static readonly ConcurrentDictionary<string, string?> Cache = new(StringComparer.Ordinal);

    private static readonly Dictionary<string, string> DebianPackages = new(StringComparer.Ordinal)
    {
        [Nbdkit] = "nbdkit",
        [QemuNbd] = "qemu-utils",
        [QemuImg] = "qemu-utils",
        [NbdServer] = "nbd-server",
        [Nbdinfo] = "libnbd-bin",
        [Certtool] = "gnutls-bin",
        [Openssl] = "openssl",
        [Setpriv] = "util-linux",
        [QemuSystemX86] = "qemu-system-x86",
        [QemuStorageDaemon] = "qemu-system-common",
        [Busybox] = "busybox-static",
        [AptGet] = "apt",
        [AptCache] = "apt",
        [DpkgDeb] = "dpkg",
        [Cpio] = "cpio",
        [GuestKernel] = "linux-image-cloud-amd64 (downloaded, not installed)",
    };

    /// <summary>True when <c>NBD_INTEROP_REQUIRED=1</c>: missing programs fail instead of skip.</summary>
    public static bool InteropRequired =>
        string.Equals(Environment.GetEnvironmentVariable(RequiredVariable), "1", StringComparison.Ordinal);

    /// <summary>Full path of <paramref name="name"/> found on PATH (or /usr/sbin, /sbin), or null.</summary>
    public static string? TryFind(string name)
    {
        ArgumentException.ThrowIfNullOrEmpty(name);
        return Cache.GetOrAdd(name, static n =>
        {
            if (Path.IsPathRooted(n))
            {
                return File.Exists(n) ? n : null;
            }

            var path = Environment.GetEnvironmentVariable("PATH") ?? string.Empty;
            var dirs = path.Split(Path.PathSeparator, StringSplitOptions.RemoveEmptyEntries)
                .Concat(["/usr/local/sbin", "/usr/sbin", "/sbin", "/usr/local/bin", "/usr/bin", "/bin"]);
            foreach (var dir in dirs)
            {
                var candidate = Path.Combine(dir, n);
                if (File.Exists(candidate))
                {
                    return candidate;
                }
            }

            return null;
        });
    }

    public static bool IsAvailable(string name) => TryFind(name) is not null;

    /// <summary>
    /// Returns the full path of <paramref name="name"/>. If it is missing the current test is
    /// skipped (<see cref="SkipException"/>), or fails when <see cref="InteropRequired"/>.
    /// </summary>
    public static string RequireOrSkip(string name) => RequireOrSkip(name, InteropRequired);

    internal static string RequireOrSkip(string name, bool required)
    {
        var found = TryFind(name);
        if (found is not null)
        {
            return found;
        }

        var package = DebianPackages.TryGetValue(name, out var p) ? p : name;
        SkipOrFail($"'{name}' was not found on PATH (Debian/Ubuntu package: {package}).", required);
        return name; // unreachable
    }

    /// <summary>
    /// Skips the current test because a prerequisite (a program, the guest kernel...) is missing or
    /// unusable, or fails it when <see cref="InteropRequired"/>. Never returns.
    /// </summary>
    public static void SkipOrFail(string reason) => SkipOrFail(reason, InteropRequired);

    /// <summary>Debian package that provides <paramref name="name"/> (as listed in the table), or the name itself.</summary>
    public static string PackageOf(string name) => DebianPackages.TryGetValue(name, out var p) ? p : name;

    internal static void SkipOrFail(string reason, bool required)
    {
        if (required)
        {
            throw new InvalidOperationException(
                $"{reason} {RequiredVariable}=1, so interop tests must not be skipped; install it (see .ci/run).");
        }

        Skip.If(true, reason);
    }

    /// <summary>Like <see cref="RequireOrSkip"/> for the first available of several alternatives.</summary>
    public static string RequireAnyOrSkip(params string[] names)
    {
        foreach (var name in names)
        {
            if (TryFind(name) is { } found)
            {
                return found;
            }
        }

        return RequireOrSkip(names[0]);
    }

    /// <summary>
    /// Skips the test when a feature is missing from the installed version of a program. This
    /// always skips (even when <see cref="InteropRequired"/>): an older server version is not an
    /// installation error.
    /// </summary>
    public static void SkipUnlessSupported(bool supported, string reason) => Skip.IfNot(supported, reason);
}
