import NIOCore

/// The sender's shared state: the ``TransferSender`` and ``StreamCountController`` machines, the
/// chunks held until acknowledged, and one outlet per data stream. Stream tasks, the source reader
/// and the ticker report events here; the actor turns the machines' decisions into commands.
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

    private var machine: TransferSender?
    private var controller: StreamCountController?
    private(set) var sessionID: UInt64 = 0
    private var token = SessionMessage.Token(bytes: Array(repeating: 0, count: 16))
    private var acceptWaiters: [CheckedContinuation<(Int, ChunkBitmap), Never>] = []
    private var windowWaiter: CheckedContinuation<Void, Never>?

    private var chunks: [Int: ByteBuffer] = [:]
    private var outlets: [Int: Outlet.Continuation] = [:]
    private var channels: [Int: any Channel] = [:]
    private var opening: Set<Int> = []
    private var draining: Set<Int> = []
    private var nextStreamID = 0
    private var bucket: TokenBucket?

    private var digest: SessionMessage.Digest?
    private var totals: (chunks: Int, bytes: UInt64)?
    private var finishSent = false
    private var outcome: Result<SessionMessage.Digest, any Error>?
    private var completionWaiters: [CheckedContinuation<Void, Never>] = []

    private var roundTrip: Duration = .zero
    private var acknowledgedBytes: UInt64 = 0
    private var bytesAtLastTick: UInt64 = 0
    private var lastTick: Duration = .zero
    private var controlSampleStart: (at: Duration, bytes: UInt64) = (.zero, 0)
    private var sentBytes: UInt64 = 0
    private var streamFailures = 0
    private var consecutiveFailures = 0
    private var maximumStreams = 0

    init(configuration: SendConfiguration, reader: SourceReader, commands: AsyncStream<Command>.Continuation) {
        self.configuration = configuration
        self.reader = reader
        self.commands = commands
        self.started = clock.now
        self.bucket = configuration.rateLimit.map { TokenBucket(bytesPerSecond: $0) }
    }

    private var now: Duration { clock.now - started }

    // MARK: Session

    /// The control connection is up (TCP only; TLS and the offer are still on their way): sizes the
    /// stream-count controller from the round-trip time the kernel measured on the handshake and starts
    /// opening data streams, so that their handshakes overlap the control stream's.
    func connected(roundTrip: Duration, streamInFlightLimit: Int) {
        self.roundTrip = roundTrip
        let derived = StreamCountController.initialStreamCount(
            bitsPerSecond: configuration.linkRateHint,
            roundTripSeconds: roundTrip.seconds,
            streamInFlightLimit: streamInFlightLimit
        )
        controller = StreamCountController(
            initialStreams: configuration.initialStreams ?? derived,
            configuration: .init(
                minimumStreams: configuration.minimumStreams, maximumStreams: configuration.maximumStreams)
        )
        adjustStreams()
    }

    func accepted(_ accept: SessionMessage.Accept) {
        sessionID = accept.sessionID
        token = accept.token
        let chunkSize = Int(accept.chunkSize)
        let totalChunks = reader.size.map { Int(($0 + UInt64(chunkSize) - 1) / UInt64(chunkSize)) }
        machine = TransferSender(
            chunkSize: chunkSize,
            windowChunks: max(1, min(Int(accept.windowChunks), configuration.windowBytes / chunkSize)),
            totalChunks: totalChunks,
            present: accept.present,
            stallTimeout: configuration.stallTimeout
        )
        for waiter in acceptWaiters { waiter.resume(returning: (chunkSize, accept.present)) }
        acceptWaiters.removeAll()
        adjustStreams()
        finishIfDone()
    }

    func waitUntilAccepted() async -> (chunkSize: Int, skipped: ChunkBitmap) {
        if let machine { return (machine.chunkSize, machine.skipped) }
        if outcome != nil { return (configuration.chunkSize, ChunkBitmap()) }
        return await withCheckedContinuation { acceptWaiters.append($0) }
    }

    /// The session's id and token, once the receiver has accepted.
    /// - Throws: `CancellationError` when the transfer ended without an accept (refused, failed).
    func credentials() async throws -> (UInt64, SessionMessage.Token) {
        if machine == nil { _ = await waitUntilAccepted() }
        guard outcome == nil, machine != nil else { throw CancellationError() }
        return (sessionID, token)
    }

    // MARK: Source

    func admit(_ index: Int, _ chunk: ByteBuffer) async throws {
        while outcome == nil, let machine, !machine.admits(index) {
            await withCheckedContinuation { windowWaiter = $0 }
        }
        guard outcome == nil else { throw CancellationError() }
        chunks[index] = chunk
        machine!.chunkRead(index, size: chunk.readableBytes)
        pump()
    }

    func sourceEnded(chunkCount: Int, digest: SessionMessage.Digest) {
        machine?.sourceEnded(chunkCount: chunkCount)
        self.digest = digest
        totals = (chunkCount, reader.bytesRead)
        finishIfDone()
    }

    // MARK: Streams

    func streamReady(_ stream: Int, channel: any Channel) -> Outlet {
        let (outlet, continuation) = Outlet.makeStream()
        opening.remove(stream)
        guard outcome == nil, machine != nil else {
            continuation.finish()
            return outlet
        }
        outlets[stream] = continuation
        channels[stream] = channel
        maximumStreams = max(maximumStreams, outlets.count)
        machine!.streamOpened(stream, window: streamWindow(), now: now)
        rebalanceWindows()
        pump()
        return outlet
    }

    func acknowledged(_ index: Int, on stream: Int) {
        guard machine != nil, machine!.acknowledged(index, on: stream, now: now) else { return }
        if let chunk = chunks.removeValue(forKey: index) {
            acknowledgedBytes += UInt64(chunk.readableBytes)
        }
        consecutiveFailures = 0
        if draining.contains(stream), machine!.isDrained(stream) {
            outlets.removeValue(forKey: stream)?.finish()
        }
        windowWaiter?.resume()
        windowWaiter = nil
        pump()
        finishIfDone()
    }

    func sent(_ bytes: Int) {
        sentBytes += UInt64(bytes)
    }

    func pace(_ bytes: Int) -> Duration {
        bucket?.reserve(bytes, now: now) ?? .zero
    }

    func streamEnded(_ stream: Int, error: (any Error)?) {
        opening.remove(stream)
        channels.removeValue(forKey: stream)
        outlets.removeValue(forKey: stream)?.finish()
        guard outcome == nil, !finishSent else { return }
        if draining.remove(stream) != nil, machine?.isDrained(stream) ?? true {
            machine?.streamClosed(stream)
        } else {
            // Before the accept (no machine yet) a failed stream held no chunks; it still counts.
            machine?.streamFailed(stream)
            streamFailures += 1
            consecutiveFailures += 1
            if consecutiveFailures > configuration.maximumConsecutiveFailures {
                fail(
                    TransportError(
                        .connectionFailed,
                        expected: "data streams to \(configuration.host):\(configuration.port) to stay open",
                        found:
                            "\(consecutiveFailures) failures in a row, the last: \(error.map { "\($0)" } ?? "closed")",
                        advice: "check the receiver; rerun with --resume to continue where it stopped"
                    ))
                return
            }
        }
        adjustStreams()
        pump()
    }

    /// Opens or drains streams to match the controller's count.
    private func adjustStreams() {
        guard let controller, outcome == nil, !(machine?.isComplete ?? false) else { return }
        let live = outlets.keys.filter { !draining.contains($0) }.count + opening.count
        if live < controller.streamCount {
            for _ in live..<controller.streamCount {
                let stream = nextStreamID
                nextStreamID += 1
                opening.insert(stream)
                let backoff =
                    consecutiveFailures == 0 ? Duration.zero : .milliseconds(250 << min(consecutiveFailures, 4))
                commands.yield(.open(stream, after: backoff))
            }
        } else if live > controller.streamCount {
            let victims = outlets.keys.filter { !draining.contains($0) }.sorted().suffix(live - controller.streamCount)
            for stream in victims {
                draining.insert(stream)
                machine?.drain(stream)
                if machine?.isDrained(stream) ?? false {
                    outlets.removeValue(forKey: stream)?.finish()
                }
            }
        }
        rebalanceWindows()
    }

    private func streamWindow() -> Int {
        guard let machine else { return configuration.chunkSize }
        let streams = max(1, controller?.streamCount ?? 1)
        return max(2 * machine.chunkSize, machine.windowChunks * machine.chunkSize / streams)
    }

    private func rebalanceWindows() {
        let window = streamWindow()
        for stream in outlets.keys where !draining.contains(stream) {
            machine?.setWindow(window, for: stream)
        }
    }

    private func pump() {
        guard var machine, outcome == nil else { return }
        for assignment in machine.assign(now: now) {
            if let chunk = chunks[assignment.chunk.index], let outlet = outlets[assignment.stream] {
                outlet.yield((assignment.chunk.index, chunk))
            }
        }
        self.machine = machine
    }

    // MARK: Ticks

    /// Once per interval: replaces stalled streams, feeds the stream-count controller, reports progress.
    func tick() async -> TransferProgress? {
        guard machine != nil, outcome == nil else { return nil }
        let at = now
        for stream in machine!.stalledStreams(now: at) {
            channels[stream]?.close(promise: nil)
        }
        let elapsed = (at - lastTick).seconds
        let rate = elapsed > 0 ? Double(acknowledgedBytes - bytesAtLastTick) / elapsed : 0
        bytesAtLastTick = acknowledgedBytes
        lastTick = at
        // The controller sees goodput over at least eight round trips (one second at least), from the
        // first acknowledgement on: shorter samples on a long lossy path are mostly noise.
        if acknowledgedBytes == 0 {
            controlSampleStart = (at, 0)
        } else if !(machine!.isComplete), at - controlSampleStart.at >= max(configuration.interval, roundTrip * 8) {
            let sampleRate =
                Double(acknowledgedBytes - controlSampleStart.bytes) / (at - controlSampleStart.at).seconds
            controlSampleStart = (at, acknowledgedBytes)
            _ = controller?.intervalElapsed(goodput: sampleRate)
            adjustStreams()
        }
        var roundTrips: [Double] = []
        var retransmits: UInt64 = 0
        for channel in channels.values {
            if let provider = channel as? any SocketOptionProvider, let info = try? await provider.getTCPInfo().get() {
                roundTrips.append(Double(info.tcpi_rtt) / 1000)
                retransmits += UInt64(info.tcpi_total_retrans)
            }
        }
        let skipped = UInt64(machine!.skipped.count) * UInt64(machine!.chunkSize)
        return TransferProgress(
            bytesDone: min(acknowledgedBytes + skipped, reader.size ?? .max),
            totalBytes: reader.size,
            seconds: at.seconds,
            bytesPerSecond: rate,
            streams: outlets.count - draining.count,
            roundTripMilliseconds: roundTrips.isEmpty ? nil : roundTrips.reduce(0, +) / Double(roundTrips.count),
            retransmits: roundTrips.isEmpty ? nil : retransmits
        )
    }

    // MARK: Completion

    private func finishIfDone() {
        guard !finishSent, let machine, machine.isComplete, let digest, let totals else { return }
        finishSent = true
        for outlet in outlets.values { outlet.finish() }
        commands.yield(.send(.finish(totalChunks: UInt64(totals.chunks), totalBytes: totals.bytes, sha256: digest)))
    }

    func completed(_ receiverDigest: SessionMessage.Digest) {
        guard outcome == nil else { return }
        guard let digest, receiverDigest == digest else {
            fail(
                TransportError(
                    .checksumMismatch,
                    expected: "the receiver's SHA-256 to be ours (\(digest.map { "\($0)" } ?? "none"))",
                    found: "\(receiverDigest)"
                ))
            return
        }
        finish(.success(digest))
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
        let chunkSize = UInt64(machine?.chunkSize ?? configuration.chunkSize)
        return SendReport(
            bytes: totals?.bytes ?? 0,
            skippedBytes: UInt64(machine?.skipped.count ?? 0) * chunkSize,
            sentBytes: sentBytes,
            seconds: now.seconds,
            sha256: "\(digest)",
            maximumStreams: maximumStreams,
            streamFailures: streamFailures,
            chunksResent: machine?.chunksResent ?? 0,
            chunksDuplicated: machine?.chunksDuplicated ?? 0,
            roundTripMilliseconds: roundTrip.seconds * 1000
        )
    }
}
