#!/usr/bin/env bash
# Builds the NovaCron QEMU test guest under guest/out/ (git-ignored):
#   guest/out/vmlinuz            Debian cloud kernel (from linux-image-cloud-amd64's dependency)
#   guest/out/init               static /init built from guest/init.c
#   guest/out/initramfs.cpio.gz  newc archive: dev/ proc/ dev/console (c 5:1) init
#
# Idempotent and cached: only out-of-date pieces are rebuilt; the kernel .deb is kept in
# guest/out/debs/. Progress goes to stderr; on success stdout gets exactly two lines,
#   kernel=/abs/path/guest/out/vmlinuz
#   initrd=/abs/path/guest/out/initramfs.cpio.gz
# Needs: gcc, libc6-dev (static libc), python3, apt (apt-cache, apt-get), dpkg-deb, tar.
# Network (a Debian mirror) only the first time or after the kernel package changes.
set -Eeuo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
GUEST="$ROOT/guest"
OUT="$GUEST/out"
DEBS="$OUT/debs"
META_PACKAGE="linux-image-cloud-amd64"
CFLAGS=(-static -O2 -Wall -Wextra -Werror)

log() { echo "build-guest: $*" >&2; }
die() { echo "build-guest: error: $*" >&2; exit 1; }
trap 'die "unexpected failure (line $LINENO: $BASH_COMMAND)"' ERR

for tool in gcc python3 apt-cache apt-get dpkg-deb tar; do
    command -v "$tool" >/dev/null 2>&1 || die "'$tool' not found (install it: see scripts/install-deps.sh)"
done
[ -f "$GUEST/init.c" ] || die "$GUEST/init.c is missing"
[ -f "$ROOT/scripts/mkcpio.py" ] || die "$ROOT/scripts/mkcpio.py is missing"

mkdir -p "$DEBS" || die "cannot create $DEBS"

# One build at a time per checkout (parallel test runners may all call this).
exec 9>"$OUT/.lock"
if command -v flock >/dev/null 2>&1; then
    flock 9 || die "cannot lock $OUT/.lock"
fi

export DEBIAN_FRONTEND=noninteractive
exec </dev/null # never wait for input (CI)

# ---------------------------------------------------------------- kernel
kernel_package() {
    apt-cache depends "$META_PACKAGE" 2>/dev/null |
        awk '$1 == "Depends:" && $2 ~ /^linux-image-[0-9]/ { print $2; exit }'
}

build_kernel() {
    local package deb stamp tmp vmlinuz
    package="$(kernel_package || true)"
    if [ -z "$package" ]; then
        if [ "$(id -u)" -eq 0 ]; then
            log "apt-cache knows no $META_PACKAGE; running apt-get update"
            apt-get update -qq >&2 || log "apt-get update failed"
            package="$(kernel_package || true)"
        else
            log "apt-cache knows no $META_PACKAGE and not root: cannot run apt-get update"
        fi
    fi
    if [ -z "$package" ]; then
        if [ -s "$OUT/vmlinuz" ]; then
            log "warning: cannot resolve $META_PACKAGE; keeping cached kernel ($(cat "$OUT/vmlinuz.package" 2>/dev/null || echo unknown))"
            return 0
        fi
        die "cannot find the kernel package that $META_PACKAGE depends on (apt-cache depends $META_PACKAGE)"
    fi

    deb="$(find "$DEBS" -maxdepth 1 -name "${package}_*_amd64.deb" -print | sort | tail -n 1)"
    if [ -z "$deb" ]; then
        log "downloading $package"
        tmp="$(mktemp -d "$DEBS/download.XXXXXX")"
        chmod 755 "$tmp"
        # As root, apt-get download drops to user _apt, which cannot write here.
        if ! (cd "$tmp" && apt-get download -qq -o APT::Sandbox::User=root "$package" >&2); then
            rm -rf "$tmp"
            die "apt-get download $package failed (no network to the Debian mirror? stale lists: try apt-get update)"
        fi
        deb="$(find "$tmp" -maxdepth 1 -name "${package}_*.deb" -print | head -n 1)"
        [ -n "$deb" ] || { rm -rf "$tmp"; die "apt-get download $package produced no .deb"; }
        mv "$deb" "$DEBS/" || die "cannot move $deb to $DEBS"
        deb="$DEBS/$(basename "$deb")"
        rm -rf "$tmp"
        # Drop older kernels' packages.
        find "$DEBS" -maxdepth 1 -name 'linux-image-*.deb' ! -name "$(basename "$deb")" -delete
    fi

    stamp="$(basename "$deb")"
    if [ -s "$OUT/vmlinuz" ] && [ "$(cat "$OUT/vmlinuz.package" 2>/dev/null)" = "$stamp" ]; then
        log "kernel up to date ($stamp)"
        return 0
    fi
    log "extracting vmlinuz from $stamp"
    tmp="$(mktemp -d "$OUT/extract.XXXXXX")"
    # Same as dpkg -x, but only ./boot (skips ~100 MB of modules the guest does not load).
    if ! dpkg-deb --fsys-tarfile "$deb" | tar -x -C "$tmp" --wildcards './boot/vmlinuz-*'; then
        rm -rf "$tmp"
        rm -f "$deb"
        die "cannot extract boot/vmlinuz-* from $deb (deleted it; run again to re-download)"
    fi
    vmlinuz="$(find "$tmp/boot" -maxdepth 1 -name 'vmlinuz-*' -type f -print | head -n 1)"
    [ -n "$vmlinuz" ] || { rm -rf "$tmp"; die "no boot/vmlinuz-* in $deb"; }
    cp "$vmlinuz" "$OUT/vmlinuz.tmp" || die "cannot write $OUT/vmlinuz.tmp"
    mv "$OUT/vmlinuz.tmp" "$OUT/vmlinuz" || die "cannot write $OUT/vmlinuz"
    echo "$stamp" >"$OUT/vmlinuz.package" || die "cannot write $OUT/vmlinuz.package"
    rm -rf "$tmp"
}

# ------------------------------------------------------------------ init
# Rebuilt when missing or older than init.c or this script (which holds the flags).
build_init() {
    if [ -x "$OUT/init" ] && [ "$OUT/init" -nt "$GUEST/init.c" ] &&
        [ "$OUT/init" -nt "${BASH_SOURCE[0]}" ]; then
        log "init up to date"
        return 0
    fi
    log "compiling init.c"
    if ! gcc "${CFLAGS[@]}" -o "$OUT/init.tmp" "$GUEST/init.c" >&2; then
        rm -f "$OUT/init.tmp"
        die "gcc ${CFLAGS[*]} failed on guest/init.c (static linking needs libc6-dev)"
    fi
    mv "$OUT/init.tmp" "$OUT/init" || die "cannot write $OUT/init"
}

# ------------------------------------------------------------- initramfs
build_initramfs() {
    local cpio="$OUT/initramfs.cpio.gz"
    if [ -s "$cpio" ] && [ "$cpio" -nt "$OUT/init" ] && [ "$cpio" -nt "$ROOT/scripts/mkcpio.py" ] &&
        [ "$cpio" -nt "${BASH_SOURCE[0]}" ]; then
        log "initramfs up to date"
        return 0
    fi
    log "writing initramfs.cpio.gz"
    python3 "$ROOT/scripts/mkcpio.py" "$cpio" \
        dir:dev dir:proc chr:dev/console=5,1:0600 file:init="$OUT/init":0755 ||
        die "mkcpio.py failed"
}

build_kernel
build_init
build_initramfs

echo "kernel=$OUT/vmlinuz"
echo "initrd=$OUT/initramfs.cpio.gz"
