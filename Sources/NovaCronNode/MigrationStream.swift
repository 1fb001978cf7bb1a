import DWCPEncoding
import DWCPTransport
import NIOCore

#if canImport(Glibc)
    import Glibc
#endif

/// HDE on a live migration: QEMU's migration stream, read from the socket it writes, encoded as an opaque
/// stream (``StreamEncoder``: content-defined chunks, references to what the destination's chunk store holds,
/// zstd batches) and decoded on the destination into the socket its QEMU reads. Both agents keep every chunk
/// in their stores, so a migration back — or to any node that received this VM before — refers to the
/// memory that did not change instead of sending it.
public enum MigrationStream {
    /// The offer content that marks an encoded migration stream.
    static let offerContent: [UInt8] = Array("NCMIGRATION-STREAM-1".utf8)
    /// How the stream is cut: pages are 4 KiB, so chunks of several pages follow memory that did not change.
    static func chunker() -> Chunker.FastCDC {
        try! Chunker.FastCDC(minimumSize: 4096, averageSize: 16384, maximumSize: 65536)
    }
    /// The Bloom filter's false-positive rate for the destination's store summary: a false positive makes
    /// the destination fail the migration (it cannot resolve the reference), which then rolls back.
    static let summaryFalsePositiveRate = 1e-9
    /// How long the source waits for more of QEMU's stream before it sends what it has.
    static let idleMilliseconds: Int32 = 20
    /// How much of QEMU's stream may wait to be decoded, as a multiple of the session's window (which counts
    /// encoded bytes): page references and deltas are 20–70 times their encoded size, and QEMU paces its
    /// pre-copy by what the source agent reads. What waits when QEMU stops the guest drains inside the pause;
    /// too little in flight slows a stream of references. Measured on wanem global (2026-12-01, 3 runs each,
    /// medians; docs/migration.md): unbounded, the way back paused 1 700 ms (6.1 s); 8 × paused the first
    /// migration 1 227 ms against QEMU native's 1 179 (way back 6.8 s); 4 × 789 ms (way back 8.1 s); 2 × 537 ms
    /// (way back 10.3 s).
    static let streamWindowFactor = 4
}

/// The source side: reads QEMU's stream from `descriptor` and makes the encoded stream the transport sends.
public final class MigrationStreamProducer: TransferProducer, @unchecked Sendable {
    // Calls come one at a time (TransferProducer's contract), so the state needs no lock.
    /// The object's name.
    public let name: String
    /// Marks the offer as an encoded migration stream.
    public let offerContent = MigrationStream.offerContent
    private let descriptor: Int32
    private let store: SharedChunkStore?
    private let level: Int?
    private let streamWindow: UInt64?
    private var encoder: StreamEncoder?
    private var output: [UInt8] = []
    private var outputStart = 0
    private var finished = false
    private var buffer = [UInt8](repeating: 0, count: 1 << 20)

    /// Creates the producer.
    /// - Parameters:
    ///   - name: The object's name.
    ///   - descriptor: The agent's end of the socket QEMU migrates into (read to its end; not closed here).
    ///   - store: This node's chunk store: every chunk sent goes in it.
    ///   - level: The zstd level for new chunks, or nil for none.
    ///   - streamWindow: The most stream bytes read beyond what the receiver acknowledged (decoded), or nil.
    public init(name: String, descriptor: Int32, store: SharedChunkStore?, level: Int?, streamWindow: Int? = nil) {
        self.name = name
        self.descriptor = descriptor
        self.store = store
        self.level = level
        self.streamWindow = streamWindow.map { UInt64($0) }
    }

    /// What the encoder did (valid after the stream ended).
    public var statistics: StreamEncoder.Statistics? { encoder?.statistics }

    /// Reads the destination's store summary and starts the encoder; asks nothing.
    public func accepted(reply: [UInt8]) throws -> [UInt8]? {
        let summary = reply.isEmpty ? nil : try ChunkSummary(serialized: reply)
        let store = self.store
        encoder = try StreamEncoder(
            chunker: MigrationStream.chunker(), level: level, pageSlots: PageSlotTracker(stream: name),
            hooks: .init(
                receiverHolds: { summary?.mayContain($0) ?? false },
                similar: store.map { store in { store.similar(to: $0) } },
                previousVersion: { store?.previousVersion(of: $0) },
                content: { store?.contents(of: $0) },
                // The source's own store only serves later transfers: a failed write costs them ratio, not this one.
                cut: { bytes, key, features, slot in
                    try? store?.keep(bytes, key: key, features: features, slot: slot)
                }))
        return nil
    }

    /// Never called: the producer asks no query.
    public func answered(_ answer: [UInt8]) throws {}

    /// Nothing waits on the session.
    public func sessionEnded() {}

    /// Holds the sender back while more than the stream window of QEMU's stream was read beyond what the
    /// receiver acknowledged, so QEMU's writes wait for the destination's decoding too.
    public func holdsBack(acknowledged: UInt64) -> Bool {
        guard let streamWindow, let read = encoder?.statistics.inputBytes,
            let decoded = encoder?.inputBytes(carriedBy: acknowledged)
        else { return false }
        return read > decoded + streamWindow
    }

    /// The next encoded bytes, reading and encoding QEMU's stream as needed; nil after the end record.
    public func read(maximum: Int) throws -> ByteBuffer? {
        while outputStart == output.count {
            guard !finished else { return nil }
            try fill()
        }
        let count = min(maximum, output.count - outputStart)
        defer {
            outputStart += count
            if outputStart == output.count {
                output.removeAll(keepingCapacity: true)
                outputStart = 0
            }
        }
        return ByteBuffer(bytes: output[outputStart..<(outputStart + count)])
    }

    /// Reads what QEMU wrote (waiting at most the idle time) and encodes it.
    private func fill() throws {
        // Taken out while it works: a copy left in `self.encoder` would make every mutation below copy the
        // encoder's buffers and its set of chunks sent (copy on write), once per read of QEMU's stream.
        guard var encoder = encoder.take() else {
            throw TransportError(.sourceFailed, expected: "the receiver's reply before the stream", found: "none")
        }
        defer { self.encoder = encoder }
        var pollDescriptor = pollfd(fd: descriptor, events: Int16(POLLIN), revents: 0)
        let ready = poll(&pollDescriptor, 1, MigrationStream.idleMilliseconds)
        if ready == 0 {
            try encoder.flush()  // QEMU paused: send what was read
        } else if ready < 0 {
            guard errno == EINTR else { throw Self.failure("wait for QEMU's stream") }
        } else {
            let count = buffer.withUnsafeMutableBytes { Glibc.read(descriptor, $0.baseAddress, $0.count) }
            if count > 0 {
                try buffer.withUnsafeBytes { try encoder.append(UnsafeRawBufferPointer(rebasing: $0[..<count])) }
            } else if count == 0 {
                try encoder.finish()
                finished = true  // the store is synced after the migration, not in the guest's pause
            } else if errno != EINTR {
                throw Self.failure("read QEMU's stream")
            }
        }
        encoder.takeOutput(appendingTo: &output)
    }

    private static func failure(_ action: String) -> TransportError {
        TransportError(.sourceFailed, expected: "to \(action)", found: String(cString: strerror(errno)))
    }
}

/// The destination side: answers with its store's summary and decodes into QEMU's incoming socket.
public struct MigrationStreamConsumerFactory: TransferConsumerFactory {
    /// This node's chunk store, or nil.
    public let store: SharedChunkStore?

    /// Creates the factory.
    public init(store: SharedChunkStore?) {
        self.store = store
    }

    /// Opens the consumer of an encoded migration stream for a descriptor destination.
    /// - Throws: ``DWCPTransport/TransportError``: `refused` for other content, `invalidArgument` for a
    ///   destination that is not a descriptor.
    public func consumer(for offer: SessionMessage.Offer, destination: ReceiveDestination, overwrite: Bool) throws
        -> any TransferConsumer
    {
        guard offer.content == MigrationStream.offerContent else {
            throw TransportError(
                .refused, expected: "an encoded migration stream", found: "other content",
                advice: "run the same NovaCron version on both nodes")
        }
        guard let descriptor = destination.streamDescriptor, descriptor != STDOUT_FILENO else {
            throw TransportError(.invalidArgument, expected: "a descriptor destination", found: "\(destination)")
        }
        return try MigrationStreamConsumer(descriptor: descriptor, store: store, stream: offer.name)
    }
}

/// Decodes an encoded migration stream into `descriptor`, keeping every chunk that arrived in the store.
final class MigrationStreamConsumer: TransferConsumer, @unchecked Sendable {
    // Calls come one at a time (TransferConsumer's contract), so the state needs no lock.
    let reply: [UInt8]
    var path: String? { nil }
    private let descriptor: Int32
    private let store: SharedChunkStore?
    private var decoder: StreamDecoder
    /// Names the pages that arrive as the source named them (the stream's chunks, in order).
    private var pageSlots: PageSlotTracker

    init(descriptor: Int32, store: SharedChunkStore?, stream: String) throws {
        self.descriptor = descriptor
        self.store = store
        pageSlots = PageSlotTracker(stream: stream)
        reply = store?.summary(falsePositiveRate: MigrationStream.summaryFalsePositiveRate).serialized() ?? []
        decoder = try StreamDecoder()
    }

    func answer(query: [UInt8]) throws -> [UInt8] {
        throw TransportError(.protocolViolation, expected: "no query for a migration stream", found: "a query")
    }

    func consume(_ bytes: ByteBuffer) throws {
        var failure: (any Error)?
        let store = self.store
        let descriptor = self.descriptor
        do {
            try decode(bytes, store: store, descriptor: descriptor, failure: &failure)
        } catch {
            throw failure ?? error  // a chunk not kept explains what follows (a reference to it fails)
        }
        if let failure { throw failure }
    }

    private func decode(_ bytes: ByteBuffer, store: SharedChunkStore?, descriptor: Int32, failure: inout (any Error)?)
        throws
    {
        try bytes.withUnsafeReadableBytes { raw in
            try decoder.append(
                raw, lookup: { store?.contents(of: $0) },
                storing: { chunk, key in
                    // The sender refers to every chunk it sent earlier in the stream: one not kept fails the
                    // migration later and obscurely, so a store that cannot keep it fails it now, saying why.
                    let slot = pageSlots.slot(of: chunk)
                    guard failure == nil else { return }
                    do {
                        try store?.keepUnindexed(chunk, key: key, slot: slot)
                    } catch {
                        failure = TransportError(
                            .destinationFailed, expected: "to keep the stream's chunks in the chunk store",
                            found: "\(error)",
                            advice: "free space on the destination's --store, or lower --store-capacity")
                    }
                },
                referenced: { chunk, key in
                    if let slot = pageSlots.slot(of: chunk) { store?.notePage(slot, key: key) }
                },
                output: { decoded in
                    guard failure == nil else { return }
                    var done = 0
                    while done < decoded.count {
                        let count = write(descriptor, decoded.baseAddress! + done, decoded.count - done)
                        if count > 0 {
                            done += count
                        } else if count < 0 && errno == EINTR {
                            continue
                        } else {
                            failure = TransportError(
                                .destinationFailed, expected: "to write the migration stream to QEMU",
                                found: String(cString: strerror(errno)))
                            return
                        }
                    }
                })
        }
    }

    func commit() throws -> UInt64 {
        // No fsync here: the guest is paused until the destination runs. The store is a cache (an interrupted
        // write never leaves a chunk addressable) and the agent syncs it once the migration is over.
        try decoder.finish()
        return decoder.decodedBytes
    }

    func discard() {}
}
