#!/usr/bin/env python3
"""bench-encoding, end to end: guest RAM images from side a to side b of a wanem link (default: the global
profile), with HDE (`novacron send --encode auto`) against the same transport without it (`--encode none`)
and against `zstd -3 -T1 | one TCP stream (bbr)`.

Per image and per run, each case gets a fresh `wanem up --report` link. Logical throughput = image bytes /
wall seconds of the sender (start to exit); wire bytes = what the link carried a → b (wanem's uplink
counter: payload, headers, retransmissions) and, for novacron, the encoded stream's length. Every received
file is compared with the source by SHA-256.

The repeat case sends ram-0.img and then ram-1.img (captured seconds later) with a chunk store on each side
(`--store`), each transfer on its own link: the second transfer's wire bytes ÷ the first's is
`repeat_wire_fraction`. Writes docs/benchmarks/encoding-wan.json and .md. Needs root.
"""

import argparse
import hashlib
import json
import os
import shutil
import signal
import statistics
import sys
import tempfile
import time

import bench_transfer as bt
import benchlib

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(HERE)


def sha256(path):
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


class Run:
    """One transfer on its own link."""

    def __init__(self, args, profile, seed, workdir, certs):
        self.args, self.profile, self.seed, self.workdir, self.certs = args, profile, seed, workdir, certs

    def go(self, name, source, source_sha, receiver_argv, sender_argv, port, received, receiver_ready=None):
        os.makedirs(self.workdir, exist_ok=True)
        link = bt.Link(self.args.wanem, f"nce{os.getpid() % 1000}", ["--profile", self.profile], self.seed,
                       self.args.timeout + 120, self.workdir)
        try:
            self.settings = bt.namespace_settings(link, self.args.tcp_buffer_mib)
            ctx = bt.Context(self.args, link, self.workdir, source, source_sha, os.path.getsize(source),
                             self.args.timeout, {"certs": self.certs})
            result = bt.transfer(ctx, receiver_argv, sender_argv, port, received=received,
                                 receiver_ready=receiver_ready)
        finally:
            verdict = link.close()
        result["wanem"] = verdict
        result["wire_bytes"] = verdict.get("uplink_bytes")
        ok = (not result["timed_out"] and result["sender"]["exit"] == 0 and os.path.exists(received)
              and sha256(received) == source_sha)
        result["verified"] = ok
        result["name"] = name
        return result


def novacron_argv(args, certs, source, received_dir, encode, sender_store=None, receiver_store=None, port=7300):
    receiver = [args.novacron, "receive", "--listen", f"{bt.ADDRESS_B}:{port}", "--out", received_dir,
                "--certs", certs, "--node", "b", "--json", "--overwrite"]
    if receiver_store:
        receiver += ["--store", receiver_store]
    if args.receive_window:
        receiver += ["--window", args.receive_window]
    sender = [args.novacron, "send", source, "--to", f"{bt.ADDRESS_B}:{port}", "--certs", certs, "--node", "a",
              "--json", "--encode", encode]
    if sender_store:
        sender += ["--store", sender_store]
    sender += args.sender_flags.split()
    return receiver, sender


def encoding_report(result):
    done = bt.last_json_line(result.get("sender_stdout") or "") or {}
    reports = done.get("encoding") or []
    return reports[0] if reports else None


def one_transfer(run, case, image_path, image_sha, scratch, stores=None):
    received_dir = os.path.join(scratch, "recv")
    shutil.rmtree(received_dir, ignore_errors=True)
    os.makedirs(received_dir)
    received = os.path.join(received_dir, os.path.basename(image_path))
    if case == "zstd3-tcp":
        port = 5301
        receiver = ["sh", "-c", f"python3 {bt.TCP_STREAM} recv --listen {bt.ADDRESS_B}:{port} --out - --cc bbr"
                                f" | zstd -d -q -o {received}"]
        sender = ["sh", "-c", f"zstd -q -3 -T1 -c {image_path} | python3 {bt.TCP_STREAM} send - "
                              f"--to {bt.ADDRESS_B}:{port} --cc bbr"]
    else:
        port = 7300
        receiver, sender = novacron_argv(run.args, run.certs, image_path, received_dir,
                                         "none" if case == "none" else case,
                                         *(stores or (None, None)))
    result = run.go(case, image_path, image_sha, receiver, sender, port, received)
    result["encoding"] = encoding_report(result)
    result["trace"] = bt.progress_trace(result.get("sender_stdout") or "")
    result["tool"] = bt.last_json_line(result.get("sender_stdout") or "")
    result["tool_receiver"] = bt.last_json_line(result.get("receiver_stdout") or "")
    if result["tool"]:
        result["tool"].pop("encoding", None)
    for key in ("sender_stdout", "receiver_stdout"):
        result.pop(key, None)
    result["image_bytes"] = os.path.getsize(image_path)
    if result["seconds"]:
        result["logical_mbit"] = result["image_bytes"] * 8 / result["seconds"] / 1e6
    return result


def median(values):
    values = [v for v in values if v is not None]
    return statistics.median(values) if values else None


def summarise(runs):
    ok = [r for r in runs if r["verified"]]
    return {
        "runs": len(runs), "verified_runs": len(ok),
        "median_seconds": median([r["seconds"] for r in ok]),
        "logical_mbit": [round(r["logical_mbit"], 1) for r in ok],
        "median_logical_mbit": median([r.get("logical_mbit") for r in ok]),
        "median_wire_bytes": median([r.get("wire_bytes") for r in ok]),
        "median_encoded_bytes": median([(r.get("encoding") or {}).get("encodedBytes") for r in ok]),
        "cpu_seconds_send": median([r["sender"].get("cpu_seconds") for r in ok]),
        "cpu_seconds_receive": median([r["receiver"].get("cpu_seconds") for r in ok]),
        "peak_rss_mib_send": median([r["sender"].get("peak_rss_mib") for r in ok]),
        "peak_rss_mib_receive": median([r["receiver"].get("peak_rss_mib") for r in ok]),
        "wanem_valid": sum(1 for r in runs if r["wanem"].get("valid")),
        "batches_by_level": [(r.get("encoding") or {}).get("batchesByLevel") for r in ok],
    }


def ratio(a, b):
    return round(a / b, 3) if a and b else None


def markdown(document):
    lines = [f"# bench-encoding over wanem ({document['link']['profile']})", "",
             f"Generated by `{document['command']}` on {document['started']}.", "",
             f"Link: {document['link']}. Machine: {document['machine']}.", "",
             "Logical throughput = image bytes ÷ sender wall seconds (median of verified runs, each run's "
             "value in brackets); wire bytes = what the link carried a → b (wanem uplink counter).", ""]
    for image in document["images"]:
        lines += [f"## {image['image']} ({image['bytes']} bytes)", "",
                  "| case | logical Mbit/s | runs | seconds | wire MB | CPU s send / recv | RSS MiB send / recv | verified | wanem valid |",
                  "|---|---:|---|---:|---:|---:|---:|---|---|"]
        for case, s in image["cases"].items():
            wire = s["median_wire_bytes"]
            lines.append(
                f"| {case} | {s['median_logical_mbit'] and round(s['median_logical_mbit'], 1)} | {s['logical_mbit']} | "
                f"{s['median_seconds'] and round(s['median_seconds'], 2)} | {wire and round(wire / 1e6, 2)} | "
                f"{s['cpu_seconds_send']} / {s['cpu_seconds_receive']} | {s['peak_rss_mib_send']} / "
                f"{s['peak_rss_mib_receive']} | {s['verified_runs']}/{s['runs']} | {s['wanem_valid']}/{s['runs']} |")
        lines += ["", f"Ratios: `{json.dumps(image['ratios'])}`", ""]
    if document.get("repeat"):
        r = document["repeat"]
        lines += ["## Repeat transfer (chunk stores on both sides)", "",
                  "| run | first: wire bytes / encoded bytes / s | second: wire bytes / encoded bytes / s | second ÷ first (wire) | verified |",
                  "|---|---|---|---:|---|"]
        for index, pair in enumerate(r["runs"]):
            first, second = pair
            lines.append(
                f"| {index + 1} | {first.get('wire_bytes')} / {(first.get('encoding') or {}).get('encodedBytes')} / "
                f"{first['seconds'] and round(first['seconds'], 2)} | {second.get('wire_bytes')} / "
                f"{(second.get('encoding') or {}).get('encodedBytes')} / {second['seconds'] and round(second['seconds'], 2)} | "
                f"{ratio(second.get('wire_bytes'), first.get('wire_bytes'))} | {first['verified'] and second['verified']} |")
        lines += ["", f"Median `repeat_wire_fraction`: {r['repeat_wire_fraction']}; second transfer's pages: "
                      f"`{json.dumps((r['runs'][-1][1].get('encoding') or {}).get('pages'))}`", ""]
    return "\n".join(lines) + "\n"


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--corpus", default=os.path.join(ROOT, "var/corpus"))
    parser.add_argument("--images", default="text-sparse-16,random-full-64,urandom",
                        help="corpus workloads (each one's ram-0.img is sent), or urandom: 512 MiB from /dev/urandom")
    parser.add_argument("--repeat", default="text-sparse-16", help="workload of the repeat case ('' for none)")
    parser.add_argument("--profile", default="global")
    parser.add_argument("--cases", default="none,auto,zstd3-tcp")
    parser.add_argument("--receive-window", help="novacron receive --window (e.g. 256M)")
    parser.add_argument("--sender-flags", default="", help="more novacron send flags (e.g. \"--max-streams 32\")")
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--tcp-buffer-mib", type=int, default=0,
                        help="tcp_rmem/tcp_wmem maximum in both namespaces (0: the system's, as bench-transfer)")
    parser.add_argument("--timeout", type=int, default=150)
    parser.add_argument("--novacron", default=os.path.join(ROOT, ".build-release/release/novacron"))
    parser.add_argument("--wanem", default=os.path.join(ROOT, ".build-release/release/wanem"))
    parser.add_argument("--out", default=os.path.join(ROOT, "docs/benchmarks/encoding-wan"))
    parser.add_argument("--quick", action="store_true", help="1 run, text image only")
    args = parser.parse_args()
    if os.geteuid() != 0:
        sys.exit("bench-encoding-wan: needs root (network namespaces, TUN devices)")
    if args.quick:
        args.runs, args.images = 1, args.images.split(",")[0]
    # A signal unwinds through the `finally`s, which take the link down and kill what runs in it.
    signal.signal(signal.SIGTERM, bt.on_signal)
    signal.signal(signal.SIGHUP, bt.on_signal)
    started = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())
    workdir = tempfile.mkdtemp(prefix="nc-encoding-wan-")
    certs, reason = bt.prepare_novacron(args.novacron, os.path.join(workdir, "certs"))
    if not certs:
        sys.exit(f"bench-encoding-wan: {reason}")
    document = {"benchmark": "encoding-wan", "started": started, "command": " ".join(sys.argv),
                "machine": benchlib.machine(), "link": dict(bt.PROFILE_TABLE[args.profile], profile=args.profile),
                "runs": args.runs, "images": []}
    cases = args.cases.split(",")
    try:
        for workload in [w for w in args.images.split(",") if w]:
            image_path = os.path.join(args.corpus, workload, "ram-0.img")
            if workload == "urandom":
                image_path = os.path.join(workdir, "urandom", "ram-0.img")
                os.makedirs(os.path.dirname(image_path), exist_ok=True)
                with open("/dev/urandom", "rb") as source, open(image_path, "wb") as out:
                    for _ in range(512):
                        out.write(source.read(1 << 20))
            image_sha = sha256(image_path)
            results = {case: [] for case in cases}
            for index in range(args.runs):
                for case in cases:
                    run = Run(args, args.profile, 1000 + index, os.path.join(workdir, "run"), certs)
                    result = one_transfer(run, case, image_path, image_sha, workdir)
                    results[case].append(result)
                    bt.log(f"{workload} run {index + 1} {case}: {result['seconds'] and round(result['seconds'], 2)} s, "
                           f"{result.get('logical_mbit') and round(result['logical_mbit'], 1)} Mbit/s logical, "
                           f"wire {result.get('wire_bytes')}, verified {result['verified']}")
            summary = {case: summarise(runs) for case, runs in results.items()}
            ratios = {}
            if "auto" in summary and "none" in summary:
                ratios["auto_vs_none_throughput"] = ratio(summary["auto"]["median_logical_mbit"],
                                                          summary["none"]["median_logical_mbit"])
            if "auto" in summary and "zstd3-tcp" in summary:
                ratios["auto_vs_zstd3_tcp_throughput"] = ratio(summary["auto"]["median_logical_mbit"],
                                                               summary["zstd3-tcp"]["median_logical_mbit"])
            document["images"].append({"image": f"{workload}/ram-0.img", "bytes": os.path.getsize(image_path),
                                       "cases": summary, "ratios": ratios, "results": results})
        if args.repeat:
            pairs = []
            for index in range(args.runs):
                stores = (os.path.join(workdir, f"store-a-{index}"), os.path.join(workdir, f"store-b-{index}"))
                pair = []
                for name in ("ram-0.img", "ram-1.img"):
                    image_path = os.path.join(args.corpus, args.repeat, name)
                    run = Run(args, args.profile, 2000 + index, os.path.join(workdir, "run"), certs)
                    result = one_transfer(run, "auto", image_path, sha256(image_path), workdir, stores)
                    pair.append(result)
                    bt.log(f"repeat run {index + 1} {name}: {result['seconds'] and round(result['seconds'], 2)} s, "
                           f"wire {result.get('wire_bytes')}, verified {result['verified']}")
                pairs.append(pair)
            fractions = [ratio(b.get("wire_bytes"), a.get("wire_bytes")) for a, b in pairs
                         if a["verified"] and b["verified"]]
            document["repeat"] = {"workload": args.repeat, "runs": pairs,
                                  "repeat_wire_fraction": median(fractions)}
        document["ratios"] = {f"{image['image']}": image["ratios"] for image in document["images"]}
        if document.get("repeat"):
            document["ratios"]["repeat_wire_fraction"] = document["repeat"]["repeat_wire_fraction"]
    finally:
        bt.cleanup_processes()
        shutil.rmtree(workdir, ignore_errors=True)
    with open(args.out + ".json", "w") as f:
        json.dump(document, f, indent=1, default=str)
    with open(args.out + ".md", "w") as f:
        f.write(markdown(document))
    print("bench-encoding-wan: " + json.dumps(document["ratios"]))


if __name__ == "__main__":
    main()
