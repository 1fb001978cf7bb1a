#!/usr/bin/env python3
"""bench-transfer: moving a file of random bytes from side a to side b of a wanem link, per tool.

Per link profile and per run (a fresh `wanem up --report` link for every single transfer, so each result
carries the emulator's own verdict on whether it kept up), it moves the same random file (generated once)
with each tool and measures goodput = bytes / wall seconds of the sender process (start to exit), CPU
seconds and peak RSS of the sender and of the receiver (from the OS, via /usr/bin/time: getrusage of the
process and every descendant it waited for), and whether the received file's SHA-256 equals the source's.

Cases: one plain TCP stream with cubic and with bbr (Benchmarks/tcp_stream.py, sendfile); iperf3 with 1 stream
(cubic, bbr) and with 2..16 parallel bbr streams (the best iperf3 median is the link ceiling); scp and rsync
over ssh to an sshd started inside side b; novacron send/receive (auto, 1 stream, plaintext). Medians over
`--runs` rounds; within a round every tool sees the same link seed. Writes docs/benchmarks/transfer.json and
transfer.md. Needs root.
"""

import argparse
import hashlib
import json
import os
import select
import shutil
import signal
import subprocess
import sys
import tempfile
import time

import benchlib

PROFILES = ["lan", "continental", "global", "lossy-edge"]
# The wanem profiles (docs/wanem.md; Sources/WANEmulation/LinkProfile.swift), for the result's `link`.
PROFILE_TABLE = {
    "lan": {"rtt_ms": 1, "rate_mbit": 1000, "loss": 0.0},
    "regional": {"rtt_ms": 30, "rate_mbit": 500, "loss": 0.0001},
    "continental": {"rtt_ms": 100, "rate_mbit": 1000, "loss": 0.001},
    "global": {"rtt_ms": 250, "rate_mbit": 1000, "loss": 0.005},
    "lossy-edge": {"rtt_ms": 300, "rate_mbit": 100, "loss": 0.02},
}
ADDRESS_A, ADDRESS_B = "10.77.0.1", "10.77.0.2"
MIB = 1 << 20
HERE = os.path.dirname(os.path.abspath(__file__))
TCP_STREAM = os.path.join(HERE, "tcp_stream.py")
FAMILIES = ["tcp", "iperf3", "ssh", "novacron"]


def log(message):
    print(f"{os.path.basename(sys.argv[0]).removesuffix('.py').replace('_', '-')}: {message}", file=sys.stderr, flush=True)


class Interrupted(Exception):
    pass


def on_signal(number, _frame):
    raise Interrupted(f"signal {number}")


# ---------------------------------------------------------------------------------------------- processes

LIVE = set()  # every MeasuredProcess not yet reaped, killed by cleanup()


class MeasuredProcess:
    """A command run inside a namespace under /usr/bin/time, in its own process group. Wall time is measured
    here (spawn to exit, via a pidfd); CPU (user + sys) and peak RSS are the command's, including every
    descendant it waited for, as GNU time reports them from wait4. (Measuring a child of this Python process
    directly would report Python's own RSS: exec keeps the parent's high-water mark.)"""

    def __init__(self, argv, namespace, workdir, label):
        self.label = label
        self.stdout_path = os.path.join(workdir, f"{label}.out")
        self.stderr_path = os.path.join(workdir, f"{label}.err")
        self.time_path = os.path.join(workdir, f"{label}.time")
        self.argv = argv
        command = ["/usr/bin/time", "-f", "%e %U %S %M %x", "-o", self.time_path,
                   "ip", "netns", "exec", namespace] + argv
        with open(self.stdout_path, "wb") as out, open(self.stderr_path, "wb") as err:
            self.started = time.monotonic()
            self.process = subprocess.Popen(command, stdin=subprocess.DEVNULL, stdout=out, stderr=err,
                                            start_new_session=True)
        self.pidfd = os.pidfd_open(self.process.pid)
        self.ended = None
        LIVE.add(self)

    def wait(self, timeout):
        """True when the process exited within `timeout` seconds."""
        if self.ended is None:
            ready, _, _ = select.select([self.pidfd], [], [], max(0.0, timeout))
            if not ready:
                return False
            self.ended = time.monotonic()
            self.process.wait()
            self._release()
        return True

    def command_pid(self):
        """The pid of the command itself (the child of /usr/bin/time; `ip netns exec` execs it)."""
        try:
            with open(f"/proc/{self.process.pid}/task/{self.process.pid}/children") as f:
                children = f.read().split()
            return int(children[0]) if children else None
        except (OSError, ValueError):
            return None

    def stop(self, grace=10):
        """SIGTERM to the command (not to time, which must survive to report), then SIGKILL to the group."""
        if self.ended is not None:
            return
        pid = self.command_pid()
        # A daemon (sshd) reaps its finished session processes asynchronously; give it a moment so their
        # CPU and memory are in its rusage before it exits.
        deadline = time.monotonic() + 5
        while pid and time.monotonic() < deadline:
            try:
                with open(f"/proc/{pid}/task/{pid}/children") as f:
                    if not f.read().split():
                        break
            except OSError:
                break
            time.sleep(0.05)
        if pid:
            try:
                os.kill(pid, signal.SIGTERM)
            except ProcessLookupError:
                pass
        if not self.wait(grace):
            self.kill()

    def kill(self):
        """SIGKILL to the command first, so time reaps it (nothing is orphaned), then to the whole group
        (time itself if it is still there, and stragglers such as scp's ssh)."""
        if self.ended is None:
            pid = self.command_pid()
            if pid:
                try:
                    os.kill(pid, signal.SIGKILL)
                except ProcessLookupError:
                    pass
            if not (pid and self.wait(5)):
                try:
                    os.killpg(self.process.pid, signal.SIGKILL)
                except ProcessLookupError:
                    pass
                self.process.wait()
                self.ended = time.monotonic()
                self._release()
        try:
            os.killpg(self.process.pid, signal.SIGKILL)
        except (ProcessLookupError, PermissionError):
            pass

    def _release(self):
        LIVE.discard(self)
        try:
            os.close(self.pidfd)
        except OSError:
            pass

    @property
    def seconds(self):
        return None if self.ended is None else self.ended - self.started

    def usage(self):
        """{"cpu_seconds", "peak_rss_mib", "exit"} from time's report (None values if it has none)."""
        try:
            with open(self.time_path) as f:
                lines = [line for line in f.read().splitlines() if line.strip()]
            _, user, system, rss_kib, status = lines[-1].split()
            return {"cpu_seconds": round(float(user) + float(system), 3),
                    "peak_rss_mib": round(int(rss_kib) / 1024, 1), "exit": int(status)}
        except (OSError, ValueError, IndexError):
            return {"cpu_seconds": None, "peak_rss_mib": None, "exit": self.process.returncode}

    def stdout(self):
        with open(self.stdout_path, errors="replace") as f:
            return f.read()

    def stderr_tail(self, limit=600):
        try:
            with open(self.stderr_path, errors="replace") as f:
                return f.read()[-limit:].strip()
        except OSError:
            return ""


def cleanup_processes():
    for process in list(LIVE):
        process.kill()


def netns_run(namespace, argv, timeout=20):
    return subprocess.run(["ip", "netns", "exec", namespace] + argv, stdin=subprocess.DEVNULL,
                          capture_output=True, text=True, timeout=timeout)


def wait_listening(namespace, port, process, timeout=20):
    """Waits until a TCP socket listens on `port` inside `namespace` (or the process that should open it
    exits)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        result = netns_run(namespace, ["ss", "-Hltn", f"sport = :{port}"])
        if result.stdout.strip():
            return
        if process.wait(0.05):
            raise RuntimeError(f"{process.label} exited before listening: {process.stderr_tail()}")
    raise RuntimeError(f"{process.label}: nothing listens on port {port} after {timeout} s")


def last_json_line(text):
    for line in reversed(text.strip().splitlines()):
        line = line.strip()
        if line.startswith("{"):
            try:
                return json.loads(line)
            except ValueError:
                return None
    return None


def progress_trace(text):
    """[seconds, Mbit/s, streams, retransmits, send-buffer-limited share] of every progress line a novacron
    process printed."""
    trace = []
    for event in benchlib.json_events(text):
        if event.get("event") == "progress":
            trace.append([round(event.get("seconds", 0), 1), round(event.get("bytesPerSecond", 0) * 8 / 1e6, 1),
                          event.get("streams"), event.get("retransmits"),
                          None if event.get("sendBufferLimited") is None else round(event["sendBufferLimited"], 2)])
    return trace


def sha256_file(path):
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        while True:
            block = f.read(4 * MIB)
            if not block:
                return digest.hexdigest()
            digest.update(block)


def tree_bytes(path):
    if os.path.isfile(path):
        return os.path.getsize(path)
    total = 0
    for root, _, files in os.walk(path):
        for name in files:
            try:
                total += os.path.getsize(os.path.join(root, name))
            except OSError:
                pass
    return total


# ---------------------------------------------------------------------------------------------- the link

class Link:
    """`wanem up --name N --report FILE` for one transfer; `close()` takes it down and returns the report."""

    def __init__(self, wanem, name, link_flags, seed, duration, workdir):
        self.wanem, self.name = wanem, name
        self.report_path = os.path.join(workdir, "wanem-report.json")
        self.log_path = os.path.join(workdir, "wanem.log")
        subprocess.run([wanem, "down", "--name", name], capture_output=True)  # leftovers of a killed run
        with open(self.log_path, "wb") as out:
            self.process = subprocess.Popen(
                [wanem, "up", "--name", name, "--report", self.report_path, "--seed", str(seed),
                 "--duration", str(int(duration))] + link_flags,
                stdin=subprocess.DEVNULL, stdout=out, stderr=subprocess.STDOUT, start_new_session=True)
        ready = f"/run/wanem/{name}/ready"
        deadline = time.monotonic() + 30
        while True:
            try:
                with open(ready) as f:
                    if f.read().strip() == str(self.process.pid):
                        break
            except OSError:
                pass
            if self.process.poll() is not None:
                raise RuntimeError(f"wanem up exited with {self.process.returncode}: {self.log()}")
            if time.monotonic() > deadline:
                self.close()
                raise RuntimeError(f"wanem up not ready after 30 s: {self.log()}")
            time.sleep(0.02)
        self.a, self.b = f"{name}-a", f"{name}-b"

    def log(self):
        try:
            with open(self.log_path, errors="replace") as f:
                return f.read()[-800:].strip()
        except OSError:
            return ""

    def close(self):
        """Stops the link (SIGTERM, then `wanem down`) and returns the emulator's verdict."""
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
            try:
                self.process.wait(20)
            except subprocess.TimeoutExpired:
                pass
        # Always: removes anything left (namespaces, devices, processes inside, /run/wanem/N).
        subprocess.run([self.wanem, "down", "--name", self.name], capture_output=True, timeout=60)
        if self.process.poll() is None:
            self.process.kill()
            self.process.wait()
        try:
            with open(self.report_path) as f:
                report = json.load(f)
        except (OSError, ValueError):
            return {"valid": None, "note": f"no report (wanem up exit {self.process.returncode}): {self.log()}"}
        summary = {"valid": report.get("valid"), "wanem_exit": self.process.returncode,
                   "elapsed_seconds": round(report.get("elapsed_seconds", 0), 2),
                   "cpu_seconds": round(report.get("cpu_seconds", 0), 2)}
        # IP bytes the link carried a → b during this transfer's link lifetime (payload, headers, retransmissions).
        summary["uplink_bytes"] = report.get("uplink", {}).get("forwarded_bytes")
        for direction in ("uplink", "downlink"):
            counters = report.get(direction, {})
            summary[direction] = {key: counters.get(key) for key in (
                "forwarded_bytes", "dropped_loss_packets", "dropped_queue_packets", "dropped_capacity_packets",
                "late_fraction", "max_lateness_ms", "overload_reasons")}
        return summary


# ---------------------------------------------------------------------------------------------- cases

class Case:
    """One tool with one configuration. `run(ctx)` returns the measurements of one transfer."""

    def __init__(self, key, system, config, family, runner, verifiable=True, **options):
        self.key, self.system, self.config, self.family = key, system, config, family
        self.runner, self.verifiable, self.options = runner, verifiable, options
        self.unavailable = None  # why the case cannot run at all (e.g. no `novacron send`)
        self.skip_reason = None  # why it does not run any more on the current link (e.g. it timed out)


class Context:
    def __init__(self, args, link, workdir, source, source_sha, size, timeout, secrets):
        self.args, self.link, self.workdir = args, link, workdir
        self.source, self.source_sha, self.size, self.timeout = source, source_sha, size, timeout
        self.secrets = secrets
        self.received = os.path.join(workdir, "recv", "data.bin")
        os.makedirs(os.path.dirname(self.received), exist_ok=True)


def transfer(ctx, receiver_argv, sender_argv, port, receiver_stops_itself=True, received=None,
             receiver_ready=None):
    """Starts the receiver in b, waits until it listens, runs the sender in a (timed), waits for the
    receiver. Returns the raw measurements."""
    received = received or ctx.received
    receiver = MeasuredProcess(receiver_argv, ctx.link.b, ctx.workdir, "receiver")
    sender = None
    try:
        (receiver_ready or wait_listening)(ctx.link.b, port, receiver)
        sender = MeasuredProcess(sender_argv, ctx.link.a, ctx.workdir, "sender")
        finished = sender.wait(ctx.timeout)
        result = {"timed_out": not finished}
        if not finished:
            # What had reached the receiver's file(s) when the clock ran out (iperf3 writes none: 0).
            result["bytes_at_timeout"] = tree_bytes(os.path.dirname(received)) or None
            sender.kill()
            receiver.kill()
        elif receiver_stops_itself:
            if not receiver.wait(30):
                result["note"] = "receiver still running 30 s after the sender exited; killed"
                receiver.kill()
        else:
            receiver.stop()
        result["seconds"] = sender.seconds if finished else None
        result["sender"] = sender.usage()
        result["receiver"] = receiver.usage()
        result["sender_stdout"] = sender.stdout()
        result["receiver_stdout"] = receiver.stdout()
        if sender.usage()["exit"] != 0 or (receiver_stops_itself and receiver.usage()["exit"] != 0):
            result["stderr"] = {"sender": sender.stderr_tail(), "receiver": receiver.stderr_tail()}
        return result
    finally:
        for process in (sender, receiver):
            if process:
                process.kill()


def verify(ctx, result, path=None):
    path = path or ctx.received
    ok = (not result["timed_out"] and result["sender"]["exit"] == 0 and os.path.exists(path)
          and os.path.getsize(path) == ctx.size and sha256_file(path) == ctx.source_sha)
    result["verified"] = ok
    result["bytes"] = os.path.getsize(path) if os.path.exists(path) else 0
    return result


def run_tcp(ctx, case):
    cc = case.options["cc"]
    port = 5301
    result = transfer(
        ctx,
        ["python3", TCP_STREAM, "recv", "--listen", f"{ADDRESS_B}:{port}", "--out", ctx.received, "--cc", cc],
        ["python3", TCP_STREAM, "send", ctx.source, "--to", f"{ADDRESS_B}:{port}", "--cc", cc], port)
    result["tool"] = last_json_line(result.pop("sender_stdout"))
    result.pop("receiver_stdout")
    return verify(ctx, result)


def run_iperf3(ctx, case):
    port = 5201
    argv = ["iperf3", "-c", ADDRESS_B, "-p", str(port), "-n", str(ctx.size), "-P", str(case.options["streams"]),
            "-C", case.options["cc"], "-J"]
    result = transfer(ctx, ["iperf3", "-s", "-1", "-B", ADDRESS_B, "-p", str(port)], argv, port)
    result.pop("receiver_stdout")
    result["verified"] = None
    result["bytes"] = None
    try:
        end = json.loads(result.pop("sender_stdout"))["end"]
        received = end["sum_received"]
        result["bytes"] = received["bytes"]
        result["tool"] = {"bytes_received": received["bytes"], "seconds": received["seconds"],
                          "mbit_per_s": received["bits_per_second"] / 1e6,
                          "retransmits": end.get("sum_sent", {}).get("retransmits"),
                          "sender_cc": end.get("sender_tcp_congestion")}
    except (ValueError, KeyError, TypeError):
        result["tool"] = None
        if not result["timed_out"]:
            result["error"] = "no iperf3 JSON result"
    return result


def ssh_options(ctx):
    s = ctx.secrets
    return ["-F", "/dev/null", "-i", s["client_key"], "-o", "IdentitiesOnly=yes", "-o", "BatchMode=yes",
            "-o", "StrictHostKeyChecking=no", "-o", "UserKnownHostsFile=/dev/null", "-o", "LogLevel=ERROR"] + (
        ["-c", ctx.args.ssh_cipher] if ctx.args.ssh_cipher else [])


def run_ssh(ctx, case):
    pid_file = ctx.secrets["pid_file"]
    if os.path.exists(pid_file):
        os.unlink(pid_file)
    sshd = ["/usr/sbin/sshd", "-D", "-e", "-f", ctx.secrets["sshd_config"]]
    target = f"root@{ADDRESS_B}:{ctx.received}"
    if case.options["tool"] == "scp":
        sender = ["scp", "-q", "-P", "2222"] + ssh_options(ctx) + [ctx.source, target]
    else:
        remote_shell = " ".join(["ssh", "-p", "2222"] + ssh_options(ctx))
        sender = ["rsync", "-e", remote_shell, ctx.source, target]
    result = transfer(ctx, sshd, sender, 2222, receiver_stops_itself=False)
    result.pop("sender_stdout")
    result.pop("receiver_stdout")
    result["tool"] = None
    return verify(ctx, result)


def run_novacron(ctx, case):
    port = 7300
    certs = ctx.secrets["certs"]
    plaintext = ["--insecure-plaintext"] if case.options.get("plaintext") else []
    receiver = [ctx.args.novacron, "receive", "--listen", f"{ADDRESS_B}:{port}", "--out", ctx.received,
                "--certs", certs, "--node", "b", "--json"] + plaintext
    sender = [ctx.args.novacron, "send", ctx.source, "--to", f"{ADDRESS_B}:{port}", "--certs", certs,
              "--node", "a", "--json"] + plaintext + case.options.get("flags", [])
    result = transfer(ctx, receiver, sender, port)
    result["trace"] = progress_trace(result["sender_stdout"])
    result["tool"] = last_json_line(result.pop("sender_stdout"))
    result["tool_receiver"] = last_json_line(result.pop("receiver_stdout"))
    verify(ctx, result)
    if result["verified"] and (result["receiver"]["exit"] != 0
                               or (result["tool"] or {}).get("sha256", ctx.source_sha) != ctx.source_sha):
        result["verified"] = False
        result["note"] = "file matches but the receiver did not exit 0 or the tool reported another SHA-256"
    return result


def make_cases(args):
    cases = []
    families = args.cases.split(",")
    if "tcp" in families:
        for cc in ("cubic", "bbr"):
            cases.append(Case(f"tcp-{cc}", "tcp", f"1 stream, {cc}", "tcp", run_tcp, cc=cc))
    if "iperf3" in families:
        cases.append(Case("iperf3-1-cubic", "iperf3", "-P 1 -C cubic", "iperf3", run_iperf3, False,
                          streams=1, cc="cubic"))
        for streams in [int(s) for s in args.iperf_streams.split(",")]:
            cases.append(Case(f"iperf3-{streams}-bbr", "iperf3", f"-P {streams} -C bbr", "iperf3", run_iperf3,
                              False, streams=streams, cc="bbr"))
    if "ssh" in families:
        cases.append(Case("scp", "scp", "default (SFTP protocol)", "ssh", run_ssh, tool="scp"))
        cases.append(Case("rsync", "rsync", "over ssh, defaults", "ssh", run_ssh, tool="rsync"))
    if "novacron" in families:
        cases.append(Case("novacron-auto", "novacron", "auto", "novacron", run_novacron))
        cases.append(Case("novacron-1", "novacron", "1 stream", "novacron", run_novacron,
                          flags=["--min-streams", "1", "--max-streams", "1"]))
        cases.append(Case("novacron-auto-plaintext", "novacron", "auto, --insecure-plaintext", "novacron",
                          run_novacron, plaintext=True))
        for variant in args.novacron_variant or []:
            label, _, flags = variant.partition("=")
            cases.append(Case(f"novacron-{label}", "novacron", flags or "auto", "novacron", run_novacron,
                              flags=flags.split()))
    if args.only:
        keys = args.only.split(",")
        cases = [case for case in cases if case.key in keys]
    return cases


# ---------------------------------------------------------------------------------------------- setup

def file_sha256(path):
    """SHA-256 of an existing file, read in 64 MiB blocks."""
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        while block := f.read(64 * MIB):
            digest.update(block)
    return digest.hexdigest()


def generate_source(path, size):
    """Random bytes, written once in 64 MiB blocks; returns their SHA-256."""
    digest = hashlib.sha256()
    with open(path, "wb") as f:
        left = size
        while left:
            block = os.urandom(min(left, 64 * MIB))
            digest.update(block)
            f.write(block)
            left -= len(block)
    return digest.hexdigest()


def prepare_ssh(directory):
    os.makedirs("/run/sshd", mode=0o755, exist_ok=True)  # sshd's privilege separation directory
    shutil.rmtree(directory, ignore_errors=True)  # a reused --workdir: fresh keys
    os.makedirs(directory, mode=0o700)
    host_key, client_key = os.path.join(directory, "host_ed25519"), os.path.join(directory, "client_ed25519")
    for key in (host_key, client_key):
        subprocess.run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-f", key], check=True,
                       stdin=subprocess.DEVNULL, capture_output=True)
    authorized = os.path.join(directory, "authorized_keys")
    shutil.copy(client_key + ".pub", authorized)
    os.chmod(authorized, 0o600)
    sftp = "/usr/lib/openssh/sftp-server" if os.path.exists("/usr/lib/openssh/sftp-server") else "internal-sftp"
    pid_file = os.path.join(directory, "sshd.pid")
    config = os.path.join(directory, "sshd_config")
    with open(config, "w") as f:
        f.write(f"""Port 2222
ListenAddress {ADDRESS_B}
HostKey {host_key}
PidFile {pid_file}
AuthorizedKeysFile {authorized}
PermitRootLogin prohibit-password
PubkeyAuthentication yes
PasswordAuthentication no
KbdInteractiveAuthentication no
UsePAM no
StrictModes no
UseDNS no
PrintMotd no
Subsystem sftp {sftp}
""")
    check = subprocess.run(["/usr/sbin/sshd", "-t", "-f", config], capture_output=True, text=True)
    if check.returncode != 0:
        raise RuntimeError(f"sshd -t: {check.stderr.strip()}")
    return {"client_key": client_key, "sshd_config": config, "pid_file": pid_file}


def prepare_novacron(binary, directory):
    """The novacron cases' certificates, or the reason they cannot run."""
    if not os.path.exists(binary):
        return None, f"novacron send not available: no binary at {binary}"
    probe = subprocess.run([binary, "send", "--help"], capture_output=True, text=True)
    if probe.returncode != 0:
        return None, f"novacron send not available (`novacron send --help` exited {probe.returncode})"
    shutil.rmtree(directory, ignore_errors=True)  # a reused --workdir: a fresh cluster CA
    commands = [[binary, "certs", "init", "--dir", directory],
                [binary, "certs", "issue", "a", "--dir", directory, "--ip", ADDRESS_A],
                [binary, "certs", "issue", "b", "--dir", directory, "--ip", ADDRESS_B]]
    for command in commands:
        result = subprocess.run(command, capture_output=True, text=True)
        if result.returncode != 0:
            return None, f"novacron certs failed: {' '.join(command[1:3])}: {result.stderr.strip()[-300:]}"
    return directory, None


def namespace_settings(link, tcp_buffer_mib):
    """Applies --tcp-buffer-mib inside both namespaces, then records the TCP settings in force."""
    if tcp_buffer_mib:
        limit = tcp_buffer_mib * MIB
        for namespace in (link.a, link.b):
            netns_run(namespace, ["sysctl", "-qw", f"net.ipv4.tcp_rmem=4096 131072 {limit}",
                                  f"net.ipv4.tcp_wmem=4096 16384 {limit}"])
    keys = ["net.ipv4.tcp_congestion_control", "net.ipv4.tcp_rmem", "net.ipv4.tcp_wmem"]
    values = netns_run(link.a, ["sysctl", "-n"] + keys).stdout.splitlines()
    return {key.rsplit(".", 1)[1]: " ".join(value.split()) for key, value in zip(keys, values)}


# ---------------------------------------------------------------------------------------------- summary

def summarise(case, runs):
    completed = [r for r in runs if not r["timed_out"] and r.get("seconds") and not r.get("error")]
    entry = {"system": case.system, "config": case.config, "key": case.key, "runs": runs}
    if case.unavailable:
        entry["skipped"] = case.unavailable
        return entry
    goodputs = [r["goodput_mbit"] for r in completed if r.get("goodput_mbit")]
    seconds = [r["seconds"] for r in completed]

    def med(path):
        values = [r[path[0]][path[1]] for r in completed if r[path[0]].get(path[1]) is not None]
        return benchlib.median(values)

    tool_figures = [r["tool_goodput_mbit"] for r in completed if r.get("tool_goodput_mbit")]
    entry.update({
        "tool_goodput_mbit": round(benchlib.median(tool_figures), 1) if tool_figures else None,
        "seconds": [round(s, 3) for s in seconds],
        "median_seconds": round(benchlib.median(seconds), 3) if seconds else None,
        "goodput_mbit": round(benchlib.median(goodputs), 1) if goodputs else None,
        "goodput_spread_mbit": [round(v, 1) for v in benchlib.spread(goodputs)] if goodputs else None,
        "cpu_seconds": {"sender": med(("sender", "cpu_seconds")), "receiver": med(("receiver", "cpu_seconds"))},
        "peak_rss_mib": {"sender": med(("sender", "peak_rss_mib")), "receiver": med(("receiver", "peak_rss_mib"))},
        # Every run completed and verified (unverified runs are failures and not in the medians).
        "verified": (None if not case.verifiable else
                     (bool(completed) and all(r["verified"] for r in completed) and len(completed) == len(runs))),
        "wire_bytes_a_to_b": med(("emulator", "uplink_bytes")),
        "errors": sorted({r["error"] for r in runs if r.get("error")}),
        "completed_runs": len(completed),
        "timed_out_runs": sum(1 for r in runs if r["timed_out"]),
        "emulator_valid_runs": sum(1 for r in runs if r["emulator"].get("valid")),
        "total_runs": len(runs),
    })
    if case.skip_reason:
        entry["note"] = case.skip_reason
    return entry


def tool_goodput(figures):
    """The tool's own goodput figure (its clock, its byte count), if it reports one."""
    if not isinstance(figures, dict):
        return None
    if figures.get("mbit_per_s"):
        return round(figures["mbit_per_s"], 1)
    if figures.get("bytes") and figures.get("seconds"):
        return round(figures["bytes"] * 8 / figures["seconds"] / 1e6, 1)
    return None


def ratio(a, b):
    return round(a / b, 3) if a and b else None


def add_ratios(case_doc):
    results = {r["key"]: r for r in case_doc["results"]}
    iperf = [r for r in case_doc["results"] if r["system"] == "iperf3" and r.get("goodput_mbit")]
    best = max(iperf, key=lambda r: r["goodput_mbit"]) if iperf else None
    link = case_doc["link"]
    link["ceiling_mbit"] = best["goodput_mbit"] if best else None
    link["ceiling_config"] = f"iperf3 {best['config']}" if best else None
    link["ceiling_vs_configured_rate"] = ratio(link["ceiling_mbit"], link.get("rate_mbit"))
    scp = (results.get("scp") or {}).get("goodput_mbit")
    single = (results.get("tcp-cubic") or {}).get("goodput_mbit")
    for r in case_doc["results"]:
        g = r.get("goodput_mbit")
        r["vs_ceiling"] = ratio(g, link["ceiling_mbit"])
        r["vs_scp"] = ratio(g, scp)
        r["vs_single_tcp_cubic"] = ratio(g, single)
    novacron = (results.get("novacron-auto") or {}).get("goodput_mbit")
    case_doc["ratios"] = {
        "novacron_vs_ceiling": ratio(novacron, link["ceiling_mbit"]),
        "novacron_vs_scp": ratio(novacron, scp),
        "novacron_vs_best_iperf3": ratio(novacron, link["ceiling_mbit"]),
        "novacron_vs_single_tcp": ratio(novacron, single),
        "ceiling_vs_configured_rate": link["ceiling_vs_configured_rate"],
    }


def markdown(document):
    def fmt(value, digits=1, suffix=""):
        return "n/a" if value is None else f"{value:.{digits}f}{suffix}"

    sizes = sorted({case["data"]["bytes"] for case in document["cases"]} or {document["data"]["bytes"]})
    amount = " or ".join(f"{value / MIB:.0f} MiB" for value in sizes)
    kind = document["data"].get("kind", "random")
    what = "random data" if kind == "random" else kind.removeprefix("file ")
    parts = [f"""# bench-transfer: moving {amount} of {what} over wanem links

Generated by `make bench-transfer` ({document['started']}); machine: {document['machine']['cores']} cores,
{document['machine']['cpu']}, kernel {document['machine']['kernel']}. {document['runs']} run(s) per case, medians
(spread in brackets); a fresh wanem link per transfer. Goodput = file bytes ÷ wall seconds of the sender process
(connection setup included; iperf3: bytes its server received); "tool's own" = the figure the tool reports
(its bytes over its own clock). Ceiling = best iperf3 median (wall-clock goodput) in the same run.
CPU and peak RSS from the OS (GNU time, process plus waited-for descendants; the receiver of scp/rsync is the
whole sshd). "wanem" = runs the emulator reported valid (kept every packet within 1 ms of its schedule).
"""]
    for case_doc in document["cases"]:
        link = case_doc["link"]
        parts.append(f"""
## {link['profile']}: {link.get('rtt_ms')} ms RTT, {link.get('rate_mbit')} Mbit/s, loss {link.get('loss')} each way, {case_doc['data']['bytes'] / MIB:.0f} MiB

Ceiling: {fmt(link.get('ceiling_mbit'))} Mbit/s ({link.get('ceiling_config') or 'no iperf3 result'}) =
{fmt(link.get('ceiling_vs_configured_rate'), 3)} of the configured rate. Namespace TCP settings: {case_doc.get('tcp_settings')}.

| tool | config | goodput Mbit/s | vs ceiling | vs scp | vs 1 TCP cubic | tool's own Mbit/s | CPU s send / recv | peak RSS MiB send / recv | verified | wanem valid |
|---|---|---:|---:|---:|---:|---:|---:|---:|---|---|
""")
        rows = []
        for r in case_doc["results"]:
            if r.get("skipped"):
                rows.append(f"| {r['system']} | {r['config']} | skipped: {r['skipped']} | | | | | | | | |")
                continue
            goodput = fmt(r.get("goodput_mbit"))
            if r.get("goodput_spread_mbit") and r["completed_runs"] > 1:
                goodput += f" [{r['goodput_spread_mbit'][0]:.0f}–{r['goodput_spread_mbit'][1]:.0f}]"
            if r.get("timed_out_runs"):
                stopped = [x for x in r["runs"] if x["timed_out"]][0]
                goodput += f" (timed out in {r['timed_out_runs']} run: "
                if stopped.get("bytes_at_timeout"):
                    goodput += (f"{stopped['bytes_at_timeout'] / MIB:.0f} MiB received in "
                                f"{document['timeout_seconds']:.0f} s = {stopped['goodput_at_timeout_mbit']} Mbit/s)")
                elif stopped.get("wire_bytes_at_timeout"):
                    goodput += (f"{stopped['wire_bytes_at_timeout'] / MIB:.0f} MiB of IP packets carried in "
                                f"{document['timeout_seconds']:.0f} s)")
                else:
                    goodput += "nothing measured)"
            if r["errors"]:
                goodput += f" (failed in {len(r['runs']) - r['completed_runs'] - r['timed_out_runs']} run(s): " \
                           f"{r['errors'][0][:160]})"
            verified = {None: "n/a", True: "yes", False: "**NO**"}[r.get("verified")]
            if not r["completed_runs"] and r.get("timed_out_runs"):
                verified = "no (timed out)"
            valid = f"{r['emulator_valid_runs']}/{r['total_runs']}"
            if r["emulator_valid_runs"] < r["total_runs"]:
                valid = f"**INVALID** in {r['total_runs'] - r['emulator_valid_runs']}/{r['total_runs']}"
            cpu, rss = r["cpu_seconds"], r["peak_rss_mib"]
            rows.append(
                f"| {r['system']} | {r['config']} | {goodput} | {fmt(r.get('vs_ceiling'), 3)} | {fmt(r.get('vs_scp'), 2)} "
                f"| {fmt(r.get('vs_single_tcp_cubic'), 2)} | {fmt(r.get('tool_goodput_mbit'))} "
                f"| {fmt(cpu['sender'], 2)} / {fmt(cpu['receiver'], 2)} "
                f"| {fmt(rss['sender'])} / {fmt(rss['receiver'])} | {verified} | {valid} |")
        parts.append("\n".join(rows) + "\n")
    if document.get("notes"):
        parts.append("\n" + "\n".join(f"- {note}" for note in document["notes"]) + "\n")
    return "".join(parts)


# ---------------------------------------------------------------------------------------------- main

def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--profiles", help=f"comma-separated wanem profiles (default {','.join(PROFILES)}; "
                                           "--quick: lan)")
    parser.add_argument("--rtt-ms", type=float, help="link override (with no --profiles: one custom link)")
    parser.add_argument("--rate-mbit", type=float, help="link override")
    parser.add_argument("--loss", type=float, help="link override (each direction)")
    parser.add_argument("--size", help="bytes to move, with optional K/M/G suffix (default 1G; --quick 128M); "
                                       "PROFILE=SIZE entries set it per link, e.g. 512M,global=256M")
    parser.add_argument("--data", metavar="FILE",
                        help="move this file (e.g. a guest RAM image from scripts/capture-guest-ram.sh) instead of "
                             "random bytes; --size is then ignored")
    parser.add_argument("--runs", type=int, help="rounds per profile (default 3; --quick 2)")
    parser.add_argument("--quick", action="store_true",
                        help="128 MiB, 2 runs, iperf3 streams 1,4,16, 90 s timeout; lan unless --profiles")
    parser.add_argument("--cases", default=",".join(FAMILIES), help=f"families to run: {','.join(FAMILIES)}")
    parser.add_argument("--iperf-streams", help="parallel stream counts of iperf3 bbr (default 1,2,4,8,16)")
    parser.add_argument("--timeout", type=float, help="seconds per transfer before it counts as timed out "
                                                       "(default 300; --quick 90); a case that times out is "
                                                       "not repeated on that link")
    parser.add_argument("--tcp-buffer-mib", type=int, default=0,
                        help="set tcp_rmem/tcp_wmem maximum in both namespaces (default: kernel defaults)")
    parser.add_argument("--ssh-cipher", help="ssh -c CIPHER for scp/rsync (default: OpenSSH's choice)")
    parser.add_argument("--seed", type=int, default=1, help="wanem seed of round 1 (round k uses seed + k - 1)")
    parser.add_argument("--wanem", help="wanem binary (default REPO/.build-release/release/wanem, else "
                                        "REPO/.build/debug/wanem)")
    parser.add_argument("--novacron", default=os.path.join(benchlib.REPO, ".build-release", "release", "novacron"))
    parser.add_argument("--novacron-variant", action="append", metavar="LABEL=FLAGS",
                        help="an extra novacron case with these `novacron send` flags, e.g. "
                             "'s8=--streams 8' (repeatable; for tuning)")
    parser.add_argument("--only", help="comma-separated case keys to keep (e.g. iperf3-8-bbr,novacron-auto)")
    parser.add_argument("--workdir", help="directory for the data and received files (default: a new temp dir)")
    args = parser.parse_args()
    if os.geteuid() != 0:
        sys.exit("bench-transfer: needs root (network namespaces, TUN devices, sshd); run it with sudo")

    size_by_profile = {}
    size = None
    for entry in (args.size or ("128M" if args.quick else "1G")).split(","):
        profile_name, _, text = entry.rpartition("=")
        multiplier = {"K": 1 << 10, "M": 1 << 20, "G": 1 << 30}.get(text[-1].upper(), 1)
        try:
            value = int(float(text.rstrip("kKmMgG")) * multiplier)
        except ValueError:
            sys.exit(f"bench-transfer: --size {entry!r} is not SIZE or PROFILE=SIZE (e.g. 512M, global=256M)")
        if profile_name:
            size_by_profile[profile_name] = value
        else:
            size = value
    runs = args.runs or (2 if args.quick else 3)
    args.iperf_streams = args.iperf_streams or ("1,4,16" if args.quick else "1,2,4,8,16")
    timeout = args.timeout or (90 if args.quick else 300)
    overrides = []
    for flag, value in (("--rtt-ms", args.rtt_ms), ("--rate-mbit", args.rate_mbit), ("--loss", args.loss)):
        if value is not None:
            overrides += [flag, str(value)]
    if args.profiles:
        profiles = args.profiles.split(",")
    else:  # --quick alone is the smoke check (shared/BENCHMARKS.md: under 5 minutes): one short link
        profiles = ["custom"] if overrides else (["lan"] if args.quick else PROFILES)
    if "custom" in profiles and not (args.rtt_ms is not None and args.rate_mbit is not None):
        sys.exit("bench-transfer: a custom link needs --rtt-ms and --rate-mbit (and optionally --loss)")
    size = size or max(size_by_profile.values(), default=1 << 30)
    data_kind = "random"
    if args.data:
        if not os.path.isfile(args.data):
            sys.exit(f"bench-transfer: --data {args.data}: no such file")
        size, size_by_profile = os.path.getsize(args.data), {}
        data_kind = f"file {os.path.basename(args.data)}"
    for profile in profiles:
        if profile != "custom" and profile not in PROFILE_TABLE:
            sys.exit(f"bench-transfer: unknown profile {profile} (known: {', '.join(PROFILE_TABLE)})")
    if args.wanem is None:
        release = os.path.join(benchlib.REPO, ".build-release", "release", "wanem")
        args.wanem = release if os.path.exists(release) else os.path.join(benchlib.REPO, ".build", "debug", "wanem")
    for binary in (args.wanem, "/usr/bin/time"):
        if not os.path.exists(binary):
            sys.exit(f"bench-transfer: {binary} not found (make release; apt-get install time)")
    needed = {"tcp": ["python3"], "iperf3": ["iperf3"], "ssh": ["ssh", "scp", "rsync", "ssh-keygen"]}
    for family in args.cases.split(","):
        if family not in FAMILIES:
            sys.exit(f"bench-transfer: unknown case family {family} (known: {', '.join(FAMILIES)})")
        for tool in needed.get(family, []):
            if not shutil.which(tool):
                sys.exit(f"bench-transfer: {tool} not found (bash scripts/install-deps.sh)")
    if "ssh" in args.cases.split(",") and not os.path.exists("/usr/sbin/sshd"):
        sys.exit("bench-transfer: /usr/sbin/sshd not found (bash scripts/install-deps.sh: openssh-server)")

    signal.signal(signal.SIGTERM, on_signal)
    signal.signal(signal.SIGHUP, on_signal)
    workdir = args.workdir or tempfile.mkdtemp(prefix="bench-transfer-")
    os.makedirs(workdir, exist_ok=True)
    name = f"bt{os.getpid() % 100000}"
    link = None
    notes = []
    started = benchlib.now_utc()
    document = None
    try:
        source = os.path.join(workdir, "source.bin")
        source_size = size_by_profile.get(profiles[0], size)
        if args.data:
            source = os.path.abspath(args.data)
            log(f"moving {args.data} ({source_size / MIB:.0f} MiB)")
            source_sha = file_sha256(source)
        else:
            log(f"generating {source_size / MIB:.0f} MiB of random data in {workdir}")
            source_sha = generate_source(source, source_size)
        cases = make_cases(args)
        secrets = {}
        if "ssh" in args.cases.split(","):
            secrets.update(prepare_ssh(os.path.join(workdir, "ssh")))
        if "novacron" in args.cases.split(","):
            certs, reason = prepare_novacron(args.novacron, os.path.join(workdir, "certs"))
            secrets["certs"] = certs
            if reason:
                log(reason)
                notes.append(reason)
                for case in cases:
                    if case.family == "novacron":
                        case.unavailable = reason
        case_docs = []
        for profile in profiles:
            link_flags = ([] if profile == "custom" else ["--profile", profile]) + overrides
            if size_by_profile.get(profile, size) != source_size:
                source_size = size_by_profile.get(profile, size)
                log(f"generating {source_size / MIB:.0f} MiB of random data for {profile}")
                source_sha = generate_source(source, source_size)
            link_info = dict(PROFILE_TABLE.get(profile, {}), profile=profile)
            link_info.update({k: v for k, v in (("rtt_ms", args.rtt_ms), ("rate_mbit", args.rate_mbit),
                                                ("loss", args.loss)) if v is not None})
            runs_of = {case.key: [] for case in cases}
            for case in cases:
                case.skip_reason = case.unavailable
            tcp_settings = None
            for round_index in range(runs):
                seed = args.seed + round_index
                for case in cases:
                    if case.skip_reason:
                        continue
                    run_dir = os.path.join(workdir, "run")
                    shutil.rmtree(run_dir, ignore_errors=True)
                    os.makedirs(run_dir)
                    link = Link(args.wanem, name, link_flags, seed, timeout + 120, run_dir)
                    try:
                        settings = namespace_settings(link, args.tcp_buffer_mib)
                        tcp_settings = tcp_settings or settings
                        ctx = Context(args, link, run_dir, source, source_sha, source_size, timeout, secrets)
                        try:
                            result = case.runner(ctx, case)
                        except RuntimeError as error:
                            result = {"timed_out": False, "error": str(error), "verified": False,
                                      "sender": {}, "receiver": {}}
                    finally:
                        emulator = link.close()
                        link = None
                    result["round"], result["seed"], result["emulator"] = round_index + 1, seed, emulator
                    sender_exit = result.get("sender", {}).get("exit")
                    if not result["timed_out"] and not result.get("error") and sender_exit != 0:
                        result["error"] = (f"sender exited {sender_exit}: "
                                           f"{result.get('stderr', {}).get('sender', '')}".strip())
                    if (case.verifiable and not result["timed_out"] and not result.get("error")
                            and not result.get("verified")):
                        # An unverified transfer is a failure, not a goodput (shared/BENCHMARKS.md).
                        result["error"] = ("received file is not the source (size or SHA-256 differs)"
                                           + (f"; {result['note']}" if result.get("note") else ""))
                    if result.get("seconds") and not result["timed_out"] and not result.get("error"):
                        moved = result.get("bytes") or source_size
                        result["goodput_mbit"] = round(moved * 8 / result["seconds"] / 1e6, 1)
                        result["tool_goodput_mbit"] = tool_goodput(result.get("tool"))
                    if result["timed_out"]:
                        # Measured, but only over the first `timeout` seconds: shown, never used in ratios.
                        delivered = result.get("bytes_at_timeout")
                        result["goodput_at_timeout_mbit"] = (round(delivered * 8 / timeout / 1e6, 1)
                                                             if delivered else None)
                        result["wire_bytes_at_timeout"] = emulator.get("uplink_bytes")
                        case.skip_reason = f"timed out after {timeout:.0f} s in round {round_index + 1}"
                    runs_of[case.key].append(result)
                    state = "valid" if emulator.get("valid") else "INVALID"
                    outcome = (f"{result['goodput_mbit']} Mbit/s" if result.get("goodput_mbit") else
                               "timed out" if result["timed_out"] else f"failed: {result.get('error') or result.get('stderr')}")
                    log(f"{profile} round {round_index + 1}/{runs} {case.key}: {outcome}, "
                        f"verified {result.get('verified')}, wanem {state}")
                    shutil.rmtree(run_dir, ignore_errors=True)
            case_doc = {
                "link": link_info,
                "data": {"kind": data_kind, "bytes": source_size},
                "tcp_settings": tcp_settings,
                "results": [summarise(case, runs_of[case.key]) for case in cases],
            }
            add_ratios(case_doc)
            case_docs.append(case_doc)
            # Keep what is measured so far: an interrupted run still leaves its finished links.
            with open(os.path.join(benchlib.RESULTS, "transfer.partial.json"), "w") as f:
                json.dump({"benchmark": "transfer", "started": started, "partial": True, "runs": runs,
                           "data": {"kind": data_kind, "bytes": size}, "cases": case_docs}, f, indent=2)
        notes.append("A fresh wanem link per transfer; its report's `valid` is recorded per run. Results of runs "
                     "wanem marked invalid are included in the medians and flagged, not hidden.")
        if not args.tcp_buffer_mib:
            notes.append("TCP buffers: the namespaces' kernel defaults (tcp_settings); --tcp-buffer-mib raises them.")
        document = {
            "benchmark": "transfer",
            "started": started,
            "machine": benchlib.machine(),
            "wanem": args.wanem,
            "novacron": args.novacron,
            "data": {"kind": data_kind, "bytes": size},
            "runs": runs,
            "timeout_seconds": timeout,
            "quick": args.quick,
            "cases": case_docs,
            "notes": notes,
        }
        benchlib.write_results("transfer", document, "(table not generated yet)\n")
        benchlib.write_results("transfer", document, markdown(document))
    except (KeyboardInterrupt, Interrupted) as error:
        log(f"interrupted ({str(error) or 'Ctrl-C'}); cleaning up")
        raise SystemExit(130)
    except (RuntimeError, OSError, subprocess.SubprocessError) as error:
        log(f"failed: {error}; cleaning up")
        raise SystemExit(1)
    finally:
        cleanup_processes()
        if link is not None:
            link.close()
        subprocess.run([args.wanem, "down", "--name", name], capture_output=True)
        if not args.workdir:
            shutil.rmtree(workdir, ignore_errors=True)
    summary = []
    for case_doc in document["cases"]:
        ratios, link_doc = case_doc["ratios"], case_doc["link"]
        valid = all(r.get("emulator_valid_runs") == r.get("total_runs") for r in case_doc["results"]
                    if not r.get("skipped"))
        summary.append(f"{link_doc['profile']} ceiling {link_doc.get('ceiling_mbit')} Mbit/s, novacron/ceiling "
                       f"{ratios['novacron_vs_ceiling']}, novacron/scp {ratios['novacron_vs_scp']}"
                       f"{'' if valid else ' (some runs INVALID)'}")
    print("bench-transfer: " + "; ".join(summary))


if __name__ == "__main__":
    main()
