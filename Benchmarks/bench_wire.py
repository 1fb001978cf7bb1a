#!/usr/bin/env python3
"""bench-wire: DWCP framing over TCP on loopback vs the same bytes through iperf3 (one TCP stream).

What it measures: `novacron wire loopback` (release build) moves N chunk frames through the full
DWCPWire stack (encoder, XXH3 checksums, decoder, NIO) over TCP on 127.0.0.1; iperf3 moves the same
number of payload bytes over one plain TCP stream in the same run. The ratio is the share of raw
loopback TCP that the framing keeps. Both ends run on this machine's cores, so this is a CPU-cost
benchmark, not a network one. Writes docs/benchmarks/wire.json and wire.md.
"""

import argparse
import json
import os
import socket
import subprocess
import sys
import time

import benchlib


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def run_novacron(binary, frames, payload_bytes):
    measured = benchlib.run_with_rusage(
        [binary, "wire", "loopback", "--frames", str(frames), "--payload-bytes", str(payload_bytes),
         "--pings", "0", "--json"])
    if measured.status != 0:
        raise RuntimeError(f"novacron wire loopback failed ({measured.status}): {measured.stderr}")
    report = json.loads(measured.stdout)
    return {
        "seconds": report["seconds"],
        "mib_per_second": report["throughputMiBPerSecond"],
        "cpu_seconds": measured.cpu_seconds,
        "peak_rss_mib": measured.peak_rss_mib,
        "verified": bool(report["verified"]) and report["payloadBytesReceived"] == frames * payload_bytes,
    }


def run_iperf3(total_bytes):
    """One iperf3 TCP stream of total_bytes over loopback; CPU and RSS of client and server."""
    port = free_port()
    server = subprocess.Popen(["iperf3", "-s", "-p", str(port), "-B", "127.0.0.1"],
                              stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, stdin=subprocess.DEVNULL)
    try:
        for _ in range(100):  # until the server listens (a bare connect does not stop a non-one-off server)
            try:
                socket.create_connection(("127.0.0.1", port), timeout=1).close()
                break
            except OSError:
                time.sleep(0.05)
        time.sleep(0.2)  # let the server finish with the probe connection
        client = benchlib.run_with_rusage(
            ["iperf3", "-c", "127.0.0.1", "-p", str(port), "-n", str(total_bytes), "-J"], timeout=300)
        if client.status != 0 or "sum_received" not in client.stdout:
            raise RuntimeError(f"iperf3 client failed ({client.status}): {client.stdout[-500:]} {client.stderr}")
    finally:
        server.terminate()
        _, _, server_usage = os.wait4(server.pid, 0)
        server.returncode = 0
    result = json.loads(client.stdout)
    received = result["end"]["sum_received"]
    return {
        "seconds": received["seconds"],
        "mib_per_second": received["bytes"] / received["seconds"] / 1048576,
        "cpu_seconds": client.cpu_seconds + server_usage.ru_utime + server_usage.ru_stime,
        "peak_rss_mib": max(client.peak_rss_mib, server_usage.ru_maxrss / 1024),
        # iperf3 does not check the bytes it receives: nothing to verify.
        "verified": None,
    }


def summarize(system, config, runs):
    return {
        "system": system,
        "config": config,
        "seconds": [round(r["seconds"], 4) for r in runs],
        "median_seconds": round(benchlib.median([r["seconds"] for r in runs]), 4),
        "mib_per_second": [round(r["mib_per_second"], 1) for r in runs],
        "median_mib_per_second": round(benchlib.median([r["mib_per_second"] for r in runs]), 1),
        "cpu_seconds": round(benchlib.median([r["cpu_seconds"] for r in runs]), 3),
        "peak_rss_mib": round(max(r["peak_rss_mib"] for r in runs), 1),
        "verified": None if any(r["verified"] is None for r in runs) else all(r["verified"] for r in runs),
    }


def verified_text(verified):
    return "n/a (does not check data)" if verified is None else ("yes" if verified else "NO")


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--bytes", type=int, default=1 << 30, help="payload bytes per run (default 1 GiB)")
    parser.add_argument("--payload-bytes", type=int, default=64 * 1024, help="payload bytes per frame")
    parser.add_argument("--binary", default=os.path.join(benchlib.REPO, ".build-release", "release", "novacron"))
    parser.add_argument("--quick", action="store_true", help="one run of 256 MiB")
    args = parser.parse_args()
    if args.quick:
        args.runs, args.bytes = 1, 256 << 20
    frames = max(1, args.bytes // args.payload_bytes)
    total = frames * args.payload_bytes

    novacron_runs, iperf_runs = [], []
    for index in range(args.runs):
        novacron_runs.append(run_novacron(args.binary, frames, args.payload_bytes))
        iperf_runs.append(run_iperf3(total))
        print(f"run {index + 1}/{args.runs}: novacron {novacron_runs[-1]['mib_per_second']:.0f} MiB/s, "
              f"iperf3 {iperf_runs[-1]['mib_per_second']:.0f} MiB/s", file=sys.stderr)

    novacron = summarize("novacron", f"wire loopback, {args.payload_bytes}-byte frames, plaintext", novacron_runs)
    iperf = summarize("iperf3", "one TCP stream, plaintext", iperf_runs)
    ratio = round(novacron["median_mib_per_second"] / iperf["median_mib_per_second"], 3)
    document = {
        "benchmark": "wire",
        "started": benchlib.now_utc(),
        "machine": benchlib.machine(),
        "link": {"profile": "loopback", "rtt_ms": 0, "rate_mbit": None, "loss": 0},
        "data": {"kind": "random", "bytes": total},
        "runs": args.runs,
        "results": [novacron, iperf],
        "ratios": {"wire_vs_iperf3_loopback": ratio},
        "notes": "Both ends of each system share this machine's cores; the figures are CPU-bound. "
                 "novacron's CPU includes both ends (one process); iperf3's is client + server.",
    }
    markdown = f"""# bench-wire: DWCP framing vs raw TCP on loopback

Generated by `make bench-wire` ({document['started']}); machine: {document['machine']['cores']} cores,
{document['machine']['cpu']}, kernel {document['machine']['kernel']}. {args.runs} runs of
{total / 1048576:.0f} MiB each; medians, with every run listed.

| system | config | MiB/s (median) | runs, MiB/s | CPU s | peak RSS MiB | verified |
|---|---|---:|---|---:|---:|---|
""" + "".join(
        f"| {r['system']} | {r['config']} | {r['median_mib_per_second']} | {', '.join(map(str, r['mib_per_second']))} "
        f"| {r['cpu_seconds']} | {r['peak_rss_mib']} | {verified_text(r['verified'])} |\n"
        for r in (novacron, iperf)) + f"""
**wire_vs_iperf3_loopback = {ratio}** (novacron ÷ iperf3, higher is better).

{document['notes']} This measures the framing's CPU cost; link-level claims come from the transfer
benchmark over wanem.
"""
    benchlib.write_results("wire", document, markdown)
    print(f"bench-wire: novacron {novacron['median_mib_per_second']} MiB/s vs iperf3 "
          f"{iperf['median_mib_per_second']} MiB/s on loopback, ratio {ratio}")


if __name__ == "__main__":
    main()
