#!/usr/bin/env bash
# `make test`: build, run every Swift Testing test, then a short libFuzzer run of every fuzz target,
# and close with one summary line.
set -euo pipefail
cd "$(dirname "$0")/.."
fuzz_seconds=${FUZZ_SMOKE_SECONDS:-15}

# QEMU VMs started by tests are named nctest-*; a test run that crashed may leave some behind.
kill_test_vms() { pkill -KILL -f -- '-name nctest-' 2>/dev/null || true; }
log=$(mktemp)
trap 'rm -f "$log"; kill_test_vms' EXIT
kill_test_vms

bash scripts/build-guest.sh >/dev/null
swift build --build-tests
set +e
swift test --skip-build --disable-xctest 2>&1 | tee "$log"
status=${PIPESTATUS[0]}
set -e
tests=$(grep -oE 'Test run with [0-9]+ tests?' "$log" | grep -oE '[0-9]+' | tail -1 || true)
failed=$(grep -oE 'with [0-9]+ tests? in [0-9]+ suites? failed' "$log" | head -1 || true)
if [ "$status" -ne 0 ] || [ -n "$failed" ] || [ -z "$tests" ]; then
    echo "test: swift test failed (exit $status)" >&2
    exit 1
fi

bash scripts/fuzz.sh "$fuzz_seconds"
echo "test: ${tests} passed, 0 failed"
