#!/usr/bin/env bash
# Installs every Debian package NovaCron needs to build, test and benchmark.
# Idempotent: prints nothing and exits 0 when everything is already present.
set -euo pipefail

# One package per line: why it is needed follows the '#'.
PACKAGES=(
    pkg-config          # locates libzstd and libxxhash for the system-library targets
    libzstd-dev         # CZstd: Zstandard compression (HDE)
    libxxhash-dev       # CXXHash: xxh3 checksums in DWCP frames
    iproute2            # ip netns / ip link for wanem and network tests
    iperf3              # wanem selftest and transfer baselines
    iputils-ping        # wanem selftest RTT measurement
    openssh-server      # bench-transfer: sshd inside a wanem namespace (scp and rsync baselines)
    openssh-client      # bench-transfer: scp, ssh, ssh-keygen
    rsync               # bench-transfer: rsync over ssh baseline
    time                # bench-transfer: GNU time, CPU and peak RSS of each transfer's processes
    qemu-system-x86     # level-1 hypervisor for the test guest
    gcc                 # builds the guest's static /init
    python3             # scripts/mkcpio.py writes the guest initramfs
    libc6-dev           # static libc for the guest's /init
)

missing=()
for package in "${PACKAGES[@]}"; do
    if ! dpkg-query -W -f='${Status}' "$package" 2>/dev/null | grep -q "install ok installed"; then
        missing+=("$package")
    fi
done

[ ${#missing[@]} -eq 0 ] && exit 0

if [ "$(id -u)" -ne 0 ]; then
    echo "install-deps: missing Debian packages: ${missing[*]}" >&2
    echo "install-deps: run as root (sudo $0) or install them with: apt-get install -y ${missing[*]}" >&2
    exit 1
fi

echo "install-deps: installing ${missing[*]}"
export DEBIAN_FRONTEND=noninteractive
apt-get update -qq
apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
echo "install-deps: done"
