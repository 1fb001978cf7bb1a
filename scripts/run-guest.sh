#!/usr/bin/env bash
# Boots the NovaCron test guest under QEMU (TCG) with the launch line that migrates
# correctly on these machines (see guest/README.md). Builds the guest first if needed.
#
#   scripts/run-guest.sh [options] [nc_key=value ...] [-- extra qemu args ...]
#
# Options:
#   --log FILE    serial console to FILE (default: stdio; Ctrl-C stops qemu)
#   --qmp SOCK    add -qmp unix:SOCK,server=on,wait=off
#   --mem SIZE    guest RAM (default 524280k; keep it NOT a multiple of 256 KiB)
#   --print       print the qemu command line instead of running it
# Words nc_*=... go to the kernel command line, e.g.
#   scripts/run-guest.sh nc_wss_mib=128 nc_rate_mib=16 nc_pattern=sparse nc_fill=text
# Everything after -- is passed to qemu unchanged (e.g. -incoming defer -S).
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
die() { echo "run-guest: error: $*" >&2; exit 1; }

serial="stdio"
mem="524280k"
qmp=()
print=0
words=()
extra=()
while [ $# -gt 0 ]; do
    case "$1" in
        --log) [ $# -ge 2 ] || die "--log needs a file"; serial="file:$2"; shift 2 ;;
        --qmp) [ $# -ge 2 ] || die "--qmp needs a socket path"; qmp=(-qmp "unix:$2,server=on,wait=off"); shift 2 ;;
        --mem) [ $# -ge 2 ] || die "--mem needs a size"; mem="$2"; shift 2 ;;
        --print) print=1; shift ;;
        --) shift; extra=("$@"); break ;;
        nc_*=*) words+=("$1"); shift ;;
        *) die "unknown argument '$1' (nc_key=value words, --log, --qmp, --mem, --print, -- qemu args)" ;;
    esac
done

paths="$("$ROOT/scripts/build-guest.sh")" || die "scripts/build-guest.sh failed"
kernel="$(sed -n 's/^kernel=//p' <<<"$paths")"
initrd="$(sed -n 's/^initrd=//p' <<<"$paths")"

cmd=(qemu-system-x86_64 -accel tcg -M pc-i440fx-7.2 -cpu qemu64 -m "$mem" -smp 1
    -display none -nodefaults -no-user-config -no-reboot
    -kernel "$kernel" -initrd "$initrd"
    -append "console=ttyS0 panic=-1 quiet ${words[*]:-}"
    -serial "$serial" "${qmp[@]}" "${extra[@]}")

if [ "$print" -eq 1 ]; then
    printf '%q ' "${cmd[@]}"
    echo
    exit 0
fi
exec "${cmd[@]}"
