import CNovaCronSystem
import DWCPEncoding
import DWCPTransport
import Foundation
import NIOConcurrencyHelpers
import NIOCore

#if canImport(Glibc)
    import Glibc
#endif

/// A node's chunk store, shared by the sessions of one process (`novacron receive|send --store DIR`),
/// with the manifests of the images the node sent or received (`DIR/manifests/`), which later
/// transfers between two nodes holding the same image are encoded against.
public final class SharedChunkStore: @unchecked Sendable {
    private let lock = NIOLock()
    private let store: PersistentChunkStore
    private let manifestDirectory: String
    /// Resemblance features of the stream chunks kept since this process opened the store (memory only).
    private var similarity = SimilarityIndex()
    /// Chunks kept without their features yet (``keepUnindexed(_:)``), oldest first.
    private var unindexed: [ChunkKey] = []
    /// The last version of each QEMU page slot a migration stream sent or brought (memory only; a cache:
    /// starting over costs the next migration ratio, not bytes).
    private var pageVersions: [PageSlot: ChunkKey] = [:]
    /// The most page slots remembered (4 M: 16 GiB of guest memory).
    static let pageVersionCapacity = 4 << 20
    /// How many manifests are kept (the newest).
    public static let keptManifests = 8

    /// Opens (or creates) the store in `directory`.
    /// - Parameters:
    ///   - directory: The store's directory (its parent must exist).
    ///   - capacity: The most bytes its segments may take before the oldest is evicted.
    /// - Throws: ``DWCPEncoding/EncodingError`` (`storeInUse` if another process has it open).
    public init(directory: String, capacity: Int) throws {
        store = try PersistentChunkStore(
            directory: directory, configuration: .init(capacity: capacity))
        manifestDirectory = directory + "/manifests"
        guard mkdir(manifestDirectory, 0o755) == 0 || errno == EEXIST else {
            throw EncodingError(
                .ioFailed, expected: "to create \(manifestDirectory)", found: String(cString: strerror(errno)))
        }
    }

    /// The number of chunks held.
    public var count: Int { lock.withLock { store.count } }

    func holdsPrefixes(_ prefixes: [UInt64]) -> [Bool] {
        lock.withLock { store.holdsPrefixes(prefixes) }
    }

    @discardableResult
    func put(_ bytes: UnsafeRawBufferPointer) throws -> ChunkKey {
        try lock.withLock { try store.put(bytes) }
    }

    func contents(of key: ChunkKey) -> [UInt8]? {
        lock.withLock { store.contents(of: key) }
    }

    /// Writes what the store holds in memory and makes it durable.
    public func sync() throws {
        try lock.withLock { try store.sync() }
    }

    /// Keeps a chunk of a migration stream, indexed by its resemblance features or as its page slot's latest
    /// version, so a later stream can send its next version as a delta.
    /// - Throws: The store's error (a full disk, say).
    func keep(_ bytes: UnsafeRawBufferPointer, key: ChunkKey?, features: ChunkFeatures?, slot: PageSlot? = nil) throws {
        try lock.withLock {
            let stored = try key.map { key throws(EncodingError) in try store.put(bytes, key: key) } ?? store.put(bytes)
            if let features { similarity.insert(features, key: stored) }
            if let slot { notePageLocked(slot, key: stored) }
        }
    }

    /// Records `key` as the latest version of the page in `slot` (a chunk the store holds: a reference).
    func notePage(_ slot: PageSlot, key: ChunkKey) {
        lock.withLock { notePageLocked(slot, key: key) }
    }

    private func notePageLocked(_ slot: PageSlot, key: ChunkKey) {
        if pageVersions.count >= Self.pageVersionCapacity && pageVersions[slot] == nil {
            pageVersions.removeAll(keepingCapacity: true)
        }
        pageVersions[slot] = key
    }

    /// The latest version of the page in `slot` this node sent or received, if any.
    func previousVersion(of slot: PageSlot) -> ChunkKey? {
        lock.withLock { pageVersions[slot] }
    }

    /// Keeps a chunk that arrived in a migration stream now, and leaves its resemblance features to
    /// ``indexUnindexed()``: the destination's guest is paused while the stream arrives, and the features only
    /// matter when this node sends the VM on.
    /// - Throws: The store's error (a full disk, say).
    /// - Parameters:
    ///   - key: The chunk's key if the caller computed it from these bytes (else the store hashes them).
    ///   - slot: The page slot of a chunk that is a QEMU page record: recorded as its latest version, and not
    ///     indexed by features (a page's next version is found by its slot).
    func keepUnindexed(_ bytes: UnsafeRawBufferPointer, key: ChunkKey? = nil, slot: PageSlot? = nil) throws {
        try lock.withLock {
            let stored = try key.map { key throws(EncodingError) in try store.put(bytes, key: key) } ?? store.put(bytes)
            if let slot {
                notePageLocked(slot, key: stored)
            } else {
                unindexed.append(stored)
            }
        }
    }

    /// Computes and indexes the features of the chunks ``keepUnindexed(_:)`` kept (one at a time, so the lock
    /// is never held for long). Chunks evicted meanwhile are skipped.
    func indexUnindexed() {
        let keys = lock.withLock {
            defer { unindexed = [] }
            return unindexed
        }
        for key in keys {
            guard let bytes = contents(of: key) else { continue }
            let features = bytes.withUnsafeBytes { ChunkFeatures(of: $0) }
            lock.withLock { similarity.insert(features, key: key) }
        }
    }

    /// Chunks held that resemble one with `features`.
    func similar(to features: ChunkFeatures) -> [ChunkKey] {
        lock.withLock { similarity.candidates(for: features) }
    }

    /// A Bloom filter of the chunks held, for a sender to refer to them.
    func summary(falsePositiveRate: Double) -> ChunkSummary {
        lock.withLock { store.summary(falsePositiveRate: falsePositiveRate) }
    }

    /// Keeps `manifest` (written to a temporary file, synced, renamed), and drops the oldest beyond
    /// ``keptManifests``.
    func save(_ manifest: ImageManifest) throws {
        let path = manifestDirectory + "/\(manifest.identity).manifest"
        let bytes = manifest.serialized()
        let temporary = path + ".tmp"
        let descriptor = open(temporary, O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0o644)
        guard descriptor >= 0 else { throw Self.ioError("create \(temporary)") }
        let written = bytes.withUnsafeBytes { write(descriptor, $0.baseAddress, $0.count) }
        let synced = fsync(descriptor) == 0
        close(descriptor)
        guard written == bytes.count, synced, rename(temporary, path) == 0 else {
            unlink(temporary)
            throw Self.ioError("write \(path)")
        }
        for old in manifestFiles().dropFirst(Self.keptManifests) { unlink(old.path) }
    }

    /// The kept manifests, newest first (unreadable or damaged ones are skipped).
    func recentManifests() -> [ImageManifest] {
        manifestFiles().compactMap { file in
            (try? Data(contentsOf: URL(fileURLWithPath: file.path))).flatMap {
                try? ImageManifest(serialized: Array($0))
            }
        }
    }

    /// The image `manifest` describes, rebuilt from the store's pages, or nil if a page is missing. Zero
    /// pages are not touched (fresh anonymous memory reads as zeros without being allocated).
    func materialize(_ manifest: ImageManifest) -> ImageMemory? {
        guard let image = ImageMemory(length: manifest.imageLength) else { return nil }
        let complete = lock.withLock {
            for (index, key) in manifest.pages.enumerated() {
                guard let key else { continue }
                let start = index * ImageFormat.pageSize
                let length = min(ImageFormat.pageSize, manifest.imageLength - start)
                guard let page = store.contents(of: key), page.count == length else { return false }
                page.withUnsafeBytes {
                    UnsafeMutableRawBufferPointer(rebasing: image.memory[start..<(start + length)]).copyMemory(from: $0)
                }
            }
            return true
        }
        return complete ? image : nil
    }

    private func manifestFiles() -> [(path: String, modified: Date)] {
        let names = (try? FileManager.default.contentsOfDirectory(atPath: manifestDirectory)) ?? []
        return names.filter { $0.hasSuffix(".manifest") }.compactMap { name in
            let path = manifestDirectory + "/" + name
            guard let modified = try? FileManager.default.attributesOfItem(atPath: path)[.modificationDate] as? Date
            else { return nil }
            return (path, modified)
        }.sorted { $0.modified > $1.modified }
    }

    private static func ioError(_ action: String) -> EncodingError {
        EncodingError(.ioFailed, expected: "to \(action)", found: String(cString: strerror(errno)))
    }
}

/// Opens an ``ImageFileConsumer`` for every object offered as an HDE image stream
/// (`ReceiveConfiguration.consumers`).
public struct ImageConsumerFactory: TransferConsumerFactory {
    /// The receiver's chunk store, if it keeps one: references resolve from it and every page received is
    /// put in it for the next transfer.
    public let store: SharedChunkStore?
    /// The largest image accepted.
    public let maximumImageLength: Int

    /// Creates the factory.
    /// - Parameters:
    ///   - store: The chunk store, or nil.
    ///   - maximumImageLength: The largest image accepted (default 1 TiB).
    public init(store: SharedChunkStore?, maximumImageLength: Int = 1 << 40) {
        self.store = store
        self.maximumImageLength = maximumImageLength
    }

    /// Checks the offer and the destination, picks the baseline, and opens the consumer.
    /// - Throws: ``DWCPTransport/TransportError``: `refused` (not an HDE offer), `malformedMessage`,
    ///   `invalidArgument` (a stream destination), `destinationFailed` (an existing file without overwrite).
    public func consumer(for offer: SessionMessage.Offer, destination: ReceiveDestination, overwrite: Bool) throws
        -> any TransferConsumer
    {
        guard EncodedObjectOffer.isOffer(offer.content) else {
            throw TransportError(
                .refused, expected: "an HDE image stream or plain bytes", found: "content it does not know",
                advice: "run the same NovaCron version on both nodes")
        }
        let announced: EncodedObjectOffer
        do {
            announced = try EncodedObjectOffer(serialized: offer.content, maximumImageLength: maximumImageLength)
        } catch {
            throw TransportError(.malformedMessage, expected: "a valid encoded-object offer", found: "\(error)")
        }
        guard let target = try destination.target(forObjectNamed: offer.name) else {
            throw TransportError(
                .invalidArgument, expected: "a file or directory destination for an encoded object",
                found: "a stream destination",
                advice: "receive into --out FILE or DIR, or send with --encode none")
        }
        if access(target, F_OK) == 0 && !overwrite {
            throw TransportError(
                .destinationFailed, expected: "no file at \(target)", found: "an existing file",
                advice: "remove it or pass --overwrite")
        }
        let manifests = Dictionary(
            (store?.recentManifests() ?? []).map { ($0.identity, $0) }, uniquingKeysWith: { first, _ in first })
        let (reply, baseline) = EncodedTransferPlan.reply(
            to: announced, hasStore: store != nil, storeIsEmpty: (store?.count ?? 0) == 0
        ) { identity in manifests[identity].flatMap { store?.materialize($0) } }
        return try ImageFileConsumer(
            target: target, imageLength: Int(announced.imageLength), store: store, baseline: baseline,
            reply: reply.serialized())
    }
}

/// Decodes an HDE image stream as it arrives into `NAME.novacron-partial`, then, once the stream's SHA-256
/// and the image's identity matched, syncs it and renames it to `NAME`. Every page goes into the chunk
/// store as it is written, and the store is synced before the commit.
///
/// The decoding runs on a thread of its own (``QueuedDecoding``), at most ``QueuedDecoding/queueLimit``
/// bytes behind what the transport handed over, so the session goes on acknowledging chunks while a burst of
/// them (all that arrived behind a late one) is decoded. Measured over wanem (global, 512 MiB of random
/// bytes): decoding inside the session's task ran at 0.88–0.95× `--encode none`, on its own thread 0.97×.
public final class ImageFileConsumer: TransferConsumer, @unchecked Sendable {
    /// The ``DWCPEncoding/EncodedObjectReply`` for the accept.
    public let reply: [UInt8]
    /// Where the image will be.
    public var path: String? { target }
    private let target: String
    private let partial: String
    private let imageLength: Int
    private let sink: FileImageSink
    private let store: SharedChunkStore?
    /// The baseline the decoder reads, kept here (it outlives the stream).
    private let baseline: ImageMemory?
    private var finished = false
    private let decoding: QueuedDecoding

    init(
        target: String, imageLength: Int, store: SharedChunkStore?, baseline: ImageMemory?, reply: [UInt8]
    ) throws {
        self.baseline = baseline
        self.target = target
        partial = target + ".novacron-partial"
        self.imageLength = imageLength
        self.reply = reply
        self.store = store
        do {
            sink = try FileImageSink(path: partial, store: store)
            let decoder = try ImageDecoder(limits: .init(maximumImageLength: imageLength))
            decoding = QueuedDecoding(
                ImageDecoder.Stream(
                    decoder: decoder,
                    baseline: baseline?.image,
                    chunks: store.map(StoreChunks.init), sink: sink))
        }
    }

    deinit {
        if !finished { discard() }  // the session ended without deciding: nothing stays behind
    }

    /// Answers an ``DWCPEncoding/EncodedObjectQuery`` from the chunk store.
    public func answer(query: [UInt8]) throws -> [UInt8] {
        let asked = try EncodedObjectQuery(serialized: query)
        let held = store?.holdsPrefixes(asked.prefixes) ?? Array(repeating: false, count: asked.prefixes.count)
        return EncodedObjectAnswer(held: held).serialized()
    }

    /// Hands the next bytes of the stream to the decoding thread, waiting while it is ``queueLimit`` behind.
    /// - Throws: The first decoding error so far.
    public func consume(_ bytes: ByteBuffer) throws {
        try decoding.enqueue(bytes)
    }

    /// Checks the end record and the length, syncs the file and the store, keeps the manifest, and renames
    /// the file into place.
    public func commit() throws -> UInt64 {
        let stream = try decoding.finish()
        let identity = try stream.finish()
        guard stream.imageLength == imageLength else {
            throw TransportError(
                .protocolViolation, expected: "a \(imageLength)-byte image as offered",
                found: "\(stream.imageLength ?? 0) bytes")
        }
        try sink.close()
        if let store {
            try store.save(ImageManifest(identity: identity, imageLength: imageLength, pages: sink.pageKeys))
        }
        guard rename(partial, target) == 0 else {
            throw TransportError(
                .destinationFailed, expected: "to rename \(partial) to \(target)",
                found: String(cString: strerror(errno)))
        }
        finished = true
        return UInt64(imageLength)
    }

    /// Removes the partial file.
    public func discard() {
        decoding.close(cancel: true)
        guard !finished else { return }
        finished = true
        sink.abandon()
        unlink(partial)
    }
}

/// A decoder fed from a queue on a thread of its own (``ImageFileConsumer``'s): the transport hands bytes
/// over and goes on; a burst of chunks arriving behind a late one is decoded off its path.
final class QueuedDecoding: @unchecked Sendable {
    private let stream: ImageDecoder.Stream
    /// Guards everything below.
    private let condition = NSCondition()
    private var queue = PieceQueue()
    /// No more bytes will come: the thread stops once the queue is empty, or at once when `cancelled`.
    private var closing = false
    private var cancelled = false
    private var decoding = true
    private var failure: (any Error)?
    /// Stream bytes handed over but not decoded yet, at most (beyond one more chunk).
    static let queueLimit = 32 << 20

    init(_ stream: ImageDecoder.Stream) {
        self.stream = stream
        Thread.detachNewThread { [self] in decodeQueued() }
    }

    /// Queues `bytes`, waiting while the thread is ``queueLimit`` behind.
    /// - Throws: The first decoding error so far.
    func enqueue(_ bytes: ByteBuffer) throws {
        condition.lock()
        defer { condition.unlock() }
        while queue.readableBytes >= Self.queueLimit && failure == nil && decoding { condition.wait() }
        if let failure { throw failure }
        guard decoding, !closing else {
            throw TransportError(.cancelled, expected: "an open object", found: "it was committed or discarded")
        }
        queue.append(bytes)
        condition.broadcast()
    }

    /// Waits until everything queued is decoded.
    /// - Returns: The decoder's stream, for its end checks.
    /// - Throws: The first decoding error.
    func finish() throws -> ImageDecoder.Stream {
        close(cancel: false)
        condition.lock()
        defer { condition.unlock() }
        if let failure { throw failure }
        return stream
    }

    /// The decoding thread: feeds the queued bytes to the decoder until closed (or the first error).
    private func decodeQueued() {
        condition.lock()
        defer {
            decoding = false
            condition.broadcast()
            condition.unlock()
        }
        while true {
            while queue.readableBytes == 0 && !closing && !cancelled { condition.wait() }
            guard !cancelled, failure == nil, let bytes = queue.take(maximum: .max) else { return }
            condition.broadcast()  // room for the transport
            condition.unlock()
            do {
                try bytes.withUnsafeReadableBytes { try stream.feed($0) }
                condition.lock()
            } catch {
                condition.lock()
                failure = error
                return
            }
        }
    }

    /// Stops taking bytes and waits until the decoding thread has ended.
    func close(cancel: Bool) {
        condition.lock()
        closing = true
        cancelled = cancelled || cancel
        condition.broadcast()
        while decoding { condition.wait() }
        condition.unlock()
    }

}

/// An image's worth of fresh anonymous memory (a rebuilt baseline), unmapped with the object. Pages never
/// written read as zeros and cost nothing.
final class ImageMemory: @unchecked Sendable {
    let memory: UnsafeMutableRawBufferPointer
    let length: Int

    /// Maps `length` bytes (at least one page), or nil if the system refuses.
    init?(length: Int) {
        let size = max(length, 1)
        guard let base = mmap(nil, size, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0),
            base != MAP_FAILED
        else { return nil }
        memory = UnsafeMutableRawBufferPointer(start: base, count: size)
        self.length = length
    }

    deinit {
        munmap(memory.baseAddress, memory.count)
    }

    /// The image's bytes.
    var image: UnsafeRawBufferPointer { UnsafeRawBufferPointer(rebasing: memory[0..<length]) }
}

/// The chunk store as the decoder reads it.
struct StoreChunks: ChunkProvider {
    let store: SharedChunkStore

    func contents(of key: ChunkKey) -> [UInt8]? { store.contents(of: key) }
}

/// Writes the decoded image to a file in order, reads earlier pages back for duplicates, and puts its
/// non-zero pages into the chunk store. (The image is checked by its XXH3-128 identity in the end record;
/// the stream's SHA-256, which both sides report, by the transport.)
final class FileImageSink: DecodedImageSink {
    private var descriptor: Int32
    private let path: String
    private let store: SharedChunkStore?
    private var written = 0
    private var writeback = WritebackSchedule()
    /// Each page's key in the store (nil for zero pages), when there is a store.
    private(set) var pageKeys: [ChunkKey?] = []

    init(path: String, store: SharedChunkStore?) throws {
        descriptor = open(path, O_RDWR | O_CREAT | O_TRUNC | O_CLOEXEC, 0o644)
        guard descriptor >= 0 else {
            throw TransportError(
                .destinationFailed, expected: "to create \(path)", found: String(cString: strerror(errno)))
        }
        self.path = path
        self.store = store
    }

    deinit { abandon() }

    /// Writes the non-zero pages where they belong (zero pages stay holes of the fresh file, which read
    /// back as zeros) and puts them into the store.
    func append(_ bytes: UnsafeRawBufferPointer) throws(EncodingError) {
        var start = 0
        var run: Range<Int>?  // non-zero pages not yet written
        while start < bytes.count {
            let end = min(bytes.count, start + ImageFormat.pageSize)
            let page = UnsafeRawBufferPointer(rebasing: bytes[start..<end])
            if ImageFormat.isZeroPage(page) {
                if store != nil { pageKeys.append(nil) }
                if let pending = run { try write(bytes, pending) }
                run = nil
            } else {
                run = (run?.lowerBound ?? start)..<end
                if let store {
                    do {
                        pageKeys.append(try store.put(page))
                    } catch {
                        throw error as? EncodingError
                            ?? EncodingError(.ioFailed, expected: "to store a page", found: "\(error)")
                    }
                }
            }
            start = end
        }
        if let pending = run { try write(bytes, pending) }
        written += bytes.count
        if let range = writeback.prefixReached(UInt64(written)) {
            // Advisory: an I/O error shows again, and is reported, at the fsync before the commit.
            _ = novacron_start_writeback(descriptor, off_t(range.lowerBound), off_t(range.count))
        }
    }

    /// Writes `run` of the batch being appended (which starts at image offset `written`) at its place.
    private func write(_ batch: UnsafeRawBufferPointer, _ run: Range<Int>) throws(EncodingError) {
        var done = 0
        while done < run.count {
            let count = pwrite(
                descriptor, batch.baseAddress! + run.lowerBound + done, run.count - done,
                off_t(written + run.lowerBound + done))
            guard count > 0 else {
                if count < 0 && errno == EINTR { continue }
                throw Self.failure("write \(path)")
            }
            done += count
        }
    }

    func read(at offset: Int, into destination: UnsafeMutableRawBufferPointer) throws(EncodingError) {
        let count = pread(descriptor, destination.baseAddress, destination.count, off_t(offset))
        guard count == destination.count else {
            throw count < 0
                ? Self.failure("read back \(path)")
                : EncodingError(
                    .ioFailed, expected: "\(destination.count) bytes at \(offset) of \(path)", found: "\(count)")
        }
    }

    /// Syncs the file and the store and closes the file.
    func close() throws {
        // Trailing zero pages are holes: the length comes from the image.
        guard ftruncate(descriptor, off_t(written)) == 0 else { throw Self.failure("set the length of \(path)") }
        guard fsync(descriptor) == 0 else { throw Self.failure("sync \(path)") }
        try store?.sync()
        abandon()
    }

    func abandon() {
        if descriptor >= 0 { Glibc.close(descriptor) }
        descriptor = -1
    }

    private static func failure(_ action: String) -> EncodingError {
        let code = errno
        return EncodingError(
            .ioFailed, expected: "to \(action)", found: String(cString: strerror(code)),
            advice: code == ENOSPC ? "free space at the destination, then send again" : nil)
    }
}
