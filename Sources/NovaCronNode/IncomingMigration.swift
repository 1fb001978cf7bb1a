import DWCPTransport
import Foundation
import NovaCronHypervisor
import NovaCronMigration

#if canImport(Glibc)
    import Glibc
#endif

/// The destination side of one migration, driven by the source agent's requests on one connection: a
/// QEMU started with `-incoming` and `-S` reads the migration stream from a socket whose other end a
/// DWCP receiver writes. When it runs and when it is removed are ``IncomingMigrationRules``' decisions (the
/// sans-IO side of this shell): on the source's word (``AgentRequest/resumeIncoming``, or the resume riding on
/// ``AgentRequest/awaitArrival(resume:)``) or, when the request allows it (``IncomingRequest/runOnArrival``), as
/// soon as QEMU loaded the whole stream the transport verified. Running is the commit point: from then on the
/// copy is never removed (a rollback request is answered ``AgentFailure/committed``).
actor IncomingMigration {
    let request: IncomingRequest
    private var vm: HostedVM?
    private var rules: IncomingMigrationRules
    /// The stream's arrival, awaited once whoever asks first (the source's request or the run on arrival).
    private var arrivalTask: Task<IncomingArrival, any Error>?
    /// The resume, once the rules started it.
    private var commitTask: Task<Void, any Error>?
    private var resumedAtEpochSeconds: Double?
    /// The agent's end of the socket pair QEMU reads its stream from, and QEMU's end until QEMU has it.
    private var streamEnd: Int32 = -1
    private var qemuEnd: Int32 = -1
    private var receiver: Task<ReceiveReport, any Error>?
    /// Whether the copy is committed (being resumed or running): nothing removes it any more.
    var isCommitted: Bool { rules.isCommitted }
    private var isDestroyed: Bool { rules.state == .destroyed }
    private let clock = ContinuousClock()
    private var lastActivity = ContinuousClock.now
    private var bytesArrived: UInt64 = 0

    /// How long since the source last asked something or its data last moved.
    var silence: Duration { clock.now - lastActivity }

    private func arrived(_ bytes: UInt64) {
        if bytes != bytesArrived {
            bytesArrived = bytes
            lastActivity = clock.now
        }
    }

    init(request: IncomingRequest) {
        self.request = request
        rules = IncomingMigrationRules(runsOnArrival: request.runOnArrival == true)
    }

    func handle(_ request: AgentRequest, agent: NodeAgent) async throws -> AgentReply {
        lastActivity = clock.now
        defer { lastActivity = clock.now }
        guard !isDestroyed else { throw AgentFailure("migration", "this migration was rolled back") }
        switch request {
        case .prepareIncoming:
            try await prepare(agent: agent)
            return .done
        case .awaitArrival(let resume):
            let started = clock.now
            var arrived = try await awaitArrival(agent: agent)
            let loaded = clock.now
            if resume {
                try await commit(agent: agent)
            }
            arrived.resumed = isCommitted
            arrived.resumedAtEpochSeconds = resumedAtEpochSeconds
            agent.logger.debug(
                "the stream arrived: seconds until the destination QEMU loaded it and until it ran",
                metadata: [
                    "vm": "\(self.request.spec.name)", "loaded": "\(loaded - started)",
                    "running": "\(clock.now - started)",
                ])
            return .arrived(arrived)
        case .digestRAM:
            guard let vm else { throw AgentFailure("invalidRequest", "no destination VM yet") }
            let directory = agent.scratchDirectory
            return .digest(
                try await hypervisorCall("destination QEMU") {
                    try await ramDigest(of: vm.machine, directory: directory)
                })
        case .resumeIncoming:
            try await commit(agent: agent)
            return .done
        case .destroyIncoming:
            guard await agent.destroy(self, reason: "the source rolled back") != .refuseCommitted else {
                throw AgentFailure(AgentFailure.committed, "the VM already runs on this node: its copy stays")
            }
            return .done
        default:
            throw AgentFailure("invalidRequest", "\(request) is not part of an incoming migration")
        }
    }

    /// Opens the socket pair QEMU will read its stream from and a DWCP receiver writing into it, at once when
    /// the migration is accepted: the source sets the data session up while this node starts QEMU.
    /// - Returns: The receiver's port.
    func openReceiver(agent: NodeAgent) async throws -> Int {
        guard receiver == nil else { throw AgentFailure("invalidRequest", "the receiver is already open") }
        (streamEnd, qemuEnd) = try StreamCopy.socketPair()
        var configuration = ReceiveConfiguration(
            host: agent.configuration.host, port: 0, security: agent.configuration.security,
            nodeName: agent.configuration.nodeName, destination: .descriptor(streamEnd))
        configuration.overwrite = true
        configuration.windowBytes = agent.configuration.migrationWindow
        // The guest stays paused until the arrival is known; the agent outlives the connection's goodbye.
        configuration.waitsForGoodbye = false
        configuration.consumers = MigrationStreamConsumerFactory(store: agent.store)
        let (ports, portContinuation) = AsyncStream<Int>.makeStream()
        receiver = Task {
            defer { portContinuation.finish() }
            return try await TransferServer.receive(
                configuration: configuration, onListening: { port in portContinuation.yield(port) },
                progress: { progress in Task { await self.arrived(progress.bytesDone) } })
        }
        for await port in ports {
            return port
        }
        _ = try await receiver!.value
        throw AgentFailure("migration", "the data receiver did not start")
    }

    /// Starts the destination QEMU (`-incoming defer -S`) reading from the socket pair.
    private func prepare(agent: NodeAgent) async throws {
        guard vm == nil, qemuEnd >= 0 else {
            throw AgentFailure("invalidRequest", "the destination is already prepared, or has no receiver")
        }
        let spec = request.spec
        let hypervisor = agent.hypervisor
        let machine = try await hypervisorCall("destination QEMU") {
            try await HostedVM.launch(spec, mode: .incoming(paused: true), hypervisor: hypervisor)
        }
        vm = machine
        markUncommitted(true, in: machine)
        let descriptor = qemuEnd
        defer {
            close(descriptor)
            qemuEnd = -1
        }
        try await hypervisorCall("destination QEMU") {
            try await machine.machine.acceptIncoming(fromDescriptor: descriptor)
        }
        if rules.runsOnArrival {
            // Nobody asks for the arrival before the source's confirmation: wait for it here, so it runs at once.
            Task { _ = try? await self.awaitArrival(agent: agent) }
        }
    }

    /// The file in a destination QEMU's runtime directory that says it has not run the guest, naming the migration:
    /// an agent that starts and finds it beside a QEMU of an earlier agent removes that QEMU
    /// (``NodeAgent/sweepRuntimeDirectories()``).
    static let uncommittedMark = "incoming-uncommitted"

    private func markUncommitted(_ uncommitted: Bool, in vm: HostedVM) {
        let path = vm.machine.runtimeDirectory + "/" + Self.uncommittedMark
        if uncommitted {
            _ = FileManager.default.createFile(atPath: path, contents: Data(request.id.utf8))
        } else {
            unlink(path)
        }
    }

    /// The source asked for the resume: starts it if the rules say so, and waits for it (started now or before).
    private func commit(agent: NodeAgent) async throws {
        if rules.resumeRequested() { startCommit(agent: agent) }
        guard let commitTask else {
            throw AgentFailure(
                "invalidRequest",
                "the destination cannot run: \(isDestroyed ? "it was removed" : "the stream has not arrived")")
        }
        try await commitTask.value
    }

    /// Resumes the guest: the VM is this node's from here on. A `cont` that fails leaves the copy removable again.
    private func startCommit(agent: NodeAgent) {
        guard let vm else { return }
        let wallClock = Date().timeIntervalSince1970
        // The mark goes before the `cont`: an agent that dies in between leaves a QEMU the next one must not
        // remove (it may have run), never one it wrongly removes.
        markUncommitted(false, in: vm)
        commitTask = Task {
            do {
                try await hypervisorCall("destination QEMU") { try await vm.machine.resume() }
            } catch {
                self.commitEnded(resumedAt: nil, failed: true)
                self.markUncommitted(true, in: vm)
                throw error
            }
            self.commitEnded(resumedAt: await vm.event("RESUME", notBefore: wallClock - 1), failed: false)
            await agent.adopt(self, vm: vm)
        }
    }

    private func commitEnded(resumedAt: Double?, failed: Bool) {
        if failed {
            rules.commitFailed()
            commitTask = nil
        } else {
            rules.commitSucceeded()
            resumedAtEpochSeconds = resumedAt
            vm = nil  // the agent's now; the record of this migration outlives it (NodeAgent.incomingByID)
        }
    }

    /// The stream's arrival, awaited once whoever asks first; the rules hear of it once, and may run the guest.
    private func awaitArrival(agent: NodeAgent) async throws -> IncomingArrival {
        if arrivalTask == nil {
            arrivalTask = Task {
                let arrived = try await self.arrival()
                self.streamArrived(agent: agent)
                return arrived
            }
        }
        return try await arrivalTask!.value
    }

    private func streamArrived(agent: NodeAgent) {
        guard rules.streamArrived() else { return }
        agent.logger.info("the stream arrived: running the guest", metadata: ["vm": "\(request.spec.name)"])
        startCommit(agent: agent)
    }

    private func arrival() async throws -> IncomingArrival {
        guard let receiver, let vm else { throw AgentFailure("invalidRequest", "the destination is not prepared") }
        let report: ReceiveReport
        do {
            report = try await receiver.value
        } catch {
            throw AgentFailure("migration", "the migration stream did not arrive: \(error)")
        }
        // Every byte is in the socket: QEMU reads what is buffered after our end closes.
        close(streamEnd)
        streamEnd = -1
        // The guest is paused until this returns: ask often (QEMU loads the last bytes in milliseconds).
        let clock = ContinuousClock()
        let deadline = clock.now + .seconds(120)
        while true {
            let info = try await hypervisorCall("destination QEMU") { try await vm.machine.migrationInfo() }
            switch info.status {
            case "completed":
                return IncomingArrival(streamBytes: report.bytes, streamSHA256: report.sha256, resumed: false)
            case "failed", "cancelled":
                throw AgentFailure(
                    "migration",
                    "the destination QEMU did not load the stream: \(info.errorDescription ?? info.status)")
            default:
                guard clock.now < deadline else {
                    throw AgentFailure("migration", "the destination QEMU did not load the stream within 120 s")
                }
                try await Task.sleep(for: .milliseconds(5))
            }
        }
    }

    /// Stops the receiver and the destination QEMU and closes the stream socket, if the rules allow it.
    /// - Returns: The rules' answer (``IncomingMigrationRules/RemovalAnswer/remove``: this call removed it).
    func destroy() async -> IncomingMigrationRules.RemovalAnswer {
        let answer = rules.removalRequested()
        guard answer == .remove else { return answer }
        receiver?.cancel()
        if streamEnd >= 0 {
            shutdown(streamEnd, Int32(SHUT_RDWR))
        }
        _ = try? await receiver?.value
        if streamEnd >= 0 {
            close(streamEnd)
            streamEnd = -1
        }
        if qemuEnd >= 0 {
            close(qemuEnd)
            qemuEnd = -1
        }
        await vm?.release()
        vm = nil
        return .remove
    }
}
