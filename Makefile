# NovaCron: the two commands are `make demo` (the main job) and `make test` (everything CI checks).
SHELL := /bin/bash
SWIFT ?= swift
FUZZ_SECONDS ?= 300
FUZZ_SMOKE_SECONDS ?= 15
QUICK ?=
ARGS ?=

.PHONY: all deps build release test fuzz fuzz-smoke fuzz-build demo bench bench-wire bench-wanem bench-encoding \
	bench-transfer bench-migration require-root fmt lint clean

all: build

deps:
	@bash scripts/install-deps.sh

build: deps
	$(SWIFT) build

release: deps
	$(SWIFT) build -c release --scratch-path .build-release

## test: install deps, build, run every test, then a short libFuzzer run of every fuzz target.
test: deps fuzz-build
	@FUZZ_SMOKE_SECONDS=$(FUZZ_SMOKE_SECONDS) bash scripts/test.sh

## demo: two node agents, a busy 512 MiB guest live-migrated a → b and back over DWCP, each time with the
## destination's RAM compared to the source's and the heartbeat checked; over a wanem continental link as root,
## loopback otherwise (it says which). Release build (the stream encoder is several times slower in debug).
## ARGS passes flags to scripts/demo.py (--profile global, --loopback, …).
demo: release
	@bash scripts/build-guest.sh >/dev/null
	python3 scripts/demo.py --build .build-release/release $(ARGS)

## fuzz: libFuzzer on every fuzz target for FUZZ_SECONDS each (default 300 s, millions of inputs).
fuzz: fuzz-build
	@bash scripts/fuzz.sh $(FUZZ_SECONDS)

fuzz-smoke: fuzz-build
	@bash scripts/fuzz.sh $(FUZZ_SMOKE_SECONDS)

FUZZ_TARGETS := WireFrameFuzzer ImageDecoderFuzzer ChunkSummaryFuzzer SegmentRecoveryFuzzer StreamDecoderFuzzer

fuzz-build: deps
	for target in $(FUZZ_TARGETS); do \
		FUZZ=1 $(SWIFT) build -c release --sanitize=fuzzer --product $$target --scratch-path .build-fuzz || exit 1; \
	done

## bench: every benchmark (long). QUICK=1 for a short version; ARGS passes flags through.
bench: bench-wire bench-wanem bench-encoding bench-transfer bench-migration

bench-wire: release
	python3 Benchmarks/bench_wire.py $(if $(QUICK),--quick) $(ARGS)

bench-wanem: release
	python3 Benchmarks/bench_wanem.py $(if $(QUICK),--quick) $(ARGS)

## bench-encoding: captures the guest RAM corpus into var/corpus once (scripts/capture-guest-ram.sh), measures
## HDE on it in process, then (as root) end to end over a wanem global link: --encode auto vs none vs zstd -3 | TCP.
bench-encoding: release
	@test -f var/corpus/random-full-64/ram-1.img || bash scripts/capture-guest-ram.sh var/corpus 2 5
	python3 Benchmarks/bench_encoding.py --corpus var/corpus --workloads idle,text-sparse-16,random-full-64 \
		$(if $(QUICK),--quick,--zstd19) $(ARGS)
	@if [ "$$(id -u)" -eq 0 ]; then python3 Benchmarks/bench_encoding_wan.py --corpus var/corpus $(if $(QUICK),--quick); \
	else echo "bench-encoding: the end-to-end part over wanem needs root (sudo make bench-encoding); skipped"; fi

## bench-transfer: tcp, iperf3, scp, rsync and novacron moving 1 GiB a → b over wanem links (docs/transport.md).
## Needs root; QUICK=1: 128 MiB, 2 runs, lan only (ARGS="--profiles continental" for other links).
bench-transfer: require-root release
	python3 Benchmarks/bench_transfer.py $(if $(QUICK),--quick) $(ARGS)

## bench-migration: a 512 MiB test guest live-migrated over wanem links (continental, global, lossy-edge) with
## three workloads: novacron (two agents, there and back) against QEMU's own TCP migration and QEMU multifd + zstd
## (docs/migration.md). Needs root; QUICK=1: continental, sparse16, 1 run, multifd 8 channels.
bench-migration: require-root release
	@bash scripts/build-guest.sh >/dev/null
	python3 Benchmarks/bench_migration.py $(if $(QUICK),--quick) $(ARGS)

require-root:
	@if [ "$$(id -u)" -ne 0 ]; then \
		echo "$(MAKECMDGOALS): needs root (network namespaces, TUN devices; bench-transfer also sshd): run sudo make $(MAKECMDGOALS)" >&2; \
		exit 1; fi

fmt:
	$(SWIFT) format --in-place --recursive Package.swift Sources Tests Fuzz

lint:
	$(SWIFT) format lint --recursive Package.swift Sources Tests Fuzz

clean:
	rm -rf .build .build-release .build-fuzz fuzz-artifacts
