import ArgumentParser
import DWCPTransport
import Foundation
import Logging
import NovaCronNode
import ServiceLifecycle

/// `novacron agent --listen HOST:PORT`: the long-running process that owns this node's VMs.
struct AgentCommand: AsyncParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "agent",
        abstract: "Run the node agent: it owns this node's QEMU VMs and live-migrates them to and from other agents.",
        discussion: """
            Operators reach it with `novacron vm start|list|stop|migrate|migrations --agent HOST:PORT`; peer \
            agents reach it for migrations. Every connection is TLS 1.3 with a certificate of the cluster CA \
            (`novacron certs`). SIGTERM or SIGINT shut it down gracefully: migrations in flight end (commit or \
            roll back) and every VM it owns is shut down.
            """
    )

    @Option(help: "The control address, HOST:PORT (migration data uses the same host, a port per migration).")
    var listen: Endpoint

    @OptionGroup var options: TransferOptions

    @Option(
        help: """
            The agent's state directory: its QEMUs' runtime directories (QMP sockets, console logs) and scratch \
            space for RAM comparisons. At most \(NodeAgent.maximumStateDirectoryLength) bytes as an absolute path.
            """)
    var store = "var/agent"

    @Option(
        help: """
            Seconds a migration peer may stay silent (no reply, no data) before it counts as gone: the source \
            rolls back, the destination removes its uncommitted copy.
            """)
    var peerTimeout: Double = 30

    @Option(
        help: """
            Seconds a source keeps asking an unreachable destination what became of its copy, once that copy may \
            run (the guest paused, no --verify-ram); the guest stays paused meanwhile. The destination's answer \
            settles where the VM runs; without one the migration ends abandoned, the source paused.
            """)
    var reconnectWindow: Double = 120

    @Option(help: "The most bytes the chunk store of migration streams keeps (e.g. 8G); the oldest go first.")
    var storeCapacity = ByteCount(bytes: 8 << 30)

    @Option(
        help: """
            The transport window of a migration's data session (e.g. 16M). Larger fills a long fat link sooner; \
            smaller keeps less of the stream in buffers, which the guest's final pause has to wait for.
            """)
    var migrationWindow = ByteCount(bytes: 16 << 20)

    @Option(help: "Log level: trace, debug, info, notice, warning, error, critical.")
    var logLevel: Logger.Level = .info

    func validate() throws {
        try requireParentDirectory(of: store, option: "--store")
        guard stateDirectory.utf8.count <= NodeAgent.maximumStateDirectoryLength else {
            throw ValidationError(
                "--store \(stateDirectory): longer than \(NodeAgent.maximumStateDirectoryLength) bytes; QEMU's socket "
                    + "paths must fit 107 bytes")
        }
        guard peerTimeout >= 1 else { throw ValidationError("--peer-timeout must be at least 1 second") }
        guard reconnectWindow >= 0 else { throw ValidationError("--reconnect-window cannot be negative") }
        guard storeCapacity.bytes >= 256 << 20 else { throw ValidationError("--store-capacity must be at least 256M") }
        guard migrationWindow.bytes >= 1 << 20 else { throw ValidationError("--migration-window must be at least 1M") }
    }

    /// `--store` as an absolute path.
    var stateDirectory: String {
        URL(fileURLWithPath: store).standardizedFileURL.path
    }

    func run() async throws {
        let level = logLevel
        LoggingSystem.bootstrap { label in
            var handler = StreamLogHandler.standardError(label: label)
            handler.logLevel = level
            return handler
        }
        let logger = Logger(label: "novacron.agent")
        var configuration = NodeAgent.Configuration(
            host: listen.host, port: listen.port, security: try options.security(), nodeName: options.nodeName,
            stateDirectory: stateDirectory)
        configuration.peerTimeout = .milliseconds(Int(peerTimeout * 1000))
        configuration.reconnectWindow = .milliseconds(Int(reconnectWindow * 1000))
        configuration.storeCapacity = storeCapacity.bytes
        configuration.migrationWindow = migrationWindow.bytes
        let agent = try NodeAgent(configuration: configuration, logger: logger)
        let host = listen.host
        let service = AgentService(agent: agent) { port in
            // One line on standard output that scripts wait for (with the port when --listen asked for 0).
            FileHandle.standardOutput.write(Data("novacron agent listening on \(host):\(port)\n".utf8))
        }
        let group = ServiceGroup(
            configuration: .init(
                services: [.init(service: service)], gracefulShutdownSignals: [.sigterm, .sigint], logger: logger))
        try await group.run()
    }
}

/// The agent as a ServiceLifecycle service: serves until graceful shutdown.
struct AgentService: Service {
    let agent: NodeAgent
    let onListening: @Sendable (Int) -> Void

    func run() async throws {
        try await cancelWhenGracefulShutdown {
            try await agent.run(onListening: onListening)
        }
    }
}

extension Logger.Level: @retroactive ExpressibleByArgument {}

/// Where the `vm` commands find their agent, and as whom they connect.
struct AgentOptions: ParsableArguments {
    @Option(help: "The node agent to ask, HOST:PORT (its --listen).")
    var agent = Endpoint(argument: "127.0.0.1:7700")!

    @OptionGroup var identity: TransferOptions

    func client() throws -> AgentClient {
        AgentClient(host: agent.host, port: agent.port, security: try identity.security(), nodeName: identity.nodeName)
    }
}

/// `novacron vm start`: boots a VM on an agent.
struct VMStartCommand: AsyncParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "start", abstract: "Boot a VM on a node agent; it runs until stopped or migrated away.")

    @OptionGroup var vm: VMOptions
    @OptionGroup var options: AgentOptions

    func run() async throws {
        var spec = try vm.spec()
        // The agent resolves paths from its own directory: send absolute ones.
        let directory = FileManager.default.currentDirectoryPath
        func absolute(_ path: String) -> String { path.hasPrefix("/") ? path : directory + "/" + path }
        spec.kernel = absolute(spec.kernel)
        spec.initrd = spec.initrd.map(absolute)
        guard case .vm(let summary) = try await ask(options, .run(spec)) else { throw ExitCode.failure }
        if options.identity.json {
            printJSON(event: "vm", summary)
        } else {
            print(
                "VM \(summary.name) \(summary.state) on \(options.agent) as QEMU pid \(summary.processID); console \(summary.consoleLog)"
            )
        }
    }
}

/// `novacron vm list`.
struct VMListCommand: AsyncParsableCommand {
    static let configuration = CommandConfiguration(commandName: "list", abstract: "The VMs a node agent holds.")

    @OptionGroup var options: AgentOptions

    func run() async throws {
        guard case .vms(let vms) = try await ask(options, .list) else { throw ExitCode.failure }
        if options.identity.json {
            for vm in vms { printJSON(event: "vm", vm) }
            return
        }
        print("NAME                 STATE       MEMORY   PID      HEARTBEAT")
        for vm in vms {
            print(
                vm.name.padding(toLength: 20, withPad: " ", startingAt: 0) + " "
                    + vm.state.padding(toLength: 11, withPad: " ", startingAt: 0) + " "
                    + "\(vm.memoryMiB)M".padding(toLength: 8, withPad: " ", startingAt: 0) + " "
                    + "\(vm.processID)".padding(toLength: 8, withPad: " ", startingAt: 0) + " "
                    + (vm.lastHeartbeat.map(String.init) ?? "-"))
        }
    }
}

/// `novacron vm stop NAME`.
struct VMStopCommand: AsyncParsableCommand {
    static let configuration = CommandConfiguration(commandName: "stop", abstract: "Shut a VM on a node agent down.")

    @Argument(help: "The VM's name.")
    var name: String

    @OptionGroup var options: AgentOptions

    func run() async throws {
        _ = try await ask(options, .stop(name: name))
        print("VM \(name) stopped")
    }
}

/// `novacron vm resume NAME`.
struct VMResumeCommand: AsyncParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "resume",
        abstract: "Run a paused VM on a node agent again (after an abandoned migration, safely).",
        discussion: """
            After a migration ended abandoned — the guest paused here, the destination's copy unaccounted for — \
            the agent first asks the destination to remove its copy, and resumes the VM here only once it did. If \
            the guest runs at the destination, the migration went through: this copy is stale (vm stop removes \
            it). If the destination cannot be asked, --force resumes anyway: only after making sure it does not \
            run the guest.
            """)

    @Argument(help: "The VM's name.")
    var name: String

    @Flag(help: "Resume even if the destination of an abandoned migration cannot confirm that its copy is gone.")
    var force = false

    @OptionGroup var options: AgentOptions

    func run() async throws {
        guard case .vm(let vm) = try await ask(options, .resume(name: name, force: force)) else {
            throw ExitCode.failure
        }
        if options.identity.json {
            printJSON(event: "vm", vm)
        } else {
            print("VM \(vm.name) \(vm.state)")
        }
    }
}

/// `novacron vm migrate NAME --to HOST:PORT`.
struct VMMigrateCommand: AsyncParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "migrate",
        abstract: "Live-migrate a VM from its agent to another agent over DWCP.",
        discussion: """
            Pre-copy with a downtime budget; auto-converge throttles a guest that dirties memory faster than \
            the link drains it. Any failure before the destination runs rolls back: the destination copy is \
            removed and the VM keeps running on the source. Exits 0 when migrated, 1 when rolled back or \
            abandoned (vm resume settles an abandoned one).
            """
    )

    @Argument(help: "The VM's name on the agent (--agent).")
    var name: String

    @Option(help: "The destination agent, HOST:PORT (its --listen).")
    var to: Endpoint

    @Option(help: "The longest pause for the final copy, in milliseconds (QEMU's downtime-limit).")
    var maxDowntime = 300

    @Flag(
        help: """
            Before the destination runs, compare its RAM with the source's (SHA-256 of pmemsave on both). \
            The guest stays paused meanwhile.
            """)
    var verifyRAM = false

    @Option(help: "Cap the migration's data rate, bytes per second with K/M/G (e.g. 50M); default: none.")
    var maxRate: ByteCount?

    @Option(
        help: """
            HDE on the migration stream: auto (zstd 1, and references to chunks the destination's store holds), \
            raw (references only), a zstd level 1…19, or none (QEMU's stream as it is).
            """)
    var encode: EncodingMode = .auto

    @OptionGroup var options: AgentOptions

    func validate() throws {
        guard (1...60_000).contains(maxDowntime) else { throw ValidationError("--max-downtime must be 1…60000 ms") }
    }

    func run() async throws {
        let json = options.identity.json
        let terminal = isatty(STDERR_FILENO) == 1
        let request = MigrationRequest(
            vm: name, host: to.host, port: to.port, maximumDowntimeMilliseconds: maxDowntime, verifyRAM: verifyRAM,
            rateLimit: maxRate.map { Double($0.bytes) }, encoding: encode.description)
        let reply = try await ask(options, .migrate(request)) { progress in
            if json {
                printJSON(event: "progress", progress)
            } else {
                var line =
                    progress.phase.padding(toLength: 21, withPad: " ", startingAt: 0)
                    + String(format: " %6.1f s", progress.seconds)
                    + "  sent \(ProgressPrinter.formatBytes(progress.transferredBytes))"
                    + "  left \(ProgressPrinter.formatBytes(progress.remainingBytes))"
                    + "  dirty \(ProgressPrinter.formatBytes(UInt64(progress.dirtyBytesPerSecond)))/s"
                    + String(format: "  %.0f Mbit/s", progress.bytesPerSecond * 8 / 1e6)
                if let eta = progress.etaSeconds { line += String(format: "  ETA %.0f s", eta) }
                FileHandle.standardError.write(
                    Data(((terminal ? "\r\u{1B}[K" : "") + line + (terminal ? "" : "\n")).utf8))
            }
        }
        if terminal && !json { FileHandle.standardError.write(Data("\n".utf8)) }
        guard case .migration(let report) = reply else { throw ExitCode.failure }
        if json {
            printJSON(event: "done", report)
        } else {
            print(Self.describe(report))
        }
        if report.outcome != "migrated" { throw ExitCode.failure }
    }

    static func describe(_ report: MigrationReport) -> String {
        var text = "\(report.vm) → \(report.destination): \(report.outcome)"
        if let reason = report.reason { text += " (\(reason))" }
        text += "; runs on the \(report.runsOn)\n"
        text += String(format: "  total %.2f s", report.totalSeconds)
        if let downtime = report.qemuDowntimeMilliseconds {
            text += ", QEMU downtime \(downtime) ms"
            if let limit = report.qemuDowntimeLimitMilliseconds { text += " (limit \(limit) ms)" }
        }
        if let paused = report.pausedMilliseconds { text += ", guest paused \(paused) ms" }
        if let byEvents = report.guestPauseByQEMUEventsMilliseconds {
            text += " (\(byEvents) ms from the source QEMU's STOP to the destination's RESUME)"
        }
        if let roundTrip = report.roundTripMilliseconds {
            text += ", round trip \(roundTrip) ms"
            if report.pauseBudgetAttainable == false {
                text += "\n  note: on this path the cut-over's round trips alone take most of --max-downtime; "
                text += "QEMU was given the whole budget and the pause is longer"
            }
        }
        text +=
            "\n  stream \(ProgressPrinter.formatBytes(report.streamBytes)), on the wire \(ProgressPrinter.formatBytes(report.wireBytes))"
        text += String(
            format: " (%.2f× the VM's %@ RAM)", Double(report.wireBytes) / Double(max(report.ramBytes, 1)),
            ProgressPrinter.formatBytes(UInt64(report.ramBytes)) as NSString)
        if report.encoding != "none" {
            text +=
                "\n  HDE \(report.encoding): of the stream, \(ProgressPrinter.formatBytes(report.referencedBytes)) went as "
                + "references and \(ProgressPrinter.formatBytes(report.deltaBytes)) as deltas to chunks the destination held"
        }
        if let identical = report.ramIdentical { text += "\n  RAM identical: \(identical)" }
        if let heartbeat = report.lastSourceHeartbeat { text += "\n  last heartbeat on the source: \(heartbeat)" }
        return text
    }
}

/// `novacron vm migrations`.
struct VMMigrationsCommand: AsyncParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "migrations", abstract: "The migrations a node agent ran as the source, oldest first.")

    @OptionGroup var options: AgentOptions

    func run() async throws {
        guard case .migrations(let reports) = try await ask(options, .migrations) else { throw ExitCode.failure }
        for report in reports {
            if options.identity.json {
                printJSON(event: "migration", report)
            } else {
                print("\(report.startedAt)  \(VMMigrateCommand.describe(report))")
            }
        }
    }
}

/// Sends one request to the agent; a refusal becomes a one-line error and exit status 1.
private func ask(
    _ options: AgentOptions, _ request: AgentRequest, progress: (MigrationProgress) -> Void = { _ in }
) async throws -> AgentReply {
    do {
        return try await options.client().send(request, progress: progress)
    } catch let failure as AgentFailure {
        FileHandle.standardError.write(Data("novacron: the agent at \(options.agent) refused: \(failure)\n".utf8))
        throw ExitCode.failure
    }
}
