/// Decides which data stream carries which chunk (AMST's scheduler, sans-IO).
///
/// Chunks wait in a queue; each stream has a window (how many bytes it may have unacknowledged).
/// ``assign()`` hands the next chunks to the streams with the most free window — never blind
/// round-robin — so a stream that stalls (its acknowledgements stop) simply stops receiving chunks
/// while the others carry on. When a stream dies, its unacknowledged chunks go back to the front of
/// the queue for the others, and the caller is told to reopen it.
public struct ChunkScheduler: Sendable {
    /// A chunk to send: its index in the object and its size on the wire.
    public struct Chunk: Hashable, Sendable {
        /// The chunk's index within its object.
        public var index: Int
        /// Its size in bytes.
        public var size: Int

        /// Creates a chunk.
        public init(index: Int, size: Int) {
            self.index = index
            self.size = size
        }
    }

    /// One decision: send `chunk` on `stream`.
    public struct Assignment: Hashable, Sendable {
        /// The chunk.
        public var chunk: Chunk
        /// The stream that carries it.
        public var stream: Int
    }

    private struct Stream: Sendable {
        var window: Int
        var inFlight: [Int: Chunk] = [:]
        var inFlightBytes = 0
        var isOpen = true

        var freeWindow: Int { isOpen ? window - inFlightBytes : 0 }
    }

    private var streams: [Int: Stream] = [:]
    private var queue: [Chunk] = []
    private var queueHead = 0
    private var retransmissions: [Chunk] = []

    /// Creates a scheduler with no streams.
    public init() {}

    /// Chunks waiting for a stream.
    public var pendingCount: Int { queue.count - queueHead + retransmissions.count }

    /// Chunks sent and not yet acknowledged, over all streams.
    public var inFlightCount: Int { streams.values.reduce(0) { $0 + $1.inFlight.count } }

    /// Whether every chunk enqueued so far has been acknowledged.
    public var isIdle: Bool { pendingCount == 0 && inFlightCount == 0 }

    /// Adds chunks to the end of the queue.
    public mutating func enqueue(_ chunks: some Sequence<Chunk>) {
        queue.append(contentsOf: chunks)
    }

    /// A stream opened (or reopened) with a window of `window` bytes.
    public mutating func streamOpened(_ stream: Int, window: Int) {
        precondition(window > 0, "a stream window must be positive, not \(window)")
        streams[stream] = Stream(window: window)
    }

    /// A stream's window changed (e.g. its measured bandwidth-delay product moved).
    public mutating func setWindow(_ window: Int, for stream: Int) {
        precondition(window > 0, "a stream window must be positive, not \(window)")
        streams[stream]?.window = window
    }

    /// Gives waiting chunks to streams with free window, largest free window first.
    ///
    /// A stream always gets at least one chunk when it has nothing in flight, even if the chunk is
    /// larger than its window, so progress never depends on window sizes.
    /// - Returns: What to send where, in order.
    public mutating func assign() -> [Assignment] {
        var assignments: [Assignment] = []
        while let chunk = peekNext() {
            guard let stream = bestStream(for: chunk) else { break }
            takeNext()
            streams[stream]!.inFlight[chunk.index] = chunk
            streams[stream]!.inFlightBytes += chunk.size
            assignments.append(Assignment(chunk: chunk, stream: stream))
        }
        return assignments
    }

    /// The receiver acknowledged chunk `index`, which `stream` carried.
    /// - Returns: Whether the acknowledgement matched a chunk in flight (duplicates return `false`).
    @discardableResult
    public mutating func acknowledged(_ index: Int, on stream: Int) -> Bool {
        guard let chunk = streams[stream]?.inFlight.removeValue(forKey: index) else { return false }
        streams[stream]!.inFlightBytes -= chunk.size
        return true
    }

    /// A stream failed: its unacknowledged chunks are queued again ahead of new ones.
    /// - Returns: The chunks that will be re-sent on other streams.
    public mutating func streamFailed(_ stream: Int) -> [Chunk] {
        guard var failed = streams[stream] else { return [] }
        let lost = failed.inFlight.values.sorted { $0.index < $1.index }
        failed.inFlight.removeAll()
        failed.inFlightBytes = 0
        failed.isOpen = false
        streams[stream] = failed
        retransmissions.append(contentsOf: lost)
        retransmissions.sort { $0.index < $1.index }
        return lost
    }

    /// Stops giving chunks to `stream` so that it can be closed once its chunks are acknowledged.
    public mutating func drain(_ stream: Int) {
        streams[stream]?.isOpen = false
    }

    /// Chunks sent on `stream` and not yet acknowledged.
    public func inFlightCount(on stream: Int) -> Int {
        streams[stream]?.inFlight.count ?? 0
    }

    /// Open streams with nothing in flight.
    public var idleStreams: [Int] {
        streams.filter { $0.value.isOpen && $0.value.inFlight.isEmpty }.keys.sorted()
    }

    /// Every chunk in flight with its stream, lowest index first.
    public var inFlightChunks: [Assignment] {
        streams.flatMap { id, stream in stream.inFlight.values.map { Assignment(chunk: $0, stream: id) } }
            .sorted { ($0.chunk.index, $0.stream) < ($1.chunk.index, $1.stream) }
    }

    /// Sends a copy of a chunk that is already in flight on another stream (the end game: the last
    /// chunks should not wait for one slow stream while others are idle). Whichever copy is
    /// acknowledged first completes the chunk; the other is acknowledged later or dies with its stream.
    public mutating func duplicate(_ chunk: Chunk, on stream: Int) {
        precondition(streams[stream]?.isOpen == true, "stream \(stream) cannot take a copy of chunk \(chunk.index)")
        streams[stream]!.inFlight[chunk.index] = chunk
        streams[stream]!.inFlightBytes += chunk.size
    }

    /// The streams the scheduler knows, open or draining.
    public var streamIDs: [Int] { streams.keys.sorted() }

    /// A stream was closed on purpose (the controller removed it). It must have nothing in flight.
    public mutating func streamClosed(_ stream: Int) {
        if let closing = streams[stream], !closing.inFlight.isEmpty {
            preconditionFailure("stream \(stream) closed with \(closing.inFlight.count) chunks in flight")
        }
        streams.removeValue(forKey: stream)
    }

    private func peekNext() -> Chunk? {
        retransmissions.first ?? (queueHead < queue.count ? queue[queueHead] : nil)
    }

    private mutating func takeNext() {
        if !retransmissions.isEmpty {
            retransmissions.removeFirst()
        } else {
            queueHead += 1
            if queueHead > 4096 && queueHead * 2 > queue.count {
                queue.removeFirst(queueHead)
                queueHead = 0
            }
        }
    }

    private func bestStream(for chunk: Chunk) -> Int? {
        var best: (stream: Int, free: Int)?
        for (id, stream) in streams where stream.isOpen {
            let fits = stream.freeWindow >= chunk.size || stream.inFlight.isEmpty
            guard fits else { continue }
            if best == nil || stream.freeWindow > best!.free || (stream.freeWindow == best!.free && id < best!.stream) {
                best = (id, stream.freeWindow)
            }
        }
        return best?.stream
    }
}
