"""Shared plumbing for NovaCron benchmarks: machine facts, timed child processes with OS-measured
CPU and peak RSS, medians, and the JSON + Markdown output described in shared/BENCHMARKS.md."""

import datetime
import json
import os
import platform
import statistics
import selectors
import subprocess
import time
from dataclasses import dataclass

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
RESULTS = os.path.join(REPO, "docs", "benchmarks")


def json_events(text):
    """The JSON objects among the lines of `text` (what `--json` commands print), in order."""
    for line in text.splitlines():
        line = line.strip()
        if not line.startswith("{"):
            continue
        try:
            yield json.loads(line)
        except ValueError:
            continue


def machine():
    cpu = "unknown"
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    cpu = line.split(":", 1)[1].strip()
                    break
    except OSError:
        pass
    swift = subprocess.run(["swift", "--version"], capture_output=True, text=True).stdout.split("\n")[0]
    return {"cores": os.cpu_count(), "cpu": cpu, "kernel": platform.release(), "swift": swift}


@dataclass
class Measured:
    seconds: float
    cpu_seconds: float
    peak_rss_mib: float
    stdout: str
    stderr: str
    status: int


def run_with_rusage(argv, timeout=600, env=None):
    """Runs argv to completion. Wall time is measured here; CPU (user+sys) and peak RSS are the child's
    own, from os.wait4."""
    start = time.monotonic()
    with open(os.devnull) as devnull:
        process = subprocess.Popen(argv, stdin=devnull, stdout=subprocess.PIPE, stderr=subprocess.PIPE, env=env)
        deadline = start + timeout
        out_chunks, err_chunks = [], []
        selector = selectors.DefaultSelector()
        selector.register(process.stdout, selectors.EVENT_READ, out_chunks)
        selector.register(process.stderr, selectors.EVENT_READ, err_chunks)
        open_streams = 2
        while open_streams:
            if time.monotonic() > deadline:
                process.kill()
                raise RuntimeError(f"{argv[0]} timed out after {timeout} s")
            for key, _ in selector.select(timeout=1):
                data = key.fileobj.read1(65536)
                if data:
                    key.data.append(data)
                else:
                    selector.unregister(key.fileobj)
                    open_streams -= 1
        _, status, usage = os.wait4(process.pid, 0)
        process.returncode = os.waitstatus_to_exitcode(status)
    elapsed = time.monotonic() - start
    return Measured(
        seconds=elapsed,
        cpu_seconds=usage.ru_utime + usage.ru_stime,
        peak_rss_mib=usage.ru_maxrss / 1024.0,
        stdout=b"".join(out_chunks).decode(),
        stderr=b"".join(err_chunks).decode(),
        status=process.returncode,
    )


def median(values):
    return statistics.median(values) if values else None


def spread(values):
    return [min(values), max(values)] if values else None


def now_utc():
    return datetime.datetime.now(datetime.timezone.utc).replace(microsecond=0).isoformat().replace("+00:00", "Z")


def write_results(name, document, markdown):
    os.makedirs(RESULTS, exist_ok=True)
    with open(os.path.join(RESULTS, f"{name}.json"), "w") as f:
        json.dump(document, f, indent=2)
        f.write("\n")
    with open(os.path.join(RESULTS, f"{name}.md"), "w") as f:
        f.write(markdown)
