#!/usr/bin/env bash
# Runs the four fio shapes against `nbdkit memory size=1G` over a Unix socket (or TCP with --tcp): for each shape,
# fio's nbd engine (libnbd) and our load tool take turns REPEAT times against the same server, and the median of
# each is compared. Loopback/Unix only; every run is time-bounded (RUNTIME seconds).
set -euo pipefail
cd "$(dirname "$0")/.."
runtime=${RUNTIME:-5}
repeat=${REPEAT:-3}
dotnet build -c Release tests/NbdAttachment.Benchmarks >/dev/null
tool=tests/NbdAttachment.Benchmarks/bin/Release/net10.0/NbdAttachment.Benchmarks
dir=$(mktemp -d)
if [[ "${1:-}" == "--tcp" ]]; then
    port=$((20000 + RANDOM % 20000))
    nbdkit -f -p "$port" -i 127.0.0.1 memory size=1G & uri="nbd://127.0.0.1:$port/"
else
    nbdkit -f -U "$dir/sock" memory size=1G & uri="nbd+unix:///?socket=$dir/sock"
fi
server=$!
trap 'kill $server; rm -rf "$dir"' EXIT
sleep 1

fio_run() { # rw bs iodepth -> "IOPS MiB/s"
    fio --name=j --ioengine=nbd --uri="$uri" --rw="$1" --bs="$2" --iodepth="$3" --runtime="$runtime" --time_based --size=1g --output-format=json 2>/dev/null |
        sed -n "/^{/,\$p" | python3 -c 'import json,sys; j=json.load(sys.stdin)["jobs"][0]; d=j["read"] if j["read"]["io_bytes"] else j["write"]; print("%.0f %.1f" % (d["iops"], d["bw"] / 1024))'
}

ours_run() { # rw bs iodepth [extra args] -> "IOPS MiB/s B/op p50 p99"
    "$tool" --uri "$uri" --rw "$1" --bs "$2" --iodepth "$3" --runtime "$runtime" --json "${@:4}" |
        python3 -c 'import json,sys; r=json.load(sys.stdin); print("%.0f %.1f %.2f %.0f %.0f" % (r["Iops"], r["MiBPerSecond"], r["AllocatedBytesPerOperation"], r["P50Microseconds"], r["P99Microseconds"]))'
}

median() { python3 -c 'import sys,statistics; print("%.1f" % statistics.median(float(x) for x in sys.argv[1:]))' "$@"; }

printf '%-26s | %-34s | %-34s | %s\n' shape "fio/libnbd MiB/s (median)" "ours MiB/s (median)" "ours/fio, B/op, p50/p99 us"
fio_single_read=
for shape in "read 256k 16" "write 256k 16" "randread 4k 32" "randwrite 4k 32"; do
    set -- $shape
    fio_mib=(); our_mib=(); alloc=(); p50=(); p99=()
    for ((i = 0; i < repeat; i++)); do
        read -r _ f <<<"$(fio_run "$1" "$2" "$3")"; fio_mib+=("$f")
        read -r _ o a m n <<<"$(ours_run "$1" "$2" "$3")"; our_mib+=("$o"); alloc+=("$a"); p50+=("$m"); p99+=("$n")
    done
    fm=$(median "${fio_mib[@]}"); om=$(median "${our_mib[@]}")
    [[ "$1" == read ]] && fio_single_read=$fm
    printf '%-26s | %-34s | %-34s | %s\n' "$1 bs=$2 qd=$3" "$fm (${fio_mib[*]})" "$om (${our_mib[*]})" \
        "$(python3 -c "print('%.2f' % ($om / $fm))"), $(median "${alloc[@]}") B/op, $(median "${p50[@]}")/$(median "${p99[@]}")"
done

# Multi-conn: the same sequential read spread over 4 connections (nbdkit's memory plugin offers CAN_MULTI_CONN),
# against fio's single-connection median above.
multi=()
for ((i = 0; i < repeat; i++)); do read -r _ o _ <<<"$(ours_run read 256k 16 --connections 4)"; multi+=("$o"); done
mm=$(median "${multi[@]}")
printf '%-26s | %-34s | %-34s | %s\n' "read 256k qd=16, 4 conns" "$fio_single_read (1 connection)" "$mm (${multi[*]})" "$(python3 -c "print('%.2f' % ($mm / $fio_single_read))")"
