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
# Each line: "qemu-storage-daemon: write A MB/s, read B MB/s; ours: write C MB/s, read D MB/s; ratio ...".
sed -E 's/.*daemon: write ([0-9.]+) MB\/s, read ([0-9.]+) MB\/s; ours: write ([0-9.]+) MB\/s, read ([0-9.]+) MB\/s.*/\1 \2 \3 \4/' "$out" |
    awk '
        { rw[NR] = $1; rr[NR] = $2; ow[NR] = $3; orr[NR] = $4; xw[NR] = $3 / $1; xr[NR] = $4 / $2 }
        END {
            printf "medians of %d pairs: reference write %.1f MB/s, read %.1f MB/s; ours write %.1f MB/s, read %.1f MB/s; pair ratios ours/reference: write %.2f, read %.2f\n",
                NR, med(rw, NR), med(rr, NR), med(ow, NR), med(orr, NR), med(xw, NR), med(xr, NR)
        }
        function med(a, n,    i, j, t, b) { for (i = 1; i <= n; i++) b[i] = a[i]; for (i = 1; i <= n; i++) for (j = i + 1; j <= n; j++) if (b[j] < b[i]) { t = b[i]; b[i] = b[j]; b[j] = t }; return n % 2 ? b[(n + 1) / 2] : (b[n / 2] + b[n / 2 + 1]) / 2 }
    '
rm -f "$out"
