import Foundation
import NovaCronHypervisor
import Testing

#if canImport(Glibc)
    import Glibc
#endif

/// Live migration between two `novacron agent` processes over loopback TLS, with a real busy guest: the
/// successful path (RAM compared, heartbeat continuing, and back again) and each failure the agents must
/// survive — destination killed, certificate refused, source QEMU killed, destination disk full — each
/// asserting where the VM runs afterwards and that no QEMU is left behind.
@Suite("novacron agent: live migration", .serialized, .timeLimit(.minutes(3)))
struct AgentMigrationTests {
    static let repository = URL(fileURLWithPath: #filePath)
        .deletingLastPathComponent().deletingLastPathComponent().deletingLastPathComponent()

    /// `novacron ARGUMENTS` as a process: run inside network namespace `namespace` when given.
    static func novacron(_ arguments: [String], in namespace: String?) -> (URL, [String]) {
        guard let namespace else { return (NovaCronCLI.executable, arguments) }
        return (
            URL(fileURLWithPath: "/usr/sbin/ip"), ["netns", "exec", namespace, NovaCronCLI.executable.path] + arguments
        )
    }

    /// An agent process; SIGTERM (graceful: its VMs are shut down) when released, SIGKILL if it hangs.
    final class Agent {
        let process = Process()
        let port: Int
        let node: String
        let certificates: String
        let host: String
        let namespace: String?
        private let errorURL: URL
        /// The agent's state directory: short, because QEMU's socket paths live under it.
        private let state: String

        init(
            node: String, certificates: String, directory: TemporaryDirectory, store: String? = nil,
            host: String = "127.0.0.1", namespace: String? = nil, peerTimeout: Int = 30, flags: [String] = []
        ) async throws {
            self.node = node
            self.certificates = certificates
            self.host = host
            self.namespace = namespace
            state = store ?? "/tmp/nca-\(UUID().uuidString.prefix(8))"
            let outputURL = directory.url.appendingPathComponent("\(node)-\(UUID().uuidString).stdout")
            errorURL = directory.url.appendingPathComponent("\(node)-\(UUID().uuidString).stderr")
            try Data().write(to: outputURL)
            try Data().write(to: errorURL)
            (process.executableURL, process.arguments) = AgentMigrationTests.novacron(
                [
                    "agent", "--listen", "\(host):0", "--certs", certificates, "--node", node, "--store", state,
                    "--peer-timeout",
                    "\(peerTimeout)",
                ] + flags, in: namespace)
            process.standardOutput = try FileHandle(forWritingTo: outputURL)
            process.standardError = try FileHandle(forWritingTo: errorURL)
            try process.run()
            var bound: Int?
            for _ in 0..<200 {
                let text = (try? String(contentsOf: outputURL, encoding: .utf8)) ?? ""
                if let line = text.split(separator: "\n").first(where: { $0.contains("listening on") }),
                    let port = line.split(separator: ":").last.flatMap({ Int($0) })
                {
                    bound = port
                    break
                }
                guard process.isRunning else { break }
                try await Task.sleep(for: .milliseconds(50))
            }
            port = try #require(
                bound, "agent \(node) never listened: \((try? String(contentsOf: errorURL, encoding: .utf8)) ?? "")")
        }

        var address: String { "\(host):\(port)" }
        var log: String { (try? String(contentsOf: errorURL, encoding: .utf8)) ?? "" }

        /// Runs `novacron vm ARGUMENTS --agent this` as the operator.
        func vm(_ arguments: [String]) async throws -> NovaCronCLI.Result {
            let (executable, all) = AgentMigrationTests.novacron(
                ["vm"] + arguments + ["--agent", address, "--certs", certificates, "--node", "op", "--json"],
                in: namespace)
            return try await NovaCronCLI.runToolAsync(executable.path, all)
        }

        /// The VMs it holds, from `vm list --json`.
        func list() async throws -> [[String: Any]] {
            let result = try await vm(["list"])
            try #require(result.status == 0, "vm list on \(node): \(result.standardError)")
            return result.standardOutput.split(separator: "\n").compactMap {
                try? JSONSerialization.jsonObject(with: Data($0.utf8)) as? [String: Any]
            }
        }

        func kill() {
            Glibc.kill(process.processIdentifier, SIGKILL)
            process.waitUntilExit()
        }

        deinit {
            if process.isRunning {
                process.terminate()
                for _ in 0..<300 where process.isRunning { usleep(50_000) }
                if process.isRunning { Glibc.kill(process.processIdentifier, SIGKILL) }
                process.waitUntilExit()
            }
            // What a killed agent leaves (its QEMUs' runtime directories) is in here.
            try? FileManager.default.removeItem(atPath: state)
        }
    }

    /// A cluster CA with agents `a` and `b` and operator `op`, valid for 127.0.0.1 and the wanem addresses.
    static func certificates(in directory: TemporaryDirectory, cluster: String = "certs") throws -> String {
        let path = directory.url.appendingPathComponent(cluster).path
        var commands = [["certs", "init", "--dir", path]]
        for node in ["a", "b", "op"] {
            commands.append(
                ["certs", "issue", node, "--dir", path, "--ip", "127.0.0.1", "--ip", "10.77.0.1", "--ip", "10.77.0.2"])
        }
        for arguments in commands {
            let result = try NovaCronCLI.run(arguments)
            try #require(result.status == 0, "\(arguments): \(result.standardError)")
        }
        return path
    }

    /// Boots the test guest on `agent` and waits for its second heartbeat.
    static func startGuest(_ name: String, on agent: Agent, workload: String = "nc_wss_mib=64 nc_rate_mib=8")
        async throws
    {
        let kernel = repository.appendingPathComponent("guest/out/vmlinuz").path
        let initrd = repository.appendingPathComponent("guest/out/initramfs.cpio.gz").path
        try #require(
            FileManager.default.fileExists(atPath: kernel), "the test guest is not built: run scripts/build-guest.sh")
        let started = try await agent.vm([
            "start", "--name", name, "--memory", "256M", "--kernel", kernel, "--initrd", initrd, "--append",
            "console=ttyS0 panic=-1 quiet nc_fill=text \(workload)",
        ])
        try #require(started.status == 0, "vm start: \(started.standardError)")
        _ = try await waitForHeartbeat(of: name, on: agent, atLeast: 2)
    }

    /// Polls `vm list` until `name` shows a heartbeat of at least `atLeast`.
    static func waitForHeartbeat(of name: String, on agent: Agent, atLeast: Int) async throws -> Int {
        for _ in 0..<240 {
            if let vm = try await agent.list().first(where: { $0["name"] as? String == name }),
                let heartbeat = vm["lastHeartbeat"] as? Int, heartbeat >= atLeast
            {
                return heartbeat
            }
            try await Task.sleep(for: .milliseconds(250))
        }
        Issue.record("\(name) on \(agent.node) never reached heartbeat \(atLeast)")
        return -1
    }

    /// Runs `vm migrate` on `source` and returns its final JSON report and exit status; `during` runs once
    /// a progress line shows at least `afterBytes` sent.
    static func migrate(
        _ name: String, from source: Agent, to destination: Agent, extra: [String] = [],
        afterBytes: Int = 0, inPhase phase: String? = nil, during: (() -> Void)? = nil
    ) async throws -> (report: [String: Any], status: Int32) {
        let process = Process()
        (process.executableURL, process.arguments) = novacron(
            ["vm", "migrate", name, "--to", destination.address] + extra
                + ["--agent", source.address, "--certs", source.certificates, "--node", "op", "--json"],
            in: source.namespace)
        let directory = try TemporaryDirectory()
        let outputURL = directory.url.appendingPathComponent("stdout")
        try Data().write(to: outputURL)
        process.standardOutput = try FileHandle(forWritingTo: outputURL)
        process.standardError = FileHandle.nullDevice
        try process.run()
        var acted = during == nil
        func lines() -> [[String: Any]] {
            ((try? String(contentsOf: outputURL, encoding: .utf8)) ?? "").split(separator: "\n").compactMap {
                try? JSONSerialization.jsonObject(with: Data($0.utf8)) as? [String: Any]
            }
        }
        while process.isRunning {
            if !acted,
                lines().contains(where: {
                    ($0["transferredBytes"] as? Int ?? 0) >= afterBytes && $0["event"] as? String == "progress"
                        && (phase == nil || $0["phase"] as? String == phase)
                })
            {
                during?()
                acted = true
            }
            try await Task.sleep(for: .milliseconds(20))
        }
        #expect(acted, "the migration ended before \(afterBytes) bytes were sent (in phase \(phase ?? "any"))")
        let done = try #require(lines().last(where: { $0["event"] as? String == "done" }), "no report: \(lines())")
        return (done, process.terminationStatus)
    }

    /// Process ids of QEMUs running VM `name` (named `-name NAME,…`).
    static func qemuProcesses(named name: String) -> [Int32] {
        let entries = (try? FileManager.default.contentsOfDirectory(atPath: "/proc")) ?? []
        return entries.compactMap(Int32.init).filter { pid in
            guard let data = FileManager.default.contents(atPath: "/proc/\(pid)/cmdline") else { return false }
            let words = data.split(separator: 0).map { String(decoding: $0, as: UTF8.self) }
            return words.contains("\(name),process=novacron-\(name)")
        }
    }

    /// Waits until exactly `count` QEMUs run `name` (a destination QEMU exits when its stream breaks).
    static func expectQEMUs(named name: String, count: Int, sourceLocation: SourceLocation = #_sourceLocation)
        async throws
    {
        for _ in 0..<100 where qemuProcesses(named: name).count != count {
            try await Task.sleep(for: .milliseconds(100))
        }
        #expect(qemuProcesses(named: name).count == count, "QEMUs of \(name)", sourceLocation: sourceLocation)
    }

    /// The VM runs on `agent` (listed, its heartbeat moving) as the only QEMU of its name, and `other` holds nothing.
    static func expectOnlyOn(_ agent: Agent, _ name: String, not other: Agent) async throws {
        try await expectRunning(name, on: agent)
        try await expectQEMUs(named: name, count: 1)
        #expect(try await other.list().isEmpty, "\(other.node) kept its copy")
    }

    /// The VM still runs on `agent`: listed, and its heartbeat moves on.
    static func expectRunning(_ name: String, on agent: Agent) async throws {
        let vms = try await agent.list()
        let vm = try #require(
            vms.first(where: { $0["name"] as? String == name }), "\(name) not on \(agent.node): \(vms)")
        #expect(vm["state"] as? String == "running")
        let now = vm["lastHeartbeat"] as? Int ?? 0
        _ = try await waitForHeartbeat(of: name, on: agent, atLeast: now + 2)
    }

    /// Agents `a` and `b` (b with certificates of another cluster when `foreign`, and its state in `store`),
    /// and a busy guest `name` running on `a`.
    struct Cluster {
        let directory: TemporaryDirectory
        let a: Agent
        let b: Agent
    }

    static func cluster(
        guest name: String, foreign: Bool = false, directory: TemporaryDirectory? = nil, store: String? = nil
    ) async throws -> Cluster {
        let directory = try directory ?? TemporaryDirectory()
        let certificates = try certificates(in: directory)
        let a = try await Agent(node: "a", certificates: certificates, directory: directory)
        let b = try await Agent(
            node: "b", certificates: foreign ? try Self.certificates(in: directory, cluster: "other") : certificates,
            directory: directory, store: store)
        try await startGuest(name, on: a)
        return Cluster(directory: directory, a: a, b: b)
    }

    @Test(
        "A busy guest migrates a → b with identical RAM and an unbroken heartbeat, and back b → a running on arrival")
    func migrateAndBack() async throws {
        let name = "nctest-agent-ok"
        let cluster = try await Self.cluster(guest: name)
        let (a, b) = (cluster.a, cluster.b)

        // There with the RAM compared while both are paused; back without, the destination running on arrival.
        var firstWire = 0
        for (source, destination, verify) in [(a, b, true), (b, a, false)] {
            let (report, status) = try await Self.migrate(
                name, from: source, to: destination, extra: verify ? ["--verify-ram"] : [])
            #expect(status == 0, "\(report)")
            #expect(report["outcome"] as? String == "migrated")
            #expect(report["ramIdentical"] as? Bool == (verify ? true : nil))
            let wire = try #require(report["wireBytes"] as? Int, "\(report)")
            if verify {
                firstWire = wire
            } else {
                // Both agents keep the first stream's pages by slot: the way back refers to the pages that did
                // not change and sends the ones the guest wrote as deltas against their earlier versions.
                let deltas = report["deltaBytes"] as? Int ?? 0
                let references = report["referencedBytes"] as? Int ?? 0
                #expect(deltas > 0 && references > 0, "\(report)")
                #expect(wire * 10 < firstWire * 3, "back \(wire) B on the wire against \(firstWire) B there")
            }
            if !verify {
                // One clock here: the pause the QEMUs saw is measured; it fits in what the source agent saw, give or take
                // its 100 ms poll of QEMU's status.
                let byEvents = try #require(report["guestPauseByQEMUEventsMilliseconds"] as? Int, "\(report)")
                let seen = try #require(report["pausedMilliseconds"] as? Int)
                #expect(byEvents > 0 && byEvents <= seen + 150, "events \(byEvents) ms, source agent \(seen) ms")
                let limit = try #require(report["qemuDowntimeLimitMilliseconds"] as? Int)
                #expect((290...300).contains(limit), "a loopback path leaves QEMU nearly all of 300 ms, not \(limit)")
            }
            #expect(try await source.list().isEmpty, "the source still holds a VM")
            try await Self.expectQEMUs(named: name, count: 1)
            let vms = try await destination.list()
            let vm = try #require(vms.first { $0["name"] as? String == name })
            #expect(vm["state"] as? String == "running")
            // The destination console's first heartbeat is the one after the source's last: no gap (the pause
            // may cut a line in two, see GuestHeartbeat.expectedFirst).
            let last = try #require(report["lastSourceHeartbeat"] as? Int)
            _ = try await Self.waitForHeartbeat(of: name, on: destination, atLeast: last + 1)
            let console = try String(contentsOfFile: try #require(vm["consoleLog"] as? String), encoding: .utf8)
            let lines = console.split(separator: "\n").map(String.init)
            let first = lines.lazy.compactMap(GuestHeartbeat.init(line:)).first
            #expect(
                first?.sequence == GuestHeartbeat.expectedFirst(after: last, newConsoleFirstLine: lines.first ?? ""),
                "source's last \(last), destination's first lines: \(lines.prefix(2))")
            #expect(first?.isVerified == true)
        }
        let history = try await a.vm(["migrations"])
        #expect(history.standardOutput.contains("\"outcome\":\"migrated\""))
    }

    @Test("Destination agent killed mid-transfer: rolled back, the VM runs on the source, no QEMU left on b")
    func destinationKilled() async throws {
        let name = "nctest-agent-dstkill"
        let cluster = try await Self.cluster(guest: name)
        let (a, b) = (cluster.a, cluster.b)
        let (report, status) = try await Self.migrate(
            name, from: a, to: b, extra: ["--max-rate", "16M"], afterBytes: 20 << 20
        ) { b.kill() }
        #expect(status == 1)
        #expect(report["outcome"] as? String == "rolled back")
        #expect(report["runsOn"] as? String == "source")
        let reason = report["reason"] as? String ?? ""
        #expect(reason.contains("connection") && !reason.contains("authentication"), "\(reason)")
        try await Self.expectRunning(name, on: a)
        try await Self.expectQEMUs(named: name, count: 1)
    }

    @Test(
        "Destination agent killed while its copy waits to be compared: rolled back; restarted on its state, the agent quits the QEMU it left"
    )
    func destinationKilledBeforeCommit() async throws {
        let name = "nctest-agent-orphan"
        let store = "/tmp/nca-\(UUID().uuidString.prefix(8))"
        // Whatever happens, no QEMU of b's outlives the test.
        defer {
            for pid in Self.qemuProcesses(named: name) where Self.commandLine(of: pid).contains(store) {
                kill(pid, SIGKILL)
            }
        }
        let cluster = try await Self.cluster(guest: name, store: store)
        let (a, b) = (cluster.a, cluster.b)
        let (report, status) = try await Self.migrate(
            name, from: a, to: b, extra: ["--verify-ram"], inPhase: "verifying"
        ) { b.kill() }
        #expect(status == 1)
        #expect(report["outcome"] as? String == "rolled back", "\(report)")
        try await Self.expectRunning(name, on: a)
        // b's QEMU had the whole stream and waited, paused, for the comparison: it outlived its agent.
        #expect(Self.qemuProcesses(named: name).filter { Self.commandLine(of: $0).contains(store) }.count == 1)
        let restarted = try await Agent(
            node: "b", certificates: a.certificates, directory: cluster.directory, store: store)
        try await Self.expectQEMUs(named: name, count: 1)
        #expect(restarted.log.contains("never ran the guest"), "\(restarted.log)")
        #expect(try await restarted.list().isEmpty)
    }

    /// A process's command line, its arguments joined by spaces.
    static func commandLine(of pid: Int32) -> String {
        guard let data = FileManager.default.contents(atPath: "/proc/\(pid)/cmdline") else { return "" }
        return data.split(separator: 0).map { String(decoding: $0, as: UTF8.self) }.joined(separator: " ")
    }

    @Test("A destination whose certificate is of another cluster is refused: nothing starts there")
    func certificateRefused() async throws {
        let name = "nctest-agent-tls"
        let cluster = try await Self.cluster(guest: name, foreign: true)
        let (a, b) = (cluster.a, cluster.b)
        let (report, status) = try await Self.migrate(name, from: a, to: b)
        #expect(status == 1)
        #expect(report["outcome"] as? String == "rolled back")
        let reason = report["reason"] as? String ?? ""
        #expect(reason.contains("cannot reach the destination agent"), "\(reason)")
        #expect(reason.lowercased().contains("certificate") || reason.contains("authentication"), "\(reason)")
        try await Self.expectRunning(name, on: a)
        try await Self.expectQEMUs(named: name, count: 1)
    }

    @Test("Source QEMU killed mid-transfer: rolled back with QEMU's error, the destination copy removed")
    func sourceQEMUKilled() async throws {
        let name = "nctest-agent-srckill"
        let cluster = try await Self.cluster(guest: name)
        let (a, b) = (cluster.a, cluster.b)
        let source = try #require(try await a.list().first?["processID"] as? Int)
        let (report, status) = try await Self.migrate(
            name, from: a, to: b, extra: ["--max-rate", "16M"], afterBytes: 20 << 20
        ) { _ = Glibc.kill(Int32(source), SIGKILL) }
        #expect(status == 1)
        #expect(report["outcome"] as? String == "rolled back")
        #expect((report["reason"] as? String ?? "").contains("source QEMU"), "\(report)")
        #expect(try await b.list().isEmpty, "the destination kept a copy")
        try await Self.expectQEMUs(named: name, count: 0)
        let vms = try await a.list()
        #expect(vms.first?["state"] as? String == "exited", "\(vms)")
    }

    @Test(
        "Destination disk full (its state on a 16 MiB tmpfs; the chunk store fills): rolled back, VM on the source",
        .enabled(if: getuid() == 0, "mounting a tmpfs needs root")
    )
    func destinationDiskFull() async throws {
        let directory = try TemporaryDirectory()
        let store = "/tmp/nca-full-\(UUID().uuidString.prefix(8))"
        try FileManager.default.createDirectory(atPath: store, withIntermediateDirectories: true)
        let mounted = try NovaCronCLI.runTool("/bin/mount", ["-t", "tmpfs", "-o", "size=16m", "tmpfs", store])
        try #require(mounted.status == 0, "mount: \(mounted.standardError)")
        defer {
            _ = try? NovaCronCLI.runTool("/bin/umount", ["-l", store])
            try? FileManager.default.removeItem(atPath: store)
        }
        let name = "nctest-agent-full"
        let cluster = try await Self.cluster(guest: name, directory: directory, store: store)
        let (a, b) = (cluster.a, cluster.b)
        let (report, status) = try await Self.migrate(name, from: a, to: b, extra: ["--verify-ram"])
        #expect(status == 1)
        #expect(report["outcome"] as? String == "rolled back")
        #expect(report["runsOn"] as? String == "source")
        let reason = report["reason"] as? String ?? ""
        #expect(reason.contains("chunk store") && reason.contains("No space left on device"), "\(reason)")
        try await Self.expectRunning(name, on: a)
        #expect(try await b.list().isEmpty)
        try await Self.expectQEMUs(named: name, count: 1)
        // The same migration without HDE (nothing stored) then fails at the RAM comparison, for the same reason.
        let (plain, plainStatus) = try await Self.migrate(
            name, from: a, to: b, extra: ["--verify-ram", "--encode", "none"])
        #expect(plainStatus == 1)
        let plainReason = plain["reason"] as? String ?? ""
        #expect(plainReason.contains("destination QEMU") && plainReason.contains("pmemsave"), "\(plainReason)")
        try await Self.expectRunning(name, on: a)
        #expect(try await b.list().isEmpty)
        #expect(((try? FileManager.default.contentsOfDirectory(atPath: store + "/scratch")) ?? []).isEmpty)
    }

    /// Agents `a` and `b` on the two sides of a wanem link (LAN profile), each with a 4 s peer timeout, and a busy
    /// guest `name` running on `a`. The caller closes the link.
    struct LinkedCluster {
        let directory: TemporaryDirectory
        let link: WANLinkProcess
        let a: Agent
        let b: Agent
    }

    static func linkedCluster(link prefix: String, guest name: String, sourceFlags: [String] = []) async throws
        -> LinkedCluster
    {
        let directory = try TemporaryDirectory()
        let link = try await WANLinkProcess(name: "\(prefix)\(getpid() % 1000)")
        do {
            let certificates = try certificates(in: directory)
            let a = try await Agent(
                node: "a", certificates: certificates, directory: directory, host: "10.77.0.1", namespace: link.sideA,
                peerTimeout: 4, flags: sourceFlags)
            let b = try await Agent(
                node: "b", certificates: certificates, directory: directory, host: "10.77.0.2", namespace: link.sideB,
                peerTimeout: 4)
            try await startGuest(name, on: a)
            return LinkedCluster(directory: directory, link: link, a: a, b: b)
        } catch {
            link.close()
            throw error
        }
    }

    @Test(
        "Link cut mid-transfer (wanem stopped): the source rolls back after the peer timeout, the destination removes its copy",
        .enabled(if: getuid() == 0, "network namespaces need root")
    )
    func linkCut() async throws {
        let name = "nctest-agent-cut"
        let cluster = try await Self.linkedCluster(link: "nccut", guest: name)
        let (link, a, b) = (cluster.link, cluster.a, cluster.b)
        defer { cluster.link.close() }  // and the cluster (its directory) lives until here
        let (report, status) = try await Self.migrate(
            name, from: a, to: b, extra: ["--max-rate", "16M"], afterBytes: 20 << 20
        ) { link.cut() }
        #expect(status == 1)
        #expect(report["outcome"] as? String == "rolled back")
        #expect(report["runsOn"] as? String == "source")
        link.restore()
        try await Self.expectOnlyOn(a, name, not: b)
    }

    /// Migrates `name` (raw stream, 16 MiB/s, no `--verify-ram`) and cuts the link as the source reports its pause,
    /// for `seconds` (nil: until the caller restores it). The source sees its QEMU paused only once QEMU wrote its
    /// last byte (QMP waits out the completion); the raw stream then still has the transport's 16 MiB window, about
    /// a second, to cross: the cut lands there.
    static func migrateCuttingAtCutOver(
        _ name: String, from a: Agent, to b: Agent, link: WANLinkProcess, restoreAfter seconds: Int?
    ) async throws -> (report: [String: Any], status: Int32) {
        let wanem = link.processID
        return try await migrate(
            name, from: a, to: b, extra: ["--max-rate", "16M", "--encode", "none"], inPhase: "cuttingOver"
        ) {
            link.cut()
            guard let seconds else { return }
            Task {
                try? await Task.sleep(for: .seconds(seconds))
                kill(wanem, SIGCONT)
            }
        }
    }

    @Test(
        "Link cut during the cut-over, the destination free to run on arrival: the source asks again on a new connection once the link is back; the VM runs in one place",
        .enabled(if: getuid() == 0, "network namespaces need root")
    )
    func linkCutAtCutOver() async throws {
        let name = "nctest-agent-cutover"
        let cluster = try await Self.linkedCluster(link: "ncco", guest: name)
        let (link, a, b) = (cluster.link, cluster.a, cluster.b)
        defer { cluster.link.close() }  // and the cluster (its directory) lives until here
        // The link stays down past the peer timeouts on both sides (4 s) and the source's first attempt on a new
        // connection, then comes back.
        let (report, status) = try await Self.migrateCuttingAtCutOver(
            name, from: a, to: b, link: link, restoreAfter: 20)
        // Before the source asked again, this ended "abandoned": the source paused, nothing running.
        let outcome = report["outcome"] as? String
        #expect(outcome == "rolled back", "\(report)")
        #expect(status == 1)
        #expect(report["runsOn"] as? String == "source")
        try await Self.expectOnlyOn(a, name, not: b)
    }

    @Test(
        "A migration abandoned (link down past the reconnect window) leaves the guest paused; vm resume runs it again only once the destination says its copy is gone",
        .enabled(if: getuid() == 0, "network namespaces need root")
    )
    func abandonedThenResumed() async throws {
        let name = "nctest-agent-abandon"
        let cluster = try await Self.linkedCluster(
            link: "ncab", guest: name, sourceFlags: ["--reconnect-window", "3"])
        let (link, a, b) = (cluster.link, cluster.a, cluster.b)
        defer { cluster.link.close() }  // and the cluster (its directory) lives until here
        let (report, status) = try await Self.migrateCuttingAtCutOver(
            name, from: a, to: b, link: link, restoreAfter: nil)
        #expect(report["outcome"] as? String == "abandoned", "\(report)")
        #expect(status == 1)
        #expect(report["runsOn"] as? String == "source (paused)")
        let listed = try await a.list().first { $0["name"] as? String == name }
        #expect(listed?["state"] as? String == "postmigrate", "paused, its stream sent (QEMU's state)")
        // The destination cannot be asked: no resume without --force, and no new migration either.
        let refused = try await a.vm(["resume", name])
        #expect(refused.status != 0)
        #expect(refused.standardError.contains("unconfirmed"), "\(refused.standardError)")
        let again = try await a.vm(["migrate", name, "--to", b.address])
        #expect(again.status != 0)
        #expect(again.standardError.contains("abandoned"), "\(again.standardError)")
        // The link back, the destination (which removed its copy when its source went silent) says so: it runs.
        link.restore()
        let resumed = try await a.vm(["resume", name])
        #expect(resumed.status == 0, "\(resumed.standardError)")
        try await Self.expectOnlyOn(a, name, not: b)
    }
}

/// `wanem up --name NAME --profile lan` for one test; `close()` takes it down (namespaces, devices, and
/// every process inside them).
final class WANLinkProcess {
    let name: String
    private let process = Process()

    init(name: String) async throws {
        self.name = name
        let wanem = NovaCronCLI.executable.deletingLastPathComponent().appendingPathComponent("wanem")
        _ = try? NovaCronCLI.runTool(wanem.path, ["down", "--name", name])
        process.executableURL = wanem
        process.arguments = ["up", "--name", name, "--profile", "lan", "--duration", "600"]
        process.standardOutput = FileHandle.nullDevice
        process.standardError = FileHandle.nullDevice
        try process.run()
        for _ in 0..<300 {
            let ready = (try? String(contentsOfFile: "/run/wanem/\(name)/ready", encoding: .utf8)) ?? ""
            if ready.trimmingCharacters(in: .whitespacesAndNewlines) == "\(process.processIdentifier)" { return }
            guard process.isRunning else { break }
            try await Task.sleep(for: .milliseconds(50))
        }
        close()
        Issue.record("wanem up \(name) never became ready")
        throw CancellationError()
    }

    var sideA: String { "\(name)-a" }
    var processID: Int32 { process.processIdentifier }
    var sideB: String { "\(name)-b" }

    /// Stops forwarding: no packet crosses in either direction, and nobody is told (like a pulled cable).
    func cut() { kill(process.processIdentifier, SIGSTOP) }

    /// Forwards again.
    func restore() { kill(process.processIdentifier, SIGCONT) }

    func close() {
        restore()
        if process.isRunning {
            process.terminate()
            process.waitUntilExit()
        }
        let wanem = NovaCronCLI.executable.deletingLastPathComponent().appendingPathComponent("wanem")
        _ = try? NovaCronCLI.runTool(wanem.path, ["down", "--name", name])
    }
}
