import DWCPTransport
import Foundation
import Logging
import NovaCronHypervisor
import NovaCronMigration

#if canImport(Glibc)
    import Glibc
#endif

/// The source side of one live migration: the I/O shell of ``MigrationMachine``. It feeds the machine
/// what QEMU, the DWCP session and the destination agent report, and carries out its actions — QMP
/// commands on the source QEMU, requests to the destination agent on one control connection, and the
/// migration stream itself, which QEMU writes into a socket this agent owns and a DWCP session carries
/// to the destination agent's receiver.
struct OutgoingMigration: Sendable {
    let id = UUID().uuidString
    let request: MigrationRequest
    let vm: QEMUVirtualMachine
    let configuration: NodeAgent.Configuration
    /// This node's chunk store (every chunk of an encoded stream goes in it).
    let store: SharedChunkStore
    let scratchDirectory: String
    let logger: Logger
    let progress: @Sendable (MigrationProgress) -> Void
    /// Ends the source QEMU once the destination runs.
    let stopSource: @Sendable () async -> Void
    /// The QMP timestamp of the source QEMU's last event of a name (``HostedVM/lastEvent(_:)``).
    let sourceEvent: @Sendable (String) -> Double?

    /// Runs the migration to its end; never throws — the report says how it ended and where the VM runs.
    func run() async -> MigrationReport {
        let driver = Driver(migration: self)
        do {
            try await ControlChannel.withConnection(
                host: request.host, port: request.port, security: configuration.security,
                nodeName: configuration.nodeName
            ) { connection in
                driver.connection = connection
                await driver.drive()
                driver.connection = nil
            }
        } catch {
            // The destination could not be reached or refused this node; or it closed while we drove.
            driver.connection = nil
            await driver.drive(
                failure: "cannot reach the destination agent at \(request.host):\(request.port): \(error)")
        }
        return await driver.report()
    }
}

/// What the driver's loop waits for besides its own actions' results.
private enum DriverInput: Sendable {
    case machine(MigrationMachine.Event)
    case qemu(MigrationInfo)
    case qemuFailed(String)
    case streamDelivered(SendReport)
    case streamFailed(String)
}

/// The driver's mutable state, used by one task (the migration's) only.
private final class Driver {
    let migration: OutgoingMigration
    var connection: ControlConnection?
    var machine: MigrationMachine
    let clock = ContinuousClock()
    let started: ContinuousClock.Instant
    let startedAt = Date()
    let inputs: AsyncStream<DriverInput>
    let feed: AsyncStream<DriverInput>.Continuation
    var background: [Task<Void, Never>] = []

    var streamEnd: Int32 = -1
    /// QEMU's end of the socket pair, until QEMU has it.
    var qemuEnd: Int32 = -1
    var sourceFinal: MigrationInfo?
    var streamReport: SendReport?
    var producer: MigrationStreamProducer?
    var pausedAt: ContinuousClock.Instant?
    var resumedAt: ContinuousClock.Instant?
    /// When the source QEMU reported completion, and when the transport confirmed the stream delivered.
    var completedAt: ContinuousClock.Instant?
    var deliveredAt: ContinuousClock.Instant?
    /// When the data session was started (its report's times count from about then).
    var sessionStartedAt: ContinuousClock.Instant?
    /// The destination QEMU's `RESUME` event (QMP timestamp, the destination's clock).
    var destinationResumedAtEpoch: Double?
    var cancelledByUs = false
    var ramIdentical: Bool?
    var lastHeartbeat: Int?
    var lastReport: (transferred: UInt64, at: ContinuousClock.Instant)?
    var lastProgressSent: ContinuousClock.Instant?
    var phaseSent: MigrationMachine.Phase?

    init(migration: OutgoingMigration) {
        self.migration = migration
        machine = MigrationMachine(
            configuration: .init(
                maximumDowntime: .milliseconds(migration.request.maximumDowntimeMilliseconds),
                stepTimeout: .seconds(120), stallTimeout: migration.configuration.peerTimeout,
                verifyBeforeCommit: migration.request.verifyRAM,
                destinationRunsOnArrival: !migration.request.verifyRAM,
                reconnectWindow: migration.configuration.reconnectWindow))
        started = clock.now
        (inputs, feed) = AsyncStream<DriverInput>.makeStream()
    }

    var now: Duration { clock.now - started }
    var request: MigrationRequest { migration.request }
    var vm: QEMUVirtualMachine { migration.vm }

    /// Feeds the machine until it finishes. With `failure`, the migration failed before it could start.
    func drive(failure: String? = nil) async {
        let ticker = Task { [feed] in
            while !Task.isCancelled {
                try? await Task.sleep(for: .milliseconds(250))
                feed.yield(.machine(.tick))
            }
        }
        defer { ticker.cancel() }
        var queue: [MigrationMachine.Event] = []
        if machine.phase == .idle { queue.append(.start) }
        if let failure { queue.append(.failed(failure)) }
        var iterator = inputs.makeAsyncIterator()
        while true {
            while !queue.isEmpty {
                let event = queue.removeFirst()
                let actions = machine.handle(event, now: now)
                announcePhase()  // before the actions, which can take a while (a rollback's requests)
                for action in actions {
                    queue += await perform(action)
                }
                announcePhase()
            }
            if machine.phase == .finished { break }
            guard let input = await iterator.next() else { break }
            queue += await translate(input)
        }
        await stopBackground()
    }

    /// Ends the session and the QEMU poller, then closes the socket pair. A reader blocked on the socket is
    /// woken by `shutdown` first, and the descriptors are closed only once the tasks that use them ended (a
    /// descriptor closed under a reader could be reused by another open meanwhile); a task that does not end
    /// within 10 s leaves its descriptor open rather than risk that.
    private func stopBackground() async {
        if streamEnd >= 0 { shutdown(streamEnd, Int32(SHUT_RDWR)) }
        for task in background { task.cancel() }
        let tasks = background
        let ended = await withTaskGroup(of: Bool.self) { group in
            group.addTask {
                for task in tasks { await task.value }
                return true
            }
            group.addTask {
                try? await Task.sleep(for: .seconds(10))
                return false
            }
            let first = await group.next() ?? false
            group.cancelAll()
            return first
        }
        if !ended {
            migration.logger.warning("the migration's session did not stop within 10 s; leaving its socket open")
            return
        }
        for descriptor in [streamEnd, qemuEnd] where descriptor >= 0 {
            close(descriptor)
        }
        streamEnd = -1
        qemuEnd = -1
    }

    // MARK: Actions

    private func perform(_ action: MigrationMachine.Action) async -> [MigrationMachine.Event] {
        do {
            switch action {
            case .negotiate:
                // The kernel's smoothed round trip of the control connection; failing that, this request's (the
                // destination answers at once, but it opens a listener first).
                let asked = clock.now
                guard
                    case .incomingReady(let port) = try await ask(
                        .negotiate(
                            IncomingRequest(
                                id: migration.id, spec: vm.spec,
                                runOnArrival: machine.configuration.destinationRunsOnArrival)))
                else {
                    throw AgentFailure("protocol", "the destination answered negotiate with something else")
                }
                let answered = clock.now - asked
                let roundTrip = await connection?.roundTrip() ?? answered
                migration.logger.debug(
                    "path to the destination",
                    metadata: ["kernel round trip": "\(roundTrip)", "negotiation's round trip": "\(answered)"])
                // The data session's handshakes happen while the destination starts its QEMU.
                try openSession(port: port)
                return [.pathMeasured(roundTrip: roundTrip), .negotiated]
            case .prepareDestination:
                try await ask(.prepareIncoming)
                return [.destinationReady]
            case .startTransfer(let maximumDowntime):
                try await startTransfer(maximumDowntime: maximumDowntime)
                return []
            case .enableAutoConverge:
                // The auto-converge capability is on from the start (QEMU throttles only a pre-copy that
                // does not converge); the machine's decision makes the throttle bite sooner and harder.
                try await vm.setMigrationParameters(["cpu-throttle-initial": 50, "cpu-throttle-increment": 20])
                migration.logger.info(
                    "pre-copy is not converging: stronger throttle", metadata: ["vm": "\(vm.spec.name)"])
                return []
            case .confirmArrival(let resume):
                return try await confirmArrival(resume: resume)
            case .verify:
                return try await verify()
            case .resumeDestination:
                try await ask(.resumeIncoming)
                resumedAt = clock.now
                return [.destinationRunning]
            case .stopSource, .killSource:
                if sourceFinal?.downtimeMilliseconds ?? 0 == 0, let info = try? await vm.migrationInfo() {
                    sourceFinal = info  // QEMU can report total time and downtime as 0 right at completion
                }
                await migration.stopSource()
                // Read once QEMU has exited and its console is drained: a line the guest wrote just before the
                // pause may still be in the console's pipe.
                lastHeartbeat = await vm.console.retained.last(where: GuestHeartbeat.matches).flatMap(
                    GuestHeartbeat.init(line:))?.sequence
                return [.sourceStopped]
            case .cancelTransfer:
                cancelledByUs = true
                try? await vm.cancelMigration()
                if streamEnd >= 0 { shutdown(streamEnd, Int32(SHUT_RDWR)) }
                return []
            case .destroyDestination:
                do {
                    try await askToRemoveTheCopy()
                } catch let failure as AgentFailure where failure.code == AgentFailure.committed {
                    return [.destinationRunning]
                } catch let failure as AgentFailure where failure.code != "connectionClosed" {
                    throw failure  // it answered, and could not: a failed step
                } catch {
                    // The machine decides what an unreachable destination means (whether it was asked to run).
                    migration.logger.warning(
                        "destination unreachable for the rollback", metadata: ["error": "\(error)"])
                    return [.destinationUnreachable]
                }
                return [.destinationDestroyed]
            case .resumeSource:
                if let exit = vm.exitDescription { return [.sourceLost("the source QEMU \(exit)")] }
                if try await !vm.status().isRunning {
                    try await vm.resume()
                }
                return [.sourceResumed]
            case .finish:
                return []
            }
        } catch {
            return [.failed("\(action): \(error)")]
        }
    }

    /// Sends a request to the destination agent and returns its reply, within the peer timeout. A connection that
    /// failed (closed, broken, or silent for the timeout: it is closed then) is not used again.
    @discardableResult
    private func ask(_ request: AgentRequest) async throws -> AgentReply {
        guard let connection else {
            throw AgentFailure("connectionClosed", "no connection to the destination agent")
        }
        do {
            try await connection.send(request)
            return try await connection.reply(timeout: migration.configuration.peerTimeout)
        } catch let failure as AgentFailure where failure.code != "connectionClosed" {
            throw failure  // an answer
        } catch {
            self.connection = nil
            throw error
        }
    }

    /// Asks the destination to remove its copy: on the migration's connection while it works, else on a new one
    /// (a cut link may be back, and the destination's agent remembers the migration by its id).
    private func askToRemoveTheCopy() async throws {
        if connection != nil {
            do {
                try await ask(.destroyIncoming)
                return
            } catch let failure as AgentFailure where failure.code != "connectionClosed" {
                throw failure
            } catch {
                migration.logger.info(
                    "the migration's connection to the destination broke: asking on a new one",
                    metadata: ["error": "\(error)"])
            }
        }
        let configuration = migration.configuration
        try await AgentClient(
            host: request.host, port: request.port, security: configuration.security, nodeName: configuration.nodeName
        ).removeIncoming(id: migration.id, within: configuration.peerTimeout)
    }

    /// Opens the socket pair QEMU will migrate into and starts the DWCP session that carries what it yields
    /// to the destination's receiver at `port` (it waits for QEMU's first bytes once connected).
    private func openSession(port: Int) throws {
        (streamEnd, qemuEnd) = try StreamCopy.socketPair()
        var send = SendConfiguration(
            host: request.host, port: port, security: migration.configuration.security,
            nodeName: migration.configuration.nodeName)
        send.reconnectAttempts = 0
        send.rateLimit = request.rateLimit
        send.stallTimeout = migration.configuration.peerTimeout
        send.windowBytes = migration.configuration.migrationWindow
        let source: TransferSource
        let name = "\(vm.spec.name).migration"
        let streamWindow = migration.configuration.migrationWindow * MigrationStream.streamWindowFactor
        switch EncodingMode(request.encoding) ?? .auto {
        case .none:
            source = .descriptor(streamEnd, name: name)
        case .auto:
            producer = MigrationStreamProducer(
                name: name, descriptor: streamEnd, store: migration.store, level: 1, streamWindow: streamWindow)
            source = .producer(producer!)
        case .level(let level):
            producer = MigrationStreamProducer(
                name: name, descriptor: streamEnd, store: migration.store, level: level, streamWindow: streamWindow)
            source = .producer(producer!)
        }
        let feed = self.feed
        sessionStartedAt = clock.now
        background.append(
            Task {
                do {
                    let report = try await TransferClient.send(
                        source, configuration: send,
                        progress: { feed.yield(.machine(.delivered($0.bytesDone))) })
                    feed.yield(.streamDelivered(report))
                } catch {
                    feed.yield(.streamFailed("\(error)"))
                }
            })
    }

    /// Sets QEMU's migration parameters, hands it its end of the socket pair, and watches `query-migrate`.
    private func startTransfer(maximumDowntime: Duration) async throws {
        guard qemuEnd >= 0 else { throw AgentFailure("protocol", "no data session") }
        try await vm.setMigrationCapabilities(["auto-converge": true])
        try await vm.setMigrationParameters([
            "downtime-limit": .int(Int64(maximumDowntime.milliseconds)),
            // QEMU's default cap is 128 MiB/s; the link and the transport decide instead.
            "max-bandwidth": .int(Int64(1) << 40),
        ])
        let descriptor = qemuEnd
        defer {
            close(descriptor)
            qemuEnd = -1
        }
        try await vm.migrate(toDescriptor: descriptor)
        let feed = self.feed
        let vm = self.vm
        background.append(
            Task {
                do {
                    while !Task.isCancelled {
                        let info = try await vm.migrationInfo()
                        feed.yield(.qemu(info))
                        if info.isFinished { return }
                        // The guest is paused during `device`: its end is worth noticing at once.
                        try await Task.sleep(for: .milliseconds(info.status == "device" ? 5 : 100))
                    }
                } catch {
                    feed.yield(.qemuFailed("\(error)"))
                }
            })
    }

    private func verify() async throws -> [MigrationMachine.Event] {
        guard request.verifyRAM else { return [.verified] }
        let vm = self.vm
        let directory = migration.scratchDirectory
        let local = Task { try await ramDigest(of: vm, directory: directory) }
        let remote = try await ask(.digestRAM)
        let ours = try await local.value
        guard case .digest(let theirs) = remote else {
            throw AgentFailure("protocol", "the destination answered digestRAM with something else")
        }
        ramIdentical = ours == theirs
        guard ours == theirs else {
            return [.failed("the destination's RAM differs from the source's (SHA-256 \(theirs) vs \(ours))")]
        }
        return [.verified]
    }

    // MARK: Inputs

    private func translate(_ input: DriverInput) async -> [MigrationMachine.Event] {
        switch input {
        case .machine(let event):
            return [event]
        case .qemu(let info):
            return await observed(info)
        case .qemuFailed(let message):
            if let exit = vm.exitDescription { return [.sourceLost("source QEMU \(exit): \(message)")] }
            return [.failed("source QEMU: \(message)")]
        case .streamDelivered(let report):
            streamReport = report
            deliveredAt = clock.now
            return [.streamDelivered]
        case .streamFailed(let message):
            if cancelledByUs { return [] }
            // A source QEMU that died closes the stream too: say which came first in substance.
            if let exit = vm.exitDescription { return [.sourceLost("source QEMU \(exit): the stream ended early")] }
            return [.failed("the migration stream: \(message)")]
        }
    }

    private func observed(_ info: MigrationInfo) async -> [MigrationMachine.Event] {
        let at = clock.now
        let transferred = UInt64(max(info.transferredBytes ?? 0, 0))
        let remaining = UInt64(max(info.remainingBytes ?? 0, 0))
        var rate = 0.0
        if let last = lastReport, at > last.at {
            rate = Double(transferred &- last.transferred) / (at - last.at).seconds
        }
        lastReport = (transferred, at)
        let dirty = Double(info.dirtyPagesRate ?? 0) * 4096
        sendProgress(transferred: transferred, remaining: remaining, dirty: dirty, rate: rate, force: false)
        switch info.status {
        case "device":
            pausedAt = pausedAt ?? at
            return [.sourcePaused]
        case "completed":
            pausedAt = pausedAt ?? at
            completedAt = completedAt ?? at
            sourceFinal = info
            return [.sourcePaused]
        case "failed":
            return [.failed("source QEMU: migration failed: \(info.errorDescription ?? "no description")")]
        case "cancelled":
            return cancelledByUs ? [] : [.failed("source QEMU cancelled the migration")]
        default:
            return [
                .progress(
                    .init(
                        remainingBytes: remaining, transferredBytes: transferred, dirtyBytesPerSecond: dirty,
                        bytesPerSecond: max(rate, 0)))
            ]
        }
    }

    /// The destination confirms it loaded the stream the transport delivered — and, when the machine says so,
    /// that it runs the guest.
    private func confirmArrival(resume: Bool) async throws -> [MigrationMachine.Event] {
        guard let streamReport else { throw AgentFailure("protocol", "no delivered stream to confirm") }
        guard case .arrived(let arrived) = try await ask(.awaitArrival(resume: resume)) else {
            throw AgentFailure("protocol", "the destination answered awaitArrival with something else")
        }
        guard arrived.streamSHA256 == streamReport.sha256 else {
            return [.failed("the destination loaded a different stream (SHA-256 \(arrived.streamSHA256))")]
        }
        guard arrived.resumed else { return [.transferCompleted] }
        resumedAt = clock.now
        destinationResumedAtEpoch = arrived.resumedAtEpochSeconds
        return [.destinationRunning]
    }

    // MARK: Reporting

    private func announcePhase() {
        guard machine.phase != phaseSent else { return }
        phaseSent = machine.phase
        let last = machine.lastProgress
        sendProgress(
            transferred: last?.transferredBytes ?? 0, remaining: last?.remainingBytes ?? 0,
            dirty: last?.dirtyBytesPerSecond ?? 0, rate: last?.bytesPerSecond ?? 0, force: true)
    }

    private func sendProgress(transferred: UInt64, remaining: UInt64, dirty: Double, rate: Double, force: Bool) {
        let at = clock.now
        if !force, let last = lastProgressSent, at - last < .seconds(1) { return }
        lastProgressSent = at
        let drain = rate - dirty
        migration.progress(
            MigrationProgress(
                phase: "\(machine.phase)", seconds: now.seconds, transferredBytes: transferred,
                remainingBytes: remaining, dirtyBytesPerSecond: dirty, bytesPerSecond: max(rate, 0),
                etaSeconds: drain > 0 && remaining > 0 ? Double(remaining) / drain : nil))
    }

    func report() async -> MigrationReport {
        let outcome: String
        var reason: String?
        let runsOn: String
        switch machine.outcome {
        case .migrated:
            outcome = "migrated"
            runsOn = "destination"
        case .rolledBack(let why):
            outcome = "rolled back"
            reason = why
            // What the machine saw last; a source QEMU that died afterwards is reported as it is.
            runsOn = vm.exitDescription.map { "nowhere: the source QEMU \($0)" } ?? "source"
        case .sourceLost(let why):
            outcome = "rolled back"
            reason = why
            runsOn = "nowhere: \(vm.exitDescription.map { "the source QEMU \($0)" } ?? "the source QEMU exited")"
        case .abandoned(let why):
            outcome = "abandoned"
            reason = why
            runsOn = machine.source == .running ? "source" : "source (paused)"
        case nil:
            outcome = "abandoned"
            reason = "the migration's events stopped before it finished"
            runsOn = "source (paused)"
        }
        if lastHeartbeat == nil {
            lastHeartbeat = await vm.console.retained.last(where: GuestHeartbeat.matches).flatMap(
                GuestHeartbeat.init(line:))?.sequence
        }
        return MigrationReport(
            id: migration.id, vm: vm.spec.name, destination: "\(request.host):\(request.port)", outcome: outcome,
            reason: reason, runsOn: runsOn, startedAt: ISO8601DateFormatter().string(from: startedAt),
            totalSeconds: now.seconds,
            qemuTotalMilliseconds: sourceFinal?.totalTimeMilliseconds,
            qemuDowntimeMilliseconds: sourceFinal?.downtimeMilliseconds,
            qemuDowntimeLimitMilliseconds: machine.phase == .idle ? nil : machine.qemuDowntime.milliseconds,
            roundTripMilliseconds: machine.roundTrip?.milliseconds,
            pauseBudgetAttainable: machine.isBudgetAttainable,
            pausedMilliseconds: zip2(completedAt ?? pausedAt, resumedAt).map {
                // QEMU's downtime covers stop → its last write; from then on the agents carry the tail.
                (sourceFinal?.downtimeMilliseconds ?? 0) + ($1 - $0).milliseconds
            },
            pauseTimeline: pauseTimeline(),
            guestPauseByQEMUEventsMilliseconds: outcome == "migrated"
                ? zip2(migration.sourceEvent("STOP"), destinationResumedAtEpoch).map {
                    Int((($1 - $0) * 1000).rounded())
                } : nil,
            ramBytes: vm.spec.ramBytes,
            streamBytes: producer?.statistics?.inputBytes ?? streamReport?.bytes ?? 0,
            wireBytes: streamReport?.sentBytes ?? 0, ramIdentical: ramIdentical, lastSourceHeartbeat: lastHeartbeat,
            autoConverged: machine.autoConverging, encoding: producer == nil ? "none" : request.encoding,
            referencedBytes: producer?.statistics?.referencedBytes ?? 0,
            deltaBytes: producer?.statistics?.deltaBytes ?? 0)
    }
}

extension Driver {
    /// Milliseconds between the cut-over's events, as far as they happened.
    func pauseTimeline() -> [String: Int]? {
        guard let pausedAt else { return nil }
        func milliseconds(_ from: ContinuousClock.Instant?, _ to: ContinuousClock.Instant?) -> Int? {
            zip2(from, to).map { ($1 - $0).milliseconds }
        }
        var timeline: [String: Int] = [:]
        timeline["pausedToSourceCompleted"] = milliseconds(pausedAt, completedAt)
        timeline["sourceCompletedToDelivered"] = milliseconds(completedAt, deliveredAt)
        // Within that: until the encoded stream was read to its end, and until its last chunk was acknowledged
        // (the rest is the receiver's check and answer).
        if let sessionStartedAt, let object = streamReport?.objects.first {
            let at = { (seconds: Double?) in seconds.map { sessionStartedAt + .seconds($0) } }
            timeline["sourceCompletedToStreamRead"] = milliseconds(completedAt, at(object.readSeconds))
            timeline["sourceCompletedToAcknowledged"] = milliseconds(completedAt, at(object.acknowledgedSeconds))
        }
        timeline["deliveredToRunning"] = milliseconds(deliveredAt, resumedAt)
        return timeline
    }
}

private func zip2<A, B>(_ a: A?, _ b: B?) -> (A, B)? {
    guard let a, let b else { return nil }
    return (a, b)
}
