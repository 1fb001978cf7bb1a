import NIOCore

/// The sender's I/O shell around ``SenderSession``: it holds the chunks read until they are
/// released, one outlet per data stream and the streams' channels. Stream tasks, the source reader
/// and the ticker report events here; the session decides, and this actor carries out its actions.
actor SenderCore {
    enum Command: Sendable {
        /// Open data stream `id` after `delay`.
        case open(Int, after: Duration)
        /// Send this message on the control stream.
        case send(SessionMessage)
    }

    typealias Outlet = AsyncStream<(Int, ByteBuffer)>

    private let configuration: SendConfiguration
    private let reader: SourceReader
    private let commands: AsyncStream<Command>.Continuation
    private let clock = ContinuousClock()
    private let started: ContinuousClock.Instant

    private var session: SenderSession
    private(set) var sessionID: UInt64 = 0
    private var token = SessionMessage.Token(bytes: Array(repeating: 0, count: 16))
    private var acceptWaiters: [CheckedContinuation<(Int, ChunkBitmap), Never>] = []
    private var windowWaiter: CheckedContinuation<Void, Never>?

    private var chunks: [Int: ByteBuffer] = [:]
    private var outlets: [Int: Outlet.Continuation] = [:]
    private var channels: [Int: any Channel] = [:]
    private var bucket: TokenBucket?

    private var outcome: Result<SessionMessage.Digest, any Error>?

    private var bytesAtLastTick: UInt64 = 0
    private var lastTick: Duration = .zero
    private var sentBytes: UInt64 = 0
    private var lastStatistics: [Int: TCPStatistics] = [:]

    init(configuration: SendConfiguration, reader: SourceReader, commands: AsyncStream<Command>.Continuation) {
        self.configuration = configuration
        self.reader = reader
        self.commands = commands
        self.started = clock.now
        self.session = SenderSession(configuration: .init(configuration))
        self.bucket = configuration.rateLimit.map { TokenBucket(bytesPerSecond: $0) }
    }

    private var now: Duration { clock.now - started }

    // MARK: Session

    /// The control connection is up (TCP only; TLS and the offer are still on their way): the session
    /// sizes the stream count from the handshake's round-trip time and starts opening data streams.
    func connected(roundTrip: Duration, streamInFlightLimit: Int) {
        perform(session.connected(roundTrip: roundTrip, streamInFlightLimit: streamInFlightLimit))
    }

    func accepted(_ accept: SessionMessage.Accept) {
        guard outcome == nil else { return }
        sessionID = accept.sessionID
        token = accept.token
        let actions = session.accepted(accept, objectSize: reader.size)
        for waiter in acceptWaiters { waiter.resume(returning: (Int(accept.chunkSize), accept.present)) }
        acceptWaiters.removeAll()
        perform(actions)
    }

    func waitUntilAccepted() async -> (chunkSize: Int, skipped: ChunkBitmap) {
        if let transfer = session.transfer { return (transfer.chunkSize, transfer.skipped) }
        if outcome != nil { return (configuration.chunkSize, ChunkBitmap()) }
        return await withCheckedContinuation { acceptWaiters.append($0) }
    }

    /// Whether the receiver accepted the offer.
    var wasAccepted: Bool { session.transfer != nil }

    /// The session's id and token, once the receiver has accepted.
    /// - Throws: `CancellationError` when the transfer ended without an accept (refused, failed).
    func credentials() async throws -> (UInt64, SessionMessage.Token) {
        if session.transfer == nil { _ = await waitUntilAccepted() }
        guard outcome == nil, session.transfer != nil else { throw CancellationError() }
        return (sessionID, token)
    }

    // MARK: Source

    func admit(_ index: Int, _ chunk: ByteBuffer) async throws {
        while outcome == nil, !session.admits(index) {
            await withCheckedContinuation { windowWaiter = $0 }
        }
        guard outcome == nil else { throw CancellationError() }
        chunks[index] = chunk
        perform(session.chunkRead(index, size: chunk.readableBytes, now: now))
    }

    func sourceEnded(chunkCount: Int, digest: SessionMessage.Digest) {
        perform(session.sourceEnded(chunkCount: chunkCount, totalBytes: reader.bytesRead, digest: digest))
    }

    // MARK: Streams

    func streamReady(_ stream: Int, channel: any Channel) -> Outlet {
        let (outlet, continuation) = Outlet.makeStream()
        guard outcome == nil else {
            continuation.finish()
            return outlet
        }
        outlets[stream] = continuation
        channels[stream] = channel
        perform(session.streamReady(stream, now: now))
        return outlet
    }

    func acknowledged(_ index: Int, on stream: Int) {
        perform(session.acknowledged(index, on: stream, now: now))
    }

    func sent(_ bytes: Int) {
        sentBytes += UInt64(bytes)
    }

    func pace(_ bytes: Int) -> Duration {
        bucket?.reserve(bytes, now: now) ?? .zero
    }

    func streamEnded(_ stream: Int, error: (any Error)?) {
        channels.removeValue(forKey: stream)
        outlets.removeValue(forKey: stream)?.finish()
        perform(session.streamEnded(stream, now: now, error: error.map { "\($0)" }))
    }

    /// Carries out the session's decisions.
    private func perform(_ actions: [SenderSession.Action]) {
        for action in actions {
            switch action {
            case .open(let stream, let delay):
                commands.yield(.open(stream, after: delay))
            case .send(let index, let stream):
                if let chunk = chunks[index], let outlet = outlets[stream] {
                    outlet.yield((index, chunk))
                }
            case .release(let index):
                chunks.removeValue(forKey: index)
                windowWaiter?.resume()
                windowWaiter = nil
            case .finishStream(let stream):
                outlets.removeValue(forKey: stream)?.finish()
            case .closeStream(let stream):
                channels[stream]?.close(promise: nil)
            case .sendFinish(let totalChunks, let totalBytes, let digest):
                for outlet in outlets.values { outlet.finish() }
                commands.yield(.send(.finish(totalChunks: totalChunks, totalBytes: totalBytes, sha256: digest)))
            case .fail(let error):
                fail(error)
            }
        }
    }

    // MARK: Ticks

    /// Once per interval: lets the session close stalled streams and adjust the stream count, and
    /// reports progress.
    func tick() async -> TransferProgress? {
        guard outcome == nil, let transfer = session.transfer else { return nil }
        // TCP_INFO of every data stream: the controller's buffer-limited signal and the progress line.
        var roundTrips: [Double] = []
        var retransmits: UInt64 = 0
        var streamTime = SenderSession.StreamTime()
        var seen: [Int: TCPStatistics] = [:]
        for (stream, channel) in channels {
            guard let statistics = await TCPStatistics.read(channel) else { continue }
            roundTrips.append(statistics.roundTrip.seconds * 1000)
            retransmits += statistics.retransmits
            if let before = lastStatistics[stream] {
                streamTime += .init(
                    busy: statistics.busy - before.busy,
                    sendBufferLimited: statistics.sendBufferLimited - before.sendBufferLimited)
            }
            seen[stream] = statistics
        }
        lastStatistics = seen
        guard outcome == nil else { return nil }
        let at = now
        perform(session.tick(now: at, streamTime: streamTime))
        let acknowledged = session.acknowledgedBytes
        let elapsed = (at - lastTick).seconds
        let rate = elapsed > 0 ? Double(acknowledged - bytesAtLastTick) / elapsed : 0
        bytesAtLastTick = acknowledged
        lastTick = at
        let skipped = UInt64(transfer.skipped.count) * UInt64(transfer.chunkSize)
        return TransferProgress(
            bytesDone: min(acknowledged + skipped, reader.size ?? .max),
            totalBytes: reader.size,
            seconds: at.seconds,
            bytesPerSecond: rate,
            streams: session.activeStreams,
            roundTripMilliseconds: roundTrips.isEmpty ? nil : roundTrips.reduce(0, +) / Double(roundTrips.count),
            retransmits: roundTrips.isEmpty ? nil : retransmits,
            sendBufferLimited: streamTime.sendBufferLimitedShare
        )
    }

    // MARK: Completion

    func completed(_ receiverDigest: SessionMessage.Digest) {
        guard outcome == nil else { return }
        if let mismatch = session.completed(receiverDigest: receiverDigest) {
            fail(mismatch)
        } else {
            finish(.success(receiverDigest))
        }
    }

    func fail(_ error: any Error) {
        guard outcome == nil else { return }
        finish(.failure(error))
    }

    /// Runs `body`; an error it throws ends the transfer with that error.
    nonisolated func failing(_ body: () async throws -> Void) async {
        do {
            try await body()
        } catch is CancellationError {
        } catch {
            await fail(error)
        }
    }

    private func finish(_ result: Result<SessionMessage.Digest, any Error>) {
        outcome = result
        session.stop()
        for outlet in outlets.values { outlet.finish() }
        outlets.removeAll()
        for channel in channels.values { channel.close(promise: nil) }
        windowWaiter?.resume()
        windowWaiter = nil
        for waiter in acceptWaiters { waiter.resume(returning: (configuration.chunkSize, ChunkBitmap())) }
        acceptWaiters.removeAll()
        commands.finish()
    }

    func result() throws -> SendReport {
        guard let outcome else {
            throw TransportError(.cancelled, expected: "the transfer to finish", found: "it was interrupted")
        }
        let digest = try outcome.get()
        let transfer = session.transfer
        let chunkSize = UInt64(transfer?.chunkSize ?? configuration.chunkSize)
        return SendReport(
            bytes: session.ending?.bytes ?? 0,
            skippedBytes: UInt64(transfer?.skipped.count ?? 0) * chunkSize,
            sentBytes: sentBytes,
            seconds: now.seconds,
            sha256: "\(digest)",
            maximumStreams: session.maximumStreams,
            streamFailures: session.streamFailures,
            chunksResent: transfer?.chunksResent ?? 0,
            chunksDuplicated: transfer?.chunksDuplicated ?? 0,
            roundTripMilliseconds: session.roundTrip.seconds * 1000
        )
    }
}
