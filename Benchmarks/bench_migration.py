#!/usr/bin/env python3
"""bench-migration: a 512 MiB test guest live-migrated between the two sides of a wanem link, NovaCron (two
node agents, the migration stream over DWCP) against QEMU's own migration (one TCP stream) and QEMU multifd
with zstd (N TCP streams), started by this script with the launch line NovaCron uses.

For every link profile x guest workload x run, each system gets a fresh `wanem up` link with the same TCP
settings in both namespaces (--tcp-buffer-mib, congestion control --cc) and the same link seed within a round.
Per migration it records the total time, QEMU's downtime (and for NovaCron the pause the guest saw), the bytes
the link carried in the migration's direction (wanem's forwarded-bytes counter, read before and after), the CPU
seconds of every process involved (/proc/PID/stat: the agents and both QEMUs), and whether the guest's heartbeat
continued without a gap on the destination (its first heartbeat is the source's last + 1, verify=ok). NovaCron
then migrates the guest back (b -> a), for `return_wire_fraction`.

A QEMU migration that does not complete within --timeout seconds is cancelled and recorded as not completed; a
ratio against a baseline that did not complete uses the timeout and is marked as a lower bound.

Writes OUT/migration.json and OUT/migration.md (OUT: --out, default docs/benchmarks; OUT/migration.partial.json
after every run while it goes) and prints one summary line last. Needs root.
"""

import argparse
import json
import os
import re
import shlex
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time

import bench_transfer as bt
import benchlib

ROOT = benchlib.REPO
MIB = 1 << 20
CLOCK_TICKS = os.sysconf("SC_CLK_TCK")
BASE_APPEND = "console=ttyS0 panic=-1 quiet"
# The test guest's workloads (guest/README.md). nc_wss_mib must be at least 1: /init rejects 0 and falls back
# to its 64 MiB default, so "idle" is a 1 MiB working set that is never dirtied.
WORKLOADS = {
    "idle": "nc_wss_mib=1 nc_rate_mib=0",
    "sparse16": "nc_wss_mib=128 nc_rate_mib=16 nc_pattern=sparse nc_fill=text",
    "random64": "nc_wss_mib=256 nc_rate_mib=64 nc_pattern=full nc_fill=random",
}
SYSTEM_FAMILIES = ["novacron", "qemu-native", "qemu-multifd-zstd"]
MEMORY_MIB = 512
LAUNCH_KIB = MEMORY_MIB * 1024 - 8  # VMSpec.launchMemoryKiB: 8 KiB less (QEMU 7.2 TCG dirty-bitmap bug)
AGENT_PORT = 7700
QEMU_PORT = 4444
VM_NAME = "ncbench"
HEARTBEAT = re.compile(r"NOVACRON-HEARTBEAT seq=(\d+) ")


def log(message):
    print(f"{time.strftime('%H:%M:%S')} bench-migration: {message}", file=sys.stderr, flush=True)


# ---------------------------------------------------------------------------------------------- processes

STARTED = []  # every Popen this script started (agents, QEMUs), stopped by stop_all()


def spawn(namespace, argv, log_path, stdout_path=None):
    """Starts argv inside `namespace` in its own session (a Ctrl-C in the terminal reaches only this script,
    which then stops everything in order). `ip netns exec` execs the command, so the pid is the command's."""
    out = open(stdout_path or log_path, "wb")
    err = open(log_path, "ab") if stdout_path else subprocess.STDOUT
    try:
        process = subprocess.Popen(["ip", "netns", "exec", namespace] + argv, stdin=subprocess.DEVNULL,
                                   stdout=out, stderr=err, start_new_session=True)
    finally:
        out.close()
        if stdout_path:
            err.close()
    STARTED.append(process)
    return process


def stop(process, signal_number=signal.SIGTERM, grace=30):
    """`signal_number`, then SIGKILL to the process group after `grace` seconds."""
    if process.poll() is None:
        try:
            process.send_signal(signal_number)
        except ProcessLookupError:
            pass
        try:
            process.wait(grace)
        except subprocess.TimeoutExpired:
            try:
                os.killpg(process.pid, signal.SIGKILL)
            except (ProcessLookupError, PermissionError):
                pass
            process.wait()
    if process in STARTED:
        STARTED.remove(process)


def stop_all():
    for process in list(STARTED):
        stop(process, signal.SIGKILL, 10)


def proc_cpu(pid, children=False):
    """utime + stime (+ cutime + cstime: children already reaped) of a process, in seconds; None if it is
    gone."""
    try:
        with open(f"/proc/{pid}/stat") as f:
            text = f.read()
    except OSError:
        return None
    fields = text[text.rindex(")") + 2:].split()
    ticks = int(fields[11]) + int(fields[12])
    if children:
        ticks += int(fields[13]) + int(fields[14])
    return ticks / CLOCK_TICKS


def heartbeats(path):
    """(last heartbeat seq, first heartbeat line) of a guest console log; a line still being written (no
    newline yet) does not count."""
    last, first = None, None
    try:
        with open(path, errors="replace") as f:
            for line in f:
                if not line.endswith("\n"):
                    break
                match = HEARTBEAT.search(line)
                if match:
                    last = int(match.group(1))
                    if first is None:
                        first = line.strip()
    except OSError:
        pass
    return last, first


def begins_with_cut_line(path):
    """Whether a migrated guest's console begins with the tail of a heartbeat the pause cut in two (the guest writes
    its serial port a byte at a time and, once running, writes only heartbeats)."""
    try:
        with open(path, errors="replace") as f:
            return not f.readline().startswith("NOVACRON-HEARTBEAT ")
    except OSError:
        return False


def continuity(first_line, last_source, destination_console):
    """The destination's first heartbeat follows the source's last (the one after it if the pause cut a line in
    two), and the guest's own check passed."""
    if not first_line or last_source is None:
        return False
    expected = last_source + (2 if begins_with_cut_line(destination_console) else 1)
    return f"seq={expected} " in first_line and "verify=ok" in first_line


class LinkCounters:
    """`wanem status` forwarded-bytes counters (refreshed by wanem about every 0.5 s)."""

    def __init__(self, wanem, name):
        self.wanem, self.name = wanem, name

    def read(self):
        try:
            result = subprocess.run([self.wanem, "status", "--name", self.name], capture_output=True, text=True,
                                    timeout=10)
            status = json.loads(result.stdout)
            return {"uplink": status["uplink"]["forwarded_bytes"], "downlink": status["downlink"]["forwarded_bytes"],
                    "elapsed": status.get("elapsed_seconds")}
        except (OSError, ValueError, KeyError, TypeError, subprocess.SubprocessError):
            return None

    def settled(self, after_elapsed=None):
        """A reading taken after wanem refreshed its status file at least once more (so the counters include
        everything up to now)."""
        first = self.read()
        if first is None:
            return None
        deadline = time.monotonic() + 3
        while time.monotonic() < deadline:
            time.sleep(0.2)
            current = self.read()
            if current and current.get("elapsed") != first.get("elapsed"):
                return current
        return self.read()


def delta(before, after, direction):
    if before and after and after[direction] is not None and before[direction] is not None:
        return after[direction] - before[direction]
    return None


# ---------------------------------------------------------------------------------------------- QMP

class QMPError(RuntimeError):
    pass


class QMP:
    """QEMU's machine protocol over its unix socket: JSON lines, asynchronous events skipped."""

    def __init__(self, path, process, timeout=30):
        deadline = time.monotonic() + timeout
        while True:
            sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
            try:
                sock.connect(path)
                break
            except OSError:
                sock.close()
                if process.poll() is not None:
                    raise RuntimeError(f"QEMU exited ({process.returncode}) before its QMP socket {path} opened")
                if time.monotonic() > deadline:
                    raise RuntimeError(f"no QMP socket at {path} after {timeout} s")
                time.sleep(0.05)
        self.sock, self.buffer, self.events = sock, b"", []
        greeting = self._read(time.monotonic() + timeout)
        if "QMP" not in greeting:
            raise RuntimeError(f"unexpected QMP greeting: {greeting}")
        self.execute("qmp_capabilities")

    def _read(self, deadline):
        while True:
            while b"\n" not in self.buffer:
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    raise RuntimeError("QMP: no answer in time")
                self.sock.settimeout(remaining)
                try:
                    data = self.sock.recv(65536)
                except socket.timeout:
                    raise RuntimeError("QMP: no answer in time") from None
                if not data:
                    raise RuntimeError("QMP: QEMU closed the socket")
                self.buffer += data
            line, _, self.buffer = self.buffer.partition(b"\n")
            if line.strip():
                return json.loads(line)

    def execute(self, command, arguments=None, timeout=30):
        message = {"execute": command}
        if arguments is not None:
            message["arguments"] = arguments
        self.sock.sendall(json.dumps(message).encode() + b"\n")
        deadline = time.monotonic() + timeout
        while True:
            reply = self._read(deadline)
            if "event" in reply:
                self.events.append(reply)
                continue
            if "error" in reply:
                raise QMPError(f"{command}: {reply['error'].get('class')}: {reply['error'].get('desc')}")
            if "return" in reply:
                return reply["return"]

    def event_time(self, name, last=True):
        """Host wall-clock time (QMP timestamp) of the last (or first) event `name` seen so far."""
        times = [e["timestamp"]["seconds"] + e["timestamp"]["microseconds"] / 1e6
                 for e in self.events if e.get("event") == name and "timestamp" in e]
        return (times[-1] if last else times[0]) if times else None

    def close(self):
        try:
            self.sock.close()
        except OSError:
            pass


# ---------------------------------------------------------------------------------------------- one run

class Run:
    """One migration measurement (one system) on its own fresh link."""

    counter = 0

    def __init__(self, bench, profile, workload, seed, system):
        self.bench, self.args = bench, bench.args
        self.profile, self.workload, self.seed, self.system = profile, workload, seed, system
        Run.counter += 1
        self.tag = f"{os.getpid()}-{Run.counter}"
        self.dir = os.path.join(bench.workdir, f"run-{Run.counter}")
        os.makedirs(self.dir)
        self.append = f"{BASE_APPEND} {WORKLOADS[workload]}"

    def go(self):
        args = self.args
        duration = args.boot_timeout + 2 * args.timeout + 300
        link = bt.Link(args.wanem, self.bench.link_name, ["--profile", self.profile], self.seed, duration, self.dir)
        self.bench.link = link
        # The methods below fill this in as they go: a run that fails halfway keeps what it measured.
        self.result = result = {"system": self.system["key"], "seed": self.seed}
        try:
            result["tcp_settings"] = self.bench.apply_settings(link)
            self.counters = LinkCounters(args.wanem, link.name)
            self.link = link
            if self.system["family"] == "novacron":
                self.novacron()
            else:
                self.qemu(self.system.get("channels"))
        except (RuntimeError, OSError, ValueError, KeyError, subprocess.SubprocessError) as error:
            result.setdefault("completed", False)
            result["error"] = str(error)
        finally:
            # Agents first, gracefully (they shut their QEMUs down), then whatever is left; `wanem down` (in
            # close) kills anything still inside the namespaces.
            for process in getattr(self, "agents", {}).values():
                stop(process, signal.SIGTERM, 30)
            stop_all()
            emulator = link.close()
            self.bench.link = None
            for node in ("a", "b"):
                shutil.rmtree(f"/tmp/ncb-{node}-{self.tag}", ignore_errors=True)
            if not args.keep:
                shutil.rmtree(self.dir, ignore_errors=True)
        result["emulator"] = emulator
        result.setdefault("completed", False)
        result.setdefault("heartbeat_continuous", False)
        result["verified"] = bool(result["completed"] and result["heartbeat_continuous"])
        return result

    # ------------------------------------------------------------------------------------------ NovaCron

    def novacron_cli(self, node, argv, timeout=60, check=True):
        namespace = self.link.a if node == "a" else self.link.b
        address = bt.ADDRESS_A if node == "a" else bt.ADDRESS_B
        command = ["ip", "netns", "exec", namespace, self.args.novacron, "vm"] + argv + [
            "--agent", f"{address}:{AGENT_PORT}", "--certs", self.bench.certs, "--node", "op", "--json"]
        result = subprocess.run(command, stdin=subprocess.DEVNULL, capture_output=True, text=True, timeout=timeout)
        if check and result.returncode != 0:
            raise RuntimeError(f"novacron vm {argv[0]} on {node}: exit {result.returncode}: "
                               f"{(result.stderr.strip() or result.stdout.strip())[-400:]}")
        return result

    def listing(self, node):
        entries = {}
        for line in self.novacron_cli(node, ["list"], timeout=30).stdout.splitlines():
            line = line.strip()
            if line.startswith("{"):
                entry = json.loads(line)
                entries[entry.get("name")] = entry
        return entries.get(VM_NAME)

    def wait_heartbeat(self, node, at_least, timeout):
        deadline = time.monotonic() + timeout
        while True:
            entry = self.listing(node)
            if entry and (entry.get("lastHeartbeat") if entry.get("lastHeartbeat") is not None else -1) >= at_least:
                return entry
            if time.monotonic() > deadline:
                raise RuntimeError(f"{VM_NAME} on agent {node}: no heartbeat {at_least} within {timeout:.0f} s "
                                   f"(last listing: {entry})")
            time.sleep(0.25)

    def start_agent(self, node):
        namespace = self.link.a if node == "a" else self.link.b
        address = bt.ADDRESS_A if node == "a" else bt.ADDRESS_B
        store = f"/tmp/ncb-{node}-{self.tag}"
        assert len(store) <= 53, store
        out = os.path.join(self.dir, f"agent-{node}.out")
        err = os.path.join(self.dir, f"agent-{node}.log")
        process = spawn(namespace, [self.args.novacron, "agent", "--listen", f"{address}:{AGENT_PORT}",
                                    "--certs", self.bench.certs, "--node", node, "--store", store]
                        + shlex.split(self.args.agent_flags), err, out)
        deadline = time.monotonic() + 60
        while True:
            with open(out, errors="replace") as f:
                if "novacron agent listening on" in f.read():
                    return process
            if process.poll() is not None or time.monotonic() > deadline:
                with open(err, errors="replace") as f:
                    raise RuntimeError(f"agent {node} did not start (exit {process.poll()}): {f.read()[-500:]}")
            time.sleep(0.05)

    def novacron(self):
        args = self.args
        agents = {node: self.start_agent(node) for node in ("a", "b")}
        self.agents = agents
        started = time.monotonic()
        self.novacron_cli("a", ["start", "--name", VM_NAME, "--memory", f"{MEMORY_MIB}M",
                                "--kernel", self.bench.kernel, "--initrd", self.bench.initrd,
                                "--append", self.append])
        self.wait_heartbeat("a", 3, args.boot_timeout)
        result = self.result
        result["boot_seconds"] = round(time.monotonic() - started, 2)
        first = self.novacron_migrate("a", "b", "uplink", result)
        if first.get("completed"):
            entry = self.listing("b")
            self.wait_heartbeat("b", (entry.get("lastHeartbeat") or 0) + 3, 60)
            result["return"] = back = {}
            self.novacron_migrate("b", "a", "downlink", back)
            back["verified"] = bool(back.get("completed") and back.get("heartbeat_continuous"))
            if back.get("completed") and back.get("wire_bytes") and first.get("wire_bytes"):
                result["return_wire_fraction"] = round(back["wire_bytes"] / first["wire_bytes"], 4)
        for node in ("a", "b"):
            self.novacron_cli(node, ["stop", VM_NAME], timeout=60, check=False)
        for node in ("b", "a"):
            stop(agents[node], signal.SIGTERM, 30)
        return result

    def novacron_migrate(self, source, destination, direction, result):
        """Migrates the VM and fills `result` in as it goes (a failure halfway keeps what was measured)."""
        args = self.args
        source_entry = self.listing(source)
        if not source_entry:
            raise RuntimeError(f"{VM_NAME} is not listed on agent {source} before migrating")
        source_qemu = source_entry.get("processID")
        agent_pids = [self.agents[node].pid for node in ("a", "b")]
        cpu_agents_before = [proc_cpu(pid, children=True) for pid in agent_pids]
        agents_own_before = [proc_cpu(pid) or 0.0 for pid in agent_pids]
        cpu_source_before = proc_cpu(source_qemu)
        counters_before = self.counters.settled()
        to = f"{bt.ADDRESS_B if destination == 'b' else bt.ADDRESS_A}:{AGENT_PORT}"
        log(f"  migrate {source} -> {destination} ({self.profile}, {self.workload}, {self.system['key']})")
        timed_out = False
        started = time.monotonic()
        try:
            migrate = self.novacron_cli(source, ["migrate", VM_NAME, "--to", to, "--max-downtime",
                                                 str(args.max_downtime)] + shlex.split(args.migrate_flags),
                                        timeout=args.timeout, check=False)
            stdout, stderr, exit_code = migrate.stdout, migrate.stderr, migrate.returncode
        except subprocess.TimeoutExpired as expired:
            timed_out = True
            stdout = expired.stdout.decode(errors="replace") if isinstance(expired.stdout, bytes) else (expired.stdout or "")
            stderr, exit_code = "", None
        wall = time.monotonic() - started
        report = None
        trace = []
        for event in benchlib.json_events(stdout):
            if event.get("event") == "done":
                report = event
            elif event.get("event") == "progress":
                trace.append([round(event.get("seconds", 0), 1), event.get("phase"),
                              event.get("transferredBytes"), event.get("remainingBytes"),
                              round(event.get("bytesPerSecond", 0) * 8 / 1e6, 1)])
        result.update({"wall_seconds": round(wall, 3), "timed_out": timed_out, "exit": exit_code, "trace": trace})
        if report is None:
            result["completed"] = False
            result["error"] = ("did not complete within %d s" % args.timeout if timed_out else
                               f"vm migrate printed no report (exit {exit_code}): {stderr.strip()[-400:]}")
            result["heartbeat_continuous"] = False
            counters_after = self.counters.settled()
            result["wire_bytes"] = delta(counters_before, counters_after, direction)
            result["wire_bytes_source"] = f"wanem {direction} forwarded_bytes (until the client gave up)"
            return result
        migrated = report.get("outcome") == "migrated"
        result.update({
            "completed": migrated, "outcome": report.get("outcome"), "reason": report.get("reason"),
            "runs_on": report.get("runsOn"), "seconds": report.get("totalSeconds"),
            "qemu_total_ms": report.get("qemuTotalMilliseconds"),
            "downtime_ms": report.get("qemuDowntimeMilliseconds"),
            # The guest's pause measured as for QEMU's baselines: the source's STOP event to the destination's
            # RESUME event (QMP timestamps; both agents share this host's clock), and nothing else: a run without
            # them has no pause figure. The agent's own figure (until the source hears the destination runs, half a
            # round trip later) is kept as paused_agent_ms.
            "paused_ms": report.get("guestPauseByQEMUEventsMilliseconds"),
            "paused_agent_ms": report.get("pausedMilliseconds"),
            "qemu_downtime_limit_ms": report.get("qemuDowntimeLimitMilliseconds"),
            "stream_bytes": report.get("streamBytes"), "report_wire_bytes": report.get("wireBytes"),
            "ram_bytes": report.get("ramBytes"), "last_source_heartbeat": report.get("lastSourceHeartbeat"),
            "auto_converged": report.get("autoConverged"), "report": report,
        })
        counters_after = self.counters.settled()
        wire = delta(counters_before, counters_after, direction)
        if wire is not None:
            result["wire_bytes"], result["wire_bytes_source"] = wire, f"wanem {direction} forwarded_bytes"
        else:
            result["wire_bytes"] = report.get("wireBytes")
            result["wire_bytes_source"] = "novacron report wireBytes (wanem status unavailable)"
        # CPU: both agents (their own time plus the QEMUs they reaped meanwhile, with their whole lives), the
        # source QEMU since the start, and the destination QEMU's whole life (it was started for this migration).
        dest_entry = self.listing(destination) if migrated else None
        deadline = time.monotonic() + 15
        while migrated and os.path.exists(f"/proc/{source_qemu}") and time.monotonic() < deadline:
            time.sleep(0.1)  # the source agent stops its QEMU and reaps it
        if not migrated:
            time.sleep(1)  # the destination agent removes its copy
        cpu_agents_after = [proc_cpu(pid, children=True) for pid in agent_pids]
        cpu = None
        if None not in cpu_agents_before and None not in cpu_agents_after and cpu_source_before is not None:
            agents = sum(cpu_agents_after) - sum(cpu_agents_before)
            source_now = proc_cpu(source_qemu)
            # A reaped source is in its agent's cutime/cstime with its whole life: take off what it had before.
            source_part = (source_now - cpu_source_before) if source_now is not None else -cpu_source_before
            dest_cpu = (proc_cpu(dest_entry["processID"]) or 0.0) if dest_entry else 0.0
            cpu = agents + source_part + dest_cpu
            own_after = [proc_cpu(pid) for pid in agent_pids]
            if None not in own_after:
                result["cpu_seconds_agents"] = round(sum(own_after) - sum(agents_own_before), 2)
            result["cpu_seconds_destination_qemu"] = round(dest_cpu, 2)
        result["cpu_seconds"] = round(cpu, 2) if cpu is not None else None
        if not migrated:
            result["heartbeat_continuous"] = False
            return result
        last = report.get("lastSourceHeartbeat")
        entry = self.wait_heartbeat(destination, (last if last is not None else 0) + 1, 60)
        _, first_line = heartbeats(entry["consoleLog"])
        result["first_destination_heartbeat"] = first_line
        result["heartbeat_continuous"] = continuity(first_line, last, entry["consoleLog"])
        return result

    # ------------------------------------------------------------------------------------------ QEMU

    def qemu_argv(self, side, incoming):
        sock = os.path.join(self.dir, f"qmp-{side}.sock")
        serial = os.path.join(self.dir, f"console-{side}.log")
        argv = [self.args.qemu, "-name", f"{VM_NAME},process=ncbench-{side}", "-accel", "tcg",
                "-M", "pc-i440fx-7.2", "-cpu", "qemu64", "-m", f"{LAUNCH_KIB}k", "-smp", "1",
                "-display", "none", "-nodefaults", "-no-user-config", "-no-reboot",
                "-kernel", self.bench.kernel, "-initrd", self.bench.initrd, "-append", self.append,
                "-serial", f"file:{serial}", "-qmp", f"unix:{sock},server=on,wait=off"]
        if incoming:
            argv += ["-incoming", "defer"]
        return argv, sock, serial

    def qemu(self, channels):
        args = self.args
        uri = f"tcp:{bt.ADDRESS_B}:{QEMU_PORT}"
        dest_argv, dest_sock, dest_serial = self.qemu_argv("b", True)
        source_argv, source_sock, source_serial = self.qemu_argv("a", False)
        dest = spawn(self.link.b, dest_argv, os.path.join(self.dir, "qemu-b.log"))
        source = spawn(self.link.a, source_argv, os.path.join(self.dir, "qemu-a.log"))
        started = time.monotonic()
        qmp_dest = QMP(dest_sock, dest)
        qmp_source = QMP(source_sock, source)
        parameters = {"downtime-limit": args.max_downtime, "max-bandwidth": 1 << 40}
        capabilities = []
        if channels:
            capabilities.append({"capability": "multifd", "state": True})
            parameters.update({"multifd-channels": channels, "multifd-compression": "zstd",
                               "multifd-zstd-level": args.zstd_level})
        if args.qemu_auto_converge:
            capabilities.append({"capability": "auto-converge", "state": True})
        for qmp in (qmp_dest, qmp_source):
            if capabilities:
                qmp.execute("migrate-set-capabilities", {"capabilities": capabilities})
            qmp.execute("migrate-set-parameters", parameters)
        qmp_dest.execute("migrate-incoming", {"uri": uri})
        deadline = time.monotonic() + args.boot_timeout
        while (heartbeats(source_serial)[0] or -1) < 3:
            if source.poll() is not None:
                raise RuntimeError(f"source QEMU exited ({source.returncode}) while booting")
            if time.monotonic() > deadline:
                raise RuntimeError(f"source guest: no heartbeat 3 within {args.boot_timeout} s")
            time.sleep(0.2)
        result = self.result
        result.update({"boot_seconds": round(time.monotonic() - started, 2),
                       "parameters": parameters, "capabilities": capabilities})
        cpu_source_before = proc_cpu(source.pid)
        counters_before = self.counters.settled()
        log(f"  migrate a -> b ({self.profile}, {self.workload}, {self.system['key']})")
        migrate_started = time.monotonic()
        migrate_started_wall = time.time()
        qmp_source.execute("migrate", {"uri": uri})
        status, info, trace, next_trace = None, {}, [], 0.0
        timed_out = False
        while True:
            info = qmp_source.execute("query-migrate")
            status = info.get("status")
            elapsed = time.monotonic() - migrate_started
            if elapsed >= next_trace:
                ram = info.get("ram") or {}
                trace.append([round(elapsed, 1), status, ram.get("transferred"), ram.get("remaining"),
                              ram.get("dirty-pages-rate"), round(ram.get("mbps") or 0, 1),
                              info.get("cpu-throttle-percentage")])
                next_trace = elapsed + 2
            if status in ("completed", "failed", "cancelled"):
                break
            if elapsed > args.timeout:
                timed_out = True
                qmp_source.execute("migrate_cancel")
                cancel_deadline = time.monotonic() + 20
                while time.monotonic() < cancel_deadline:
                    info = qmp_source.execute("query-migrate")
                    if info.get("status") in ("cancelled", "failed", "completed"):
                        break
                    time.sleep(0.1)
                status = info.get("status")
                break
            time.sleep(0.1)
        wall = time.monotonic() - migrate_started
        completed = status == "completed" and not timed_out
        if completed:
            time.sleep(0.3)  # right at completion total-time and downtime can read 0
            info = qmp_source.execute("query-migrate")
        counters_after = self.counters.settled()
        cpu_source_after = proc_cpu(source.pid)
        cpu_dest = proc_cpu(dest.pid)
        ram = info.get("ram") or {}
        result.update({
            "completed": completed, "timed_out": timed_out, "status": status, "wall_seconds": round(wall, 3),
            "seconds": (info.get("total-time") / 1000 if completed and info.get("total-time") else
                        (round(wall, 3) if completed else None)),
            "qemu_total_ms": info.get("total-time"), "downtime_ms": info.get("downtime"),
            "setup_ms": info.get("setup-time"),
            "ram": {key: ram.get(key) for key in ("transferred", "total", "duplicate", "normal", "remaining",
                                                   "dirty-sync-count", "multifd-bytes", "mbps")},
            "error_desc": info.get("error-desc"), "trace": trace,
            "wire_bytes": delta(counters_before, counters_after, "uplink"),
            "wire_bytes_source": "wanem uplink forwarded_bytes",
        })
        if timed_out:
            result["error"] = f"did not complete within {args.timeout:.0f} s (migrate_cancel; status {status})"
        elif not completed:
            result["error"] = f"migration {status}: {info.get('error-desc')}"
        if cpu_source_before is not None and cpu_source_after is not None and cpu_dest is not None:
            result["cpu_seconds"] = round(cpu_source_after - cpu_source_before + cpu_dest, 2)
            result["cpu_seconds_destination_qemu"] = round(cpu_dest, 2)
        last, _ = heartbeats(source_serial)
        result["last_source_heartbeat"] = last
        result["heartbeat_continuous"] = False
        if completed:
            deadline = time.monotonic() + 60
            while True:
                latest, first_line = heartbeats(dest_serial)
                if latest is not None and last is not None and latest >= last + 1:
                    break
                if dest.poll() is not None or time.monotonic() > deadline:
                    first_line = first_line or None
                    result["error"] = f"destination: no heartbeat {None if last is None else last + 1} within 60 s"
                    break
                time.sleep(0.2)
            result["first_destination_heartbeat"] = first_line
            result["heartbeat_continuous"] = continuity(first_line, last, dest_serial)
            # The pause the guest saw: the source's STOP event (QEMU stops the guest for the last pages) to the
            # destination's RESUME (it runs), both QMP timestamps of this host's clock. QEMU's `downtime` ends when
            # the source has written the last bytes into its socket, which with large TCP buffers can be long
            # before they arrive.
            qmp_dest.execute("query-status")
            qmp_source.execute("query-status")
            stopped, resumed = qmp_source.event_time("STOP"), qmp_dest.event_time("RESUME")
            if stopped and resumed:
                result["paused_ms"] = round((resumed - stopped) * 1000)
                result["seconds_to_destination_running"] = round(resumed - migrate_started_wall, 3)
        for qmp in (qmp_source, qmp_dest):
            qmp.close()
        stop(source, signal.SIGKILL, 10)
        stop(dest, signal.SIGKILL, 10)
        return result


# ---------------------------------------------------------------------------------------------- summary

def median(values):
    values = [v for v in values if v is not None]
    return statistics.median(values) if values else None


def spread(values):
    values = [v for v in values if v is not None]
    return [min(values), max(values)] if values else None


def ratio(a, b, digits=3):
    return round(a / b, digits) if a is not None and b else None


def summarise(system, runs, timeout):
    verified = [r for r in runs if r.get("verified")]
    seconds = [r.get("seconds") for r in verified]
    # Timed-out runs count as `timeout` seconds: the median is then a lower bound on the true median.
    bounded = seconds + [timeout for r in runs if r.get("timed_out")]
    entry = {
        "system": system["key"], "family": system["family"], "channels": system.get("channels"),
        "runs": runs, "total_runs": len(runs),
        "completed_runs": sum(1 for r in runs if r.get("completed")),
        "timed_out_runs": sum(1 for r in runs if r.get("timed_out")),
        "heartbeat_continuous_runs": sum(1 for r in runs if r.get("heartbeat_continuous")),
        "verified_runs": len(verified),
        "emulator_valid_runs": sum(1 for r in runs if (r.get("emulator") or {}).get("valid")),
        "emulator_max_lateness_ms": max([((r.get("emulator") or {}).get(d) or {}).get("max_lateness_ms") or 0
                                         for r in runs for d in ("uplink", "downlink")], default=None),
        "median_seconds": median(seconds), "seconds_spread": spread(seconds),
        "median_seconds_with_timeouts": median(bounded) if bounded else None,
        "median_seconds_is_lower_bound": bool(any(r.get("timed_out") for r in runs)),
        "median_seconds_to_destination_running": median(
            [r.get("seconds") if system["family"] == "novacron" else r.get("seconds_to_destination_running")
             for r in verified]),
        "median_downtime_ms": median([r.get("downtime_ms") for r in verified]),
        "downtime_spread_ms": spread([r.get("downtime_ms") for r in verified]),
        "median_paused_ms": median([r.get("paused_ms") for r in verified]),
        "paused_spread_ms": spread([r.get("paused_ms") for r in verified]),
        "median_wire_bytes": median([r.get("wire_bytes") for r in verified]),
        "median_cpu_seconds": median([r.get("cpu_seconds") for r in verified]),
        "completed": bool(runs) and all(r.get("completed") for r in runs),
        "heartbeat_continuous": bool(runs) and all(r.get("heartbeat_continuous") for r in runs),
    }
    entry["verified"] = bool(runs) and entry["verified_runs"] == len(runs)
    if system["family"] == "novacron":
        back = [r["return"] for r in runs if r.get("return")]
        back_ok = [r for r in back if r.get("completed") and r.get("heartbeat_continuous")]
        entry["return"] = {
            "runs": len(back), "verified_runs": len(back_ok),
            "median_seconds": median([r.get("seconds") for r in back_ok]),
            "seconds_spread": spread([r.get("seconds") for r in back_ok]),
            "median_downtime_ms": median([r.get("downtime_ms") for r in back_ok]),
            "median_paused_ms": median([r.get("paused_ms") for r in back_ok]),
            "median_wire_bytes": median([r.get("wire_bytes") for r in back_ok]),
            "median_cpu_seconds": median([r.get("cpu_seconds") for r in back_ok]),
        }
        entry["median_return_wire_fraction"] = median(
            [r.get("return_wire_fraction") for r in runs
             if r.get("verified") and (r.get("return") or {}).get("completed")
             and (r.get("return") or {}).get("heartbeat_continuous")])
    return entry


def baseline_time(entry):
    """(median seconds, is a lower bound) of a baseline for the time ratio."""
    if entry is None or not entry["runs"]:
        return None, False
    if entry["median_seconds_is_lower_bound"]:
        return entry["median_seconds_with_timeouts"], True
    return entry["median_seconds"], False


def add_ratios(case_doc, timeout):
    results = {r["system"]: r for r in case_doc["results"]}
    novacron = results.get("novacron")
    native = results.get("qemu-native")
    multifd = [r for r in case_doc["results"] if r["family"] == "qemu-multifd-zstd"]
    ratios, notes = {}, []
    nc_time = novacron and novacron["median_seconds"]
    native_time, native_bound = baseline_time(native)
    ratios["novacron_vs_qemu_native_time"] = ratio(native_time, nc_time)
    ratios["novacron_vs_qemu_native_time_is_lower_bound"] = native_bound
    if native_bound:
        notes.append(f"qemu-native did not complete within {timeout:.0f} s in {native['timed_out_runs']} of "
                     f"{native['total_runs']} run(s): its time is counted as {timeout:.0f} s there, so "
                     f"novacron_vs_qemu_native_time is a lower bound")
    # The best multifd configuration: the lowest median time (timeouts counted as the timeout).
    candidates = [(baseline_time(r), r) for r in multifd if baseline_time(r)[0] is not None]
    best = min(candidates, key=lambda item: item[0][0]) if candidates else None
    if best:
        (mf_time, mf_bound), mf = best
        ratios["novacron_vs_qemu_multifd_time"] = ratio(mf_time, nc_time)
        ratios["novacron_vs_qemu_multifd_time_is_lower_bound"] = mf_bound
        ratios["best_multifd"] = mf["system"]
        if mf_bound:
            notes.append(f"{mf['system']} did not complete within {timeout:.0f} s in {mf['timed_out_runs']} run(s): "
                         f"novacron_vs_qemu_multifd_time is a lower bound")
    else:
        ratios["novacron_vs_qemu_multifd_time"] = None
    native_downtime = native and native["median_downtime_ms"]
    ratios["downtime_vs_qemu_native"] = ratio(novacron and novacron["median_downtime_ms"], native_downtime)
    ratios["guest_pause_vs_qemu_native_downtime"] = ratio(novacron and novacron["median_paused_ms"], native_downtime)
    # Like for like (see the notes): both systems' time until the VM runs on the destination, and the pause the
    # guest saw on both (QEMU: STOP on the source to RESUME on the destination).
    if not native_bound:
        ratios["novacron_vs_qemu_native_time_to_destination_running"] = ratio(
            native and native["median_seconds_to_destination_running"], nc_time)
    ratios["guest_pause_vs_qemu_native_guest_pause"] = ratio(novacron and novacron["median_paused_ms"],
                                                             native and native["median_paused_ms"])
    ratios["return_wire_fraction"] = novacron and novacron.get("median_return_wire_fraction")
    if novacron and native:
        ratios["wire_bytes_vs_qemu_native"] = ratio(novacron["median_wire_bytes"], native["median_wire_bytes"])
    if native and native["runs"] and not native["median_downtime_ms"]:
        notes.append("no verified qemu-native run: the downtime ratios are missing")
    case_doc["ratios"] = ratios
    case_doc["notes"] = notes


def fmt(value, digits=1, suffix=""):
    return "–" if value is None else f"{value:.{digits}f}{suffix}"


def markdown(document):
    machine = document["machine"]
    lines = [
        "# bench-migration: live migration of a 512 MiB guest over wanem links", "",
        f"Generated by `{document['command']}` ({document['started']}); machine: {machine['cores']} cores, "
        f"{machine['cpu']}, kernel {machine['kernel']}, {machine['swift']}; binaries `{document['novacron']}`, "
        f"`{document['wanem']}`, {document['qemu_version']}.", "",
        f"{document['runs']} run(s) per system and case, medians over verified runs (min–max in brackets); a fresh "
        "wanem link per run, the same seed for every system within a round. Guest: the test guest "
        f"(guest/README.md), `-m {LAUNCH_KIB}k`, TCG, one vCPU, kernel command line `{BASE_APPEND} …` plus the "
        "workload's words. Both sides' TCP settings are the same for every system: "
        f"`{json.dumps(document['tcp_settings'])}`.", "",
        "- **time**: novacron = the report's totalSeconds (request → VM running on the destination; includes "
        "negotiating, starting the destination QEMU and the commit round trips); QEMU = `query-migrate` total-time "
        "(`migrate` → completed on the source; the destination QEMU was started beforehand and is not counted). "
        "**to running**: until the VM runs on the destination (novacron: the same totalSeconds; QEMU: `migrate` → "
        "the destination's RESUME event). QEMU's total-time ends when the source has written its last bytes into "
        "the socket, which can be before they crossed the link.",
        "- **downtime**: QEMU's own downtime figure on the source (both systems; it too ends at the source's last "
        "write); for novacron QEMU's `downtime-limit` is the report's qemuDowntimeLimitMilliseconds (the budget "
        "less the cut-over's round trips, docs/migration.md). **guest pause**, every system alike: the source "
        "QEMU's STOP event → the destination QEMU's RESUME event (QMP timestamps, one host clock; for novacron the "
        "report's guestPauseByQEMUEventsMilliseconds, the agents' own figure kept as paused_agent_ms in the JSON).",
        "- **wire**: IP bytes the link forwarded in the migration's direction (wanem counters read before and "
        "after). **CPU**: user+system seconds from /proc/PID/stat during the migration: for novacron both agents, "
        "the source QEMU and the destination QEMU's whole life; for QEMU both QEMUs likewise (TCG: includes the "
        "guest's own vCPU work on the source).",
        "- **verified**: completed, and the destination console's first heartbeat is the source's last + 1 with "
        "`verify=ok` (the guest checks its pages itself).", "",
        f"QEMU baselines: `migrate-set-parameters` downtime-limit {document['max_downtime_ms']} ms, max-bandwidth "
        f"2^40 (QEMU's 128 MiB/s default lifted); multifd: capability multifd on both sides, multifd-compression "
        f"zstd, multifd-zstd-level {document['zstd_level']}; auto-converge "
        f"{'on' if document['qemu_auto_converge'] else 'off (QEMU default)'}. A migration not completed within "
        f"{document['timeout_seconds']:.0f} s is cancelled (`migrate_cancel`) and shown as not completed.", "",
    ]
    for case in document["cases"]:
        link = case["link"]
        lines += [f"## {link['profile']} ({link.get('rtt_ms')} ms RTT, {link.get('rate_mbit')} Mbit/s, loss "
                  f"{link.get('loss')}), workload {case['data']['workload']}", "",
                  f"Guest words: `{case['data']['append']}`.", "",
                  "| system | time s (median) | min–max | to running s | QEMU downtime ms | guest pause ms | wire MiB | "
                  "CPU s | completed | continuous | verified | wanem valid |",
                  "|---|---:|---|---:|---:|---:|---:|---:|---|---|---|---|"]
        for r in case["results"]:
            wire = r["median_wire_bytes"]
            rng = r["seconds_spread"]
            time_cell = fmt(r["median_seconds"], 2)
            if r["timed_out_runs"]:
                time_cell += f" (not completed within {document['timeout_seconds']:.0f} s in {r['timed_out_runs']})"
            lines.append(
                f"| {r['system']} | {time_cell} | {fmt(rng[0], 2) + '–' + fmt(rng[1], 2) if rng else '–'} | "
                f"{fmt(r['median_seconds_to_destination_running'], 2)} | {fmt(r['median_downtime_ms'], 0)} | {fmt(r['median_paused_ms'], 0)} | "
                f"{fmt(wire / MIB if wire is not None else None, 1)} | {fmt(r['median_cpu_seconds'], 2)} | "
                f"{r['completed_runs']}/{r['total_runs']} | {r['heartbeat_continuous_runs']}/{r['total_runs']} | "
                f"{r['verified_runs']}/{r['total_runs']} | {r['emulator_valid_runs']}/{r['total_runs']} |")
            if r.get("return"):
                back = r["return"]
                rng = back["seconds_spread"]
                wire = back["median_wire_bytes"]
                lines.append(
                    f"| {r['system']} back (b → a) | {fmt(back['median_seconds'], 2)} | "
                    f"{fmt(rng[0], 2) + '–' + fmt(rng[1], 2) if rng else '–'} | {fmt(back['median_seconds'], 2)} | "
                    f"{fmt(back['median_downtime_ms'], 0)} | "
                    f"{fmt(back['median_paused_ms'], 0)} | {fmt(wire / MIB if wire is not None else None, 1)} | "
                    f"{fmt(back['median_cpu_seconds'], 2)} | | | {back['verified_runs']}/{back['runs']} | |")
        errors = [f"{r['system']} run {i + 1}: {run['error']}" for r in case["results"]
                  for i, run in enumerate(r["runs"]) if run.get("error")]
        lines += ["", f"Ratios: `{json.dumps(case['ratios'])}`", ""]
        lines += [f"- {note}" for note in case.get("notes", [])]
        invalid = [r for r in case["results"] if r["emulator_valid_runs"] < r["total_runs"]]
        if invalid:
            lines.append("- **wanem marked runs invalid** (it forwarded packets more than 1 ms behind schedule: the "
                         "emulator could not keep up, the link was worse than configured in those runs): " + ", ".join(
                             f"{r['system']} {r['total_runs'] - r['emulator_valid_runs']}/{r['total_runs']} "
                             f"(up to {fmt(r['emulator_max_lateness_ms'], 0)} ms late)" for r in invalid))
        lines += [f"- {error}" for error in errors]
        lines.append("")
    lines += ["## Notes", ""] + [f"- {note}" for note in document.get("notes", [])] + [""]
    return "\n".join(lines)


def summary_line(document):
    parts = []
    for case in document["cases"]:
        ratios = case["ratios"]
        results = {r["system"]: r for r in case["results"]}
        nc = results.get("novacron")
        native = results.get("qemu-native")
        text = f"{case['link']['profile']}/{case['data']['workload']}:"
        if nc:
            text += f" novacron {fmt(nc['median_seconds'], 1)} s ({nc['verified_runs']}/{nc['total_runs']} verified)"
        if native:
            text += (f", qemu {fmt(native['median_seconds'], 1)} s" if not native["timed_out_runs"] else
                     f", qemu not completed within {document['timeout_seconds']:.0f} s in {native['timed_out_runs']}/"
                     f"{native['total_runs']}")
        bound = ">=" if ratios.get("novacron_vs_qemu_native_time_is_lower_bound") else ""
        invalid = sum(r["total_runs"] - r["emulator_valid_runs"] for r in case["results"])
        if invalid:
            text += f" [wanem: {invalid}/{sum(r['total_runs'] for r in case['results'])} runs INVALID]"
        text += (f"; vs native {bound}{ratios.get('novacron_vs_qemu_native_time')}x"
                 f", vs multifd {'>=' if ratios.get('novacron_vs_qemu_multifd_time_is_lower_bound') else ''}"
                 f"{ratios.get('novacron_vs_qemu_multifd_time')}x, downtime {ratios.get('downtime_vs_qemu_native')}x"
                 f", return wire {ratios.get('return_wire_fraction')}")
        parts.append(text)
    return "bench-migration: " + "; ".join(parts)


# ---------------------------------------------------------------------------------------------- main

class Bench:
    def __init__(self, args):
        self.args = args
        self.workdir = tempfile.mkdtemp(prefix="bench-migration-")
        self.certs = os.path.join(self.workdir, "certs")
        self.link_name = f"ncm{os.getpid() % 100000}"
        self.link = None
        self.kernel = os.path.join(ROOT, "guest", "out", "vmlinuz")
        self.initrd = os.path.join(ROOT, "guest", "out", "initramfs.cpio.gz")
        self.tcp_settings = None

    def prepare(self):
        commands = [[self.args.novacron, "certs", "init", "--dir", self.certs]]
        for node in ("a", "b", "op"):
            commands.append([self.args.novacron, "certs", "issue", node, "--dir", self.certs,
                             "--ip", bt.ADDRESS_A, "--ip", bt.ADDRESS_B])
        for command in commands:
            result = subprocess.run(command, capture_output=True, text=True, timeout=60)
            if result.returncode != 0:
                raise RuntimeError(f"{' '.join(command[1:4])}: {result.stderr.strip()[-300:]}")

    def apply_settings(self, link):
        """The same TCP settings in both namespaces for every system: buffers (bench_transfer's helper) and the
        congestion control."""
        for namespace in (link.a, link.b):
            result = bt.netns_run(namespace, ["sysctl", "-qw", f"net.ipv4.tcp_congestion_control={self.args.cc}"])
            if result.returncode != 0:
                raise RuntimeError(f"cannot set {self.args.cc} in {namespace}: {result.stderr.strip()}")
        settings = bt.namespace_settings(link, self.args.tcp_buffer_mib)
        keys = ["net.ipv4.tcp_congestion_control", "net.ipv4.tcp_rmem", "net.ipv4.tcp_wmem"]
        values = bt.netns_run(link.b, ["sysctl", "-n"] + keys).stdout.splitlines()
        settings_b = {key.rsplit(".", 1)[1]: " ".join(value.split()) for key, value in zip(keys, values)}
        if settings_b != settings:
            raise RuntimeError(f"namespaces differ: a {settings}, b {settings_b}")
        self.tcp_settings = self.tcp_settings or settings
        return settings


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--profiles", default="continental,global,lossy-edge", help="wanem named profiles")
    parser.add_argument("--workloads", default="idle,sparse16,random64",
                        help=f"guest workloads: {', '.join(f'{k} = {v!r}' for k, v in WORKLOADS.items())}")
    parser.add_argument("--systems", default=",".join(SYSTEM_FAMILIES), help="systems to run")
    parser.add_argument("--multifd-channels", default="2,8", help="channel counts of qemu-multifd-zstd (one "
                                                                  "system each; the ratio uses the best)")
    parser.add_argument("--zstd-level", type=int, default=1, help="multifd-zstd-level")
    parser.add_argument("--qemu-auto-converge", action="store_true",
                        help="also switch on QEMU's auto-converge capability for the QEMU baselines (off: QEMU's "
                             "default)")
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--quick", action="store_true",
                        help="continental, sparse16, 1 run, multifd 8 channels only")
    parser.add_argument("--timeout", type=float, default=300, help="seconds per migration before it counts as "
                                                                   "not completed (QEMU: migrate_cancel)")
    parser.add_argument("--boot-timeout", type=float, default=120, help="seconds for the guest's 3rd heartbeat")
    parser.add_argument("--max-downtime", type=int, default=300, help="downtime limit, ms (both systems)")
    parser.add_argument("--agent-flags", default="", help="more `novacron agent` flags (e.g. \"--migration-window 8M\")")
    parser.add_argument("--migrate-flags", default="",
                        help="more `novacron vm migrate` flags (e.g. \"--encode none\"); recorded in the JSON")
    parser.add_argument("--tcp-buffer-mib", type=int, default=64,
                        help="tcp_rmem/tcp_wmem maximum in both namespaces (0: the namespace's defaults)")
    parser.add_argument("--cc", default="bbr", help="net.ipv4.tcp_congestion_control in both namespaces")
    parser.add_argument("--seed", type=int, default=1, help="wanem seed of round 1 (round k: seed + k - 1)")
    parser.add_argument("--novacron", default=os.path.join(ROOT, ".build-release", "release", "novacron"))
    parser.add_argument("--wanem", default=os.path.join(ROOT, ".build-release", "release", "wanem"))
    parser.add_argument("--qemu", default=shutil.which("qemu-system-x86_64") or "qemu-system-x86_64")
    parser.add_argument("--out", default=benchlib.RESULTS, help="directory for migration.json and migration.md")
    parser.add_argument("--keep", action="store_true", help="keep each run's directory (logs) in the work dir")
    args = parser.parse_args()
    if os.geteuid() != 0:
        sys.exit("bench-migration: needs root (network namespaces, TUN devices for wanem); run it with sudo")
    if args.quick:
        args.profiles, args.workloads, args.runs, args.multifd_channels = "continental", "sparse16", 1, "8"
    profiles = [p for p in args.profiles.split(",") if p]
    workloads = [w for w in args.workloads.split(",") if w]
    families = [s for s in args.systems.split(",") if s]
    for profile in profiles:
        if profile not in bt.PROFILE_TABLE:
            sys.exit(f"bench-migration: unknown profile {profile} (known: {', '.join(bt.PROFILE_TABLE)})")
    for workload in workloads:
        if workload not in WORKLOADS:
            sys.exit(f"bench-migration: unknown workload {workload} (known: {', '.join(WORKLOADS)})")
    for family in families:
        if family not in SYSTEM_FAMILIES:
            sys.exit(f"bench-migration: unknown system {family} (known: {', '.join(SYSTEM_FAMILIES)})")
    systems = []
    for family in families:
        if family == "qemu-multifd-zstd":
            systems += [{"key": f"{family}-{int(n)}", "family": family, "channels": int(n)}
                        for n in args.multifd_channels.split(",") if n]
        else:
            systems.append({"key": family, "family": family})
    for path in (args.novacron, args.wanem):
        if not os.path.exists(path):
            sys.exit(f"bench-migration: {path} not found (make release, or --novacron/--wanem)")
    if not shutil.which(args.qemu) and not os.path.exists(args.qemu):
        sys.exit(f"bench-migration: {args.qemu} not found (apt-get install qemu-system-x86)")
    args.novacron, args.wanem = os.path.abspath(args.novacron), os.path.abspath(args.wanem)
    available = subprocess.run(["sysctl", "-n", "net.ipv4.tcp_available_congestion_control"],
                               capture_output=True, text=True).stdout.split()
    if args.cc not in available:
        subprocess.run(["modprobe", f"tcp_{args.cc}"], capture_output=True)
    bench = Bench(args)
    if not (os.path.exists(bench.kernel) and os.path.exists(bench.initrd)):
        log("building the test guest (scripts/build-guest.sh)")
        if subprocess.run(["bash", os.path.join(ROOT, "scripts", "build-guest.sh")], stdout=subprocess.DEVNULL,
                          stdin=subprocess.DEVNULL).returncode != 0:
            sys.exit("bench-migration: scripts/build-guest.sh failed")
    os.makedirs(args.out, exist_ok=True)
    qemu_version = subprocess.run([args.qemu, "--version"], capture_output=True, text=True).stdout.split("\n")[0]
    # A signal unwinds through the `finally`s, which stop every process and take the link down.
    signal.signal(signal.SIGTERM, bt.on_signal)
    signal.signal(signal.SIGHUP, bt.on_signal)
    document = {
        "benchmark": "migration", "started": benchlib.now_utc(),
        "command": " ".join(shlex.quote(a) for a in ["python3", os.path.relpath(sys.argv[0], ROOT)] + sys.argv[1:]),
        "machine": benchlib.machine(), "novacron": args.novacron, "wanem": args.wanem, "qemu": args.qemu,
        "qemu_version": qemu_version, "runs": args.runs, "quick": args.quick, "timeout_seconds": args.timeout,
        "max_downtime_ms": args.max_downtime, "migrate_flags": args.migrate_flags, "agent_flags": args.agent_flags, "zstd_level": args.zstd_level,
        "qemu_auto_converge": args.qemu_auto_converge, "tcp_buffer_mib": args.tcp_buffer_mib, "cc": args.cc,
        "tcp_settings": None, "memory_mib": MEMORY_MIB, "guest_launch_kib": LAUNCH_KIB, "cases": [],
        "notes": [
            "A fresh wanem link per run (`wanem up --profile P --seed S`); its report's `valid` is recorded per run "
            "and counted in the table, runs it marked invalid are not hidden.",
            "idle uses nc_wss_mib=1: the guest rejects 0 (it would fall back to its 64 MiB default).",
            "Wire bytes are the link's forwarded-bytes counter in the migration's direction (a → b; the return "
            "migration b → a), read from `wanem status` before and after (wanem refreshes it every ~0.5 s; the "
            "reading after waits for a refresh).",
            "novacron's time includes negotiating with the destination agent and starting the destination QEMU; "
            "QEMU's total-time does not include starting its destination (started before `migrate`).",
            "The machine has 2 cores shared by both QEMUs (TCG), the agents or QEMU's migration threads and the "
            "emulator: CPU contention is part of every figure.",
        ],
    }
    partial_path = os.path.join(args.out, "migration.partial.json")
    ok = False
    try:
        bench.prepare()
        for profile in profiles:
            for workload in workloads:
                runs_of = {s["key"]: [] for s in systems}
                case_doc = {"link": dict(bt.PROFILE_TABLE[profile], profile=profile),
                            "data": {"workload": workload, "append": f"{BASE_APPEND} {WORKLOADS[workload]}",
                                     "memory_mib": MEMORY_MIB, "guest_launch_kib": LAUNCH_KIB}}
                document["cases"].append(case_doc)
                for round_index in range(args.runs):
                    seed = args.seed + round_index
                    for system in systems:
                        log(f"{profile} / {workload} / run {round_index + 1}/{args.runs} / {system['key']}")
                        result = Run(bench, profile, workload, seed, system).go()
                        result["round"] = round_index + 1
                        runs_of[system["key"]].append(result)
                        back = result.get("return") or {}
                        log(f"  {system['key']}: completed {result.get('completed')}, "
                            f"{fmt(result.get('seconds'), 2)} s, downtime {result.get('downtime_ms')} ms, "
                            f"paused {result.get('paused_ms')} ms, wire "
                            f"{fmt(result['wire_bytes'] / MIB if result.get('wire_bytes') is not None else None)} MiB, "
                            f"CPU {result.get('cpu_seconds')} s, continuous {result.get('heartbeat_continuous')}"
                            + (f"; back {fmt(back.get('seconds'), 2)} s, wire "
                               f"{fmt(back['wire_bytes'] / MIB if back.get('wire_bytes') is not None else None)} MiB, "
                               f"continuous {back.get('heartbeat_continuous')}" if back else "")
                            + (f"; error: {result['error']}" if result.get("error") else ""))
                        case_doc["results"] = [summarise(s, runs_of[s["key"]], args.timeout) for s in systems]
                        add_ratios(case_doc, args.timeout)
                        document["tcp_settings"] = bench.tcp_settings
                        # Keep what is measured so far: a run that dies still leaves its finished measurements.
                        with open(partial_path, "w") as f:
                            json.dump(dict(document, partial=True), f, indent=1)
                            f.write("\n")
        document["finished"] = benchlib.now_utc()
        with open(os.path.join(args.out, "migration.json"), "w") as f:
            json.dump(document, f, indent=1)
            f.write("\n")
        with open(os.path.join(args.out, "migration.md"), "w") as f:
            f.write(markdown(document))
        os.remove(partial_path)
        ok = True
    except (KeyboardInterrupt, bt.Interrupted) as error:
        log(f"interrupted ({str(error) or 'Ctrl-C'}); cleaning up (measured so far: {partial_path})")
        raise SystemExit(130)
    except (RuntimeError, OSError, subprocess.SubprocessError) as error:
        log(f"failed: {error}; cleaning up (measured so far: {partial_path})")
        raise SystemExit(1)
    finally:
        for number in (signal.SIGTERM, signal.SIGHUP, signal.SIGINT):
            signal.signal(number, signal.SIG_IGN)  # a second signal must not cut the cleanup short
        stop_all()
        if bench.link is not None:
            bench.link.close()
        subprocess.run([args.wanem, "down", "--name", bench.link_name], capture_output=True)
        for path in os.listdir("/tmp"):
            if path.startswith(("ncb-a-", "ncb-b-")) and path.split("-")[2] == str(os.getpid()):
                shutil.rmtree(os.path.join("/tmp", path), ignore_errors=True)
        if not args.keep:
            shutil.rmtree(bench.workdir, ignore_errors=True)
        else:
            log(f"run directories kept in {bench.workdir}")
    print(summary_line(document))


if __name__ == "__main__":
    main()
