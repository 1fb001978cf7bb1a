import DWCPEncoding
import DWCPTransport
import Dispatch
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
        /// Seconds spent hashing the file for the announcement (before the offer).
        public var announceSeconds: Double
        /// Seconds spent encoding (one core).
        public var encodeSeconds: Double
    }

    public let name: String
    public let offerContent: [UInt8]
    private let mapping: UnsafeRawBufferPointer
    private let mode: EncodingMode
    /// Each page's SHA-256, nil for zero pages.
    private let pageKeys: [ChunkKey?]
    /// The distinct keys asked about, in the order of the query's prefixes.
    private var queried: [ChunkKey] = []
    private var known: HeldChunks?
    /// The candidate baselines offered, most similar first.
    private let candidates: [ImageManifest]
    private let store: SharedChunkStore?
    /// The baseline's bytes, owned here because the encoder reads them until the stream ends.
    private var baseline: UnsafeMutableRawBufferPointer?
    private var baselineLength = 0
    private var storedUpTo = 0
    private let encoder: ImageEncoder
    private let lock = NIOLock()
    private var stream: ImageEncoder.Stream?
    private var ended = false
    /// Signalled when the stream can start (the answer arrived) or the session ended.
    private let ready = DispatchSemaphore(value: 0)
    /// How long a read waits for the receiver's answer.
    static let answerTimeout = DispatchTimeInterval.seconds(120)
    private var controller = CompressionLevelController()
    private var drain: DrainRateEstimator
    private var pending = ByteBuffer()
    private var report: Report
    private var windowStart = ContinuousClock.now
    private var windowBusy = Duration.zero
    private var windowBytes = 0

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
        let descriptor = open(path, O_RDONLY | O_CLOEXEC)
        guard descriptor >= 0 else {
            throw TransportError(
                .sourceFailed, expected: "a readable file at \(path)", found: String(cString: strerror(errno)),
                advice: "check the path and its permissions")
        }
        defer { close(descriptor) }
        var status = stat()
        guard fstat(descriptor, &status) == 0, (status.st_mode & S_IFMT) == S_IFREG else {
            throw TransportError(
                .sourceFailed, expected: "a regular file at \(path)", found: "a directory or special file",
                advice: "--encode needs a file; send streams with --encode none")
        }
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
        pageKeys = Self.pageKeys(of: mapping)
        self.store = store
        let imageKeys = pageKeys
        candidates = Array(
            (store?.recentManifests() ?? [])
                .map { ($0, $0.similarity(to: imageKeys)) }
                .filter { $0.1 > 0 }
                .sorted { $0.1 > $1.1 }
                .map(\.0)
                .prefix(EncodedObjectOffer.maximumBaselines))
        offerContent = EncodedObjectOffer(imageLength: UInt64(length), baselines: candidates.map(\.identity))
            .serialized()
        let level: Int? = if case .level(let fixed) = mode { fixed } else { 3 }
        encoder = try ImageEncoder(configuration: .init(compressionLevel: level))
        drain = DrainRateEstimator(initial: linkBytesPerSecond)
        report = Report(
            imageBytes: UInt64(length), encodedBytes: 0, pages: [:], batchesByLevel: [:],
            queriedPages: 0, heldPages: 0, receiverHasStore: false, baseline: nil,
            announceSeconds: (ContinuousClock.now - started).seconds, encodeSeconds: 0)
    }

    deinit {
        if let base = mapping.baseAddress { munmap(UnsafeMutableRawPointer(mutating: base), mapping.count) }
        baseline?.deallocate()
    }

    /// What the encoding did so far.
    public var currentReport: Report {
        lock.withLock {
            var copy = report
            for kind in ImageFormat.RecordKind.allCases where encoder.statistics.count(of: kind) > 0 {
                copy.pages["\(kind)"] = encoder.statistics.count(of: kind)
            }
            return copy
        }
    }

    public func accepted(reply: [UInt8]) throws -> [UInt8]? {
        let answer = try EncodedObjectReply(serialized: reply, baselines: candidates.count)
        // The receiver's choice of baseline, if this node can still rebuild it from its store.
        let chosen = answer.baseline.flatMap { index in store?.materialize(candidates[index]).map { (index, $0) } }
        let baselinePages = chosen.map { candidates[$0.0].pages } ?? []
        var seen = Set<ChunkKey>()
        var asked: [ChunkKey] = []
        if answer.wantsQuery {
            for (index, key) in pageKeys.enumerated() where asked.count < EncodedObjectQuery.maximumPrefixes {
                // A page unchanged since the baseline needs no reference.
                guard let key, index >= baselinePages.count || baselinePages[index] != key else { continue }
                if seen.insert(key).inserted { asked.append(key) }
            }
        }
        lock.withLock {
            report.receiverHasStore = answer.hasStore
            report.baseline = chosen.map { "\(candidates[$0.0].identity)" }
            report.queriedPages = asked.count
            baseline = chosen?.1
            baselineLength = chosen.map { candidates[$0.0].imageLength } ?? 0
            queried = asked
        }
        guard !asked.isEmpty else {
            start(known: nil)
            return nil
        }
        return EncodedObjectQuery(prefixes: asked.map(\.prefix)).serialized()
    }

    public func answered(_ answer: [UInt8]) throws {
        let keys = lock.withLock { queried }
        let flags = try EncodedObjectAnswer(serialized: answer, expectedCount: keys.count)
        var held = Set<ChunkKey>()
        for (key, isHeld) in zip(keys, flags.held) where isHeld { held.insert(key) }
        lock.withLock { report.heldPages = held.count }
        // Without a held page, the encoder skips SHA-256 altogether.
        start(known: held.isEmpty ? nil : HeldChunks(keys: held))
    }

    public func sessionEnded() {
        lock.withLock { ended = true }
        ready.signal()
    }

    /// Makes the encoder's stream and lets reads proceed.
    private func start(known: HeldChunks?) {
        lock.withLock {
            guard stream == nil else { return }
            stream = ImageEncoder.Stream(
                encoder: encoder, image: mapping,
                baseline: baseline.map { UnsafeRawBufferPointer(rebasing: $0[0..<baselineLength]) }, known: known)
            windowStart = .now
        }
        ready.signal()
    }

    public func read(maximum: Int) throws -> ByteBuffer? {
        while lock.withLock({ stream == nil && !ended }) {
            guard ready.wait(timeout: .now() + Self.answerTimeout) == .success else {
                throw TransportError(
                    .protocolViolation, expected: "the receiver's answer to the page query",
                    found: "none after \(Self.answerTimeout)")
            }
        }
        return try lock.withLock {
            guard let stream else {
                throw TransportError(.cancelled, expected: "an open session", found: "the session ended")
            }
            while pending.readableBytes == 0 {
                guard !stream.isFinished else { return nil }
                try produce(stream)
            }
            let slice = pending.readSlice(length: min(maximum, pending.readableBytes))!
            windowBytes += slice.readableBytes
            if pending.readableBytes == 0 { pending.clear() }
            return slice
        }
    }

    /// Encodes the next piece into `pending`, choosing its level and learning from what it cost.
    private func produce(_ stream: ImageEncoder.Stream) throws {
        let now = ContinuousClock.now
        let wall = now - windowStart
        if wall >= .milliseconds(250) {
            drain.record(busy: windowBusy.seconds, wall: wall.seconds, bytesTaken: windowBytes)
            windowStart = now
            windowBusy = .zero
            windowBytes = 0
        }
        let level: Int? =
            switch mode {
            case .auto: controller.nextLevel(linkBytesPerSecond: drain.estimate)
            case .level(let fixed): fixed
            case .none: nil
            }
        var piece = 0
        let covered = try stream.next(compressionLevel: level) { bytes in
            pending.writeBytes(bytes)
            piece = bytes.count
        }
        let took = ContinuousClock.now - now
        windowBusy += took
        report.encodeSeconds += took.seconds
        report.encodedBytes += UInt64(piece)
        if let covered, covered > 0 {
            report.batchesByLevel[level.map { "\($0)" } ?? "raw", default: 0] += 1
            controller.record(
                .init(level: level, inputBytes: covered, outputBytes: piece, seconds: max(took.seconds, 1e-9)))
            try keep(upTo: storedUpTo + covered)
        }
        if stream.isFinished, let store {
            try store.save(
                ImageManifest(identity: ChunkIdentity(of: mapping), imageLength: mapping.count, pages: pageKeys))
        }
    }

    /// Puts the image's pages up to `end` into this node's store, so a later transfer can use the image
    /// as its baseline.
    private func keep(upTo end: Int) throws {
        guard let store else { return }
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

/// The pages the receiver said it holds.
struct HeldChunks: KnownChunks {
    let keys: Set<ChunkKey>

    func contains(_ key: ChunkKey) -> Bool { keys.contains(key) }
}

/// How fast the transport takes the encoded stream, which is what the level controller needs as the link
/// rate (sans-IO: the producer reports each window's busy time, wall time and bytes taken).
///
/// When the encoder idled for part of a window, the transport — the link — was the limit, and the bytes it
/// took per second are the link's rate. When the encoder was busy throughout, the link may be faster than
/// what was taken, so the estimate grows by a quarter per window: the controller then moves to faster
/// levels until the encoder keeps up or the fastest one is in use (as `zstd --adapt` does).
struct DrainRateEstimator {
    /// The estimated link rate, in bytes per second.
    private(set) var estimate: Double
    /// A window with the encoder busy for less than this share of it was limited by the link.
    static let linkBoundBelow = 0.85
    /// Growth per encoder-bound window.
    static let growth = 1.25
    /// The highest estimate (10 Gbit/s).
    static let ceiling = 1.25e9

    init(initial: Double) {
        estimate = min(max(initial, 1e5), Self.ceiling)
    }

    mutating func record(busy: Double, wall: Double, bytesTaken: Int) {
        guard wall > 0 else { return }
        let taken = Double(bytesTaken) / wall
        if busy / wall < Self.linkBoundBelow {
            estimate = max(taken, 1e5)
        } else {
            estimate = min(max(estimate, taken) * Self.growth, Self.ceiling)
        }
    }
}

extension Duration {
    var seconds: Double {
        let (whole, fraction) = components
        return Double(whole) + Double(fraction) * 1e-18
    }
}
