import Crypto
import DWCPEncoding
import DWCPTransport
import NIOConcurrencyHelpers
import NIOCore

#if canImport(Glibc)
    import Glibc
#endif

/// A chunk store shared by the receiving sessions of one process (`novacron receive --store DIR`).
public final class SharedChunkStore: @unchecked Sendable {
    private let lock = NIOLock()
    private let store: PersistentChunkStore

    /// Opens (or creates) the store in `directory`.
    /// - Parameters:
    ///   - directory: The store's directory (its parent must exist).
    ///   - capacity: The most bytes its segments may take before the oldest is evicted.
    /// - Throws: ``DWCPEncoding/EncodingError`` (`storeInUse` if another process has it open).
    public init(directory: String, capacity: Int) throws {
        store = try PersistentChunkStore(
            directory: directory, configuration: .init(capacity: capacity))
    }

    /// The number of chunks held.
    public var count: Int { lock.withLock { store.count } }

    func holdsPrefixes(_ prefixes: [UInt64]) -> [Bool] {
        lock.withLock { store.holdsPrefixes(prefixes) }
    }

    func put(_ bytes: UnsafeRawBufferPointer) throws {
        try lock.withLock { _ = try store.put(bytes) }
    }

    func contents(of key: ChunkKey) -> [UInt8]? {
        lock.withLock { store.contents(of: key) }
    }

    func sync() throws {
        try lock.withLock { try store.sync() }
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
        let held = store?.holdsPrefixes(announced.prefixes) ?? Array(repeating: false, count: announced.prefixes.count)
        return try ImageFileConsumer(
            target: target, imageLength: Int(announced.imageLength), store: store,
            reply: EncodedObjectReply(hasStore: store != nil, held: held).serialized())
    }
}

/// Decodes an HDE image stream as it arrives into `NAME.novacron-partial`, then, once the stream's SHA-256
/// and the image's identity matched, syncs it and renames it to `NAME`. Every page goes into the chunk
/// store as it is written, and the store is synced before the commit.
public final class ImageFileConsumer: TransferConsumer, @unchecked Sendable {
    public let reply: [UInt8]
    public var path: String? { target }
    private let target: String
    private let partial: String
    private let imageLength: Int
    private let sink: FileImageSink
    private let stream: ImageDecoder.Stream
    private var finished = false

    init(target: String, imageLength: Int, store: SharedChunkStore?, reply: [UInt8]) throws {
        self.target = target
        partial = target + ".novacron-partial"
        self.imageLength = imageLength
        self.reply = reply
        sink = try FileImageSink(path: partial, store: store)
        let decoder = try ImageDecoder(limits: .init(maximumImageLength: imageLength))
        stream = ImageDecoder.Stream(decoder: decoder, chunks: store.map(StoreChunks.init), sink: sink)
    }

    deinit {
        if !finished { discard() }
    }

    public func consume(_ bytes: ByteBuffer) throws {
        try bytes.withUnsafeReadableBytes { try stream.feed($0) }
    }

    public func commit() throws -> (bytes: UInt64, sha256: String) {
        _ = try stream.finish()
        guard stream.imageLength == imageLength else {
            throw TransportError(
                .protocolViolation, expected: "a \(imageLength)-byte image as offered",
                found: "\(stream.imageLength ?? 0) bytes")
        }
        let digest = try sink.close()
        guard rename(partial, target) == 0 else {
            throw TransportError(
                .destinationFailed, expected: "to rename \(partial) to \(target)", found: String(cString: strerror(errno)))
        }
        finished = true
        return (UInt64(imageLength), digest)
    }

    public func discard() {
        guard !finished else { return }
        finished = true
        sink.abandon()
        unlink(partial)
    }
}

/// The chunk store as the decoder reads it.
struct StoreChunks: ChunkProvider {
    let store: SharedChunkStore

    func contents(of key: ChunkKey) -> [UInt8]? { store.contents(of: key) }
}

/// Writes the decoded image to a file in order, reads earlier pages back for duplicates, hashes it, and
/// puts its non-zero pages into the chunk store.
final class FileImageSink: DecodedImageSink {
    private var descriptor: Int32
    private let path: String
    private let store: SharedChunkStore?
    private var hasher = SHA256()
    private var written = 0

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

    func append(_ bytes: UnsafeRawBufferPointer) throws(EncodingError) {
        var done = 0
        while done < bytes.count {
            let count = write(descriptor, bytes.baseAddress! + done, bytes.count - done)
            guard count > 0 else {
                if count < 0 && errno == EINTR { continue }
                throw Self.failure("write \(path)")
            }
            done += count
        }
        hasher.update(bufferPointer: bytes)
        written += bytes.count
        guard let store else { return }
        var start = 0
        while start < bytes.count {
            let page = UnsafeRawBufferPointer(
                rebasing: bytes[start..<min(bytes.count, start + ImageFormat.pageSize)])
            if page.contains(where: { $0 != 0 }) {
                do {
                    try store.put(page)
                } catch {
                    throw error as? EncodingError
                        ?? EncodingError(.ioFailed, expected: "to store a page", found: "\(error)")
                }
            }
            start += ImageFormat.pageSize
        }
    }

    func read(at offset: Int, into destination: UnsafeMutableRawBufferPointer) throws(EncodingError) {
        let count = pread(descriptor, destination.baseAddress, destination.count, off_t(offset))
        guard count == destination.count else {
            throw count < 0 ? Self.failure("read back \(path)") : EncodingError(
                .ioFailed, expected: "\(destination.count) bytes at \(offset) of \(path)", found: "\(count)")
        }
    }

    /// Syncs the file and the store and closes the file.
    /// - Returns: The image's SHA-256 in hex.
    func close() throws -> String {
        guard fsync(descriptor) == 0 else { throw Self.failure("sync \(path)") }
        try store?.sync()
        abandon()
        return hasher.finalize().map { ($0 < 16 ? "0" : "") + String($0, radix: 16) }.joined()
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
