/// Decides which data stream carries which chunk, and which object's chunk goes next (AMST's
/// scheduler, sans-IO).
///
/// Chunks wait in one queue per object; each stream has a window (how many bytes it may have
/// unacknowledged). ``assign()`` hands the next chunks to the streams with the most free window —
/// never blind round-robin — so a stream that stalls (its acknowledgements stop) simply stops
/// receiving chunks while the others carry on. When a stream dies, its unacknowledged chunks go back
/// to the front, ahead of every queue, and the caller is told to reopen it.
///
/// Objects share the streams by weight (``setWeight(_:for:)``, default 1): among the objects with
/// chunks waiting, the next chunk comes from the one with the least bytes sent per unit of weight
/// (start-time fair queueing), so while two objects of weights 4 and 1 both have chunks waiting they
/// get 4/5 and 1/5 of the bytes; an object with nothing waiting leaves its share to the others and
/// does not bank it for later.
public struct ChunkScheduler: Sendable {
    /// A chunk to send: its address and its size on the wire.
    public struct Chunk: Hashable, Sendable {
        /// Which object it belongs to and its index there.
        public var address: ChunkAddress
        /// Its size in bytes.
        public var size: Int

        /// The chunk's index within its object.
        public var index: Int { address.index }
        /// The chunk's object.
        public var object: Int { address.object }

        /// Creates a chunk.
        public init(object: Int = 0, index: Int, size: Int) {
            self.address = ChunkAddress(object: object, index: index)
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
        var inFlight: [ChunkAddress: Chunk] = [:]
        var inFlightBytes = 0
        var isOpen = true
        /// It holds an overdue chunk: new chunks go to other streams while any is not lagging.
        var isLagging = false

        var freeWindow: Int { isOpen ? window - inFlightBytes : 0 }
    }

    /// One object's waiting chunks and its place in the fair queue.
    private struct Queue: Sendable {
        var chunks: [Chunk] = []
        var head = 0
        var weight = 1
        /// Bytes sent divided by weight: the object whose next chunk starts earliest goes first.
        var virtualStart = 0.0

        var count: Int { chunks.count - head }
    }

    private var streams: [Int: Stream] = [:]
    private var queues: [Int: Queue] = [:]
    private var retransmissions: [Chunk] = []
    /// The virtual start of the chunk sent last: an object that had nothing waiting starts here.
    private var virtualNow = 0.0

    /// Creates a scheduler with no streams.
    public init() {}

    /// Chunks waiting for a stream.
    public var pendingCount: Int { queues.values.reduce(retransmissions.count) { $0 + $1.count } }

    /// Chunks sent and not yet acknowledged, over all streams.
    public var inFlightCount: Int { streams.values.reduce(0) { $0 + $1.inFlight.count } }

    /// Whether every chunk enqueued so far has been acknowledged.
    public var isIdle: Bool { pendingCount == 0 && inFlightCount == 0 }

    /// Sets an object's share of the streams relative to the others' (at least 1).
    public mutating func setWeight(_ weight: Int, for object: Int) {
        precondition(weight >= 1, "a weight is at least 1, not \(weight)")
        withQueue(object) { $0.weight = weight }
    }

    /// Adds chunks to the end of their objects' queues.
    public mutating func enqueue(_ chunks: some Sequence<Chunk>) {
        for chunk in chunks {
            let now = virtualNow
            withQueue(chunk.object) { queue in
                if queue.count == 0 {
                    // Idle time is not credit: the object rejoins at the current virtual time.
                    queue.virtualStart = max(queue.virtualStart, now)
                }
                queue.chunks.append(chunk)
            }
        }
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
        while let (chunk, source) = peekNext() {
            guard let stream = bestStream(for: chunk) else { break }
            take(from: source)
            streams[stream]!.inFlight[chunk.address] = chunk
            streams[stream]!.inFlightBytes += chunk.size
            assignments.append(Assignment(chunk: chunk, stream: stream))
        }
        return assignments
    }

    /// The receiver acknowledged the chunk at `address`, which `stream` carried.
    /// - Returns: The chunk in flight it matched; `nil` for an acknowledgement of nothing in flight there.
    @discardableResult
    public mutating func acknowledged(_ address: ChunkAddress, on stream: Int) -> Chunk? {
        guard let chunk = streams[stream]?.inFlight.removeValue(forKey: address) else { return nil }
        streams[stream]!.inFlightBytes -= chunk.size
        return chunk
    }

    /// A stream failed: its unacknowledged chunks are queued again ahead of new ones.
    /// - Returns: The chunks that will be re-sent on other streams.
    public mutating func streamFailed(_ stream: Int) -> [Chunk] {
        guard var failed = streams[stream] else { return [] }
        let lost = failed.inFlight.values.sorted { $0.address < $1.address }
        failed.inFlight.removeAll()
        failed.inFlightBytes = 0
        failed.isOpen = false
        streams[stream] = failed
        retransmissions.append(contentsOf: lost)
        retransmissions.sort { $0.address < $1.address }
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

    /// Marks the streams holding an overdue chunk (and only those) as lagging: ``assign()`` gives new
    /// chunks to the others while there are any.
    public mutating func setLagging(_ lagging: Set<Int>) {
        for id in streams.keys { streams[id]!.isLagging = lagging.contains(id) }
    }

    /// The bytes `stream` may still take into flight (0 for a stream closed or draining).
    public func freeWindow(on stream: Int) -> Int { streams[stream]?.freeWindow ?? 0 }

    /// Whether any stream is marked lagging.
    var hasLaggingStream: Bool { streams.values.contains { $0.isLagging } }

    /// Open streams other than `excluded` and not lagging, the one with the fewest bytes in flight first
    /// (ties: the lower number): where a copy of a chunk waits least.
    public func leastLoadedStreams(excluding excluded: Int) -> [Int] {
        streams.filter { $0.key != excluded && $0.value.isOpen && !$0.value.isLagging }
            .sorted { ($0.value.inFlightBytes, $0.key) < ($1.value.inFlightBytes, $1.key) }.map(\.key)
    }

    /// The chunk at `address` if `stream` has it in flight.
    public func inFlightChunk(_ address: ChunkAddress, on stream: Int) -> Chunk? {
        streams[stream]?.inFlight[address]
    }

    /// Every chunk in flight with its stream, lowest address first.
    public var inFlightChunks: [Assignment] {
        streams.flatMap { id, stream in stream.inFlight.values.map { Assignment(chunk: $0, stream: id) } }
            .sorted { ($0.chunk.address, $0.stream) < ($1.chunk.address, $1.stream) }
    }

    /// Sends a copy of a chunk that is already in flight on another stream (the end game: the last
    /// chunks should not wait for one slow stream while others are idle). Whichever copy is
    /// acknowledged first completes the chunk; the other is acknowledged later or dies with its stream.
    public mutating func duplicate(_ chunk: Chunk, on stream: Int) {
        precondition(streams[stream]?.isOpen == true, "stream \(stream) cannot take a copy of chunk \(chunk.address)")
        streams[stream]!.inFlight[chunk.address] = chunk
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

    /// The next chunk to send and where it waits: a re-send first, then the object whose next chunk
    /// starts earliest in virtual time (ties: the lower object number).
    private func peekNext() -> (Chunk, source: Int?)? {
        if let first = retransmissions.first { return (first, nil) }
        var best: (object: Int, queue: Queue)?
        for (object, queue) in queues where queue.count > 0 {
            if let current = best,
                (current.queue.virtualStart, current.object) <= (queue.virtualStart, object)
            {
                continue
            }
            best = (object, queue)
        }
        guard let best else { return nil }
        return (best.queue.chunks[best.queue.head], best.object)
    }

    private mutating func take(from object: Int?) {
        guard let object else {
            retransmissions.removeFirst()
            return
        }
        virtualNow = withQueue(object) { queue in
            let started = queue.virtualStart
            queue.virtualStart += Double(queue.chunks[queue.head].size) / Double(queue.weight)
            queue.head += 1
            if queue.head == queue.chunks.count {
                queue.chunks.removeAll(keepingCapacity: true)
                queue.head = 0
            } else if queue.head > 4096 && queue.head * 2 > queue.chunks.count {
                queue.chunks.removeFirst(queue.head)
                queue.head = 0
            }
            return started
        }
    }

    /// Changes an object's queue in place (no copy of its chunks).
    private mutating func withQueue<Result>(_ object: Int, _ body: (inout Queue) -> Result) -> Result {
        body(&queues[object, default: Queue()])
    }

    private func bestStream(for chunk: Chunk) -> Int? {
        var best: (stream: Int, free: Int)?
        let avoidLagging = streams.values.contains { $0.isOpen && !$0.isLagging }
        for (id, stream) in streams where stream.isOpen && !(avoidLagging && stream.isLagging) {
            let fits = stream.freeWindow >= chunk.size || stream.inFlight.isEmpty
            guard fits else { continue }
            if best == nil || stream.freeWindow > best!.free || (stream.freeWindow == best!.free && id < best!.stream) {
                best = (id, stream.freeWindow)
            }
        }
        return best?.stream
    }
}
