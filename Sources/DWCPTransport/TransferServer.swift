import DWCPWire
import NIOCore
import NIOPosix

/// Receives one session over DWCP — one object, or several sharing the session's data streams:
/// listens, accepts the sender's control stream and data streams, stores and acknowledges chunks,
/// verifies each object's SHA-256 and commits it. A sender that disappears mid-transfer leaves its
/// partial copies and journals; the receiver keeps listening so the sender can come back with `--resume`.
public enum TransferServer {
    /// Listens on the configured address and returns after one session's objects were all received,
    /// verified and committed.
    /// - Parameters:
    ///   - configuration: Where to listen, where to write, the identities.
    ///   - onListening: Called with the bound port once the listener is up.
    ///   - progress: Called once a second while a transfer runs.
    /// - Returns: What was received.
    /// - Throws: ``TransportError`` when the transfer failed (checksum, disk, protocol) or the
    ///   listener could not start.
    public static func receive(
        configuration: ReceiveConfiguration,
        onListening: @escaping @Sendable (Int) -> Void = { _ in },
        progress: @escaping @Sendable (TransferProgress) -> Void = { _ in }
    ) async throws -> ReceiveReport {
        let (listener, tlsContext) = try await TransportConnection.listen(
            host: configuration.host, port: configuration.port, security: configuration.security)
        onListening(listener.channel.localAddress?.port ?? configuration.port)
        let registry = SessionRegistry(configuration: configuration)
        let handlers = ConnectionTasks()
        try await listener.executeThenClose { connections in
            // The accept loop runs in its own task, shielded from this task's cancellation, and ends when
            // the listener is closed and its sequence drained; connections accepted after the result are
            // closed at once. Each connection is served by a task of its own (see `handlers` below).
            let acceptor = Task {
                do {
                    for try await connection in connections {
                        if await registry.isFinished {
                            connection.close(promise: nil)
                        } else {
                            handlers.add {
                                guard
                                    let adopted = await TransportConnection.adoptOrClose(
                                        connection, tlsContext: tlsContext)
                                else { return }
                                await serve(adopted, registry: registry)
                            }
                        }
                    }
                } catch {
                    await registry.finish(
                        .failure(
                            TransportError(.connectionFailed, expected: "to accept connections", found: "\(error)")))
                }
            }
            await withTaskGroup(of: Void.self) { group in
                group.addTask {
                    var last: (UInt64, ContinuousClock.Instant)?
                    var ticks = 0
                    while await !registry.isFinished {
                        // Short sleeps so the receiver ends promptly; a report once a second.
                        try? await Task.sleep(for: .milliseconds(100))
                        ticks += 1
                        guard ticks % 10 == 0 else { continue }
                        guard let (done, total, streams, seconds) = await registry.progress() else { continue }
                        let now = ContinuousClock.now
                        let rate = last.map { Double(done &- $0.0) / (now - $0.1).seconds } ?? 0
                        last = (done, now)
                        progress(
                            TransferProgress(
                                bytesDone: done, totalBytes: total, seconds: seconds, bytesPerSecond: max(rate, 0),
                                streams: streams, roundTripMilliseconds: nil, retransmits: nil))
                    }
                }
                await withTaskCancellationHandler {
                    await registry.waitForResult()
                } onCancel: {
                    Task { await registry.finish(.failure(CancellationError())) }
                }
            }
            try? await listener.channel.close()
            await acceptor.value
        }
        // After a success every object is committed and acknowledged. The control connection's goodbye is
        // awaited if the configuration says so (its last answer must leave before a process exits); the data
        // streams' goodbyes do not hold up the caller: closing a TLS connection waits for the peer's
        // close_notify, up to NIOSSL's 5 s (migrations over lossy links now and then took 5.0 s more there).
        // After a failure every connection is stopped first, so that nothing writes while the partial output
        // is removed.
        if await registry.succeeded {
            if configuration.waitsForGoodbye { await registry.awaitGoodbyes() }
            handlers.cancelAll()
        } else {
            await handlers.cancelAndWait()
        }
        // A failed or stopped receive leaves no consumer's partial output behind (a file's partial copy
        // and journal stay for a resume), before the caller, often about to exit, sees the outcome.
        await registry.abandonAll()
        return try await registry.result()
    }

    private static func serve(_ connection: FrameChannel, registry: SessionRegistry) async {
        let peerAddress = connection.channel.remoteAddress.map { "\($0)" } ?? "unknown peer"
        try? await connection.executeThenClose { inbound, outbound in
            var iterator = inbound.makeAsyncIterator()
            // A client that connects and stays silent would hold this task until TCP gave up (never, on an
            // idle connection); senders follow their hello with an offer or an attach at once.
            let (peer, first) = try await closing(
                connection.channel, after: registry.configuration.helloTimeout,
                expecting: "TLS, the hello and an offer or attach from a sender"
            ) {
                let peer = try await TransportConnection.answerHello(
                    inbound: &iterator, outbound: outbound, nodeName: registry.nodeName)
                return (peer, try await iterator.next())
            }
            guard let first, first.type == .control else { return }
            switch try SessionMessage(decoding: first.payload) {
            case .offer(let offer):
                try await serveControl(
                    offer, peer: "\(peer) (\(peerAddress))", iterator: &iterator, outbound: outbound,
                    channel: connection.channel, registry: registry)
            case .attach(let sessionID, let token, _):
                guard await registry.isSession(sessionID, token: token) else {
                    try await outbound.write(
                        control(.failed(reason: "no session \(sessionID) with that token"), session: sessionID))
                    return
                }
                try await serveData(sessionID, iterator: &iterator, outbound: outbound, registry: registry)
            default:
                return
            }
        }
    }

    private static func control(_ message: SessionMessage, session: UInt64) -> DWCPFrame {
        DWCPFrame(type: .control, sessionID: session, sequence: 0, payload: message.encoded)
    }

    /// The control stream: every offer (object 0's opens the session; the sender sends them all at
    /// once), answered as a whole — an accept per object, or one refusal and nothing kept — then each
    /// object's finish, until every object is committed or the sender goes away.
    private static func serveControl(
        _ first: SessionMessage.Offer,
        peer: String,
        iterator: inout NIOAsyncChannelInboundStream<DWCPFrame>.AsyncIterator,
        outbound: NIOAsyncChannelOutboundWriter<DWCPFrame>,
        channel: any Channel,
        registry: SessionRegistry
    ) async throws {
        var offers = [first]
        while offers.count < Int(first.objects) {
            guard let frame = try await iterator.next() else { return }  // gone before offering everything
            guard frame.type == .control, case .offer(let offer) = try SessionMessage(decoding: frame.payload) else {
                throw TransportError(
                    .protocolViolation, expected: "\(first.objects) offers first", found: "a \(frame.type) frame")
            }
            offers.append(offer)
        }
        let sessionID: UInt64
        let accepts: [SessionMessage.Accept]
        do {
            (sessionID, accepts) = try await registry.open(offers, peer: peer)
        } catch {
            // Refused as a whole: nothing was kept, so no data stream ever attaches.
            try await outbound.write(control(.refuse(reason: "\(error)"), session: 0))
            return
        }
        do {
            for accept in accepts {
                try await outbound.write(control(.accept(accept), session: sessionID))
            }
            while let frame = try await iterator.next() {
                guard frame.type == .control else { continue }
                let message = try SessionMessage(decoding: frame.payload)
                if case .query(let object, let content) = message {
                    guard let session = await registry.object(Int(object), of: sessionID) else {
                        throw TransportError(
                            .protocolViolation, expected: "a query for an accepted object", found: "object \(object)")
                    }
                    let answer = try await session.answer(query: content)
                    try await outbound.write(control(.answer(object: object, content: answer), session: sessionID))
                    continue
                }
                guard case .finish(let object, let blocks, let bytes, let digest) = message else { continue }
                guard let session = await registry.object(Int(object), of: sessionID) else {
                    throw TransportError(
                        .protocolViolation, expected: "finish for an accepted object", found: "object \(object)")
                }
                // The finish may come before the last chunks: it is answered once they are in, while this
                // loop goes on reading (a query of another object, the sender going away).
                Task {
                    guard
                        let (answer, outcome) = await session.finish(
                            totalBlocks: blocks, totalBytes: bytes, digest: digest)
                    else { return }  // let go before its last chunks: the session was abandoned
                    // Recorded before the answer goes out: a sender that has it goes away at once, and the session
                    // must not be abandoned then. Concluded after it: the caller may stop every connection then.
                    let over = await registry.committed(
                        Int(object), of: sessionID, outcome, goodbye: channel.closeFuture)
                    try? await outbound.write(control(answer, session: sessionID))
                    guard over else { return }
                    await registry.conclude(sessionID)
                    // Over (every object committed, or this one failed): this side says goodbye first, as the
                    // sender's close waits for it (NIOSSL: up to 5 s).
                    channel.close(promise: nil)
                }
            }
        } catch {}
        // The sender went away: keep what arrived for a resume.
        await registry.abandon(sessionID)
    }

    private static func serveData(
        _ sessionID: UInt64,
        iterator: inout NIOAsyncChannelInboundStream<DWCPFrame>.AsyncIterator,
        outbound: NIOAsyncChannelOutboundWriter<DWCPFrame>,
        registry: SessionRegistry
    ) async throws {
        await registry.streamOpened()
        defer { Task { await registry.streamClosed() } }
        var objects: [Int: ReceiverSession] = [:]
        while true {
            let frame: DWCPFrame
            do {
                guard let next = try await iterator.next() else { return }
                frame = next
            } catch let error as DWCPWireError where error.code == .payloadChecksumMismatch {
                // A corrupted chunk: drop this stream; the sender re-sends its chunks on the others.
                await registry.noteCorruptChunk()
                return
            }
            guard frame.type == .chunk else { continue }
            let address = ChunkAddress(sequence: frame.sequence)
            do {
                if objects[address.object] == nil {
                    objects[address.object] = await registry.object(address.object, of: sessionID)
                }
                guard let session = objects[address.object] else {
                    throw TransportError(
                        .protocolViolation, expected: "chunks of accepted objects", found: "chunk \(address)")
                }
                _ = try await session.store(address.index, frame.payload)
            } catch let error as TransportError where error.code == .cancelled {
                // The session ended (committed, or replaced by a newer attempt): just drop this stream.
                return
            } catch {
                try? await outbound.write(control(.failed(reason: "\(error)"), session: sessionID))
                await registry.finish(.failure(error))
                return
            }
            try await outbound.write(DWCPFrame(type: .ack, sessionID: sessionID, sequence: frame.sequence))
        }
    }
}

/// The receiver's sessions and the outcome everyone waits for.
actor SessionRegistry {
    /// One session: its token and objects.
    private struct Session {
        let token: SessionMessage.Token
        let expected: Int
        let peer: String
        let started = ContinuousClock.now
        var objects: [ReceiverSession] = []
        var committed: [Int: ReceivedObject] = [:]
        var failure: TransportError?
        /// Every object committed, or one failed: its outcome is known, if not yet concluded.
        var isOver: Bool { failure != nil || committed.count == expected }
    }

    let configuration: ReceiveConfiguration
    nonisolated var nodeName: String { configuration.nodeName }
    private var sessions: [UInt64: Session] = [:]
    private var outcome: Result<ReceiveReport, any Error>?
    var isFinished: Bool { outcome != nil }
    /// Whether the session ended with every object committed.
    var succeeded: Bool { (try? outcome?.get()) != nil }
    private var waiters: [CheckedContinuation<Void, Never>] = []
    /// The closes of the control connections whose last answer ended a session (see ``committed``).
    private var goodbyes: [EventLoopFuture<Void>] = []
    private var dataStreams = 0
    private var corruptChunks = 0
    private var lastSession: UInt64?
    private let started = ContinuousClock.now

    init(configuration: ReceiveConfiguration) {
        self.configuration = configuration
    }

    /// Opens a session's objects, all or none: the offers must be numbered and counted right (see
    /// ``SessionMessage/checkSession(_:streamDestination:)``) and land on distinct files — checked before
    /// any file is opened, so a refused session never touches an existing partial copy.
    /// - Returns: The session's id and one accept per object, in order.
    func open(_ offers: [SessionMessage.Offer], peer: String) throws(TransportError)
        -> (UInt64, [SessionMessage.Accept])
    {
        guard outcome == nil else {
            throw TransportError(.refused, expected: "a receiver still waiting", found: "a finished receiver")
        }
        try SessionMessage.checkSession(offers, streamDestination: configuration.destination.streamDescriptor != nil)
        if case .path(let path) = configuration.destination {
            var targets: [String: String] = [:]
            for offer in offers {
                guard let target = try? ReceiverSession.resolve(path, name: offer.name) else { continue }
                if let other = targets.updateValue(offer.name, forKey: target) {
                    throw TransportError(
                        .invalidArgument, expected: "a destination per object",
                        found: "\(other) and \(offer.name) both for \(target)", advice: "give the files distinct names")
                }
            }
        }
        // A newer attempt at the same objects replaces an older session still lingering.
        let transferIDs = Set(offers.map(\.transferID))
        for (old, lingering) in sessions
        where lingering.objects.contains(where: { transferIDs.contains($0.offer.transferID) }) {
            abandonNow(old)
        }
        var id = UInt64.random(in: 1 ... .max)
        while sessions[id] != nil { id = UInt64.random(in: 1 ... .max) }
        var session = Session(token: .random(), expected: offers.count, peer: peer)
        for offer in offers {
            do {
                session.objects.append(
                    try ReceiverSession(
                        sessionID: id, token: session.token, offer: offer,
                        blockSize: session.objects.first.map { Int($0.accept.blockSize) },
                        peer: peer, configuration: configuration))
            } catch {
                for object in session.objects { Task { await object.withdraw() } }
                throw error as? TransportError
                    ?? TransportError(.destinationFailed, expected: "to open the destination", found: "\(error)")
            }
        }
        sessions[id] = session
        lastSession = id
        return (id, session.objects.map(\.accept))
    }

    func isSession(_ id: UInt64, token: SessionMessage.Token) -> Bool {
        sessions[id]?.token == token
    }

    /// Object `object` of session `id`, once accepted.
    func object(_ object: Int, of id: UInt64) -> ReceiverSession? {
        guard let objects = sessions[id]?.objects, objects.indices.contains(object) else { return nil }
        return objects[object]
    }

    /// An object's finish is about to be answered on the control connection whose close completes `goodbye`.
    /// - Returns: Whether the session is over (every object committed, or this one failed): the caller then
    ///   answers, calls ``conclude(_:)`` and closes the connection, and ``awaitGoodbyes()`` waits for that.
    func committed(
        _ object: Int, of id: UInt64, _ outcome: Result<ReceivedObject, TransportError>,
        goodbye: EventLoopFuture<Void>
    ) -> Bool {
        guard var session = sessions[id] else {
            goodbyes.append(goodbye)
            return true
        }
        switch outcome {
        case .failure(let error): session.failure = error
        case .success(let report): session.committed[object] = report
        }
        sessions[id] = session
        if session.isOver { goodbyes.append(goodbye) }
        return session.isOver
    }

    /// The last answer of session `id` went out: its outcome becomes the receive's.
    func conclude(_ id: UInt64) {
        guard let session = sessions[id], session.isOver else { return }
        if let failure = session.failure {
            finish(.failure(failure))
            return
        }
        finish(
            .success(
                ReceiveReport(
                    objects: (0..<session.expected).map { session.committed[$0]! },
                    corruptChunks: corruptChunks,
                    seconds: (ContinuousClock.now - session.started).seconds,
                    peer: session.peer)))
    }

    /// Waits until every control connection that was answered its last finish has closed.
    func awaitGoodbyes() async {
        for goodbye in goodbyes { try? await goodbye.get() }
    }

    /// The control stream of session `id` went away: keep its partial copies for a resume. A session whose
    /// outcome is known stays: its sender may have gone away on reading the last answer, before
    /// ``conclude(_:)``.
    func abandon(_ id: UInt64) {
        guard sessions[id]?.isOver != true else { return }
        abandonNow(id)
    }

    private func abandonNow(_ id: UInt64) {
        guard let session = sessions.removeValue(forKey: id) else { return }
        for object in session.objects { Task { await object.abandon() } }
    }

    /// Every session still open lets go of its objects (see ``ReceiverSession/abandon()``), waiting for each.
    func abandonAll() async {
        let open = sessions.values.flatMap(\.objects)
        sessions.removeAll()
        for object in open { await object.abandon() }
    }

    /// A data stream delivered a frame whose checksum failed.
    func noteCorruptChunk() { corruptChunks += 1 }

    func streamOpened() { dataStreams += 1 }
    func streamClosed() { dataStreams -= 1 }

    func progress() async -> (UInt64, UInt64?, Int, Double)? {
        guard outcome == nil, let lastSession, let session = sessions[lastSession] else { return nil }
        var done: UInt64 = 0
        var total: UInt64? = 0
        for object in session.objects {
            let (objectDone, objectTotal) = await object.progress()
            done += objectDone
            total = total.flatMap { sum in objectTotal.map { sum + $0 } }
        }
        return (
            done, session.objects.count == session.expected ? total : nil, dataStreams,
            (ContinuousClock.now - started).seconds
        )
    }

    func finish(_ result: Result<ReceiveReport, any Error>) {
        guard outcome == nil else { return }
        outcome = result
        for waiter in waiters { waiter.resume() }
        waiters.removeAll()
    }

    func waitForResult() async {
        if outcome != nil { return }
        await withCheckedContinuation { waiters.append($0) }
    }

    func result() throws -> ReceiveReport {
        guard let outcome else {
            throw TransportError(.cancelled, expected: "a completed transfer", found: "the receiver was stopped")
        }
        return try outcome.get()
    }
}
