#!/usr/bin/env bash
# Guest disk throughput through our vhost-user-blk backend against qemu-storage-daemon (the reference), both in
# front of the same kind of nbdkit memory export, one QEMU (TCG) guest each, taking turns REPEAT times.
# Prints every pair and the medians. Usage: REPEAT=5 bash scripts/bench-guest.sh
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
repeat="${REPEAT:-5}"
dotnet build tests/NbdAttachment.InteropTests -c Release -v q -nologo >/dev/null
out="$(mktemp -t bench-guest.XXXXXX)"
for ((i = 1; i <= repeat; i++)); do
    dotnet test tests/NbdAttachment.InteropTests -c Release --no-build \
        --filter "FullyQualifiedName~OurBackendGuestTests.Throughput_compared_with_qemu_storage_daemon" \
        --logger "console;verbosity=detailed" 2>&1 | grep -o 'qemu-storage-daemon: write.*' | tee -a "$out"
done
awk '
    { for (i = 1; i <= NF; i++) { if ($i == "write" && $(i+1) ~ /^[0-9.]+$/) w[n_w++] = $(i+1); if ($i == "read" && $(i+1) ~ /^[0-9.]+$/) r[n_r++] = $(i+1) } }
    END {
        # per line: ref write, ref read, ours write, ours read (in that order)
        for (k = 0; k < n_w / 2; k++) { rw[k] = w[2*k]; ow[k] = w[2*k+1]; rr[k] = r[2*k]; orr[k] = r[2*k+1] }
        m = n_w / 2
        printf "median over %d runs: reference write %.1f MB/s read %.1f MB/s; ours write %.1f MB/s read %.1f MB/s; ratio write %.2f read %.2f\n",
            m, med(rw, m), med(rr, m), med(ow, m), med(orr, m), med(ow, m) / med(rw, m), med(orr, m) / med(rr, m)
    }
    function med(a, n,    i, j, t, b) { for (i = 0; i < n; i++) b[i] = a[i]; for (i = 0; i < n; i++) for (j = i + 1; j < n; j++) if (b[j] < b[i]) { t = b[i]; b[i] = b[j]; b[j] = t }; return n % 2 ? b[int(n/2)] : (b[n/2-1] + b[n/2]) / 2 }
' "$out"
rm -f "$out"
