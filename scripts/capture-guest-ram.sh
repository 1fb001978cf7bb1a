#!/usr/bin/env bash
# Captures the corpus the encoding work (HDE) measures on: RAM images of the test guest taken some
# seconds apart under several workloads, plus a QEMU migration-stream capture of each.
#
#   scripts/capture-guest-ram.sh [OUT_DIR] [IMAGES] [INTERVAL_SECONDS]
#
# Writes OUT_DIR/<workload>/ram-N.img and OUT_DIR/<workload>/state.migration (default OUT_DIR:
# var/corpus, git-ignored). Each image is the whole guest RAM (512 MiB less 8 KiB).
set -euo pipefail
cd "$(dirname "$0")/.."
out=${1:-var/corpus}
images=${2:-2}
interval=${3:-5}

bash scripts/install-deps.sh
bash scripts/build-guest.sh >/dev/null
swift build --product novacron >/dev/null

# name | guest workload (nc_* words, see guest/README.md)
workloads=(
    "idle|nc_wss_mib=128 nc_rate_mib=0"
    "text-sparse-16|nc_wss_mib=128 nc_rate_mib=16 nc_pattern=sparse nc_fill=text"
    "random-full-64|nc_wss_mib=128 nc_rate_mib=64 nc_pattern=full nc_fill=random"
)
for entry in "${workloads[@]}"; do
    name=${entry%%|*}
    words=${entry#*|}
    echo "capture: $name ($words)"
    .build/debug/novacron vm save-ram --name "capture-$name" --memory 512M \
        --append "console=ttyS0 panic=-1 quiet $words" \
        --out "$out/$name" --images "$images" --interval "$interval" --stream
done
echo "capture: done; corpus in $out"
