/// The sending side of one transfer (AMST, sans-IO): which chunk to read next, which stream carries
/// it, when a chunk may be released, when a stream has stalled, and when the transfer is done.
///
/// The sender keeps every chunk it has read until the receiver acknowledges it, so memory is bounded
/// by the window: a chunk is read only while it lies within `windowChunks` of the first
/// unacknowledged chunk. The same bound keeps the receiver's reorder buffer finite. Time is an input
/// (`now`, any monotonic ``Duration`` since the transfer started); the type never reads a clock.
public struct TransferSender: Sendable {
    /// A decision to send chunk `index` on `stream`.
    public typealias Assignment = ChunkScheduler.Assignment

    /// The chunk size in force.
    public let chunkSize: Int
    /// How many chunks past the first unacknowledged one may be read (the receiver's window).
    public let windowChunks: Int
    /// How long a stream may hold chunks without any acknowledgement before it counts as stalled.
    public let stallTimeout: Duration

    private var scheduler = ChunkScheduler()
    private var done: ChunkBitmap
    /// The receiver already held these when the transfer started (resume).
    public let skipped: ChunkBitmap
    private var lowestUnacknowledged: Int
    private var endChunk: Int?
    private var lastProgress: [Int: Duration] = [:]

    /// Chunks acknowledged in this attempt.
    public private(set) var chunksAcknowledged = 0
    /// Chunks queued again because the stream carrying them failed.
    public private(set) var chunksResent = 0
    /// Chunks copied onto an idle stream (end game or a window held up by a slow stream).
    public private(set) var chunksDuplicated = 0
    private var duplicated: Set<Int> = []
    private var highestRead = -1

    /// Creates the sending side.
    /// - Parameters:
    ///   - chunkSize: Bytes per chunk (the last may be shorter).
    ///   - windowChunks: The receiver's reorder window, in chunks.
    ///   - totalChunks: The object's chunk count, or `nil` for a stream of unknown length.
    ///   - present: Chunks the receiver already holds; they are never read or sent.
    ///   - stallTimeout: How long a stream may go without acknowledgements while it holds chunks.
    public init(
        chunkSize: Int,
        windowChunks: Int,
        totalChunks: Int?,
        present: ChunkBitmap = ChunkBitmap(),
        stallTimeout: Duration = .seconds(20)
    ) {
        precondition(chunkSize > 0 && windowChunks > 0, "chunk size and window must be positive")
        self.chunkSize = chunkSize
        self.windowChunks = windowChunks
        self.endChunk = totalChunks
        self.stallTimeout = stallTimeout
        self.skipped = present
        self.done = present
        self.lowestUnacknowledged = present.firstAbsent(from: 0)
    }

    /// Whether every chunk has been acknowledged (or was already present) and the source has ended.
    public var isComplete: Bool { endChunk.map { lowestUnacknowledged >= $0 } ?? false }

    /// The object's chunk count, once known.
    public var totalChunks: Int? { endChunk }

    /// Whether chunk `index` may be read now: it lies within the window past the first unacknowledged chunk.
    public func admits(_ index: Int) -> Bool {
        index < lowestUnacknowledged + windowChunks
    }

    /// Chunk `index` was read and is ready to send.
    public mutating func chunkRead(_ index: Int, size: Int) {
        precondition(size > 0 && size <= chunkSize, "chunk \(index) has size \(size), chunk size is \(chunkSize)")
        precondition(admits(index), "chunk \(index) is outside the window")
        scheduler.enqueue(CollectionOfOne(ChunkScheduler.Chunk(index: index, size: size)))
        highestRead = max(highestRead, index)
    }

    /// The source ended: it holds `chunkCount` chunks.
    public mutating func sourceEnded(chunkCount: Int) {
        endChunk = chunkCount
        advanceLowest()
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
    /// When nothing more can be read — the source is read to its end (the end game), or the window is
    /// full because its oldest chunks sit on a slow or lossy stream (head-of-line blocking) — streams
    /// that fall idle take copies of chunks still in flight elsewhere, oldest first. So neither the last
    /// chunks nor the whole window wait for one slow stream; a copy is made at most once per chunk.
    public mutating func assign(now: Duration) -> [Assignment] {
        var assignments = scheduler.assign()
        if scheduler.pendingCount == 0, readingBlocked {
            var candidates = scheduler.inFlightChunks.filter {
                !done.contains($0.chunk.index) && !duplicated.contains($0.chunk.index)
            }[...]
            for stream in scheduler.idleStreams {
                guard let next = candidates.first(where: { $0.stream != stream }) else { break }
                candidates.removeAll { $0.chunk.index == next.chunk.index }
                scheduler.duplicate(next.chunk, on: stream)
                duplicated.insert(next.chunk.index)
                chunksDuplicated += 1
                assignments.append(Assignment(chunk: next.chunk, stream: stream))
            }
        }
        for assignment in assignments where scheduler.inFlightCount(on: assignment.stream) == 1 {
            // The stream was idle: the stall clock starts with this chunk.
            lastProgress[assignment.stream] = now
        }
        return assignments
    }

    /// The receiver acknowledged chunk `index` on `stream`.
    /// - Returns: Whether this is the first acknowledgement, i.e. the caller may now release the chunk.
    public mutating func acknowledged(_ index: Int, on stream: Int, now: Duration) -> Bool {
        guard scheduler.acknowledged(index, on: stream) else { return false }
        lastProgress[stream] = now
        guard done.insert(index) else { return false }
        chunksAcknowledged += 1
        advanceLowest()
        return true
    }

    /// A stream broke: its chunks are queued again ahead of new ones.
    /// - Returns: How many chunks will be re-sent.
    @discardableResult
    public mutating func streamFailed(_ stream: Int) -> Int {
        let lost = scheduler.streamFailed(stream).filter { !done.contains($0.index) }
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
    }

    /// Streams that hold chunks but have had no acknowledgement for longer than the stall timeout.
    /// The caller SHOULD close them and report ``streamFailed(_:)``; the transfer carries on.
    public func stalledStreams(now: Duration) -> [Int] {
        lastProgress.compactMap { stream, since in
            scheduler.inFlightCount(on: stream) > 0 && now - since > stallTimeout ? stream : nil
        }.sorted()
    }

    /// Whether no further chunk can be read now: the source has none left, or the next one lies
    /// beyond the window.
    private var readingBlocked: Bool {
        let next = done.firstAbsent(from: highestRead + 1)
        if let endChunk, next >= endChunk { return true }
        return !admits(next)
    }

    /// Chunks read and not yet acknowledged.
    public var heldChunks: Int { scheduler.pendingCount + scheduler.inFlightCount }

    private mutating func advanceLowest() {
        lowestUnacknowledged = done.firstAbsent(from: lowestUnacknowledged)
    }
}
