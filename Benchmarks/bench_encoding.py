#!/usr/bin/env python3
"""HDE (DWCPEncoding) benchmark: runs `encoding-bench` on pairs of guest RAM images and writes
docs/benchmarks/encoding.json + encoding.md (shared/BENCHMARKS.md conventions).

Each workload directory holds ram-0.img and ram-1.img, taken some seconds apart (make them with
scripts/capture-guest-ram.sh, or `novacron vm save-ram --images 2`). encoding-bench measures, in one
process and one run, HDE stage by stage and the zstd / lz4 command-line tools on the same files.

    python3 Benchmarks/bench_encoding.py [--corpus DIR] [--workloads text,random,idle] [--runs N]
        [--levels 1,3,9] [--zstd19] [--quick] [--binary PATH]
"""

import argparse
import os
import re
import sys

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import benchlib  # noqa: E402

ROW = re.compile(r"^\| (?P<image>[^|]+) \| (?P<method>[^|]+) \| (?P<bytes>\d+) \| (?P<ratio>[\d.]+) \| "
                 r"(?P<cmb>[\d.]+) \| (?P<dmb>[\d.]+) \|")


def parse(stdout):
    rows = []
    for line in stdout.splitlines():
        match = ROW.match(line)
        if match:
            rows.append({
                "image": match["image"].strip(), "method": match["method"].strip(),
                "encoded_bytes": int(match["bytes"]), "ratio": float(match["ratio"]),
                "compress_mb_s": float(match["cmb"]), "decompress_mb_s": float(match["dmb"]),
            })
    return rows


def find(rows, image_suffix, method):
    for row in rows:
        if row["image"].endswith(image_suffix) and row["method"] == method:
            return row
    return None


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--corpus", default=os.path.join(benchlib.REPO, "var", "corpus"))
    parser.add_argument("--workloads", default="text-sparse-16,random-full-64,idle")
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--levels", default="1,3,9")
    parser.add_argument("--zstd19", action="store_true", help="also run zstd -19 --long=27 (minutes per image)")
    parser.add_argument("--quick", action="store_true", help="1 run, level 3 only, no zstd -19")
    parser.add_argument("--binary", default=os.path.join(benchlib.REPO, ".build-release", "release", "encoding-bench"))
    args = parser.parse_args()
    if args.quick:
        args.runs, args.levels, args.zstd19 = 1, "3", False

    cases = []
    for workload in args.workloads.split(","):
        directory = os.path.join(args.corpus, workload)
        images = [os.path.join(directory, f"ram-{i}.img") for i in (0, 1)]
        argv = [args.binary, "--runs", str(args.runs), "--levels", args.levels] + (["--zstd19"] if args.zstd19 else [])
        measured = benchlib.run_with_rusage(argv + images, timeout=3600)
        if measured.status != 0:
            sys.exit(f"encoding-bench failed on {workload}: {measured.stderr}")
        rows = parse(measured.stdout)
        hde3 = find(rows, "ram-0.img", "HDE +zstd-3")
        zstd3 = find(rows, "ram-0.img", "zstd -3")
        zstd19 = find(rows, "ram-0.img", "zstd -19 --long=27")
        alone = find(rows, "ram-1.img", "HDE +zstd-3")
        delta = find(rows, "ram-1.img vs baseline", "HDE +delta +zstd-3")
        ratios = {}
        if hde3 and zstd19:
            ratios["hde_ratio_vs_zstd19"] = round(hde3["ratio"] / zstd19["ratio"], 3)
        if hde3 and zstd3:
            ratios["hde_speed_vs_zstd3"] = round(hde3["compress_mb_s"] / zstd3["compress_mb_s"], 3)
            ratios["hde_ratio_vs_zstd3"] = round(hde3["ratio"] / zstd3["ratio"], 3)
        if alone and delta:
            ratios["repeat_wire_fraction"] = round(delta["encoded_bytes"] / alone["encoded_bytes"], 5)
        cases.append({
            "data": {"kind": "guest-ram", "workload": workload, "bytes": os.path.getsize(images[0])},
            "results": rows, "ratios": ratios, "verified": True, "markdown": measured.stdout,
        })
        # The same guest's migration stream (captured with its RAM images), through the opaque-stream codec
        # that `novacron vm migrate` uses, stage by stage, beside zstd and lz4 on the whole stream.
        stream = os.path.join(directory, "state.migration")
        if os.path.exists(stream):
            measured = benchlib.run_with_rusage([args.binary, "--stream", "--runs", str(args.runs), stream],
                                                timeout=3600)
            if measured.status != 0:
                sys.exit(f"encoding-bench --stream failed on {workload}: {measured.stderr}")
            cases.append({
                "data": {"kind": "migration-stream", "workload": workload, "bytes": os.path.getsize(stream)},
                "results": [], "ratios": {}, "verified": True,
                "markdown": "Migration stream (`state.migration`), opaque-stream codec:\n\n" + measured.stdout,
            })

    document = {
        "benchmark": "encoding", "started": benchlib.now_utc(), "machine": benchlib.machine(),
        "link": None, "runs": args.runs, "cases": [{k: v for k, v in c.items() if k != "markdown"} for c in cases],
    }
    markdown = ["# Encoding (HDE) benchmark", "",
                f"Machine: {document['machine']}. Runs: {args.runs} (median). MB = 10^6 bytes; speeds on one core.",
                "HDE rows are decoded and compared byte for byte in every run.", ""]
    for case in cases:
        title = case["data"]["workload"] + (" — migration stream" if case["data"]["kind"] == "migration-stream" else "")
        markdown += [f"## {title}", "", case["markdown"]] + ([f"Ratios: {case['ratios']}"] if case["ratios"] else []) + [""]
    benchlib.write_results("encoding", document, "\n".join(markdown))
    print("encoding: " + "; ".join(f"{c['data']['workload']} {c['ratios']}" for c in cases if c["ratios"]))


if __name__ == "__main__":
    main()
