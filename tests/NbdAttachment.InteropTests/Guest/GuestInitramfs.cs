using System.Buffers.Binary;
using NbdAttachment.InteropTests.Servers;

namespace NbdAttachment.InteropTests.Guest;

/// <summary>
/// Builds, offline, the test guest's initramfs (an uncompressed newc cpio written by <see cref="CpioWriter"/>):
/// busybox-static as /bin/busybox (its applet links are made by /init with <c>busybox --install -s</c>), the
/// virtio-blk modules with their dependencies, <c>/data/pattern.bin</c> (<see cref="GuestPattern"/>),
/// util-linux <c>blkdiscard</c> with its shared libraries when the host has it (busybox's blkdiscard has no
/// <c>-z</c>, and busybox 1.35's fallocate has no <c>-z</c>/<c>-p</c>: BLKZEROOUT needs util-linux), and
/// <c>/init</c> (<see cref="InitScript"/>).
/// </summary>
/// <remarks>
/// The /init protocol, on the serial console, one line each (see <see cref="GuestRunResult"/>):
/// <c>NBDTEST BOOTED uptime=S</c> once /dev/vda exists; <c>NBDTEST RESULT key=value</c> (value may hold spaces);
/// <c>NBDTEST FAIL key</c> for each failed guest-side check; <c>NBDTEST PROGRESS chunk=N</c> (long-write);
/// <c>NBDTEST ERROR text</c>; finally <c>NBDTEST DONE rc=N</c> (N = number of failed checks), then
/// <c>poweroff -f</c>. Parameters come from the kernel command line: <c>nbdtest.scenario=NAME</c> and
/// <c>nbdtest.KEY=VALUE</c> (chunks, chunk_bytes, sync_every, delay_ms, mib).
/// </remarks>
public static class GuestInitramfs
{
    /// <summary>The drivers the guest needs; dependencies are added from each module's modinfo.</summary>
    public static readonly IReadOnlyList<string> Modules = ["virtio_pci", "virtio_blk"];

    /// <summary>util-linux blkdiscard (for <c>-z</c>, BLKZEROOUT); copied with its libraries when present.</summary>
    public const string UtilLinuxBlkdiscard = "/sbin/blkdiscard";

    /// <summary>Where util-linux blkdiscard lives in the guest (busybox's applet is /bin/blkdiscard).</summary>
    public const string GuestZeroTool = "/usr/sbin/blkdiscard";

    /// <summary>Builds the initramfs at <paramref name="outputPath"/>; skips (or fails under NBD_INTEROP_REQUIRED=1) without busybox-static.</summary>
    public static async Task BuildAsync(GuestKernel kernel, string outputPath, CancellationToken cancellationToken = default)
    {
        ArgumentNullException.ThrowIfNull(kernel);
        var busybox = RequireStaticBusybox();
        var modules = kernel.ResolveModules(Modules);
        var zeroTool = File.Exists(UtilLinuxBlkdiscard) ? await SharedLibrariesAsync(UtilLinuxBlkdiscard, cancellationToken).ConfigureAwait(false) : null;

        await using var file = new FileStream(outputPath, FileMode.Create, FileAccess.Write, FileShare.None, 1 << 16);
        await using var cpio = new CpioWriter(file);
        foreach (var dir in new[] { "bin", "sbin", "usr/bin", "usr/sbin", "dev", "proc", "sys", "tmp", "root", "data", "lib/modules" })
        {
            cpio.AddDirectory(dir);
        }

        cpio.AddCharDevice("dev/console", 5, 1);
        cpio.AddCharDevice("dev/null", 1, 3, 0x1B6);
        cpio.AddFile("bin/busybox", await File.ReadAllBytesAsync(busybox, cancellationToken).ConfigureAwait(false), 0x1ED);
        cpio.AddSymlink("bin/sh", "busybox");
        foreach (var (name, path) in modules)
        {
            cpio.AddFile($"lib/modules/{name}.ko", await File.ReadAllBytesAsync(path, cancellationToken).ConfigureAwait(false));
        }

        cpio.AddFile("lib/modules/order", string.Join('\n', modules.Select(m => m.Name)) + "\n");
        cpio.AddFile("data/pattern.bin", GuestPattern.Bytes.Span);
        if (zeroTool is not null)
        {
            cpio.AddFile(GuestZeroTool, await File.ReadAllBytesAsync(UtilLinuxBlkdiscard, cancellationToken).ConfigureAwait(false), 0x1ED);
            foreach (var library in zeroTool)
            {
                // File.ReadAllBytes follows symlinks (e.g. /lib64/ld-linux-x86-64.so.2): the guest gets real files.
                cpio.AddFile(library, await File.ReadAllBytesAsync(library, cancellationToken).ConfigureAwait(false), 0x1ED);
            }
        }

        cpio.AddFile("init", InitScript, 0x1ED);
        cpio.Finish();
    }

    /// <summary>/bin/busybox from busybox-static (a dynamically linked busybox cannot run without its libraries).</summary>
    private static string RequireStaticBusybox()
    {
        var busybox = ServerBinaries.RequireOrSkip(ServerBinaries.Busybox);
        if (!IsStaticElf(busybox))
        {
            ServerBinaries.SkipOrFail($"{busybox} is dynamically linked; the guest needs the static one (Debian package {ServerBinaries.PackageOf(ServerBinaries.Busybox)}).");
        }

        return busybox;
    }

    /// <summary>True when the ELF file has no PT_INTERP program header.</summary>
    internal static bool IsStaticElf(string path)
    {
        var bytes = File.ReadAllBytes(path);
        if (bytes.Length < 64 || bytes[0] != 0x7F || bytes[1] != (byte)'E' || bytes[4] != 2 /* ELFCLASS64 */)
        {
            return false;
        }

        var phoff = (long)BinaryPrimitives.ReadUInt64LittleEndian(bytes.AsSpan(0x20));
        var phentsize = BinaryPrimitives.ReadUInt16LittleEndian(bytes.AsSpan(0x36));
        var phnum = BinaryPrimitives.ReadUInt16LittleEndian(bytes.AsSpan(0x38));
        for (var i = 0; i < phnum; i++)
        {
            var at = phoff + ((long)i * phentsize);
            if (at + 4 > bytes.Length)
            {
                return false;
            }

            if (BinaryPrimitives.ReadUInt32LittleEndian(bytes.AsSpan((int)at)) == 3 /* PT_INTERP */)
            {
                return false;
            }
        }

        return true;
    }

    /// <summary>The absolute paths of the shared libraries (and loader) <paramref name="program"/> needs, from ldd; null when ldd fails.</summary>
    private static async Task<IReadOnlyList<string>?> SharedLibrariesAsync(string program, CancellationToken cancellationToken)
    {
        var ldd = ServerBinaries.TryFind("ldd");
        if (ldd is null)
        {
            return null;
        }

        var r = await ProcessUtilities.RunToolAsync(ldd, [program], TimeSpan.FromSeconds(10), cancellationToken: cancellationToken).ConfigureAwait(false);
        if (r.ExitCode != 0)
        {
            return null;
        }

        var libraries = new List<string>();
        foreach (var raw in r.StandardOutput.Split('\n', StringSplitOptions.RemoveEmptyEntries | StringSplitOptions.TrimEntries))
        {
            // "libc.so.6 => /lib/x86_64-linux-gnu/libc.so.6 (0x...)" or "/lib64/ld-linux-x86-64.so.2 (0x...)"
            var line = raw.Contains("=>", StringComparison.Ordinal) ? raw[(raw.IndexOf("=>", StringComparison.Ordinal) + 2)..].Trim() : raw;
            var path = line.Split(' ', 2)[0];
            if (path.StartsWith('/') && File.Exists(path))
            {
                libraries.Add(path);
            }
        }

        return libraries;
    }

    /// <summary>The guest's /init: common setup, then one scenario chosen by <c>nbdtest.scenario=</c>.</summary>
    public const string InitScript = """
        #!/bin/busybox sh
        # NbdAttachment test guest /init, generated by tests/NbdAttachment.InteropTests/Guest/GuestInitramfs.cs.
        /bin/busybox mount -t devtmpfs devtmpfs /dev 2>/dev/null
        /bin/busybox --install -s /bin
        export PATH=/bin:/usr/sbin
        mount -t proc proc /proc
        mount -t sysfs sysfs /sys
        set -o pipefail

        SCENARIO=none CHUNKS=64 CHUNK=262144 SYNC_EVERY=8 DELAY_MS=0 MIB=64
        for arg in $(cat /proc/cmdline); do
          case "$arg" in
            nbdtest.scenario=*) SCENARIO="${arg#*=}" ;;
            nbdtest.chunks=*) CHUNKS="${arg#*=}" ;;
            nbdtest.chunk_bytes=*) CHUNK="${arg#*=}" ;;
            nbdtest.sync_every=*) SYNC_EVERY="${arg#*=}" ;;
            nbdtest.delay_ms=*) DELAY_MS="${arg#*=}" ;;
            nbdtest.mib=*) MIB="${arg#*=}" ;;
          esac
        done

        FAILED=0
        result() { k="$1"; shift; echo "NBDTEST RESULT $k=$*"; }
        # check NAME yes|no: report a guest-side check; "no" counts as a failure.
        check() { result "$1" "$2"; if [ "$2" != yes ]; then FAILED=$((FAILED + 1)); echo "NBDTEST FAIL $1"; fi; }
        yesno() { if "$@"; then echo yes; else echo no; fi; }
        finish() {
          result dmesg_io_errors "$(dmesg | grep -c 'I/O error')"
          if [ "$1" != 0 ]; then dmesg | tail -n 25 | sed 's/^/NBDTEST DMESG /'; fi
          echo "NBDTEST DONE rc=$1"
          poweroff -f
        }
        now_ns() { sed -n 's/^now at \([0-9]*\) nsecs$/\1/p' /proc/timer_list | head -n 1; }
        md5() { md5sum | cut -d' ' -f1; }
        # rd OFFSET_MIB COUNT_MIB: md5 of a device range read with O_DIRECT.
        rd() { dd if=/dev/vda bs=1048576 skip="$1" count="$2" iflag=direct 2>/dev/null | md5; }
        # pat OFFSET_MIB COUNT_MIB: md5 of a pattern range.
        pat() { dd if=/data/pattern.bin bs=1048576 skip="$1" count="$2" 2>/dev/null | md5; }
        zeroes() { dd if=/dev/zero bs=1048576 count="$1" 2>/dev/null | md5; }
        drop_caches() { sync; echo 3 > /proc/sys/vm/drop_caches; }

        for m in $(cat /lib/modules/order); do
          insmod "/lib/modules/$m.ko" || echo "NBDTEST ERROR insmod $m failed"
        done
        i=0
        while [ ! -b /dev/vda ] && [ $i -lt 200 ]; do usleep 50000; i=$((i + 1)); done
        if [ ! -b /dev/vda ]; then echo "NBDTEST ERROR no /dev/vda after 10 s"; finish 100; fi
        echo "NBDTEST BOOTED uptime=$(cut -d' ' -f1 /proc/uptime)"
        result scenario "$SCENARIO"
        result size_bytes $(( $(cat /sys/block/vda/size) * 512 ))
        result ro "$(cat /sys/block/vda/ro)"
        result serial "$(cat /sys/block/vda/serial 2>/dev/null)"
        result discard_max_bytes "$(cat /sys/block/vda/queue/discard_max_bytes)"
        result write_zeroes_max_bytes "$(cat /sys/block/vda/queue/write_zeroes_max_bytes)"

        case "$SCENARIO" in
        write-verify)
          # a: pattern [0,4M) -> disk 0 (buffered + fsync); b: pattern [4M,5M) -> disk 16M (O_DIRECT).
          check a_write_ok "$(yesno dd if=/data/pattern.bin of=/dev/vda bs=1048576 count=4 conv=fsync 2>/dev/null)"
          check b_write_ok "$(yesno dd if=/data/pattern.bin of=/dev/vda bs=1048576 skip=4 seek=16 count=1 oflag=direct 2>/dev/null)"
          drop_caches
          A_EXP=$(pat 0 4) A_GOT=$(rd 0 4) B_EXP=$(pat 4 1) B_GOT=$(rd 16 1)
          A_BUF=$(dd if=/dev/vda bs=1048576 count=4 2>/dev/null | md5)
          result a_md5 "$A_GOT"
          result b_md5 "$B_GOT"
          check a_match "$(yesno [ "$A_EXP" = "$A_GOT" ])"
          check a_buffered_match "$(yesno [ "$A_EXP" = "$A_BUF" ])"
          check b_match "$(yesno [ "$B_EXP" = "$B_GOT" ])"
          ;;
        read-only)
          check ro_flag "$(yesno [ "$(cat /sys/block/vda/ro)" = 1 ])"
          if dd if=/data/pattern.bin of=/dev/vda bs=4096 count=1 oflag=direct 2>/tmp/err; then check write_rejected no; else check write_rejected yes; fi
          result write_error "$(grep -v records /tmp/err | head -n 1)"
          if blkdiscard -o 0 -l 1048576 /dev/vda 2>/dev/null; then check discard_rejected no; else check discard_rejected yes; fi
          check read_ok "$(yesno dd if=/dev/vda of=/dev/null bs=1048576 count=4 iflag=direct 2>/dev/null)"
          result head_md5 "$(rd 0 1)"
          ;;
        discard)
          # pattern [0,4M) -> disk 0; discard [1M,2M); write zeroes [2M,3M); [0,1M) and [3M,4M) stay.
          check write_ok "$(yesno dd if=/data/pattern.bin of=/dev/vda bs=1048576 count=4 oflag=direct 2>/dev/null)"
          check discard_ok "$(yesno blkdiscard -o 1048576 -l 1048576 /dev/vda)"
          if [ -x /usr/sbin/blkdiscard ]; then
            result zero_method blkzeroout
            check zero_ok "$(yesno /usr/sbin/blkdiscard -z -o 2097152 -l 1048576 /dev/vda)"
          else
            result zero_method dd-zeroes
            check zero_ok "$(yesno dd if=/dev/zero of=/dev/vda bs=1048576 seek=2 count=1 oflag=direct 2>/dev/null)"
          fi
          drop_caches
          Z=$(zeroes 1)
          check discarded_reads_zero "$(yesno [ "$(rd 1 1)" = "$Z" ])"
          check zeroed_reads_zero "$(yesno [ "$(rd 2 1)" = "$Z" ])"
          check head_intact "$(yesno [ "$(rd 0 1)" = "$(pat 0 1)" ])"
          check tail_intact "$(yesno [ "$(rd 3 1)" = "$(pat 3 1)" ])"
          ;;
        long-write)
          # Chunk i (CHUNK bytes) = pattern chunk (i mod PCHUNKS) at disk chunk i; every SYNC_EVERY-th is buffered + fsync
          # (a FLUSH), the others O_DIRECT. PROGRESS after each chunk lets the host act mid-run.
          PCHUNKS=$(( $(stat -c %s /data/pattern.bin) / CHUNK ))
          ERR=0 i=0
          T0=$(now_ns)
          while [ $i -lt "$CHUNKS" ]; do
            if [ $(( (i + 1) % SYNC_EVERY )) -eq 0 ]; then FLAG=conv=fsync; else FLAG=oflag=direct; fi
            if ! dd if=/data/pattern.bin of=/dev/vda bs="$CHUNK" skip=$((i % PCHUNKS)) seek=$i count=1 $FLAG 2>/tmp/err; then
              ERR=$((ERR + 1)); echo "NBDTEST ERROR chunk $i: $(grep -v records /tmp/err | head -n 1)"
            fi
            echo "NBDTEST PROGRESS chunk=$i"
            if [ "$DELAY_MS" -gt 0 ]; then usleep $((DELAY_MS * 1000)); fi
            i=$((i + 1))
          done
          sync
          T1=$(now_ns)
          result write_errors "$ERR"
          result elapsed_ns $((T1 - T0))
          check no_write_errors "$(yesno [ "$ERR" = 0 ])"
          drop_caches
          EXP=$(i=0; while [ $i -lt "$CHUNKS" ]; do dd if=/data/pattern.bin bs="$CHUNK" skip=$((i % PCHUNKS)) count=1 2>/dev/null; i=$((i + 1)); done | md5)
          GOT=$(dd if=/dev/vda bs="$CHUNK" count="$CHUNKS" iflag=direct 2>/dev/null | md5)
          result written_md5 "$EXP"
          result read_md5 "$GOT"
          check readback_match "$(yesno [ "$EXP" = "$GOT" ])"
          check no_dmesg_io_errors "$(yesno [ "$(dmesg | grep -c 'I/O error')" = 0 ])"
          ;;
        throughput)
          # MIB MiB of zeroes, 1 MiB O_DIRECT requests; times from /proc/timer_list (ns; busybox date has no %N).
          T0=$(now_ns)
          check write_ok "$(yesno dd if=/dev/zero of=/dev/vda bs=1048576 count="$MIB" oflag=direct 2>/dev/null)"
          T1=$(now_ns)
          check read_ok "$(yesno dd if=/dev/vda of=/dev/null bs=1048576 count="$MIB" iflag=direct 2>/dev/null)"
          T2=$(now_ns)
          result bytes $((MIB * 1048576))
          result write_ns $((T1 - T0))
          result read_ns $((T2 - T1))
          ;;
        *)
          echo "NBDTEST ERROR unknown scenario '$SCENARIO'"
          FAILED=$((FAILED + 1))
          ;;
        esac
        finish "$FAILED"

        """;
}
