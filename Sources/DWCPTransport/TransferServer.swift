import DWCPWire
import NIOCore
import NIOPosix

/// Receives one object over DWCP: listens, accepts the sender's control stream and data streams,
/// stores and acknowledges chunks, verifies the SHA-256 and commits. A sender that disappears
/// mid-transfer leaves its partial copy and journal; the receiver keeps listening so the sender can
/// come back with `--resume`.
public enum TransferServer {
    /// Listens on the configured address and returns after one transfer completed and was verified.
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
        try await listener.executeThenClose { connections in
            // The accept loop runs in its own task, shielded from this task's cancellation, and ends when
            // the listener is closed and its sequence drained; connections accepted after the result are
            // closed at once.
            let acceptor = Task {
                await withDiscardingTaskGroup { handlers in
                    do {
                        for try await connection in connections {
                            if await registry.isFinished {
                                connection.close(promise: nil)
                            } else {
                                handlers.addTask {
                                    guard
                                        let adopted = try? await TransportConnection.adopt(
                                            connection, tlsContext: tlsContext)
                                    else {
                                        connection.close(promise: nil)
                                        return
                                    }
                                    await serve(adopted, registry: registry)
                                }
                            }
                        }
                    } catch {
                        await registry.finish(
                            .failure(
                                TransportError(.connectionFailed, expected: "to accept connections", found: "\(error)")
                            ))
                    }
                    handlers.cancelAll()
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
        return try await registry.result()
    }

    private static func serve(_ connection: FrameChannel, registry: SessionRegistry) async {
        let peerAddress = connection.channel.remoteAddress.map { "\($0)" } ?? "unknown peer"
        try? await connection.executeThenClose { inbound, outbound in
            var iterator = inbound.makeAsyncIterator()
            let peer = try await TransportConnection.answerHello(
                inbound: &iterator, outbound: outbound, nodeName: registry.nodeName)
            guard let first = try await iterator.next(), first.type == .control else { return }
            switch try SessionMessage(decoding: first.payload) {
            case .offer(let offer):
                try await serveControl(
                    offer, peer: "\(peer) (\(peerAddress))", iterator: &iterator, outbound: outbound, registry: registry
                )
            case .attach(let sessionID, let token, _):
                guard let session = await registry.session(sessionID, token: token) else {
                    try await outbound.write(
                        control(.failed(reason: "no session \(sessionID) with that token"), session: sessionID))
                    return
                }
                try await serveData(session, iterator: &iterator, outbound: outbound, registry: registry)
            default:
                return
            }
        }
    }

    private static func control(_ message: SessionMessage, session: UInt64) -> DWCPFrame {
        DWCPFrame(type: .control, sessionID: session, sequence: 0, payload: message.encoded)
    }

    private static func serveControl(
        _ offer: SessionMessage.Offer,
        peer: String,
        iterator: inout NIOAsyncChannelInboundStream<DWCPFrame>.AsyncIterator,
        outbound: NIOAsyncChannelOutboundWriter<DWCPFrame>,
        registry: SessionRegistry
    ) async throws {
        let session: ReceiverSession
        do {
            session = try await registry.open(offer, peer: peer)
        } catch {
            try await outbound.write(control(.refuse(reason: "\(error)"), session: 0))
            return
        }
        try await outbound.write(control(.accept(session.accept), session: session.sessionID))
        do {
            while let frame = try await iterator.next() {
                guard frame.type == .control else { continue }
                guard case .finish(let chunks, let bytes, let digest) = try SessionMessage(decoding: frame.payload)
                else { continue }
                let (answer, outcome) = await session.finish(totalChunks: chunks, totalBytes: bytes, digest: digest)
                try? await outbound.write(control(answer, session: session.sessionID))
                await registry.finish(outcome.mapError { $0 as any Error })
                return
            }
        } catch {}
        // The sender went away: keep what arrived for a resume.
        await registry.abandon(session)
    }

    private static func serveData(
        _ session: ReceiverSession,
        iterator: inout NIOAsyncChannelInboundStream<DWCPFrame>.AsyncIterator,
        outbound: NIOAsyncChannelOutboundWriter<DWCPFrame>,
        registry: SessionRegistry
    ) async throws {
        await registry.streamOpened()
        defer { Task { await registry.streamClosed() } }
        while true {
            let frame: DWCPFrame
            do {
                guard let next = try await iterator.next() else { return }
                frame = next
            } catch let error as DWCPWireError where error.code == .payloadChecksumMismatch {
                // A corrupted chunk: drop this stream; the sender re-sends its chunks on the others.
                await session.noteCorruptChunk()
                return
            }
            guard frame.type == .chunk else { continue }
            do {
                _ = try await session.store(Int(frame.sequence), frame.payload)
            } catch let error as TransportError where error.code == .cancelled {
                // The session ended (committed, or replaced by a newer attempt): just drop this stream.
                return
            } catch {
                try? await outbound.write(control(.failed(reason: "\(error)"), session: session.sessionID))
                await registry.finish(.failure(error))
                return
            }
            try await outbound.write(DWCPFrame(type: .ack, sessionID: session.sessionID, sequence: frame.sequence))
        }
    }
}

/// The receiver's sessions and the outcome everyone waits for.
actor SessionRegistry {
    let configuration: ReceiveConfiguration
    nonisolated var nodeName: String { configuration.nodeName }
    private var sessions: [UInt64: ReceiverSession] = [:]
    private var outcome: Result<ReceiveReport, any Error>?
    var isFinished: Bool { outcome != nil }
    private var waiters: [CheckedContinuation<Void, Never>] = []
    private var dataStreams = 0
    private var lastSession: ReceiverSession?
    private let started = ContinuousClock.now

    init(configuration: ReceiveConfiguration) {
        self.configuration = configuration
    }

    func open(_ offer: SessionMessage.Offer, peer: String) throws -> ReceiverSession {
        guard outcome == nil else {
            throw TransportError(.refused, expected: "a receiver still waiting", found: "a finished receiver")
        }
        // A newer attempt at the same object replaces an older one still lingering.
        for (id, session) in sessions where session.offer.transferID == offer.transferID {
            sessions.removeValue(forKey: id)
            Task { await session.abandon() }
        }
        var id = UInt64.random(in: 1 ... .max)
        while sessions[id] != nil { id = UInt64.random(in: 1 ... .max) }
        let session = try ReceiverSession(sessionID: id, offer: offer, peer: peer, configuration: configuration)
        sessions[id] = session
        lastSession = session
        return session
    }

    func session(_ id: UInt64, token: SessionMessage.Token) -> ReceiverSession? {
        guard let session = sessions[id], session.token == token else { return nil }
        return session
    }

    func abandon(_ session: ReceiverSession) async {
        sessions.removeValue(forKey: session.sessionID)
        await session.abandon()
    }

    func streamOpened() { dataStreams += 1 }
    func streamClosed() { dataStreams -= 1 }

    func progress() async -> (UInt64, UInt64?, Int, Double)? {
        guard outcome == nil, let lastSession else { return nil }
        let (done, total) = await lastSession.progress()
        return (done, total, dataStreams, (ContinuousClock.now - started).seconds)
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
