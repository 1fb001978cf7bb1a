#!/usr/bin/env python3
"""make demo: two NovaCron agents, a busy guest live-migrated from one to the other and back over DWCP.

As root the agents sit on the two sides of a wanem link (default: the continental profile, 100 ms RTT,
1 Gbit/s, 0.1 % loss); otherwise on loopback (and it says so). Each migration compares the destination's RAM
with the source's before the destination runs (--verify-ram), and the report shows the time, QEMU's downtime,
the pause the guest saw, the bytes on the wire against the VM's RAM, and whether the guest's heartbeat
sequence continued without a gap. Everything it starts is stopped on the way out, also on failure.
"""

import argparse
import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
ADDRESS_A, ADDRESS_B = "10.77.0.1", "10.77.0.2"


class Demo:
    def __init__(self, args):
        self.args = args
        self.novacron = os.path.join(ROOT, args.build, "novacron")
        self.wanem = os.path.join(ROOT, args.build, "wanem")
        self.work = tempfile.mkdtemp(prefix="novacron-demo-")
        self.certs = os.path.join(self.work, "certs")
        self.processes = []
        self.link = None
        self.namespaces = {"a": None, "b": None}
        self.hosts = {"a": "127.0.0.1", "b": "127.0.0.1"}
        self.ports = {}

    def wrap(self, node, argv):
        namespace = self.namespaces[node]
        return (["ip", "netns", "exec", namespace] if namespace else []) + argv

    def run(self, argv, check=True):
        result = subprocess.run(argv, stdin=subprocess.DEVNULL, capture_output=True, text=True)
        if check and result.returncode != 0:
            raise RuntimeError(f"{' '.join(argv)}: {result.stderr.strip() or result.stdout.strip()}")
        return result

    def setup(self):
        self.run([self.novacron, "certs", "init", "--dir", self.certs])
        for node in ("a", "b", "op"):
            self.run([self.novacron, "certs", "issue", node, "--dir", self.certs, "--ip", "127.0.0.1",
                      "--ip", ADDRESS_A, "--ip", ADDRESS_B])
        if os.geteuid() == 0 and not self.args.loopback:
            name = "ncdemo"
            subprocess.run([self.wanem, "down", "--name", name], capture_output=True)
            log = open(os.path.join(self.work, "wanem.log"), "wb")
            self.link = subprocess.Popen([self.wanem, "up", "--name", name, "--profile", self.args.profile,
                                          "--duration", "3600"], stdout=log, stderr=subprocess.STDOUT,
                                         stdin=subprocess.DEVNULL, start_new_session=True)
            self.link_name = name
            deadline = time.monotonic() + 30
            while True:
                try:
                    with open(f"/run/wanem/{name}/ready") as f:
                        if f.read().strip() == str(self.link.pid):
                            break
                except OSError:
                    pass
                if self.link.poll() is not None or time.monotonic() > deadline:
                    raise RuntimeError("wanem up did not come up: see " + log.name)
                time.sleep(0.05)
            self.namespaces = {"a": f"{name}-a", "b": f"{name}-b"}
            self.hosts = {"a": ADDRESS_A, "b": ADDRESS_B}
            print(f"link: wanem '{self.args.profile}' between namespaces {name}-a ({ADDRESS_A}) and "
                  f"{name}-b ({ADDRESS_B})")
        else:
            reason = "--loopback" if self.args.loopback else "not root (wanem needs network namespaces)"
            print(f"link: LOOPBACK ({reason}): no WAN emulation, figures are a local machine's")
        for node in ("a", "b"):
            self.start_agent(node)

    def start_agent(self, node):
        out = open(os.path.join(self.work, f"agent-{node}.out"), "w+")
        err = open(os.path.join(self.work, f"agent-{node}.log"), "w")
        argv = self.wrap(node, [self.novacron, "agent", "--listen", f"{self.hosts[node]}:0", "--certs", self.certs,
                                "--node", node, "--store", os.path.join(self.work, f"state-{node}")])
        process = subprocess.Popen(argv, stdout=out, stderr=err, stdin=subprocess.DEVNULL)
        self.processes.append(process)
        deadline = time.monotonic() + 30
        while True:
            out.seek(0)
            text = out.read()
            if "listening on" in text:
                self.ports[node] = int(text.split("listening on")[1].split()[0].rsplit(":", 1)[1])
                break
            if process.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError(f"agent {node} did not start: {open(err.name).read()[-500:]}")
            time.sleep(0.05)
        print(f"agent {node}: {self.hosts[node]}:{self.ports[node]} (log {err.name})")

    def agent(self, node):
        return f"{self.hosts[node]}:{self.ports[node]}"

    def vm(self, node, argv, check=True):
        return self.run(self.wrap(node, [self.novacron, "vm"] + argv + [
            "--agent", self.agent(node), "--certs", self.certs, "--node", "op", "--json"]), check)

    def listing(self, node):
        lines = self.vm(node, ["list"]).stdout.splitlines()
        return {entry["name"]: entry for entry in map(json.loads, lines)}

    def wait_heartbeat(self, node, name, at_least, timeout=120):
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            entry = self.listing(node).get(name)
            if entry and (entry.get("lastHeartbeat") or -1) >= at_least:
                return entry
            time.sleep(0.25)
        raise RuntimeError(f"{name} on {node}: no heartbeat {at_least} within {timeout} s")

    def migrate(self, name, source, destination):
        print(f"\nmigrating {name}: {source} → {destination}")
        argv = self.wrap(source, [self.novacron, "vm", "migrate", name, "--to", self.agent(destination),
                                  "--verify-ram", "--max-downtime", str(self.args.max_downtime),
                                  "--agent", self.agent(source), "--certs", self.certs, "--node", "op", "--json"])
        process = subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                                   stdin=subprocess.DEVNULL)
        report = None
        for line in process.stdout:
            event = json.loads(line)
            if event.get("event") == "progress":
                eta = f"  ETA {event['etaSeconds']:.0f} s" if event.get("etaSeconds") else ""
                print(f"  {event['phase']:<21} {event['seconds']:6.1f} s  sent {event['transferredBytes'] / 2**20:7.1f} MiB"
                      f"  left {event['remainingBytes'] / 2**20:6.1f} MiB  {event['bytesPerSecond'] * 8 / 1e6:6.0f} Mbit/s{eta}")
            elif event.get("event") == "done":
                report = event
        process.wait()
        if report is None:
            raise RuntimeError(f"vm migrate printed no report: {process.stderr.read()[-500:]}")
        # The heartbeat check: the destination console's first heartbeat follows the source's last.
        entry = self.wait_heartbeat(destination, name, (report.get("lastSourceHeartbeat") or 0) + 1) \
            if report["outcome"] == "migrated" else None
        first, cut = None, False
        if entry:
            with open(entry["consoleLog"], errors="replace") as f:
                lines = list(f)
            first = next((line for line in lines if line.startswith("NOVACRON-HEARTBEAT ")), None)
            # The guest writes its serial port a byte at a time: the pause may cut a heartbeat line in two, its
            # tail then begins the destination's console and the first whole heartbeat is one later.
            cut = bool(lines) and not lines[0].startswith("NOVACRON-HEARTBEAT ")
        last = report.get("lastSourceHeartbeat")
        continuous = bool(first and last is not None and f"seq={last + (2 if cut else 1)} " in first
                          and "verify=ok" in first)
        ram = report["ramBytes"]
        print(f"  {report['outcome']}" + (f" ({report['reason']})" if report.get("reason") else "")
              + f"; the VM runs on the {report['runsOn']}")
        print(f"  time {report['totalSeconds']:.2f} s, QEMU downtime {report.get('qemuDowntimeMilliseconds')} ms, "
              f"guest paused {report.get('pausedMilliseconds')} ms (includes the RAM comparison)")
        print(f"  on the wire {report['wireBytes'] / 2**20:.1f} MiB for a {ram / 2**20:.0f} MiB VM "
              f"({report['wireBytes'] / ram:.2f}×); stream {report['streamBytes'] / 2**20:.1f} MiB")
        print(f"  RAM identical: {report.get('ramIdentical')}; heartbeat {last} on the source → "
              f"{first.split()[1] if first else 'none'} on the destination: "
              f"{'continuous' if continuous else 'BROKEN'}")
        return report["outcome"] == "migrated" and report.get("ramIdentical") is True and continuous

    def close(self):
        for process in self.processes:
            if process.poll() is None:
                process.send_signal(signal.SIGTERM)
        for process in self.processes:
            try:
                process.wait(30)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait()
        if self.link:
            if self.link.poll() is None:
                self.link.send_signal(signal.SIGTERM)
                try:
                    self.link.wait(20)
                except subprocess.TimeoutExpired:
                    self.link.kill()
            subprocess.run([self.wanem, "down", "--name", self.link_name], capture_output=True)
        shutil.rmtree(self.work, ignore_errors=True)


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--build", default=".build/debug", help="where novacron and wanem are")
    parser.add_argument("--profile", default="continental", help="wanem profile (as root)")
    parser.add_argument("--loopback", action="store_true", help="skip wanem even as root")
    parser.add_argument("--memory", default="512M")
    parser.add_argument("--workload", default="nc_wss_mib=128 nc_rate_mib=16 nc_pattern=sparse nc_fill=text")
    parser.add_argument("--max-downtime", type=int, default=300)
    args = parser.parse_args()
    demo = Demo(args)
    ok = False
    try:
        demo.setup()
        name = "demo"
        demo.vm("a", ["start", "--name", name, "--memory", args.memory,
                      "--kernel", os.path.join(ROOT, "guest/out/vmlinuz"),
                      "--initrd", os.path.join(ROOT, "guest/out/initramfs.cpio.gz"),
                      "--append", f"console=ttyS0 panic=-1 quiet {args.workload}"])
        print(f"\nguest '{name}' ({args.memory}, {args.workload}) booting on agent a…")
        demo.wait_heartbeat("a", name, 3)
        there = demo.migrate(name, "a", "b")
        demo.wait_heartbeat("b", name, demo.listing("b")[name]["lastHeartbeat"] + 3)
        back = there and demo.migrate(name, "b", "a")
        ok = there and back
        print(f"\ndemo: {'OK' if ok else 'FAILED'}")
    except (RuntimeError, OSError, ValueError, KeyError) as error:
        print(f"demo: FAILED: {error}", file=sys.stderr)
    finally:
        demo.close()
    sys.exit(0 if ok else 1)


if __name__ == "__main__":
    main()
