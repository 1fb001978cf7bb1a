import Crypto
import DWCPTransport
import Foundation
import Logging
import NIOConcurrencyHelpers
import NovaCronHypervisor
import NovaCronMigration

#if canImport(Glibc)
    import Glibc
#endif

/// The long-running process on each machine (`novacron agent`): it owns this node's QEMU VMs, serves
/// operators and peer agents over authenticated control connections (``ControlChannel``), migrates its
/// VMs to other agents (``OutgoingMigration``, the shell of `MigrationMachine`) and takes VMs migrated to
/// it.
public actor NodeAgent {
    /// Where and as whom the agent runs.
    public struct Configuration: Sendable {
        /// The control address (`--listen`); a migration's data session listens on the same host, on a
        /// port picked per migration.
        public var host: String
        /// The control port (0 picks a free one; see `run(onListening:)`).
        public var port: Int
        /// TLS with this node's identity, for every connection in and out.
        public var security: TransportSecurity
        /// This node's name (its certificate's).
        public var nodeName: String
        /// Where the agent keeps its state: its QEMUs' runtime directories (`DIR/run`), the chunk store of
        /// migration streams (`DIR/chunks`), scratch space for RAM comparisons (`DIR/scratch`).
        public var stateDirectory: String
        /// The most bytes the chunk store keeps before it evicts its oldest chunks (`--store-capacity`).
        public var storeCapacity = 8 << 30
        /// The transport window of a migration's data session, both ways (`--migration-window`). Small on
        /// purpose: what sits in buffers between the two QEMUs makes the source's QEMU overestimate the rate,
        /// stop the guest too early and leave a longer tail for the pause.
        public var migrationWindow = 16 << 20
        /// How long a migration peer may stay silent — no reply, no migration data — before it counts as
        /// gone: the source rolls back, the destination removes its uncommitted copy (`--peer-timeout`).
        public var peerTimeout: Duration = .seconds(30)
        /// How long a source whose destination may already run the guest (the guest paused, without a verification)
        /// keeps asking that destination, when it cannot be reached, what became of its copy — the guest paused —
        /// before the migration ends abandoned (`--reconnect-window`).
        public var reconnectWindow: Duration = .seconds(120)

        /// Creates an agent; ``run(onListening:)`` starts it.
        public init(host: String, port: Int, security: TransportSecurity, nodeName: String, stateDirectory: String) {
            self.host = host
            self.port = port
            self.security = security
            self.nodeName = nodeName
            self.stateDirectory = stateDirectory
        }
    }

    /// Where and as whom it runs.
    public let configuration: Configuration
    let hypervisor: QEMUHypervisor
    let logger: Logger
    private var vms: [String: HostedVM] = [:]
    /// Names taken by a VM that is arriving or leaving, so no second VM of that name starts meanwhile.
    private var reserved: Set<String> = []
    /// The incoming migrations accepted, by id, the newest ``rememberedIncoming`` of them: a source whose
    /// migration connection broke asks on a new one what became of its copy (``AgentRequest/removeIncoming(id:)``).
    private var incomingByID: [String: IncomingMigration] = [:]
    private var incomingOrder: [String] = []
    /// Incoming migrations of an earlier agent on this state directory whose QEMU never ran the guest and is gone.
    private var forgottenIncoming: Set<String> = []
    /// VMs whose outgoing migration ended abandoned, paused here: the migration's id and destination, asked before
    /// the VM may run here again (``AgentRequest/resume(name:force:)``).
    private var abandoned: [String: AbandonedMigration] = [:]

    /// An outgoing migration that ended abandoned: whom to ask about the copy it may have left.
    struct AbandonedMigration: Sendable {
        var id: String
        var host: String
        var port: Int
    }
    static let rememberedIncoming = 256
    private var history: [MigrationReport] = []
    private var activeMigrations = 0

    /// Every migration stream chunk this node sent or received, so the next migration either way can refer
    /// to them.
    nonisolated let store: SharedChunkStore

    /// Creates an agent and opens its state directory; ``run(onListening:)`` starts it. Its QEMUs' runtime
    /// directories (QMP socket, console log) go under `STATE/run`, so a killed agent leaves them in its own
    /// state directory.
    /// - Throws: ``AgentFailure`` for a state directory that is not absolute or too long, a file-system error,
    ///   or the store's (`storeInUse` when another agent has it open).
    public init(configuration: Configuration, logger: Logger) throws {
        guard configuration.stateDirectory.utf8.count <= Self.maximumStateDirectoryLength,
            configuration.stateDirectory.hasPrefix("/")
        else {
            throw AgentFailure(
                "invalidConfiguration",
                "the state directory must be an absolute path of at most \(Self.maximumStateDirectoryLength) bytes "
                    + "(QEMU's socket paths live under it), not \(configuration.stateDirectory)")
        }
        self.configuration = configuration
        self.hypervisor = QEMUHypervisor(runtimeRoot: configuration.stateDirectory + "/run")
        self.logger = logger
        for directory in ["/scratch", "/run"] {
            try FileManager.default.createDirectory(
                atPath: configuration.stateDirectory + directory, withIntermediateDirectories: true)
        }
        store = try SharedChunkStore(
            directory: configuration.stateDirectory + "/chunks", capacity: configuration.storeCapacity)
    }

    /// The longest state directory: a QMP socket path (`STATE/run/novacron-NAME-XXXXXX/qmp.sock`, NAME up
    /// to 24 characters) must fit the 107 bytes of a unix socket address.
    public static let maximumStateDirectoryLength = 107 - "/run/novacron-".count - 24 - "-XXXXXX/qmp.sock".count

    /// Removes runtime directories a previous, killed agent left: those whose QEMU is gone (its QMP socket
    /// refuses connections). A QEMU that still runs is left alone, and logged.
    /// Clears what an earlier agent on this state directory left: runtime directories of QEMUs that exited, and
    /// destination QEMUs of migrations that never ran the guest (marked ``IncomingMigration/uncommittedMark``),
    /// which are quit. Their migrations are remembered as gone, for a source that asks
    /// (``AgentRequest/removeIncoming(id:)``). Any other QEMU still running is left alone, and logged.
    private func sweepRuntimeDirectories() async {
        let root = hypervisor.runtimeRoot
        for entry in (try? FileManager.default.contentsOfDirectory(atPath: root)) ?? [] {
            let directory = root + "/" + entry
            let socket = directory + "/qmp.sock"
            let mark = FileManager.default.contents(atPath: directory + "/" + IncomingMigration.uncommittedMark)
            let migration = mark.map { String(decoding: $0, as: UTF8.self) }
            if isListening(unixSocket: socket) {
                guard let migration else {
                    logger.warning(
                        "a QEMU of an earlier agent still runs; leaving it", metadata: ["runtime": "\(directory)"])
                    continue
                }
                // QEMU closes the socket as it quits; the answer may not come.
                _ = try? await QMPClient.withClient(socketPath: socket, connectTimeout: .seconds(5)) { qmp in
                    try await qmp.execute("quit")
                }
                for _ in 0..<50 where isListening(unixSocket: socket) {
                    try? await Task.sleep(for: .milliseconds(100))
                }
                guard !isListening(unixSocket: socket) else {
                    logger.error(
                        "an uncommitted destination QEMU of an earlier agent does not quit; leaving it",
                        metadata: ["runtime": "\(directory)", "migration": "\(migration)"])
                    continue
                }
                logger.warning(
                    "removed the destination QEMU of an earlier agent's migration that never ran the guest",
                    metadata: ["runtime": "\(directory)", "migration": "\(migration)"])
            }
            if let migration { forgottenIncoming.insert(migration) }
            try? FileManager.default.removeItem(atPath: directory)
        }
    }

    nonisolated var scratchDirectory: String { configuration.stateDirectory + "/scratch" }

    /// Serves until the calling task is cancelled; then waits for migrations in flight to end (they roll
    /// back or commit within their timeouts) and shuts every VM down.
    /// - Parameter onListening: Called with the bound control port.
    /// - Throws: ``TransportError`` when the listener cannot start, or the state directory cannot be made.
    public func run(onListening: @escaping @Sendable (Int) -> Void = { _ in }) async throws {
        await sweepRuntimeDirectories()
        logger.info(
            "agent listening", metadata: ["address": "\(configuration.host):\(configuration.port)"])
        do {
            try await ControlChannel.serve(
                host: configuration.host, port: configuration.port, security: configuration.security,
                nodeName: configuration.nodeName, onListening: onListening
            ) { connection in
                await self.serve(connection)
            }
        } catch is CancellationError {}
        await shutDown()
    }

    /// Ends every VM this agent holds.
    func shutDown() async {
        while activeMigrations > 0 {
            try? await Task.sleep(for: .milliseconds(100))
        }
        let all = vms.values
        vms = [:]
        for vm in all {
            logger.info("stopping VM", metadata: ["vm": "\(vm.name)"])
            await vm.release()
        }
    }

    // MARK: - Serving one connection

    private nonisolated func serve(_ connection: ControlConnection) async {
        var incoming: IncomingMigration?
        var watchdog: Task<Void, Never>?
        defer {
            watchdog?.cancel()
            if let incoming {
                // The source is gone: a destination copy it did not commit must never run (a committed one stays).
                Task { await self.destroy(incoming, reason: "the source's connection closed before the commit") }
            }
        }
        while true {
            let bytes: [UInt8]
            do {
                guard let next = try await connection.receive() else { return }
                bytes = next
            } catch {
                logger.warning(
                    "control connection failed", metadata: ["peer": "\(connection.peerName)", "error": "\(error)"])
                return
            }
            let reply: AgentReply
            do {
                let request = try AgentCoding.decode(AgentRequest.self, from: bytes)
                reply = try await handle(request, from: connection, incoming: &incoming)
            } catch let failure as AgentFailure {
                reply = .failure(failure)
            } catch {
                reply = .failure(AgentFailure("failed", "\(error)"))
            }
            do {
                try await connection.send(reply)
            } catch {
                return
            }
            if let incoming, watchdog == nil {
                watchdog = watch(incoming, close: connection.closer)
            }
        }
    }

    /// Closes the connection of an incoming migration whose source has been silent — no request, no data —
    /// for the peer timeout (a cut link sends no FIN): the copy is then removed like after any disconnect.
    private nonisolated func watch(_ incoming: IncomingMigration, close: @escaping @Sendable () -> Void) -> Task<
        Void, Never
    > {
        let timeout = configuration.peerTimeout
        let logger = self.logger
        return Task {
            while !Task.isCancelled {
                try? await Task.sleep(for: .seconds(1))
                guard await !incoming.isCommitted else { return }
                if await incoming.silence > timeout {
                    logger.warning(
                        "migration source silent: removing the destination copy",
                        metadata: ["vm": "\(incoming.request.spec.name)", "timeout": "\(timeout)"])
                    close()
                    return
                }
            }
        }
    }

    private nonisolated func handle(
        _ request: AgentRequest, from connection: ControlConnection, incoming: inout IncomingMigration?
    ) async throws -> AgentReply {
        switch request {
        case .run(let spec):
            return .vm(try await start(spec))
        case .list:
            return .vms(await list())
        case .stop(let name):
            try await stop(name)
            return .done
        case .resume(let name, let force):
            return .vm(try await resume(name, force: force))
        case .migrate(let migration):
            let (updates, continuation) = AsyncStream<MigrationProgress>.makeStream()
            let task = try await beginMigration(migration, progress: continuation)
            for await update in updates {
                try? await connection.send(AgentReply.progress(update))
            }
            return .migration(await task.value)
        case .migrations:
            return .migrations(await history)
        case .removeIncoming(let id):
            if await isForgotten(id) { return .done }
            guard let known = await incomingMigration(id: id) else {
                throw AgentFailure(
                    AgentFailure.unknownMigration,
                    "\(configuration.nodeName) knows no migration \(id) (its agent restarted since?)")
            }
            guard await destroy(known, reason: "the source, on a new connection, rolled back") != .refuseCommitted
            else {
                throw AgentFailure(AgentFailure.committed, "the VM already runs on this node: its copy stays")
            }
            return .done
        case .negotiate(let request):
            guard incoming == nil else {
                throw AgentFailure("invalidRequest", "one migration per connection")
            }
            let accepted = try await accept(request, from: connection.peerName)
            incoming = accepted
            return .incomingReady(dataPort: try await accepted.openReceiver(agent: self))
        default:
            guard let current = incoming else {
                throw AgentFailure("invalidRequest", "\(request) needs a negotiated migration on this connection")
            }
            return try await current.handle(request, agent: self)
        }
    }

    // MARK: - VMs

    private func list() async -> [VMSummary] {
        var summaries: [VMSummary] = []
        for name in vms.keys.sorted() {
            summaries.append(await summary(of: vms[name]!))
        }
        return summaries
    }

    private func stop(_ name: String) async throws {
        guard let vm = vms[name], !reserved.contains(name) else {
            throw AgentFailure("unknownVM", "no VM named \(name) on \(configuration.nodeName) (or it is migrating)")
        }
        vms[name] = nil
        abandoned[name] = nil
        await vm.release()
        logger.info("VM stopped", metadata: ["vm": "\(name)"])
    }

    /// Runs a paused VM again — after an abandoned migration, only once its destination removed its copy (or
    /// with `force`).
    private func resume(_ name: String, force: Bool) async throws -> VMSummary {
        guard let vm = vms[name], !reserved.contains(name) else {
            throw AgentFailure("unknownVM", "no VM named \(name) on \(configuration.nodeName) (or it is migrating)")
        }
        reserved.insert(name)
        defer { reserved.remove(name) }
        if let migration = abandoned[name] {
            let destination = "\(migration.host):\(migration.port)"
            do {
                try await AgentClient(
                    host: migration.host, port: migration.port, security: configuration.security,
                    nodeName: configuration.nodeName
                ).removeIncoming(id: migration.id, within: configuration.peerTimeout)
                logger.info("the abandoned migration's destination has no copy", metadata: ["vm": "\(name)"])
            } catch let failure as AgentFailure where failure.code == AgentFailure.committed {
                throw AgentFailure(
                    AgentFailure.committed,
                    "\(name) runs on \(destination): its migration went through, and this paused copy is stale; "
                        + "`vm stop \(name)` removes it")
            } catch {
                guard force else {
                    throw AgentFailure(
                        AgentFailure.unconfirmed,
                        "\(destination) could not confirm that its copy of \(name) is gone (\(error)); make sure it "
                            + "does not run the guest, then `vm resume \(name) --force`")
                }
                logger.warning(
                    "resuming without the destination's word, as forced",
                    metadata: ["vm": "\(name)", "destination": "\(destination)", "error": "\(error)"])
            }
            abandoned[name] = nil
        }
        try await hypervisorCall { try await vm.machine.resume() }
        logger.info("VM resumed", metadata: ["vm": "\(name)"])
        return await summary(of: vm)
    }

    private func start(_ spec: VMSpec) async throws -> VMSummary {
        guard vms[spec.name] == nil, !reserved.contains(spec.name) else {
            throw AgentFailure("nameInUse", "a VM named \(spec.name) already exists on \(configuration.nodeName)")
        }
        reserved.insert(spec.name)
        let hypervisor = self.hypervisor
        let vm: HostedVM
        do {
            defer { reserved.remove(spec.name) }
            vm = try await hypervisorCall { try await HostedVM.launch(spec, mode: .running, hypervisor: hypervisor) }
        }
        vms[spec.name] = vm
        logger.info("VM started", metadata: ["vm": "\(spec.name)", "pid": "\(vm.machine.processID)"])
        return await summary(of: vm)
    }

    private func summary(of vm: HostedVM) async -> VMSummary {
        let state: String
        if reserved.contains(vm.name) {
            state = "migrating"
        } else if vm.hasEnded {
            state = "exited"
        } else {
            state = (try? await vm.machine.status().state) ?? "unknown"
        }
        let heartbeat = await vm.machine.console.retained.last(where: GuestHeartbeat.matches).flatMap(
            GuestHeartbeat.init(line:))
        return VMSummary(
            name: vm.name, state: state, memoryMiB: vm.machine.spec.memoryMiB, processID: vm.machine.processID,
            consoleLog: vm.machine.console.logPath, lastHeartbeat: heartbeat?.sequence)
    }

    // MARK: - Outgoing migrations

    /// Starts migrating a VM in its own task (an operator who disconnects does not cancel it halfway);
    /// progress goes to `progress`, which is finished when the migration ends.
    private func beginMigration(
        _ request: MigrationRequest, progress: AsyncStream<MigrationProgress>.Continuation
    ) throws -> Task<MigrationReport, Never> {
        guard let vm = vms[request.vm], !reserved.contains(request.vm) else {
            throw AgentFailure(
                "unknownVM", "no VM named \(request.vm) on \(configuration.nodeName) (or it is migrating)")
        }
        guard !vm.hasEnded else {
            throw AgentFailure("hypervisor", "VM \(request.vm) has exited: \(vm.machine.exitDescription ?? "")")
        }
        if let earlier = abandoned[request.vm] {
            throw AgentFailure(
                "invalidRequest",
                "the last migration of \(request.vm) (to \(earlier.host):\(earlier.port)) was abandoned and its copy there "
                    + "is unaccounted for: `vm resume \(request.vm)` or `vm stop \(request.vm)` first")
        }
        reserved.insert(request.vm)
        activeMigrations += 1
        let migration = OutgoingMigration(
            request: request, vm: vm.machine, configuration: configuration, store: store,
            scratchDirectory: scratchDirectory,
            logger: logger, progress: { progress.yield($0) }, stopSource: { await vm.release() },
            sourceEvent: { vm.lastEvent($0) })
        logger.info(
            "migration started",
            metadata: ["vm": "\(request.vm)", "to": "\(request.host):\(request.port)", "id": "\(migration.id)"])
        return Task {
            let report = await migration.run()
            progress.finish()
            await self.migrationEnded(report, request: request, vm: vm)
            return report
        }
    }

    private func migrationEnded(_ report: MigrationReport, request: MigrationRequest, vm: HostedVM) async {
        syncStoreLater()
        if report.outcome == "abandoned" {
            abandoned[report.vm] = AbandonedMigration(id: report.id, host: request.host, port: request.port)
        }
        if report.runsOn == "destination" {
            vms[report.vm] = nil
            await vm.release()
        }
        reserved.remove(report.vm)
        activeMigrations -= 1
        history.append(report)
        logger.info(
            "migration ended",
            metadata: [
                "vm": "\(report.vm)", "outcome": "\(report.outcome)", "reason": "\(report.reason ?? "")",
                "runsOn": "\(report.runsOn)",
            ])
    }

    // MARK: - Incoming migrations

    private func accept(_ request: IncomingRequest, from peer: String) throws -> IncomingMigration {
        let name = request.spec.name
        guard vms[name] == nil, !reserved.contains(name) else {
            throw AgentFailure("nameInUse", "a VM named \(name) already exists on \(configuration.nodeName)")
        }
        do {
            _ = try hypervisor.define(request.spec)
        } catch {
            throw AgentFailure("invalidRequest", "this node cannot run \(name): \(error)")
        }
        guard incomingByID[request.id] == nil else {
            throw AgentFailure("invalidRequest", "migration \(request.id) was already negotiated here")
        }
        reserved.insert(name)
        activeMigrations += 1
        logger.info(
            "incoming migration accepted", metadata: ["vm": "\(name)", "from": "\(peer)", "id": "\(request.id)"])
        let incoming = IncomingMigration(request: request)
        incomingByID[request.id] = incoming
        incomingOrder.append(request.id)
        if incomingOrder.count > Self.rememberedIncoming {
            incomingByID[incomingOrder.removeFirst()] = nil
        }
        return incoming
    }

    private func incomingMigration(id: String) -> IncomingMigration? {
        incomingByID[id]
    }

    private func isForgotten(_ id: String) -> Bool {
        forgottenIncoming.contains(id)
    }

    /// Indexes the chunks a migration brought in and makes them durable, off the migration's path (the chunk store is
    /// a cache).
    nonisolated func syncStoreLater() {
        let store = self.store
        let logger = self.logger
        Task.detached(priority: .background) {
            // The chunks a migration brought in are indexed for resemblance now that no guest waits on them.
            store.indexUnindexed()
            do {
                try store.sync()
            } catch {
                logger.warning("chunk store sync failed", metadata: ["error": "\(error)"])
            }
        }
    }

    /// The destination copy runs: it becomes one of this node's VMs.
    func adopt(_ incoming: IncomingMigration, vm: HostedVM) {
        syncStoreLater()
        reserved.remove(incoming.request.spec.name)
        activeMigrations -= 1
        vms[vm.name] = vm
        logger.info("incoming migration committed", metadata: ["vm": "\(vm.name)", "id": "\(incoming.request.id)"])
    }

    /// Removes a destination copy that will not run; idempotent. A committed copy stays.
    /// - Returns: What the migration's rules answered.
    @discardableResult
    func destroy(_ incoming: IncomingMigration, reason: String) async -> IncomingMigrationRules.RemovalAnswer {
        let answer = await incoming.destroy()
        guard answer == .remove else { return answer }
        syncStoreLater()
        reserved.remove(incoming.request.spec.name)
        activeMigrations -= 1
        logger.info(
            "incoming migration destroyed", metadata: ["vm": "\(incoming.request.spec.name)", "reason": "\(reason)"])
        return answer
    }
}

/// Whether something accepts connections on the unix socket at `path`.
private func isListening(unixSocket path: String) -> Bool {
    let descriptor = socket(AF_UNIX, Int32(SOCK_STREAM.rawValue) | Int32(SOCK_CLOEXEC.rawValue), 0)
    guard descriptor >= 0 else { return false }
    defer { close(descriptor) }
    var address = sockaddr_un()
    address.sun_family = sa_family_t(AF_UNIX)
    let bytes = Array(path.utf8)
    guard bytes.count < MemoryLayout.size(ofValue: address.sun_path) else { return false }
    withUnsafeMutableBytes(of: &address.sun_path) { raw in
        raw.copyBytes(from: bytes)
        raw[bytes.count] = 0
    }
    return withUnsafePointer(to: &address) {
        $0.withMemoryRebound(to: sockaddr.self, capacity: 1) {
            connect(descriptor, $0, socklen_t(MemoryLayout<sockaddr_un>.size)) == 0
        }
    }
}

/// `withTimeout`'s error: what could not be done in time.
struct TimedOut: Error, CustomStringConvertible {
    var description: String
}

/// Runs `body` and returns its result, or throws ``TimedOut`` (naming `what`) once `timeout` has passed; `body` is
/// then cancelled and left to end on its own (a TCP connect, for one, ends only at its own timeout).
func withTimeout<Result: Sendable>(
    _ timeout: Duration, doing what: String, _ body: @escaping @Sendable () async throws -> Result
) async throws -> Result {
    let outcome = NIOLockedValueBox<CheckedContinuation<Result, any Error>?>(nil)
    return try await withCheckedThrowingContinuation { continuation in
        outcome.withLockedValue { $0 = continuation }
        let work = Task {
            let result: Swift.Result<Result, any Error>
            do {
                result = .success(try await body())
            } catch {
                result = .failure(error)
            }
            outcome.withLockedValue { $0.take() }?.resume(with: result)
        }
        let timer = Task {
            try await Task.sleep(for: timeout)
            guard let waiting = outcome.withLockedValue({ $0.take() }) else { return }
            work.cancel()
            waiting.resume(throwing: TimedOut(description: "could not \(what) within \(timeout)"))
        }
        Task {
            _ = await work.result
            timer.cancel()
        }
    }
}

/// Runs a hypervisor call, turning its error into an ``AgentFailure`` that says what QEMU said.
func hypervisorCall<Result: Sendable>(
    _ what: String = "QEMU", _ body: @Sendable () async throws -> Result
) async throws -> Result {
    do {
        return try await body()
    } catch let error as HypervisorError {
        throw AgentFailure("hypervisor", "\(what): \(error)")
    }
}

/// SHA-256 of a VM's RAM: `pmemsave` into `directory`, hashed, removed.
func ramDigest(of machine: QEMUVirtualMachine, directory: String) async throws -> String {
    let path = directory + "/\(machine.spec.name)-\(UUID().uuidString).ram"
    defer { unlink(path) }
    try await machine.saveRAM(to: path)
    guard let handle = FileHandle(forReadingAtPath: path) else {
        throw AgentFailure("hypervisor", "pmemsave wrote no \(path)")
    }
    defer { try? handle.close() }
    var hash = SHA256()
    while let data = try handle.read(upToCount: 4 << 20), !data.isEmpty {
        hash.update(data: data)
    }
    return hash.finalize().map { String(format: "%02x", $0) }.joined()
}
