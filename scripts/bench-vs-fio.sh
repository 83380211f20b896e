#!/usr/bin/env bash
# Runs the four fio shapes against `nbdkit memory size=1G` over a Unix socket (or TCP with --tcp), first with
# fio's nbd engine (libnbd), then with our load tool, and prints both. Loopback/Unix only; each run is time-bounded.
set -euo pipefail
cd "$(dirname "$0")/.."
runtime=${RUNTIME:-5}
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
for shape in "read 256k 16" "write 256k 16" "randread 4k 32" "randwrite 4k 32"; do
    set -- $shape
    fio_line=$(fio --name=j --ioengine=nbd --uri="$uri" --rw="$1" --bs="$2" --iodepth="$3" --runtime="$runtime" --time_based --size=1g --output-format=json 2>/dev/null | sed -n "/^{/,\$p" |
        python3 -c 'import json,sys; j=json.load(sys.stdin)["jobs"][0]; d=j["read"] if j["read"]["io_bytes"] else j["write"]; print("%.0f IOPS %.1f MiB/s" % (d["iops"], d["bw"] / 1024))')
    ours=$("$tool" --uri "$uri" --rw "$1" --bs "$2" --iodepth "$3" --runtime "$runtime")
    echo "$1 bs=$2 qd=$3 | fio/libnbd: $fio_line | ours: $ours"
done
# Multi-conn: the same sequential read spread over 4 connections (nbdkit's memory plugin offers CAN_MULTI_CONN),
# against fio's single-connection figure above.
echo "read bs=256k qd=16 over 4 connections | ours: $("$tool" --uri "$uri" --rw read --bs 256k --iodepth 16 --connections 4 --runtime "$runtime")"

