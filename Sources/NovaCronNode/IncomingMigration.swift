import DWCPTransport
import Foundation
import NovaCronHypervisor

#if canImport(Glibc)
    import Glibc
#endif

/// The destination side of one migration, driven by the source agent's requests on one connection: a
/// QEMU started with `-incoming` and `-S` reads the migration stream from a socket whose other end a
/// DWCP receiver writes; it runs when the source says so (``AgentRequest/resumeIncoming``, or the resume
/// riding on ``AgentRequest/awaitArrival(resume:)``) or, when the request allows it
/// (``IncomingRequest/runOnArrival``), as soon as QEMU loaded the whole stream the transport verified. Running
/// is the migration's commit point: from then on this copy is never destroyed at the source's request (the
/// answer is ``AgentFailure/committed``).
actor IncomingMigration {
    let request: IncomingRequest
    private var vm: HostedVM?
    /// The stream's arrival, awaited once whoever asks first (the source's request or the run on arrival).
    private var arrivalTask: Task<IncomingArrival, any Error>?
    /// The resume, once started: it is the commit point, so it happens once.
    private var commitTask: Task<Void, any Error>?
    private var resumedAtEpochSeconds: Double?
    /// The agent's end of the socket pair QEMU reads its stream from, and QEMU's end until QEMU has it.
    private var streamEnd: Int32 = -1
    private var qemuEnd: Int32 = -1
    private var receiver: Task<ReceiveReport, any Error>?
    private(set) var isCommitted = false
    private var isDestroyed = false
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
            var arrived = try await awaitArrival()
            let loaded = clock.now
            if resume, let vm {
                try await commit(vm, agent: agent)
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
            guard let vm else { throw AgentFailure("invalidRequest", "no destination VM yet") }
            try await commit(vm, agent: agent)
            return .done
        case .destroyIncoming:
            guard commitTask == nil else {
                throw AgentFailure(AgentFailure.committed, "the VM already runs on this node: its copy stays")
            }
            await agent.destroy(self, reason: "the source rolled back")
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
        let descriptor = qemuEnd
        defer {
            close(descriptor)
            qemuEnd = -1
        }
        try await hypervisorCall("destination QEMU") {
            try await machine.machine.acceptIncoming(fromDescriptor: descriptor)
        }
        if request.runOnArrival == true {
            Task { await self.runOnArrival(agent: agent) }
        }
    }

    /// Runs the destination: the VM is this node's from here on. Once started it is never destroyed at the
    /// source's request; a `cont` that fails leaves it destroyable again (the guest did not run).
    private func commit(_ vm: HostedVM, agent: NodeAgent) async throws {
        if commitTask == nil {
            let wallClock = Date().timeIntervalSince1970
            commitTask = Task {
                do {
                    try await hypervisorCall("destination QEMU") { try await vm.machine.resume() }
                } catch {
                    self.commitFailed()
                    throw error
                }
                self.committed(resumedAt: await vm.event("RESUME", notBefore: wallClock - 1))
                await agent.adopt(self, vm: vm)
            }
        }
        try await commitTask!.value
    }

    private func commitFailed() { commitTask = nil }

    private func committed(resumedAt: Double?) {
        isCommitted = true
        resumedAtEpochSeconds = resumedAt
    }

    /// With ``IncomingRequest/runOnArrival``: runs the guest as soon as the stream arrived whole and QEMU loaded
    /// it. A failure here is left to the source's own ``AgentRequest/awaitArrival(resume:)``, which meets it too.
    private func runOnArrival(agent: NodeAgent) async {
        guard (try? await awaitArrival()) != nil, let vm, !isDestroyed else { return }
        do {
            try await commit(vm, agent: agent)
            agent.logger.info("the stream arrived: running the guest", metadata: ["vm": "\(request.spec.name)"])
        } catch {
            agent.logger.warning(
                "the stream arrived but the guest could not run",
                metadata: ["vm": "\(request.spec.name)", "error": "\(error)"])
        }
    }

    private func awaitArrival() async throws -> IncomingArrival {
        if arrivalTask == nil {
            arrivalTask = Task { try await self.arrival() }
        }
        return try await arrivalTask!.value
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

    /// Stops the receiver and the destination QEMU and closes the stream socket.
    /// - Returns: Whether this call destroyed it (false: already destroyed or committed).
    func destroy() async -> Bool {
        guard !isDestroyed, commitTask == nil else { return false }
        isDestroyed = true
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
        return true
    }
}
