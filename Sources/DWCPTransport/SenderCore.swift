import NIOCore

/// The sender's I/O shell around ``SenderSession``: it holds the chunks read (of every object the
/// session carries) until they are released, one outlet per data stream and the streams' channels.
/// Stream tasks, the source readers
/// and the ticker report events here; the session decides, and this actor carries out its actions.
actor SenderCore {
    enum Command: Sendable {
        /// Open data stream `id` after `delay`.
        case open(Int, after: Duration)
        /// Send this message on the control stream.
        case send(SessionMessage)
    }

    typealias Outlet = AsyncStream<(ChunkAddress, ByteBuffer)>

    private let configuration: SendConfiguration
    private let readers: [SourceReader]
    private let weights: [Int]
    private let commands: AsyncStream<Command>.Continuation
    private let clock = ContinuousClock()
    private let started: ContinuousClock.Instant

    private var session: SenderSession
    private(set) var sessionID: UInt64 = 0
    private var token = SessionMessage.Token(bytes: Array(repeating: 0, count: 16))
    private var acceptWaiters: [Int: [CheckedContinuation<(Int, ChunkBitmap), Never>]] = [:]
    private var readerWaiters: [CheckedContinuation<Void, Never>] = []

    private var chunks: [ChunkAddress: ByteBuffer] = [:]
    private var outlets: [Int: Outlet.Continuation] = [:]
    private var channels: [Int: any Channel] = [:]
    private var bucket: TokenBucket?

    private var outcome: Result<Void, any Error>?

    private var bytesAtLastTick: UInt64 = 0
    private var lastTick: Duration = .zero
    private var sentBytes: UInt64 = 0
    private var lastStatistics: [Int: TCPStatistics] = [:]
    private var committedAt: [Int: Duration] = [:]
    private var readAt: [Int: Duration] = [:]
    private var acknowledgedAt: [Int: Duration] = [:]

    /// - Parameters:
    ///   - readers: The session's objects, in order (object 0 first).
    ///   - weights: Each object's share of the streams.
    init(
        configuration: SendConfiguration,
        readers: [SourceReader],
        weights: [Int],
        commands: AsyncStream<Command>.Continuation
    ) {
        precondition(!readers.isEmpty && readers.count == weights.count, "one weight per object")
        self.configuration = configuration
        self.readers = readers
        self.weights = weights
        self.commands = commands
        self.started = clock.now
        var sessionConfiguration = SenderSession.Configuration(configuration)
        sessionConfiguration.objects = readers.count
        self.session = SenderSession(configuration: sessionConfiguration)
        self.bucket = configuration.rateLimit.map { TokenBucket(bytesPerSecond: $0) }
    }

    private var now: Duration { clock.now - started }

    // MARK: Session

    /// The control connection is up (TCP only; TLS and the offer are still on their way): the session
    /// sizes the stream count from the handshake's round-trip time and starts opening data streams.
    func connected(roundTrip: Duration, streamInFlightLimit: Int) {
        perform(session.connected(roundTrip: roundTrip, streamInFlightLimit: streamInFlightLimit))
    }

    func accepted(_ accept: SessionMessage.Accept) throws(TransportError) {
        guard outcome == nil else { return }
        let object = Int(accept.object)
        guard object < readers.count, !session.hasAccepted(object: object),
            session.transfer == nil || (accept.sessionID == sessionID && accept.token == token)
        else {
            throw TransportError(
                .protocolViolation, expected: "one accept per offered object, all for one session",
                found: "an accept for object \(object) of session \(accept.sessionID)")
        }
        sessionID = accept.sessionID
        token = accept.token
        let actions = session.accepted(
            accept, object: object, objectSize: readers[object].size, weight: weights[object])
        for waiter in acceptWaiters.removeValue(forKey: object) ?? [] {
            waiter.resume(returning: (Int(accept.blockSize), accept.present))
        }
        perform(actions)
    }

    /// The block size and the blocks the receiver holds, once it has accepted `object`.
    func waitUntilAccepted(object: Int = 0) async -> (blockSize: Int, skipped: ChunkBitmap) {
        if let transfer = session.transfer, session.hasAccepted(object: object) {
            return (transfer.blockSize, transfer.skipped(object: object))
        }
        if outcome != nil { return (configuration.blockSize, ChunkBitmap()) }
        return await withCheckedContinuation { acceptWaiters[object, default: []].append($0) }
    }

    /// The share of the streams `object` gets.
    nonisolated func weight(of object: Int) -> Int { weights[object] }

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

    /// Waits until `object` may read its next chunk, from block `index`: the session granted it room in
    /// the window (by weight among the session's objects).
    /// - Returns: The most blocks the chunk may hold (short of the next block the receiver holds).
    func reserve(_ object: Int, at index: Int) async throws -> Int {
        while outcome == nil {
            if !producerHoldsBack(object), let blocks = session.claimGrant(object: object, at: index) { return blocks }
            await withCheckedContinuation { readerWaiters.append($0) }
        }
        throw CancellationError()
    }

    /// Whether the object's producer wants more of what was delivered acknowledged before its next read.
    private func producerHoldsBack(_ object: Int) -> Bool {
        guard readers.indices.contains(object), let producer = readers[object].producer else { return false }
        let acknowledged = session.acknowledgedBytesByObject[object] ?? 0
        let holdsBack = producer.holdsBack(acknowledged: acknowledged)
        // Waiting is only safe while something is in flight: its acknowledgement ends the wait.
        return holdsBack && session.readBytesByObject[object, default: 0] > acknowledged
    }

    /// Hands over the chunk of `object` from block `index`, read on a grant from ``reserve(_:)``.
    func deliver(_ index: Int, of object: Int, _ chunk: ByteBuffer) async throws {
        let blocks = session.transfer.map { $0.blocks(in: chunk.readableBytes) } ?? 1
        // Within the grant's room; only after a resume's gaps can the object's own window still hold it back.
        while outcome == nil, !session.admits(index, blocks: blocks, object: object) {
            await withCheckedContinuation { readerWaiters.append($0) }
        }
        guard outcome == nil else { throw CancellationError() }
        chunks[ChunkAddress(object: object, index: index)] = chunk
        perform(session.chunkRead(index, size: chunk.readableBytes, object: object, now: now))
    }

    func sourceEnded(object: Int, blockCount: Int, digest: SessionMessage.Digest) {
        readAt[object] = now
        perform(
            session.sourceEnded(
                blockCount: blockCount, totalBytes: readers[object].bytesRead, digest: digest, object: object))
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

    func acknowledged(_ address: ChunkAddress, on stream: Int) {
        let before = session.acknowledgedBytes
        perform(session.acknowledged(address, on: stream, now: now))
        if session.acknowledgedBytes > before { acknowledgedAt[address.object] = now }  // not a late copy's
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

    /// Lets the readers waiting for a grant or for window room check again.
    private func resumeReaders() {
        for waiter in readerWaiters { waiter.resume() }
        readerWaiters.removeAll()
    }

    /// Carries out the session's decisions.
    private func perform(_ actions: [SenderSession.Action]) {
        for action in actions {
            switch action {
            case .open(let stream, let delay):
                commands.yield(.open(stream, after: delay))
            case .send(let address, let stream):
                if let chunk = chunks[address], let outlet = outlets[stream] {
                    outlet.yield((address, chunk))
                }
            case .release(let address):
                chunks.removeValue(forKey: address)
            case .finishStream(let stream):
                outlets.removeValue(forKey: stream)?.finish()
            case .closeStream(let stream):
                channels[stream]?.close(promise: nil)
            case .sendFinish(let object, let totalBlocks, let totalBytes, let digest):
                if session.isOver {
                    for outlet in outlets.values { outlet.finish() }
                }
                commands.yield(
                    .send(
                        .finish(
                            object: UInt16(object), totalBlocks: totalBlocks, totalBytes: totalBytes, sha256: digest
                        )))
            case .fail(let error):
                fail(error)
            }
        }
        // Any event may have moved the window or issued read grants.
        if !readerWaiters.isEmpty { resumeReaders() }
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
        let skipped = transfer.objectNumbers.reduce(UInt64(0)) {
            $0 + UInt64(transfer.skipped(object: $1).count) * UInt64(transfer.blockSize)
        }
        let sizes = readers.map(\.size)
        let total = sizes.contains(nil) ? nil : sizes.reduce(UInt64(0)) { $0 + $1! }
        return TransferProgress(
            bytesDone: min(acknowledged + skipped, total ?? .max),
            totalBytes: total,
            seconds: at.seconds,
            bytesPerSecond: rate,
            streams: session.activeStreams,
            roundTripMilliseconds: roundTrips.isEmpty ? nil : roundTrips.reduce(0, +) / Double(roundTrips.count),
            retransmits: roundTrips.isEmpty ? nil : retransmits,
            sendBufferLimited: streamTime.sendBufferLimitedShare
        )
    }

    // MARK: Completion

    /// The receiver committed `object`; the session ends once every object is committed.
    /// - Returns: Whether every object is committed now.
    func completed(object: Int, _ receiverDigest: SessionMessage.Digest) -> Bool {
        guard outcome == nil else { return true }
        committedAt[object] = now
        if let mismatch = session.completed(object: object, receiverDigest: receiverDigest) {
            fail(mismatch)
            return true
        }
        guard session.allCommitted else { return false }
        finish(.success(()))
        return true
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

    private func finish(_ result: Result<Void, any Error>) {
        outcome = result
        session.stop()
        for outlet in outlets.values { outlet.finish() }
        outlets.removeAll()
        // After a success the data streams have nothing left to deliver: they go without TLS's goodbye, which
        // could wait up to 5 s behind chunk copies the receiver will not read (2 of 6 global migrations did).
        for channel in channels.values {
            if case .success = result {
                TransportConnection.closeWithoutGoodbye(channel)
            } else {
                channel.close(promise: nil)
            }
        }
        resumeReaders()
        for waiter in acceptWaiters.values.joined() {
            waiter.resume(returning: (configuration.blockSize, ChunkBitmap()))
        }
        acceptWaiters.removeAll()
        commands.finish()
    }

    func result() throws -> SendReport {
        guard let outcome else {
            throw TransportError(.cancelled, expected: "the transfer to finish", found: "it was interrupted")
        }
        try outcome.get()
        let transfer = session.transfer
        var report = SendReport(
            objects: readers.indices.map(objectReport),
            sentBytes: sentBytes,
            seconds: now.seconds,
            maximumStreams: session.maximumStreams,
            streamFailures: session.streamFailures,
            blockSize: transfer?.blockSize ?? configuration.blockSize,
            chunksAcknowledged: transfer?.chunksAcknowledged ?? 0,
            chunkSize: (transfer?.chunkBlocks ?? 1) * (transfer?.blockSize ?? configuration.blockSize),
            chunksResent: transfer?.chunksResent ?? 0,
            chunksDuplicated: transfer?.chunksDuplicated ?? 0,
            roundTripMilliseconds: session.roundTrip.seconds * 1000
        )
        report.chunksOverdue = transfer?.chunksOverdue ?? 0
        return report
    }

    /// The objects the receiver committed in this session so far (also after it failed), by number.
    func committedObjects() -> [Int: SendReport.Object] {
        Dictionary(uniqueKeysWithValues: session.committed.map { ($0, objectReport($0)) })
    }

    private func objectReport(_ object: Int) -> SendReport.Object {
        let ending = session.endings[object]
        let blockSize = UInt64(session.transfer?.blockSize ?? configuration.blockSize)
        return SendReport.Object(
            name: readers[object].name,
            bytes: ending?.bytes ?? 0,
            skippedBytes: UInt64(session.transfer?.skipped(object: object).count ?? 0) * blockSize,
            sha256: ending.map { "\($0.digest)" } ?? "",
            seconds: committedAt[object]?.seconds ?? now.seconds,
            weight: weights[object],
            readSeconds: readAt[object]?.seconds,
            acknowledgedSeconds: acknowledgedAt[object]?.seconds
        )
    }
}
