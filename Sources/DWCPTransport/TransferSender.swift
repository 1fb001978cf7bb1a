/// The sending side of one session's transfers (AMST, sans-IO): which blocks of which object to read
/// next, which stream carries them, when a chunk may be released, when a stream has stalled, and when
/// each object is done.
///
/// Objects are counted in blocks of one size (the receiver's bitmap counts them too); a chunk is a run
/// of consecutive blocks of one object, sent in one frame and acknowledged as a whole, and its length
/// (``chunkBlocks``) follows the path (``ChunkSizer``). A chunk is addressed by its first block.
///
/// A session carries one or more objects (files, streams), numbered 0, 1, …, that share the session
/// by weight. The sender keeps every chunk it has read until the receiver acknowledges it, so memory
/// is bounded by the session's window: at most `windowBlocks` blocks are held, over all objects. A
/// chunk is also read only while it lies within its object's own window past that object's first
/// unacknowledged block, which keeps the receiver's reorder buffer finite.
///
/// Room in the session's window goes to the objects as *read grants* of up to ``chunkBlocks`` blocks
/// each, by weight: each grant goes to the object with the earliest virtual start (bytes granted ÷
/// weight; start-time fair queueing), up to ``readAhead`` grants per object, so an object's reader
/// finds its next grant waiting while it is still reading the previous chunk and a reader that is
/// momentarily away loses nothing. A grant waits for room for a whole chunk while acknowledgements are
/// due to make it. A reader claims a grant (``claimGrant(object:at:)``) before it reads a chunk of at most
/// that many blocks and hands the chunk over with ``chunkRead(_:size:object:)``. The
/// ``ChunkScheduler`` makes the same weighted choice among chunks waiting for a stream. While two
/// objects of weights 4 and 1 both have data, they get 4/5 and 1/5 of the bytes. Time is an input
/// (`now`, any monotonic ``Duration`` since the transfer started); the type never reads a clock.
public struct TransferSender: Sendable {
    /// A decision to send a chunk on a stream.
    public typealias Assignment = ChunkScheduler.Assignment

    /// One object's progress, in blocks.
    struct Object: Sendable {
        var windowBlocks: Int
        let weight: Int
        /// Bytes granted ÷ weight (start-time fair queueing).
        var virtualStart = 0.0
        /// Read grants issued and not yet used by a chunk handed over, oldest first: their blocks.
        var grants: [Int] = []
        /// How many of the oldest grants its reader has claimed (it is reading).
        var claimed = 0
        /// The next block its reader hands over (an estimate for grants ahead of the reader).
        var nextIndex: Int
        /// Its source has ended: no more grants.
        var sourceDone = false
        var done: ChunkBitmap
        let skipped: ChunkBitmap
        var lowestUnacknowledged: Int
        var endBlock: Int?
        var highestRead = -1
        /// Blocks read and not yet acknowledged.
        var held = 0

        var isComplete: Bool { endBlock.map { lowestUnacknowledged >= $0 } ?? false }
        var grantedBlocks: Int { grants.reduce(0, +) }

        func admits(_ index: Int, blocks: Int = 1) -> Bool { index + blocks <= lowestUnacknowledged + windowBlocks }

        /// Whether no further chunk can be read now: none is left, or the next lies beyond the window.
        var readingBlocked: Bool {
            let next = done.firstAbsent(from: highestRead + 1)
            if let endBlock, next >= endBlock { return true }
            return !admits(next)
        }
    }

    /// Bytes per block.
    public let blockSize: Int
    /// The most blocks held (read and not yet acknowledged) over all objects: the session's window.
    public let windowBlocks: Int
    /// How long a stream may hold chunks without any acknowledgement before it counts as stalled.
    public let stallTimeout: Duration
    /// The blocks of a chunk read from now on (a grant's size); see ``setChunkBlocks(_:)``.
    public private(set) var chunkBlocks = 1

    private var scheduler = ChunkScheduler()
    private var objects: [Int: Object] = [:]
    private var lastProgress: [Int: Duration] = [:]
    private var duplicated: Set<ChunkAddress> = []
    /// When each stream was given each chunk it has in flight (a copy counts on its own stream).
    private var sends: [Int: [ChunkAddress: Duration]] = [:]
    /// How long chunks take from their sending to their acknowledgement.
    public private(set) var chunkLatency = ChunkLatency()
    /// The virtual start of the grant issued last.
    private var virtualNow = 0.0
    /// Blocks read and not yet acknowledged (first acknowledgement), over all objects.
    private var held = 0
    /// Blocks of read grants not yet used, over all objects.
    private var granted = 0

    /// Read grants an object may hold at once: the chunk its reader is reading and the next one.
    public static let readAhead = 2

    /// Chunks acknowledged in this attempt.
    public private(set) var chunksAcknowledged = 0
    /// Chunks queued again because the stream carrying them failed.
    public private(set) var chunksResent = 0
    /// Chunks copied onto another stream: at the end game or a window held up by a slow stream (onto
    /// an idle stream), or overdue (``ChunkLatency/overdueAfter``).
    public private(set) var chunksDuplicated = 0
    /// Of those, the copies of overdue chunks.
    public private(set) var chunksOverdue = 0
    /// The most overdue chunks copied in one ``assign(now:)``.
    public static let overdueCopiesPerAssignment = 2

    /// Creates the sending side with no objects yet (see ``addObject(_:windowBlocks:totalBlocks:present:weight:)``).
    /// - Parameters:
    ///   - blockSize: Bytes per block (the last of an object may be shorter).
    ///   - windowBlocks: The most blocks held over all objects.
    ///   - stallTimeout: How long a stream may go without acknowledgements while it holds chunks.
    public init(blockSize: Int, windowBlocks: Int, stallTimeout: Duration = .seconds(20)) {
        precondition(blockSize > 0 && windowBlocks > 0, "block size and window must be positive")
        self.blockSize = blockSize
        self.windowBlocks = windowBlocks
        self.stallTimeout = stallTimeout
    }

    /// Creates the sending side of a session that carries one object, object 0.
    /// - Parameters:
    ///   - blockSize: Bytes per block (the last may be shorter).
    ///   - windowBlocks: The receiver's reorder window, in blocks.
    ///   - totalBlocks: The object's block count, or `nil` for a stream of unknown length.
    ///   - present: Blocks the receiver already holds; they are never read or sent.
    ///   - stallTimeout: How long a stream may go without acknowledgements while it holds chunks.
    public init(
        blockSize: Int,
        windowBlocks: Int,
        totalBlocks: Int?,
        present: ChunkBitmap = ChunkBitmap(),
        stallTimeout: Duration = .seconds(20)
    ) {
        self.init(blockSize: blockSize, windowBlocks: windowBlocks, stallTimeout: stallTimeout)
        addObject(0, windowBlocks: windowBlocks, totalBlocks: totalBlocks, present: present)
    }

    /// Adds an object to the session.
    /// - Parameters:
    ///   - object: Its number in the session.
    ///   - windowBlocks: How many blocks past its first unacknowledged one may be read (the receiver's
    ///     reorder window for it).
    ///   - totalBlocks: Its block count, or `nil` for a stream of unknown length.
    ///   - present: Blocks the receiver already holds; they are never read or sent.
    ///   - weight: Its share of the streams relative to the other objects' (at least 1).
    public mutating func addObject(
        _ object: Int,
        windowBlocks: Int,
        totalBlocks: Int?,
        present: ChunkBitmap = ChunkBitmap(),
        weight: Int = 1
    ) {
        precondition(windowBlocks > 0, "the window must be positive")
        precondition(objects[object] == nil, "object \(object) was added twice")
        objects[object] = Object(
            windowBlocks: windowBlocks, weight: weight, virtualStart: virtualNow,
            nextIndex: present.firstAbsent(from: 0), done: present, skipped: present,
            lowestUnacknowledged: present.firstAbsent(from: 0), endBlock: totalBlocks)
        scheduler.setWeight(weight, for: object)
        issueGrants()
    }

    /// Sets the blocks of the chunks read from now on (grants already issued keep their size); at
    /// most a quarter of the session's window.
    public mutating func setChunkBlocks(_ blocks: Int) {
        chunkBlocks = min(max(1, blocks), max(1, windowBlocks / 4))
        issueGrants()
    }

    /// The objects added so far, in order.
    public var objectNumbers: [Int] { objects.keys.sorted() }

    /// Whether every object added so far is complete (and there is at least one).
    public var isComplete: Bool { !objects.isEmpty && objects.values.allSatisfy(\.isComplete) }

    /// Whether every block of `object` has been acknowledged (or was already present) and its source
    /// has ended.
    public func isComplete(object: Int) -> Bool { objects[object]?.isComplete ?? false }

    /// The object's block count, once known.
    public func totalBlocks(object: Int = 0) -> Int? { objects[object]?.endBlock }

    /// The blocks of `object` the receiver held when the transfer started (resume).
    public func skipped(object: Int = 0) -> ChunkBitmap { objects[object]?.skipped ?? ChunkBitmap() }

    /// The window of `object`, in blocks.
    public func windowBlocks(object: Int) -> Int { objects[object]?.windowBlocks ?? 0 }

    /// Whether a chunk of `blocks` blocks from block `index` of `object` lies within the object's own
    /// window past its first unacknowledged block (the session's window and the other objects are not
    /// considered).
    public func admits(_ index: Int, blocks: Int = 1, object: Int = 0) -> Bool {
        objects[object]?.admits(index, blocks: blocks) ?? false
    }

    /// The reader of `object` takes the oldest of the object's read grants before it reads a chunk.
    /// - Parameters:
    ///   - object: The reader's object.
    ///   - index: The block the reader is at, when known: the chunk then stops short of the next block the
    ///     receiver already holds (a resume's gaps), so it never overlaps held blocks.
    /// - Returns: The most blocks the chunk may hold, or `nil` when the object holds no unclaimed
    ///   grant; ask again after the window moved.
    public mutating func claimGrant(object: Int, at index: Int? = nil) -> Int? {
        guard let state = objects[object], state.grants.count > state.claimed else { return nil }
        objects[object]!.claimed += 1
        let grant = state.grants[state.claimed]
        guard let index else { return grant }
        return max(1, min(grant, state.skipped.firstPresent(from: index) - index))
    }

    /// A chunk of `object` starting at block `index` was read and is ready to send. It must lie within
    /// the object's window; it uses the oldest grant its reader claimed, if any (tests may hand chunks
    /// over without one).
    /// - Parameters:
    ///   - index: Its first block.
    ///   - size: Its bytes: whole blocks, except at the object's end.
    ///   - object: Its object.
    public mutating func chunkRead(_ index: Int, size: Int, object: Int = 0) {
        precondition(size > 0, "chunk \(index) is empty")
        let blocks = blocks(in: size)
        precondition(admits(index, blocks: blocks, object: object), "chunk \(object)/\(index) is outside the window")
        scheduler.enqueue(CollectionOfOne(ChunkScheduler.Chunk(object: object, index: index, size: size)))
        held += blocks
        objects[object]!.held += blocks
        if objects[object]!.claimed > 0 {
            let grant = objects[object]!.grants.removeFirst()
            objects[object]!.claimed -= 1
            granted -= grant
        }
        objects[object]!.nextIndex = objects[object]!.skipped.firstAbsent(from: index + blocks)
        objects[object]!.highestRead = max(objects[object]!.highestRead, index + blocks - 1)
        issueGrants()
    }

    /// The source of `object` ended: it holds `blockCount` blocks.
    public mutating func sourceEnded(blockCount: Int, object: Int = 0) {
        guard objects[object] != nil else { return }
        objects[object]!.endBlock = blockCount
        objects[object]!.sourceDone = true
        granted -= objects[object]!.grantedBlocks
        objects[object]!.grants = []
        objects[object]!.claimed = 0
        advanceLowest(object)
        issueGrants()
    }

    /// A data stream is ready, allowed `window` bytes unacknowledged.
    public mutating func streamOpened(_ stream: Int, window: Int, now: Duration) {
        scheduler.streamOpened(stream, window: window)
        lastProgress[stream] = now
    }

    /// A stream's window changed (from its measured bandwidth-delay product).
    public mutating func setWindow(_ window: Int, for stream: Int) {
        scheduler.setWindow(window, for: stream)
    }

    /// Which chunks go on which streams now.
    ///
    /// When nothing more can be read — every source is read to its end (the end game), or the windows
    /// are full because their oldest chunks sit on a slow or lossy stream (head-of-line blocking) —
    /// streams that fall idle take copies of chunks still in flight elsewhere, oldest first. So neither
    /// the last chunks nor a whole window wait for one slow stream; a copy is made at most once per chunk.
    ///
    /// A chunk in flight for longer than its acknowledgement is due (``ChunkLatency/overdueAfter``) gets a
    /// copy on the least loaded other stream, whatever else is going on, oldest first: one stream in loss
    /// recovery (a retransmission lost, the kernel backing off) then delays nothing but itself, where it
    /// used to hold up the window's lowest chunk, and with it the whole transfer, for seconds.
    public mutating func assign(now: Duration) -> [Assignment] {
        let overdueAfter = chunkLatency.overdueAfter
        if let overdueAfter {
            // A stream with an overdue chunk gets no new ones until it catches up.
            let lagging = sends.filter { _, chunks in chunks.values.contains { now - $0 > overdueAfter } }.keys
            scheduler.setLagging(Set(lagging))
        }
        var assignments = scheduler.assign()
        if let overdueAfter { assignments += copyOverdue(now: now, overdueAfter: overdueAfter) }
        if scheduler.pendingCount == 0,
            held + chunkBlocks > windowBlocks || objects.values.allSatisfy(\.readingBlocked)
        {
            var candidates = scheduler.inFlightChunks.filter {
                !(objects[$0.chunk.object]?.done.contains($0.chunk.index) ?? true)
                    && !duplicated.contains($0.chunk.address)
            }[...]
            // At the very end (every source read) an idle stream takes, after the oldest, every chunk of a stream
            // silent for more than half the usual chunk latency, as its window allows: the last chunks of a stream
            // that stopped delivering (a fresh stream still in slow start, one in loss recovery) then cross
            // together instead of one round trip after another. A healthy stream acknowledges a chunk every
            // transmission time, far more often, and its chunks are not copied.
            let sourcesDone = objects.values.allSatisfy(\.sourceDone)
            for stream in scheduler.idleStreams {
                var late: (Assignment) -> Bool = { $0.stream != stream }
                repeat {
                    guard let next = candidates.first(where: late) else { break }
                    candidates.removeAll { $0.chunk.address == next.chunk.address }
                    scheduler.duplicate(next.chunk, on: stream)
                    duplicated.insert(next.chunk.address)
                    chunksDuplicated += 1
                    assignments.append(Assignment(chunk: next.chunk, stream: stream))
                    guard sourcesDone, let usual = chunkLatency.smoothed else { break }
                    late = { [lastProgress] in
                        $0.stream != stream && lastProgress[$0.stream].map { now - $0 > usual / 2 } == true
                    }
                } while scheduler.freeWindow(on: stream) > 0
            }
        }
        for assignment in assignments { sends[assignment.stream, default: [:]][assignment.chunk.address] = now }
        for assignment in assignments where scheduler.inFlightCount(on: assignment.stream) == 1 {
            // The stream was idle: the stall clock starts with this chunk.
            lastProgress[assignment.stream] = now
        }
        return assignments
    }

    /// The receiver acknowledged the chunk at `address` on `stream`.
    /// - Returns: Whether this is the first acknowledgement, i.e. the caller may now release the chunk.
    public mutating func acknowledged(_ address: ChunkAddress, on stream: Int, now: Duration) -> Bool {
        guard let chunk = scheduler.acknowledged(address, on: stream) else { return false }
        lastProgress[stream] = now
        let sent = sends[stream]?.removeValue(forKey: address)
        guard objects[address.object]?.done.contains(address.index) == false else { return false }
        if let sent, !duplicated.contains(address) {
            chunkLatency.record(now - sent)  // a copied chunk's latency mixes two streams': not a sample
        }
        let blocks = blocks(in: chunk.size)
        for index in address.index..<address.index + blocks {
            objects[address.object]!.done.insert(index)
        }
        chunksAcknowledged += 1
        held -= blocks
        objects[address.object]!.held -= blocks
        advanceLowest(address.object)
        issueGrants()
        return true
    }

    /// A stream broke: its chunks are queued again ahead of new ones.
    /// - Returns: How many chunks will be re-sent.
    @discardableResult
    public mutating func streamFailed(_ stream: Int) -> Int {
        let lost = scheduler.streamFailed(stream).filter {
            !(objects[$0.object]?.done.contains($0.index) ?? true)
        }
        sends[stream] = nil  // a re-send starts the clock again
        scheduler.streamClosed(stream)
        lastProgress.removeValue(forKey: stream)
        chunksResent += lost.count
        return lost.count
    }

    /// Stops giving chunks to `stream`; close it once ``isDrained(_:)``.
    public mutating func drain(_ stream: Int) {
        scheduler.drain(stream)
    }

    /// Whether a draining stream has nothing left in flight.
    public func isDrained(_ stream: Int) -> Bool { scheduler.inFlightCount(on: stream) == 0 }

    /// A drained stream was closed.
    public mutating func streamClosed(_ stream: Int) {
        scheduler.streamClosed(stream)
        lastProgress.removeValue(forKey: stream)
        sends[stream] = nil
    }

    /// Streams that hold chunks but have had no acknowledgement for longer than the stall timeout.
    /// The caller SHOULD close them and report ``streamFailed(_:)``; the transfer carries on.
    public func stalledStreams(now: Duration) -> [Int] {
        lastProgress.compactMap { stream, since in
            scheduler.inFlightCount(on: stream) > 0 && now - since > stallTimeout ? stream : nil
        }.sorted()
    }

    /// Whether no stream holds an overdue chunk (as of the last ``assign(now:)``; for tests).
    var isLaggingFree: Bool { !scheduler.hasLaggingStream }

    /// Chunks read and not yet acknowledged.
    public var heldChunks: Int { scheduler.pendingCount + scheduler.inFlightCount }

    /// The blocks a chunk of `size` bytes spans.
    public func blocks(in size: Int) -> Int { (size + blockSize - 1) / blockSize }

    /// Hands the free room in the session's window to the objects, one grant at a time, each to the
    /// eligible object with the earliest virtual start (ties: the lower number). Eligible: its source
    /// has not ended, it holds fewer than ``readAhead`` grants, and there is room for a whole chunk
    /// in the session's window and in its own. Where there is less room and acknowledgements are due
    /// to make more, the grant waits for them (small grants would cut the object into small chunks);
    /// where none are due, it is issued for the room there is.
    private mutating func issueGrants() {
        while true {
            var best: (object: Int, start: Double, blocks: Int)?
            for (object, state) in objects where !state.sourceDone && state.grants.count < Self.readAhead {
                let sessionRoom = windowBlocks - held - granted
                let objectRoom = state.lowestUnacknowledged + state.windowBlocks - state.nextIndex - state.grantedBlocks
                let blocks = min(chunkBlocks, sessionRoom, objectRoom)
                guard blocks >= 1 else { continue }
                if blocks < chunkBlocks {
                    let roomIsDue =
                        objectRoom < min(chunkBlocks, sessionRoom)
                        ? state.held > 0 || !state.grants.isEmpty : held + granted > 0
                    if roomIsDue { continue }
                }
                // A reader away for a long time (a paused stream) keeps at most one window of credit.
                let credit = Double(windowBlocks * blockSize) / Double(state.weight)
                let start = max(state.virtualStart, virtualNow - credit)
                if let current = best, (current.start, current.object) <= (start, object) { continue }
                best = (object, start, blocks)
            }
            guard let best else { return }
            virtualNow = best.start
            objects[best.object]!.virtualStart =
                best.start + Double(best.blocks * blockSize) / Double(objects[best.object]!.weight)
            objects[best.object]!.grants.append(best.blocks)
            granted += best.blocks
        }
    }

    /// Copies of the oldest overdue chunks (not copied before) onto the least loaded streams not lagging.
    private mutating func copyOverdue(now: Duration, overdueAfter: Duration) -> [Assignment] {
        let overdue = sends.flatMap { stream, chunks in
            chunks.compactMap { address, sent in
                now - sent > overdueAfter && !duplicated.contains(address) ? (sent, address, stream) : nil
            }
        }.sorted { ($0.0, $0.1) < ($1.0, $1.1) }
        var copies: [Assignment] = []
        for (_, address, carrier) in overdue.prefix(Self.overdueCopiesPerAssignment) {
            guard let chunk = scheduler.inFlightChunk(address, on: carrier),
                let stream = scheduler.leastLoadedStreams(excluding: carrier).first
            else { continue }
            scheduler.duplicate(chunk, on: stream)
            duplicated.insert(address)
            chunksDuplicated += 1
            chunksOverdue += 1
            copies.append(Assignment(chunk: chunk, stream: stream))
        }
        return copies
    }

    private mutating func advanceLowest(_ object: Int) {
        guard let state = objects[object] else { return }
        objects[object]!.lowestUnacknowledged = state.done.firstAbsent(from: state.lowestUnacknowledged)
    }
}

/// How long a chunk takes from its sending to its acknowledgement: a smoothed mean and mean deviation
/// (RFC 6298's estimator, applied to chunks instead of segments), which say when a chunk is overdue.
/// The samples include each chunk's wait behind the others on its stream, so the deviation grows with
/// the streams' queues and a chunk counts as overdue only when it is late for this path and load.
public struct ChunkLatency: Sendable {
    /// The smoothed latency, once a chunk was acknowledged.
    public private(set) var smoothed: Duration?
    /// The smoothed mean deviation.
    public private(set) var deviation: Duration = .zero
    /// No chunk counts as overdue sooner than this (a loopback path's latencies are microseconds).
    public static let minimumOverdue: Duration = .milliseconds(200)

    /// No latency learnt yet.
    public init() {}

    /// Adds the latency of one chunk (first sent, first acknowledged, never copied).
    public mutating func record(_ sample: Duration) {
        guard let current = smoothed else {
            smoothed = sample
            deviation = sample / 2
            return
        }
        let error = sample > current ? sample - current : current - sample
        deviation = deviation * 3 / 4 + error / 4
        smoothed = current * 7 / 8 + sample / 8
    }

    /// How long after its sending a chunk is overdue: the smoothed latency plus four deviations, at least
    /// twice the smoothed latency and ``minimumOverdue``; nil before the first sample.
    public var overdueAfter: Duration? {
        smoothed.map { max($0 + deviation * 4, $0 * 2, Self.minimumOverdue) }
    }
}
