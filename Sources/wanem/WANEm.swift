import ArgumentParser
import Foundation
import Glibc
import WANEmulation

/// `wanem`: a packet-level WAN emulator built the way Mahimahi is — two network namespaces joined through TUN
/// devices by a userspace forwarder that delays, rate-limits and drops packets with the sans-IO engine of
/// WANEmulation.
@main
struct WANEm: ParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "wanem",
        abstract: "Packet-level WAN emulator: namespaces N-a and N-b joined through TUN devices by a timed forwarder.",
        subcommands: [Up.self, Down.self, Exec.self, Status.self, SelfTest.self])
}

func requireRoot() throws {
    guard geteuid() == 0 else {
        throw ShellError(step: "wanem", reason: "needs root (network namespaces and TUN devices)")
    }
}

/// Blocks SIGINT, SIGTERM and SIGHUP so they stay pending until the forwarder looks, then cleans up.
func blockStopSignals() {
    var signals = sigset_t()
    sigemptyset(&signals)
    for signal in [SIGINT, SIGTERM, SIGHUP] { sigaddset(&signals, signal) }
    pthread_sigmask(SIG_BLOCK, &signals, nil)
    signal(SIGPIPE, SIG_IGN)
}

/// Writes a line to standard output at once (no stdio buffering, so a reader of a redirected stdout sees it).
func printFlushed(_ line: String) {
    FileHandle.standardOutput.write(Data((line + "\n").utf8))
}

struct Up: ParsableCommand {
    static let configuration = CommandConfiguration(
        abstract: "Create namespaces N-a and N-b joined by an emulated link and forward until a signal or `down`.")

    @Option(help: "Link name (1-12 letters, digits, '-'): namespaces are NAME-a and NAME-b.")
    var name: String

    @OptionGroup var link: LinkOptions

    @Option(help: "Stop by itself after this many seconds.")
    var duration: Double?

    @Option(help: "Write the final counters (JSON) here when the link goes down.")
    var report: String?

    @Option(name: .customLong("late-tolerance-ms"), help: "A packet leaving later than this is late.")
    var lateToleranceMilliseconds: Double = 1

    @Option(
        name: .customLong("max-late-fraction"),
        help: "A run with more late packets than this fraction is invalid.")
    var maximumLateFraction: Double = 0.01

    @Option(help: "Scheduling niceness of the forwarder (-20...19), so the workload delays packets less.")
    var nice: Int32 = -10

    @Option(
        name: .customLong("realtime-priority"),
        help:
            "SCHED_FIFO priority (1-99) instead of niceness (a saturated FIFO task is throttled 50 ms/s)."
    )
    var realtimePriority: Int32 = 0

    mutating func run() throws {
        let names = try LinkNames(name)
        let parameters = try link.parameters()
        let configuration = try parameters.configuration()
        try requireRoot()
        blockStopSignals()
        if let pid = Topology.livePID(of: names) {
            throw ShellError(
                step: "up \(name)", reason: "already up (pid \(pid)); run `wanem down --name \(name)` first")
        }
        let stale = try Topology.leftovers(of: names)
        if !stale.isEmpty {
            printFlushed("wanem: removing leftovers of an earlier run: \(stale.joined(separator: ", "))")
            Topology.remove(names)
        }
        try FileManager.default.createDirectory(atPath: names.stateDirectory, withIntermediateDirectories: true)
        try "\(getpid())\n".write(toFile: names.pidFile, atomically: true, encoding: .utf8)

        var schedule = sched_param()
        schedule.sched_priority = min(max(realtimePriority, 0), 99)
        if realtimePriority <= 0 || sched_setscheduler(0, SCHED_FIFO, &schedule) != 0 {
            _ = setpriority(__priority_which_t(PRIO_PROCESS.rawValue), 0, min(max(nice, -20), 19))
        }
        let final: [String: Any]
        do {
            let policy = OverloadPolicy(
                latenessTolerance: .nanoseconds(Int64(lateToleranceMilliseconds * 1e6)),
                maximumLateFraction: maximumLateFraction)
            final = try Self.forward(
                names: names, configuration: configuration, parameters: parameters, policy: policy,
                duration: duration.map { UInt64($0 * 1e9) })
        } catch {
            let removed = Topology.remove(names)
            printFlushed("wanem: setup failed; removed \(removed.joined(separator: ", "))")
            throw error
        }
        let removed = Topology.remove(names)
        if let report { StatusReport.write(final, to: report) }
        let valid = final["valid"] as? Bool ?? false
        printFlushed(
            "wanem: link \(name) down (\(final["stop_reason"] ?? "?")); removed \(removed.joined(separator: ", "))"
                + "; run \(valid ? "VALID" : "INVALID: the emulator could not keep up")")
        for direction in ["uplink", "downlink"] {
            if let counters = final[direction] as? [String: Any] {
                printFlushed(
                    "  \(direction): forwarded \(counters["forwarded_packets"] ?? 0) packets "
                        + "(\(counters["forwarded_bytes"] ?? 0) B), "
                        + "loss drops \(counters["dropped_loss_packets"] ?? 0), "
                        + "queue drops \(counters["dropped_queue_packets"] ?? 0), "
                        + "queue delay p50/p99/max \(counters["queue_delay_p50_ms"] ?? 0)/"
                        + "\(counters["queue_delay_p99_ms"] ?? 0)/\(counters["queue_delay_max_ms"] ?? 0) ms, "
                        + "late \(counters["late_packets"] ?? 0) (max \(counters["max_lateness_ms"] ?? 0) ms)")
            }
        }
        if !valid { throw ExitCode(3) }
    }

    /// Opens the TUN devices, wires the namespaces and runs the forwarder; the devices close when it returns.
    private static func forward(
        names: LinkNames,
        configuration: WANLinkConfiguration,
        parameters: LinkParameters,
        policy: OverloadPolicy,
        duration: UInt64?
    ) throws -> [String: Any] {
        try Topology.addNamespaces(names)
        let tunA = try TUNDevice(name: names.tunA)
        let tunB = try TUNDevice(name: names.tunB)
        try Topology.create(names, mtu: 1500)
        let link = try WANLink(
            configuration: configuration,
            uplinkCapacity: descriptorCapacity(for: configuration.uplink),
            downlinkCapacity: descriptorCapacity(for: configuration.downlink),
            overloadPolicy: policy)
        _ = FileManager.default.createFile(atPath: names.readyFile, contents: Data("\(getpid())\n".utf8))
        printFlushed(
            "wanem: link \(names.name) up: \(LinkNames.addressA) (netns \(names.namespaceA)) <-> "
                + "\(LinkNames.addressB) (netns \(names.namespaceB)), RTT \(parameters.roundTripMilliseconds) ms, "
                + "\(configuration.uplink.rate.averageBitsPerSecond / 1e6)/"
                + "\(configuration.downlink.rate.averageBitsPerSecond / 1e6) Mbit/s, loss \(parameters.loss) "
                + "(\(parameters.lossModel.rawValue)); pid \(getpid())")
        let statusPath = names.statusFile
        let name = names.name
        let (reason, snapshots, elapsed) = try Forwarder.run(
            link: link, descriptorA: tunA.descriptor, descriptorB: tunB.descriptor, duration: duration
        ) { snapshots, elapsed in
            StatusReport.write(
                StatusReport.make(
                    name: name, snapshots: snapshots, elapsedNanoseconds: elapsed, running: true, stopReason: nil),
                to: statusPath)
        }
        let final = StatusReport.make(
            name: name, snapshots: snapshots, elapsedNanoseconds: elapsed, running: false, stopReason: reason)
        StatusReport.write(final, to: statusPath)
        _ = consume tunA
        _ = consume tunB
        return final
    }
}

struct Down: ParsableCommand {
    static let configuration = CommandConfiguration(
        abstract: "Stop link N (if running) and remove everything it created, also leftovers of a killed run.")

    @Option(help: "Link name.")
    var name: String

    mutating func run() throws {
        let names = try LinkNames(name)
        try requireRoot()
        if let pid = Topology.livePID(of: names) {
            kill(pid, SIGTERM)
            let deadline = monotonicNanoseconds() + 5_000_000_000
            while kill(pid, 0) == 0, monotonicNanoseconds() < deadline { sleepMilliseconds(20) }
            if kill(pid, 0) == 0 {
                kill(pid, SIGKILL)
                printFlushed("wanem: pid \(pid) ignored SIGTERM for 5 s; killed")
            } else {
                printFlushed("wanem: stopped pid \(pid)")
            }
        }
        let removed = Topology.remove(names)
        printFlushed(
            removed.isEmpty ? "wanem: nothing of \(name) was left" : "wanem: removed \(removed.joined(separator: ", "))"
        )
    }
}

struct Exec: ParsableCommand {
    static let configuration = CommandConfiguration(abstract: "Run a command inside one side of link N.")

    @Option(help: "Link name.")
    var name: String

    @Option(help: "a or b.")
    var side: String

    @Argument(parsing: .captureForPassthrough, help: "The command (after --).")
    var command: [String] = []

    mutating func run() throws {
        let names = try LinkNames(name)
        guard let side = Side(rawValue: side) else { throw ValidationError("--side: expected a or b, found \(side)") }
        var command = command
        if command.first == "--" { command.removeFirst() }
        guard !command.isEmpty else { throw ValidationError("give the command after --") }
        let namespace = names.namespace(side: side)
        guard try Topology.namespaces().contains(namespace) else {
            throw ShellError(step: "exec", reason: "link \(name) is not up (no netns \(namespace))")
        }
        let arguments = ["ip", "netns", "exec", namespace] + command
        var cArguments: [UnsafeMutablePointer<CChar>?] = arguments.map { strdup($0) }
        cArguments.append(nil)
        execvp("ip", cArguments)
        throw ShellError(step: "exec ip netns exec", reason: String(cString: strerror(errno)))
    }
}

struct Status: ParsableCommand {
    static let configuration = CommandConfiguration(abstract: "Print the live counters of link N (JSON).")

    @Option(help: "Link name.")
    var name: String

    mutating func run() throws {
        let names = try LinkNames(name)
        guard let text = try? String(contentsOfFile: names.statusFile, encoding: .utf8) else {
            throw ShellError(step: "status", reason: "link \(name) is not up (no \(names.statusFile))")
        }
        print(text)
    }
}
