#!/usr/bin/env bash
# Runs every libFuzzer target for the given number of seconds each, seeded from valid samples.
# Crashes are saved under fuzz-artifacts/ and fail the run.
set -euo pipefail
seconds=${1:?usage: fuzz.sh SECONDS}
cd "$(dirname "$0")/.."
targets=(WireFrameFuzzer ImageDecoderFuzzer ChunkSummaryFuzzer SegmentRecoveryFuzzer StreamDecoderFuzzer)
# Longest input per target: frames are small; seed image streams reach ~25 KB.
declare -A max_len=([WireFrameFuzzer]=8192 [ImageDecoderFuzzer]=65536 [ChunkSummaryFuzzer]=4096 [SegmentRecoveryFuzzer]=8192 [StreamDecoderFuzzer]=16384)

corpus=.build-fuzz/corpus
mkdir -p fuzz-artifacts
for target in "${targets[@]}"; do
    mkdir -p "$corpus/$target"
done

# Seed the wire corpus with one valid frame of every type, plain and with the harness's reseal mode.
swift build --product novacron >/dev/null
.build/debug/novacron wire sample --out "$corpus/WireFrameFuzzer/sample.dwcp" >/dev/null
{ printf '\x00'; cat "$corpus/WireFrameFuzzer/sample.dwcp"; } > "$corpus/WireFrameFuzzer/seed-plain"
{ printf '\x01'; cat "$corpus/WireFrameFuzzer/sample.dwcp"; } > "$corpus/WireFrameFuzzer/seed-resealed"
rm "$corpus/WireFrameFuzzer/sample.dwcp"
# Seed the encoding corpora with valid streams and summaries (every record kind, stored and compressed).
swift build --product encoding-bench >/dev/null
.build/debug/encoding-bench --fuzz-seeds "$corpus/ImageDecoderFuzzer" "$corpus/ChunkSummaryFuzzer" \
    "$corpus/SegmentRecoveryFuzzer" "$corpus/StreamDecoderFuzzer" >/dev/null

for target in "${targets[@]}"; do
    log=$(mktemp)
    echo "fuzz: $target for ${seconds}s"
    if ! SWIFT_BACKTRACE=enable=no ".build-fuzz/release/$target" \
        -max_total_time="$seconds" -max_len="${max_len[$target]}" -timeout=10 -rss_limit_mb=2048 \
        -artifact_prefix="fuzz-artifacts/$target-" -print_final_stats=1 \
        "$corpus/$target" >"$log" 2>&1; then
        tail -40 "$log"
        echo "fuzz: $target FAILED; the crashing input is in fuzz-artifacts/ (replay: .build-fuzz/release/$target FILE)" >&2
        rm -f "$log"
        exit 1
    fi
    runs=$(grep -oE 'stat::number_of_executed_units: *[0-9]+' "$log" | grep -oE '[0-9]+$' || echo "?")
    echo "fuzz: $target passed: $runs inputs, no crash, no hang"
    rm -f "$log"
done
