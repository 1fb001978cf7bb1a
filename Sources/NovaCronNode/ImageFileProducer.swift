import DWCPEncoding
import DWCPTransport
import Dispatch
import Foundation
import NIOConcurrencyHelpers
import NIOCore

#if canImport(Glibc)
    import Glibc
#endif

/// Sends a file as an HDE image stream (`novacron send --encode auto|raw|N`): the transport pulls the
/// stream from it batch by batch, so the encoded image is never held whole.
///
/// Before the offer it hashes every page of the file. The offer names the earlier images kept in this node's
/// store that look most like it (``DWCPEncoding/EncodedObjectOffer``); the receiver's reply picks the first it
/// holds too as the baseline (deltas) and, if its store holds anything, asks for the key prefixes of the
/// other distinct pages (``DWCPEncoding/EncodedObjectQuery``): the pages its answer says it holds go as
/// references. Reads wait for that answer. In ``EncodingMode/auto`` the zstd level of each batch is chosen by a
/// ``DWCPEncoding/CompressionLevelController`` from the measured cost of each level on this CPU and the
/// rate at which the transport takes the stream (``DrainRateEstimator``).
public final class ImageFileProducer: TransferProducer, @unchecked Sendable {
    /// What the encoding did, for the report.
    public struct Report: Sendable, Codable {
        /// The file's length.
        public var imageBytes: UInt64
        /// The stream's length (what crossed the link, before the transport's framing).
        public var encodedBytes: UInt64
        /// Pages by record kind (`zero`, `literal`, `duplicate`, `known`, …).
        public var pages: [String: Int]
        /// Batches by the zstd level used (`raw` for stored).
        public var batchesByLevel: [String: Int]
        /// Distinct non-zero pages (not unchanged since the baseline) asked about; 0 when the receiver's
        /// store was empty or absent.
        public var queriedPages: Int
        /// Of those, the pages the receiver's store held.
        public var heldPages: Int
        /// Whether the receiver has a chunk store.
        public var receiverHasStore: Bool
        /// The earlier image both nodes held that the stream was encoded against (its identity), if any.
        public var baseline: String?
        /// Seconds spent hashing the file's pages (before the offer with a store of this node's own,
        /// else for the receiver's page query).
        public var hashingSeconds: Double
        /// Seconds spent encoding (one core).
        public var encodeSeconds: Double
    }

    /// The name the receiver files the image under.
    public let name: String
    /// The ``DWCPEncoding/EncodedObjectOffer`` the transport's offer carries.
    public let offerContent: [UInt8]
    private let mapping: UnsafeRawBufferPointer
    private let mode: EncodingMode
    /// Each page's SHA-256 (nil for zero pages); hashed only when needed: for a store of this node's own,
    /// or when the receiver's store asks the page query.
    private var hashedPageKeys: [ChunkKey?]?
    /// The candidate baselines offered, most similar first.
    private let candidates: [ImageManifest]
    private let store: SharedChunkStore?
    private let encoder: ImageEncoder
    /// Guards everything below; the encoder thread waits on it for room, readers for bytes.
    private let condition = NSCondition()
    /// The distinct keys asked about, in the order of the query's prefixes.
    private var queried: [ChunkKey] = []
    /// The baseline, kept here because the encoder reads it until the stream ends.
    private var baseline: ImageMemory?
    /// Encoded bytes waiting for the transport (at most ``queueLimit`` plus one piece).
    private var queue = PieceQueue()
    /// Bumped to stop the encoder thread (a speculative start overtaken by the reply, or the session's end).
    private var generation = 0
    private var worker: DispatchGroup?
    private var finished = false
    private var failure: (any Error)?
    private var ended = false
    private var report: Report
    // Owned by the encoder thread.
    private var controller = CompressionLevelController()
    private var drain: DrainRateEstimator
    private var storedUpTo = 0
    private var windowStart = ContinuousClock.now
    private var windowBusy = Duration.zero
    private var windowBytes = 0
    /// Encoded bytes held for the transport at most: enough to fill a fast link's window between reads.
    static let queueLimit = 16 << 20
    /// How long a read waits for bytes (the receiver's answer, or the encoder).
    static let readTimeout: TimeInterval = 120

    /// Maps `path` and announces its pages.
    /// - Parameters:
    ///   - path: A regular file (a RAM image, a disk image).
    ///   - name: The name the receiver files it under (default: the file's name).
    ///   - mode: ``EncodingMode/auto`` or a fixed level (not ``EncodingMode/none``).
    ///   - linkBytesPerSecond: The link rate assumed until the transport's pace is measured.
    ///   - store: This node's chunk store: the image's pages and manifest are kept there, and an earlier
    ///     image kept there that the receiver holds too becomes the baseline.
    /// - Throws: ``TransportError`` (`sourceFailed`) if the file cannot be read.
    public init(
        path: String, name: String? = nil, mode: EncodingMode, linkBytesPerSecond: Double,
        store: SharedChunkStore? = nil
    ) throws {
        precondition(mode != .none, "an ImageFileProducer encodes")
        let (descriptor, status) = try TransferSource.openRegularFile(
            path, advice: "--encode needs a file; send streams with --encode none")
        defer { close(descriptor) }
        let length = Int(status.st_size)
        if length > 0 {
            guard let base = mmap(nil, length, PROT_READ, MAP_PRIVATE, descriptor, 0), base != MAP_FAILED else {
                throw TransportError(
                    .sourceFailed, expected: "to map \(path)", found: String(cString: strerror(errno)))
            }
            _ = madvise(base, length, MADV_SEQUENTIAL)
            mapping = UnsafeRawBufferPointer(start: base, count: length)
        } else {
            mapping = UnsafeRawBufferPointer(start: nil, count: 0)
        }
        self.name = name ?? String(path.split(separator: "/").last ?? Substring(path))
        self.mode = mode
        let started = ContinuousClock.now
        self.store = store
        let imageKeys = store == nil ? [] : Self.pageKeys(of: mapping)
        hashedPageKeys = store == nil ? nil : imageKeys
        candidates = EncodedTransferPlan.baselineCandidates(for: imageKeys, among: store?.recentManifests() ?? [])
        offerContent = EncodedObjectOffer(imageLength: UInt64(length), baselines: candidates.map(\.identity))
            .serialized()
        let level: Int? = if case .level(let fixed) = mode { fixed } else { 3 }
        encoder = try ImageEncoder(configuration: .init(compressionLevel: level))
        drain = DrainRateEstimator(initial: linkBytesPerSecond)
        report = Report(
            imageBytes: UInt64(length), encodedBytes: 0, pages: [:], batchesByLevel: [:],
            queriedPages: 0, heldPages: 0, receiverHasStore: false, baseline: nil,
            hashingSeconds: store == nil ? 0 : (ContinuousClock.now - started).seconds, encodeSeconds: 0)
        // With no baseline to offer, the receiver's reply can only add references (when its store holds
        // chunks): encoding starts now, during the handshake, and starts over in that case.
        if candidates.isEmpty { startEncoding(known: nil) }
    }

    deinit {
        if let base = mapping.baseAddress { munmap(UnsafeMutableRawPointer(mutating: base), mapping.count) }
    }

    /// What the encoding did so far.
    public var currentReport: Report {
        condition.lock()
        defer { condition.unlock() }
        return report
    }

    /// Takes the receiver's ``DWCPEncoding/EncodedObjectReply``: the baseline, and whether to ask the page query.
    /// - Returns: The ``DWCPEncoding/EncodedObjectQuery``, or nil (encoding then starts, or goes on).
    public func accepted(reply: [UInt8]) throws -> [UInt8]? {
        let answer = try EncodedObjectReply(serialized: reply, baselines: candidates.count)
        // The receiver's choice of baseline, if this node can still rebuild it from its store.
        let chosen = answer.baseline.flatMap { index in store?.materialize(candidates[index]).map { (index, $0) } }
        var asked: [ChunkKey] = []
        if answer.wantsQuery {
            let started = ContinuousClock.now
            let pageKeys = hashedPageKeys ?? Self.pageKeys(of: mapping)
            condition.lock()
            hashedPageKeys = pageKeys
            report.hashingSeconds += (ContinuousClock.now - started).seconds
            condition.unlock()
            asked = EncodedTransferPlan.queryKeys(
                pageKeys: pageKeys, baseline: chosen.map { candidates[$0.0].pages } ?? [])
        }
        condition.lock()
        report.receiverHasStore = answer.hasStore
        report.baseline = chosen.map { "\(candidates[$0.0].identity)" }
        report.queriedPages = asked.count
        queried = asked
        let speculating = worker != nil
        condition.unlock()
        if speculating && chosen == nil && asked.isEmpty { return nil }  // what was encoded stands
        stopEncoding()
        condition.lock()
        baseline = chosen?.1
        condition.unlock()
        if asked.isEmpty {
            startEncoding(known: nil)
            return nil
        }
        return EncodedObjectQuery(prefixes: asked.map(\.prefix)).serialized()
    }

    /// Takes the ``DWCPEncoding/EncodedObjectAnswer`` and starts encoding with the pages it says are held.
    public func answered(_ answer: [UInt8]) throws {
        condition.lock()
        let keys = queried
        condition.unlock()
        let flags = try EncodedObjectAnswer(serialized: answer, expectedCount: keys.count)
        var held = Set<ChunkKey>()
        for (key, isHeld) in zip(keys, flags.held) where isHeld { held.insert(key) }
        condition.lock()
        report.heldPages = held.count
        condition.unlock()
        // Without a held page, the encoder skips SHA-256 altogether.
        startEncoding(known: held.isEmpty ? nil : HeldChunks(keys: held))
    }

    /// Stops the encoder thread and wakes a waiting read.
    public func sessionEnded() {
        condition.lock()
        ended = true
        generation += 1
        condition.broadcast()
        condition.unlock()
    }

    /// The next encoded bytes, waiting (at most ``readTimeout``) for the encoder or the receiver's answer.
    public func read(maximum: Int) throws -> ByteBuffer? {
        condition.lock()
        defer { condition.unlock() }
        let deadline = Date(timeIntervalSinceNow: Self.readTimeout)
        while queue.readableBytes == 0 && !finished && failure == nil && !ended {
            guard condition.wait(until: deadline) else {
                throw TransportError(
                    .protocolViolation, expected: "encoded bytes (or the receiver's answer to the page query)",
                    found: "none for \(Int(Self.readTimeout)) s")
            }
        }
        if let failure { throw failure }
        guard !ended else {
            throw TransportError(.cancelled, expected: "an open session", found: "the session ended")
        }
        guard let slice = queue.take(maximum: maximum) else { return nil }
        windowBytes += slice.readableBytes
        condition.broadcast()  // room for the encoder
        return slice
    }

    /// Stops the encoder thread, if one runs, and drops what it encoded.
    private func stopEncoding() {
        condition.lock()
        generation += 1
        condition.broadcast()
        let running = worker
        condition.unlock()
        running?.wait()
        condition.lock()
        worker = nil
        queue.clear()
        finished = false
        report.encodedBytes = 0
        report.encodeSeconds = 0
        report.batchesByLevel = [:]
        report.pages = [:]
        condition.unlock()
    }

    /// (Re)starts encoding on a thread of its own, which runs ahead of the transport by at most
    /// ``queueLimit`` bytes.
    private func startEncoding(known: HeldChunks?) {
        stopEncoding()
        condition.lock()
        let stream = ImageEncoder.Stream(
            encoder: encoder, image: mapping,
            baseline: baseline?.image, known: known)
        let mine = generation
        let group = DispatchGroup()
        worker = group
        storedUpTo = 0
        windowStart = .now
        condition.unlock()
        group.enter()
        // Only the new thread uses the stream from here on.
        nonisolated(unsafe) let encoding = stream
        Thread.detachNewThread { [self] in
            defer { group.leave() }
            encode(encoding, generation: mine)
        }
    }

    /// The encoder thread: piece after piece into the queue, waiting while it is full.
    private func encode(_ stream: ImageEncoder.Stream, generation mine: Int) {
        do {
            while true {
                condition.lock()
                while queue.readableBytes >= Self.queueLimit && generation == mine {
                    condition.wait()
                }
                let current = generation == mine
                condition.unlock()
                guard current else { return }
                let more = try produce(stream, generation: mine)
                guard more else { return }
            }
        } catch {
            condition.lock()
            if generation == mine { failure = error }
            condition.broadcast()
            condition.unlock()
        }
    }

    /// Encodes the next piece into the queue, choosing its level and learning from what it cost.
    /// - Returns: Whether there is more to encode.
    private func produce(_ stream: ImageEncoder.Stream, generation mine: Int) throws -> Bool {
        let now = ContinuousClock.now
        condition.lock()
        let taken = windowBytes
        condition.unlock()
        let wall = now - windowStart
        if wall >= .milliseconds(250) {
            drain.record(busy: windowBusy.seconds, wall: wall.seconds, bytesTaken: taken)
            windowStart = now
            windowBusy = .zero
            condition.lock()
            windowBytes = 0
            condition.unlock()
        }
        let level: Int? =
            switch mode {
            case .auto: controller.nextLevel(linkBytesPerSecond: drain.estimate)
            case .level(let fixed): fixed
            case .none: nil
            }
        var piece = ByteBuffer()
        let covered = try stream.next(compressionLevel: level) { bytes in piece.writeBytes(bytes) }
        let took = ContinuousClock.now - now
        windowBusy += took
        if let covered, covered > 0 {
            controller.record(
                .init(
                    level: level, inputBytes: covered, outputBytes: piece.readableBytes,
                    seconds: max(took.seconds, 1e-9)))
            try keep(upTo: storedUpTo + covered)
        }
        if stream.isFinished, let store, let pageKeys = hashedPageKeys {
            try store.save(
                ImageManifest(identity: ChunkIdentity(of: mapping), imageLength: mapping.count, pages: pageKeys))
        }
        condition.lock()
        defer { condition.unlock() }
        guard generation == mine else { return false }
        queue.append(piece)
        report.encodeSeconds += took.seconds
        report.encodedBytes = UInt64(encoder.statistics.encodedLength)
        if let covered, covered > 0 { report.batchesByLevel[level.map { "\($0)" } ?? "raw", default: 0] += 1 }
        for kind in ImageFormat.RecordKind.allCases where encoder.statistics.count(of: kind) > 0 {
            report.pages["\(kind)"] = encoder.statistics.count(of: kind)
        }
        finished = stream.isFinished
        condition.broadcast()
        return !finished
    }

    /// Puts the image's pages up to `end` into this node's store, so a later transfer can use the image
    /// as its baseline.
    private func keep(upTo end: Int) throws {
        guard let store, let pageKeys = hashedPageKeys else { return }
        let pageSize = ImageFormat.pageSize
        while storedUpTo < end {
            let page = UnsafeRawBufferPointer(rebasing: mapping[storedUpTo..<min(end, storedUpTo + pageSize)])
            if pageKeys[storedUpTo / pageSize] != nil { try store.put(page) }
            storedUpTo += page.count
        }
    }

    /// The SHA-256 of every page (nil for zero pages), hashed on every core.
    static func pageKeys(of image: UnsafeRawBufferPointer) -> [ChunkKey?] {
        let pageSize = ImageFormat.pageSize
        let pageCount = (image.count + pageSize - 1) / pageSize
        guard pageCount > 0 else { return [] }
        let slices = max(1, min(System.coreCount, pageCount / 1024 + 1))
        let perSlice = (pageCount + slices - 1) / slices
        let results = NIOLockedValueBox([[ChunkKey?]](repeating: [], count: slices))
        // The mapping outlives the calls, which all return before concurrentPerform does.
        nonisolated(unsafe) let image = image
        DispatchQueue.concurrentPerform(iterations: slices) { slice in
            var keys: [ChunkKey?] = []
            for page in (slice * perSlice)..<min(pageCount, (slice + 1) * perSlice) {
                let start = page * pageSize
                let bytes = UnsafeRawBufferPointer(rebasing: image[start..<min(image.count, start + pageSize)])
                keys.append(ImageFormat.isZeroPage(bytes) ? nil : ChunkKey(of: bytes))
            }
            results.withLockedValue { $0[slice] = keys }
        }
        return Array(results.withLockedValue { $0 }.joined())
    }
}

/// The encoded pieces waiting for the transport, handed out in slices. Pieces are kept apart (not appended
/// to one buffer, whose storage the slices still in flight would pin and make grow to the whole stream).
struct PieceQueue {
    private var pieces: [ByteBuffer] = []
    private var head = 0
    /// The bytes waiting.
    private(set) var readableBytes = 0

    mutating func append(_ piece: ByteBuffer) {
        guard piece.readableBytes > 0 else { return }
        pieces.append(piece)
        readableBytes += piece.readableBytes
    }

    /// At most `maximum` bytes from the front, or nil if none wait.
    mutating func take(maximum: Int) -> ByteBuffer? {
        guard head < pieces.count, maximum > 0 else { return nil }
        let slice = pieces[head].readSlice(length: min(maximum, pieces[head].readableBytes))!
        readableBytes -= slice.readableBytes
        if pieces[head].readableBytes == 0 {
            pieces[head] = ByteBuffer()
            head += 1
            if head >= 64 {
                pieces.removeFirst(head)
                head = 0
            }
        }
        return slice
    }

    mutating func clear() {
        pieces.removeAll()
        head = 0
        readableBytes = 0
    }
}

/// The pages the receiver said it holds.
struct HeldChunks: KnownChunks {
    let keys: Set<ChunkKey>

    func contains(_ key: ChunkKey) -> Bool { keys.contains(key) }
}

/// How fast the transport takes the encoded stream, which is what the level controller needs as the link
/// rate (sans-IO: the producer reports each window's busy time, wall time and bytes taken).
///
/// When the encoder idled for part of a window (the queue was full), the link was the limit, and the bytes
/// taken per second are its rate. When the encoder was busy throughout, the link may be faster than what
/// was taken, so the estimate grows by a quarter per window — the controller then moves to faster levels
/// until the encoder keeps up (as `zstd --adapt` does) — but never past the rate the link was told to have
/// or was seen to carry: past that, storing batches raw would look best and send several times the bytes.
struct DrainRateEstimator {
    /// The estimated link rate, in bytes per second.
    private(set) var estimate: Double
    /// The most the estimate grows to without the link having shown it: the hinted rate, or the fastest
    /// link-bound window.
    private(set) var ceiling: Double
    /// A window with the encoder busy for less than this share of it was limited by the link.
    static let linkBoundBelow = 0.85
    /// Growth per encoder-bound window.
    static let growth = 1.25

    init(initial: Double) {
        estimate = max(initial, 1e5)
        ceiling = estimate
    }

    mutating func record(busy: Double, wall: Double, bytesTaken: Int) {
        guard wall > 0 else { return }
        let taken = Double(bytesTaken) / wall
        if busy / wall < Self.linkBoundBelow {
            estimate = max(taken, 1e5)
            ceiling = max(ceiling, estimate)
        } else {
            estimate = min(max(estimate, taken) * Self.growth, max(ceiling, taken))
        }
    }
}

extension Duration {
    var seconds: Double {
        let (whole, fraction) = components
        return Double(whole) + Double(fraction) * 1e-18
    }
}
