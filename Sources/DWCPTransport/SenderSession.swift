/// The sending side of one session (AMST, sans-IO): how many data streams to keep, when to open,
/// drain, replace or give up on them, how long a chunk is, which chunk of which object goes on which
/// stream, when a chunk may be released, and when to send each object's finish.
///
/// It combines ``TransferSender`` (chunks, windows, stalls, end game) with ``StreamCountController``
/// (the stream count) and ``ChunkSizer`` (the chunk length, from the stream count and the window). The caller feeds it events with the time since the transfer started and
/// carries out the ``Action``s it returns; it never reads a clock and does no I/O.
public struct SenderSession: Sendable {
    /// Bounds and timings.
    public struct Configuration: Sendable {
        /// `host:port` of the receiver, for error messages.
        public var peer: String
        /// The fewest data streams.
        public var minimumStreams: Int
        /// The most data streams.
        public var maximumStreams: Int
        /// Streams to start with; `nil` derives it from the round-trip time and `linkRateHint`.
        public var initialStreams: Int?
        /// The path rate assumed for the initial stream count, bits per second.
        public var linkRateHint: Double
        /// The most bytes read and not yet acknowledged, over all objects.
        public var windowBytes: Int
        /// The largest chunk; chunks adapt to the path up to it, in blocks of the receiver's block size.
        public var maximumChunkSize: Int
        /// How many objects the session carries.
        public var objects: Int
        /// How long a stream may hold chunks without an acknowledgement.
        public var stallTimeout: Duration
        /// The shortest goodput sample the stream-count controller sees (it also waits 8 round trips).
        public var sampleInterval: Duration
        /// Failed stream openings in a row tolerated before the transfer fails.
        public var maximumConsecutiveFailures: Int

        /// The session part of a send configuration.
        public init(_ send: SendConfiguration) {
            peer = "\(send.host):\(send.port)"
            minimumStreams = send.minimumStreams
            maximumStreams = send.maximumStreams
            initialStreams = send.initialStreams
            linkRateHint = send.linkRateHint
            windowBytes = send.windowBytes
            maximumChunkSize = send.maximumChunkSize
            objects = 1
            stallTimeout = send.stallTimeout
            sampleInterval = send.interval
            maximumConsecutiveFailures = send.maximumConsecutiveFailures
        }
    }

    /// Time the data streams spent, summed over them (from `TCP_INFO`).
    public struct StreamTime: Sendable {
        /// Time busy sending (including the send-buffer-limited part).
        public var busy: Duration
        /// Time with a full send buffer and nothing left to send.
        public var sendBufferLimited: Duration

        /// Creates a sum.
        public init(busy: Duration = .zero, sendBufferLimited: Duration = .zero) {
            self.busy = busy
            self.sendBufferLimited = sendBufferLimited
        }

        /// The share of the busy time spent send-buffer limited; `nil` without busy time.
        public var sendBufferLimitedShare: Double? { busy > .zero ? sendBufferLimited / busy : nil }

        /// Adds another stream's (or interval's) time.
        public static func += (total: inout StreamTime, more: StreamTime) {
            total.busy += more.busy
            total.sendBufferLimited += more.sendBufferLimited
        }
    }

    /// What the caller must do.
    public enum Action: Sendable {
        /// Open data stream `stream` after `after` (zero, or a back-off after failures); report
        /// ``streamReady(_:now:)`` once it is attached, ``streamEnded(_:now:error:)`` when it ends.
        case open(stream: Int, after: Duration)
        /// Write chunk `chunk` on stream `on`.
        case send(chunk: ChunkAddress, on: Int)
        /// The receiver holds chunk `chunk`: drop its bytes; the window has moved.
        case release(chunk: ChunkAddress)
        /// Stream `stream` has delivered everything it was given and gets no more: end it. Its end is
        /// not a failure.
        case finishStream(Int)
        /// Stream `stream` stalled: close it. Its chunks are re-sent elsewhere when it ends.
        case closeStream(Int)
        /// The source of `object` ended (and the receiver accepted it): send its `finish` with these totals on
        /// the control stream. Chunks may still be in flight.
        case sendFinish(object: Int, totalBlocks: UInt64, totalBytes: UInt64, sha256: SessionMessage.Digest)
        /// The transfer cannot go on.
        case fail(TransportError)
    }

    /// The bounds and timings in force.
    public let configuration: Configuration
    /// The chunk machine, from the receiver's accept on.
    public private(set) var transfer: TransferSender?
    /// The stream-count controller, from the control connection on.
    public private(set) var controller: StreamCountController?
    /// The chunk sizer, from the receiver's accept (its block size) on.
    public private(set) var sizer: ChunkSizer?
    /// The round-trip time the control connection's handshake measured.
    public private(set) var roundTrip: Duration = .zero
    /// Bytes acknowledged in this attempt, over all objects.
    public private(set) var acknowledgedBytes: UInt64 = 0
    /// Bytes acknowledged in this attempt, per object.
    public private(set) var acknowledgedBytesByObject: [Int: UInt64] = [:]
    /// Bytes read (handed to the session) in this attempt, per object.
    public private(set) var readBytesByObject: [Int: UInt64] = [:]
    /// Streams that failed or stalled.
    public private(set) var streamFailures = 0
    /// The most data streams attached at once.
    public private(set) var maximumStreams = 0
    /// Whether every object's finish was sent or the transfer failed or was stopped: events change
    /// nothing now.
    public private(set) var isOver = false
    /// What each object's source held, once it ended: blocks, bytes, SHA-256.
    public private(set) var endings: [Int: (blocks: Int, bytes: UInt64, digest: SessionMessage.Digest)] = [:]
    /// The objects whose finish was sent.
    public private(set) var finished: Set<Int> = []
    /// The objects the receiver verified and committed.
    public private(set) var committed: Set<Int> = []

    private var opening: Set<Int> = []
    private var attached: Set<Int> = []
    private var draining: Set<Int> = []
    private var nextStreamID = 0
    private var consecutiveFailures = 0
    private var sizes: [ChunkAddress: Int] = [:]
    private var sample: (at: Duration, bytes: UInt64)?
    private var sampleStreamTime = StreamTime()

    /// Creates the session's sending side; nothing happens before ``connected(roundTrip:streamInFlightLimit:)``.
    public init(configuration: Configuration) {
        self.configuration = configuration
    }

    /// Streams attached and not draining.
    public var activeStreams: Int { attached.subtracting(draining).count }

    // MARK: Session

    /// The control connection is up: sizes the stream count from its round-trip time and opens the
    /// first data streams (their handshakes overlap the control stream's).
    /// - Parameter streamInFlightLimit: What one TCP stream can keep in flight on this host.
    public mutating func connected(roundTrip: Duration, streamInFlightLimit: Int) -> [Action] {
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
        return adjustStreams()
    }

    /// The receiver accepted an object's offer.
    /// - Parameters:
    ///   - accept: Its answer: block size, window, the blocks it holds.
    ///   - object: The object's number in the session.
    ///   - objectSize: The object's size, `nil` for a stream of unknown length.
    ///   - weight: The object's share of the streams relative to the others'.
    public mutating func accepted(
        _ accept: SessionMessage.Accept,
        object: Int = 0,
        objectSize: UInt64?,
        weight: Int = 1
    ) -> [Action] {
        guard !isOver else { return [] }
        if transfer == nil {
            let blockSize = Int(accept.blockSize)
            transfer = TransferSender(
                blockSize: blockSize, windowBlocks: max(1, configuration.windowBytes / blockSize),
                stallTimeout: configuration.stallTimeout)
            sizer = ChunkSizer(blockSize: blockSize, maximumChunkSize: configuration.maximumChunkSize)
            resizeChunks()
        }
        let blockSize = transfer!.blockSize
        transfer!.addObject(
            object,
            // The receiver's reorder window for the object; the session's window bounds what is held.
            windowBlocks: max(1, Int(accept.windowBlocks)),
            totalBlocks: objectSize.map { Int(($0 + UInt64(blockSize) - 1) / UInt64(blockSize)) },
            present: accept.present,
            weight: weight
        )
        return adjustStreams() + finishIfDone(object)
    }

    /// Whether the receiver accepted `object`.
    public func hasAccepted(object: Int) -> Bool { transfer?.objectNumbers.contains(object) ?? false }

    // MARK: Source

    /// The reader of `object` takes a read grant (room in the window, given by weight) before it
    /// reads a chunk.
    /// - Parameters:
    ///   - object: The reader's object.
    ///   - index: The block the reader is at; the chunk stops short of the next block the receiver holds.
    /// - Returns: The most blocks the chunk may hold; `nil` when the reader must wait.
    public mutating func claimGrant(object: Int, at index: Int? = nil) -> Int? {
        transfer?.claimGrant(object: object, at: index)
    }

    /// Whether a chunk of `blocks` blocks from block `index` of `object` lies within the object's own
    /// window (a chunk read on a grant almost always does; after a resume's gaps it may have to wait).
    public func admits(_ index: Int, blocks: Int, object: Int) -> Bool {
        transfer?.admits(index, blocks: blocks, object: object) ?? false
    }

    /// The chunk of `object` from block `index` was read; it must be admitted.
    public mutating func chunkRead(_ index: Int, size: Int, object: Int = 0, now: Duration) -> [Action] {
        guard !isOver, transfer != nil else { return [] }
        transfer!.chunkRead(index, size: size, object: object)
        sizes[ChunkAddress(object: object, index: index)] = size
        readBytesByObject[object, default: 0] += UInt64(size)
        return assign(now: now)
    }

    /// The source of `object` ended after `blockCount` blocks and `totalBytes` bytes with this SHA-256.
    public mutating func sourceEnded(
        blockCount: Int,
        totalBytes: UInt64,
        digest: SessionMessage.Digest,
        object: Int = 0
    ) -> [Action] {
        guard !isOver else { return [] }
        transfer?.sourceEnded(blockCount: blockCount, object: object)
        endings[object] = (blockCount, totalBytes, digest)
        return finishIfDone(object)
    }

    // MARK: Streams

    /// Data stream `stream` is attached and can carry chunks.
    public mutating func streamReady(_ stream: Int, now: Duration) -> [Action] {
        opening.remove(stream)
        guard !isOver, transfer != nil else { return [.finishStream(stream)] }
        attached.insert(stream)
        maximumStreams = max(maximumStreams, attached.count)
        transfer!.streamOpened(stream, window: streamWindow, now: now)
        rebalanceWindows()
        return assign(now: now)
    }

    /// The receiver acknowledged the chunk at `address` on `stream`.
    public mutating func acknowledged(_ address: ChunkAddress, on stream: Int, now: Duration) -> [Action] {
        guard !isOver, transfer != nil, transfer!.acknowledged(address, on: stream, now: now) else { return [] }
        let size = UInt64(sizes.removeValue(forKey: address) ?? 0)
        acknowledgedBytes += size
        acknowledgedBytesByObject[address.object, default: 0] += size
        consecutiveFailures = 0
        var actions: [Action] = [.release(chunk: address)]
        if draining.contains(stream), transfer!.isDrained(stream) {
            actions.append(.finishStream(stream))
        }
        return actions + assign(now: now) + finishIfDone(address.object)
    }

    /// Data stream `stream` ended: on purpose after ``Action/finishStream(_:)``, or it failed (`error`).
    public mutating func streamEnded(_ stream: Int, now: Duration, error: String?) -> [Action] {
        opening.remove(stream)
        attached.remove(stream)
        guard !isOver else { return [] }
        if draining.remove(stream) != nil, transfer?.isDrained(stream) ?? true {
            transfer?.streamClosed(stream)
        } else {
            // Before the accept there is no chunk machine and the stream held nothing; it still counts.
            transfer?.streamFailed(stream)
            streamFailures += 1
            consecutiveFailures += 1
            if consecutiveFailures > configuration.maximumConsecutiveFailures {
                isOver = true
                return [
                    .fail(
                        TransportError(
                            .connectionFailed,
                            expected: "data streams to \(configuration.peer) to stay open",
                            found: "\(consecutiveFailures) failures in a row, the last: \(error ?? "closed")",
                            advice: "check the receiver; rerun with --resume to continue where it stopped"
                        ))
                ]
            }
        }
        return adjustStreams() + assign(now: now)
    }

    /// Once per interval: closes stalled streams and feeds the stream-count controller a goodput
    /// sample of at least `sampleInterval` and eight round trips, counted from the first acknowledgement
    /// (shorter samples on a long lossy path are mostly noise).
    /// - Parameters:
    ///   - now: The time since the transfer started.
    ///   - streamTime: Since the last tick, summed over the data streams (from `TCP_INFO`): time busy
    ///     sending, and the part of it spent with a full send buffer and nothing left to send.
    public mutating func tick(now: Duration, streamTime: StreamTime? = nil) -> [Action] {
        guard !isOver, let transfer else { return [] }
        var actions = transfer.stalledStreams(now: now).map { Action.closeStream($0) }
        if let streamTime { sampleStreamTime += streamTime }
        guard acknowledgedBytes > 0, let started = sample else {
            sample = (now, acknowledgedBytes)
            sampleStreamTime = StreamTime()
            return actions
        }
        if !allComplete, now - started.at >= max(configuration.sampleInterval, roundTrip * 8) {
            let goodput = Double(acknowledgedBytes - started.bytes) / (now - started.at).seconds
            let limited = sampleStreamTime.sendBufferLimitedShare
            sample = (now, acknowledgedBytes)
            sampleStreamTime = StreamTime()
            _ = controller?.intervalElapsed(goodput: goodput, bufferLimited: limited)
            actions += adjustStreams()
        }
        return actions
    }

    /// The receiver committed `object` and sent its SHA-256.
    /// - Returns: `nil` when it is the SHA-256 of what was read, else the mismatch.
    public mutating func completed(object: Int = 0, receiverDigest: SessionMessage.Digest) -> TransportError? {
        guard let ending = endings[object], finished.contains(object), ending.digest == receiverDigest else {
            isOver = true
            return TransportError(
                .checksumMismatch,
                expected:
                    "the receiver's SHA-256 of object \(object) to be ours (\(endings[object].map { "\($0.digest)" } ?? "none"))",
                found: "\(receiverDigest)"
            )
        }
        committed.insert(object)
        return nil
    }

    /// Whether the receiver committed every object.
    public var allCommitted: Bool { committed.count == configuration.objects }

    /// The transfer ended outside the session's view (the receiver's verdict, cancellation): ignore
    /// further events.
    public mutating func stop() {
        isOver = true
    }

    // MARK: Internals

    /// Opens or drains streams to match the controller's count.
    private mutating func adjustStreams() -> [Action] {
        guard let controller, !isOver, !allComplete else { return [] }
        var actions: [Action] = []
        let live = activeStreams + opening.count
        if live < controller.streamCount {
            let backoff = consecutiveFailures == 0 ? Duration.zero : .milliseconds(250 << min(consecutiveFailures, 4))
            for _ in live..<controller.streamCount {
                opening.insert(nextStreamID)
                actions.append(.open(stream: nextStreamID, after: backoff))
                nextStreamID += 1
            }
        } else if live > controller.streamCount {
            for stream in attached.subtracting(draining).sorted().suffix(live - controller.streamCount) {
                draining.insert(stream)
                transfer?.drain(stream)
                if transfer?.isDrained(stream) ?? true {
                    actions.append(.finishStream(stream))
                }
            }
        }
        resizeChunks()
        rebalanceWindows()
        return actions
    }

    /// Each stream's share of the window, at least two chunks.
    private var streamWindow: Int {
        guard let transfer else { return 1 }
        let streams = max(1, controller?.streamCount ?? 1)
        return max(
            2 * transfer.chunkBlocks * transfer.blockSize, transfer.windowBlocks * transfer.blockSize / streams)
    }

    /// Sizes the chunks read from now on for the controller's stream count.
    private mutating func resizeChunks() {
        guard let sizer, transfer != nil else { return }
        let blocks = sizer.blocks(windowBytes: configuration.windowBytes, streams: controller?.streamCount ?? 1)
        if blocks != transfer!.chunkBlocks { transfer!.setChunkBlocks(blocks) }
    }

    private mutating func rebalanceWindows() {
        let window = streamWindow
        for stream in attached.subtracting(draining) {
            transfer?.setWindow(window, for: stream)
        }
    }

    private mutating func assign(now: Duration) -> [Action] {
        guard !isOver, transfer != nil else { return [] }
        return transfer!.assign(now: now).map { .send(chunk: $0.chunk.address, on: $0.stream) }
    }

    /// Whether every object was accepted and is complete.
    private var allComplete: Bool {
        guard let transfer else { return false }
        return transfer.objectNumbers.count == configuration.objects && transfer.isComplete
    }

    /// The finish goes as soon as the source ended and the object was accepted: the receiver answers it once
    /// the last chunks are in, so their acknowledgements and the finish do not cross the link one after the
    /// other. The session goes on (acknowledgements, re-sends, copies) until the receiver's answer.
    private mutating func finishIfDone(_ object: Int) -> [Action] {
        guard !isOver, !finished.contains(object), let transfer, transfer.objectNumbers.contains(object),
            let ending = endings[object]
        else { return [] }
        finished.insert(object)
        return [
            .sendFinish(
                object: object, totalBlocks: UInt64(ending.blocks), totalBytes: ending.bytes, sha256: ending.digest)
        ]
    }
}
