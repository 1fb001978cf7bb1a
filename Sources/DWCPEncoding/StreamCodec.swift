/// HDE for opaque streams — QEMU's migration stream, anything read once in order whose length is unknown:
/// content-defined chunks (FastCDC), chunks the receiver's store holds sent as references by SHA-256, the
/// others batched and compressed with zstd (or sent raw when that does not pay).
///
/// Format (integers little-endian, varints LEB128 below 2^32):
/// ```
/// header     "NCST" | version 1 | 3 zero bytes
/// batch      0x01 | count | count × chunk length | payload kind (0 raw, 1 zstd) | payload length | payload
/// reference  0x02 | chunk length | SHA-256 of the chunk (32 bytes)
/// delta      0x03 | chunk length | SHA-256 of the base | SHA-256 of the chunk | payload length | payload
/// end        0x00 | decoded length (UInt64)
/// ```
/// A raw payload is the chunks concatenated; a zstd payload is one frame that decompresses to exactly that.
/// A delta's payload is a zstd frame of the chunk compressed with its base (a chunk the receiver holds) as
/// prefix: the receiver rebuilds the chunk and checks it against its SHA-256.
/// The decoder checks every length against ``StreamFormat`` limits before it waits for the bytes.
public enum StreamFormat {
    static let magic: [UInt8] = Array("NCST".utf8)
    static let version: UInt8 = 1
    static let headerLength = 8
    /// The longest chunk a decoder accepts.
    public static let maximumChunkLength = 1 << 20
    /// The most chunks in one batch.
    public static let maximumBatchChunks = 4096
    /// The most decoded bytes in one batch.
    public static let maximumBatchBytes = 8 << 20

    enum Record: UInt8 {
        case end = 0
        case batch = 1
        case reference = 2
        case delta = 3
    }

    enum Payload: UInt8 {
        case raw = 0
        case zstd = 1
    }

    /// Whether `bytes` start like an encoded stream.
    public static func isStream(_ bytes: some Collection<UInt8>) -> Bool {
        bytes.count >= headerLength && bytes.prefix(5).elementsEqual(magic + [version])
    }
}

/// Encodes an opaque stream piece by piece (sans-IO): feed it what was read, take what it made.
public struct StreamEncoder {
    /// What the encoder asks of its node.
    public struct Hooks {
        /// Whether the receiver held a chunk before this stream (its store's summary): it goes as a reference.
        public var receiverHolds: (ChunkKey) -> Bool
        /// Chunks resembling one with these features (a ``SimilarityIndex``); nil: no deltas, no features.
        public var similar: ((ChunkFeatures) -> [ChunkKey])?
        /// The last version of a page slot this node saw (sent or received), with page framing.
        public var previousVersion: (PageSlot) -> ChunkKey?
        /// The content of a chunk this node holds (a delta's base).
        public var content: (ChunkKey) -> [UInt8]?
        /// Every chunk as it is cut, with its key, its features (chunks outside page records, when deltas are
        /// on) and its page slot (page records, with page framing): the node keeps it for later transfers.
        public var cut: (UnsafeRawBufferPointer, ChunkKey, ChunkFeatures?, PageSlot?) -> Void

        /// Hooks for a receiver that holds `receiverHolds`; no deltas, nothing kept.
        public init(
            receiverHolds: @escaping (ChunkKey) -> Bool = { _ in false },
            similar: ((ChunkFeatures) -> [ChunkKey])? = nil,
            previousVersion: @escaping (PageSlot) -> ChunkKey? = { _ in nil },
            content: @escaping (ChunkKey) -> [UInt8]? = { _ in nil },
            cut: @escaping (UnsafeRawBufferPointer, ChunkKey, ChunkFeatures?, PageSlot?) -> Void = { _, _, _, _ in }
        ) {
            self.receiverHolds = receiverHolds
            self.similar = similar
            self.previousVersion = previousVersion
            self.content = content
            self.cut = cut
        }
    }

    /// What the encoder did so far.
    public struct Statistics: Sendable, Hashable, Codable {
        /// Stream bytes taken in.
        public var inputBytes: UInt64 = 0
        /// Encoded bytes made.
        public var outputBytes: UInt64 = 0
        /// Chunks cut.
        public var chunks = 0
        /// Chunks sent as references to what the receiver holds (before or from earlier in this stream).
        public var referencedChunks = 0
        /// Their bytes.
        public var referencedBytes: UInt64 = 0
        /// Chunks sent as deltas against a resembling chunk (or a page's previous version) the receiver holds.
        public var deltaChunks = 0
        /// Their bytes (before encoding).
        public var deltaBytes: UInt64 = 0
        /// Chunks that are QEMU page records (page framing).
        public var pageChunks = 0
        /// Page records sent as deltas against their page's previous version (counted in ``deltaChunks`` too).
        public var pageDeltaChunks = 0
        /// Batches sent compressed.
        public var compressedBatches = 0
        /// Batches sent raw because zstd did not shrink them enough.
        public var rawBatches = 0
    }

    /// What the encoder did so far.
    public private(set) var statistics = Statistics()
    private let chunker: Chunker.FastCDC
    /// Names page records' slots when the stream is cut by QEMU's page records; nil: content-defined only.
    private var pageSlots: PageSlotTracker?
    private let compressor: ZstdCodec.Compressor?
    private let deltaCompressor: ZstdCodec.Compressor
    private let batchTarget: Int
    private let hooks: Hooks
    /// Chunks this stream already carried: the receiver holds them once it decoded that far.
    private var sent: Set<ChunkKey> = []
    private var pending: [UInt8] = []
    private var pendingStart = 0
    private var batch: [UInt8] = []
    private var batchLengths: [Int] = []
    private var output: [UInt8]
    private var finished = false
    /// (output bytes taken, input bytes taken in) after each ``takeOutput(appendingTo:)`` that took bytes, from
    /// the last one ``inputBytes(carriedBy:)`` passed.
    private var coverage: [(output: UInt64, input: UInt64)] = []

    /// Creates an encoder.
    /// - Parameters:
    ///   - chunker: How to cut the stream; its maximum must not exceed ``StreamFormat/maximumChunkLength``.
    ///   - level: The zstd level for batches, or nil to send them raw.
    ///   - batchBytes: How many bytes of new chunks make a batch (at most ``StreamFormat/maximumBatchBytes``).
    ///   - pageSlots: For a QEMU migration stream: cut each page record as a chunk (``QEMUPageFraming``,
    ///     `chunker` cutting the bytes between them) and send a page as a delta against its slot's
    ///     ``Hooks/previousVersion``. Nil: content-defined chunks only.
    ///   - hooks: What the receiver holds, where to find resembling chunks, what to keep.
    /// - Throws: ``EncodingError/Code/invalidConfiguration`` for sizes out of range, or a zstd failure.
    public init(
        chunker: Chunker.FastCDC, level: Int?, batchBytes: Int = 1 << 20, pageSlots: PageSlotTracker? = nil,
        hooks: Hooks = Hooks()
    ) throws(EncodingError) {
        guard chunker.maximumSize <= StreamFormat.maximumChunkLength,
            (chunker.maximumSize...StreamFormat.maximumBatchBytes).contains(batchBytes)
        else {
            throw EncodingError(
                .invalidConfiguration, expected: "chunks of at most 1 MiB and a batch of one chunk to 8 MiB",
                found: "maximum chunk \(chunker.maximumSize), batch \(batchBytes)")
        }
        self.chunker = chunker
        self.pageSlots = pageSlots
        self.compressor = try level.map { level throws(EncodingError) in try ZstdCodec.Compressor(level: level) }
        self.deltaCompressor = try ZstdCodec.Compressor(level: 1)
        self.batchTarget = batchBytes
        self.hooks = hooks
        output = StreamFormat.magic + [StreamFormat.version, 0, 0, 0]
    }

    /// Takes stream bytes.
    public mutating func append(_ bytes: UnsafeRawBufferPointer) throws(EncodingError) {
        precondition(!finished, "append after finish")
        statistics.inputBytes += UInt64(bytes.count)
        pending.append(contentsOf: bytes)
        try cut(isFinal: false)
    }

    /// Cuts whatever is pending as chunks and emits the open batch: the stream went quiet, so what was read
    /// should not wait for more. (A cut here is not content-defined; it costs some deduplication only.)
    public mutating func flush() throws(EncodingError) {
        try cut(isFinal: true)
        try emitBatch()
    }

    /// Ends the stream: flushes and writes the end record.
    public mutating func finish() throws(EncodingError) {
        try flush()
        output.append(StreamFormat.Record.end.rawValue)
        output.appendLittleEndian(statistics.inputBytes)
        finished = true
    }

    /// The encoded bytes made since the last call.
    public mutating func takeOutput() -> [UInt8] {
        var taken: [UInt8] = []
        takeOutput(appendingTo: &taken)
        return taken
    }

    /// Appends the encoded bytes made since the last call to `destination`. The encoder keeps its buffer
    /// (``takeOutput()`` leaves it shared with the array it returns, so the next bytes need a new one).
    public mutating func takeOutput(appendingTo destination: inout [UInt8]) {
        statistics.outputBytes += UInt64(output.count)
        destination.append(contentsOf: output)
        output.removeAll(keepingCapacity: true)
        if coverage.last?.output != statistics.outputBytes {
            coverage.append((statistics.outputBytes, statistics.inputBytes))
        }
    }

    /// How much input the encoder had taken in when it had made the first `outputBytes` encoded bytes (at the
    /// last ``takeOutput(appendingTo:)`` within them): about what a receiver that decoded that much has of the
    /// stream, counting what the encoder then still held (at most a batch and a chunk's lookahead). A producer
    /// paces its reads by it. Calls must not go back in `outputBytes`: what they pass is forgotten.
    public mutating func inputBytes(carriedBy outputBytes: UInt64) -> UInt64 {
        while coverage.count > 1 && coverage[1].output <= outputBytes { coverage.removeFirst() }
        guard let first = coverage.first, first.output <= outputBytes else { return 0 }
        return first.input
    }

    /// How many encoded bytes wait in ``takeOutput()``.
    public var outputCount: Int { output.count }

    private func holds(_ key: ChunkKey) -> Bool {
        sent.contains(key) || hooks.receiverHolds(key)
    }

    private mutating func cut(isFinal: Bool) throws(EncodingError) {
        var chunks: [Range<Int>] = []
        let framed = pageSlots != nil
        pending.withUnsafeBytes { raw in
            var start = pendingStart
            while start < raw.count {
                let rest = UnsafeRawBufferPointer(rebasing: raw[start...])
                let next =
                    framed
                    ? QEMUPageFraming.nextChunkLength(in: rest, fallback: chunker, isFinal: isFinal)
                    : chunker.nextChunkLength(in: rest, isFinal: isFinal)
                guard let length = next, length > 0 else { break }
                chunks.append(start..<(start + length))
                start += length
            }
        }
        for range in chunks {
            try encodeChunk(Array(pending[range]))
            pendingStart = range.upperBound
        }
        if pendingStart > 0 && pendingStart * 2 >= pending.count {
            pending.removeFirst(pendingStart)
            pendingStart = 0
        }
    }

    private mutating func encodeChunk(_ chunk: [UInt8]) throws(EncodingError) {
        let slot = chunk.withUnsafeBytes { pageSlots?.slot(of: $0) }
        // A page's previous version is found by its slot; features are for the rest.
        let (key, features) = chunk.withUnsafeBytes { raw in
            (ChunkKey(of: raw), hooks.similar == nil || slot != nil ? nil : ChunkFeatures(of: raw))
        }
        statistics.chunks += 1
        if slot != nil { statistics.pageChunks += 1 }
        defer {
            // Kept after the choice, so the chunk does not shadow its own previous version in the index.
            chunk.withUnsafeBytes { hooks.cut($0, key, features, slot) }
            sent.insert(key)
        }
        if holds(key) {
            try emitBatch()
            output.append(StreamFormat.Record.reference.rawValue)
            output.appendVarint(chunk.count)
            output.append(contentsOf: key.bytes)
            statistics.referencedChunks += 1
            statistics.referencedBytes += UInt64(chunk.count)
            return
        }
        let candidates: [ChunkKey]
        if let slot {
            candidates = hooks.previousVersion(slot).map { [$0] } ?? []
        } else if let features, let similar = hooks.similar {
            candidates = Array(similar(features).prefix(2))
        } else {
            candidates = []
        }
        if let (base, payload) = try delta(chunk, key: key, candidates: candidates) {
            if slot != nil { statistics.pageDeltaChunks += 1 }
            try emitBatch()
            output.append(StreamFormat.Record.delta.rawValue)
            output.appendVarint(chunk.count)
            output.append(contentsOf: base.bytes)
            output.append(contentsOf: key.bytes)
            output.appendVarint(payload.count)
            output.append(contentsOf: payload)
            statistics.deltaChunks += 1
            statistics.deltaBytes += UInt64(chunk.count)
            return
        }
        if batch.count + chunk.count > batchTarget || batchLengths.count == StreamFormat.maximumBatchChunks {
            try emitBatch()
        }
        batch.append(contentsOf: chunk)
        batchLengths.append(chunk.count)
    }

    /// The first of `candidates` (a page's previous version, or resembling chunks) the receiver holds that
    /// serves, and the chunk's zstd frame with it as prefix — when that is under an eighth of the chunk
    /// (otherwise the batch's compression does about as well).
    private func delta(_ chunk: [UInt8], key: ChunkKey, candidates: [ChunkKey]) throws(EncodingError)
        -> (ChunkKey, [UInt8])?
    {
        for candidate in candidates where candidate != key && holds(candidate) {
            guard let base = hooks.content(candidate) else { continue }
            let payload = try deltaCompressor.compress(chunk, prefix: base)
            if payload.count < chunk.count / 8 { return (candidate, payload) }
        }
        return nil
    }

    private mutating func emitBatch() throws(EncodingError) {
        guard !batchLengths.isEmpty else { return }
        defer {
            batch.removeAll(keepingCapacity: true)
            batchLengths.removeAll(keepingCapacity: true)
        }
        output.append(StreamFormat.Record.batch.rawValue)
        output.appendVarint(batchLengths.count)
        for length in batchLengths { output.appendVarint(length) }
        if let compressor {
            let compressed = try compressor.compress(batch)
            if compressed.count < batch.count - batch.count / 32 {
                output.append(StreamFormat.Payload.zstd.rawValue)
                output.appendVarint(compressed.count)
                output.append(contentsOf: compressed)
                statistics.compressedBatches += 1
                return
            }
        }
        output.append(StreamFormat.Payload.raw.rawValue)
        output.appendVarint(batch.count)
        output.append(contentsOf: batch)
        statistics.rawBatches += 1
    }
}

/// Decodes a stream made by ``StreamEncoder`` as it arrives, in pieces of any size (sans-IO).
public struct StreamDecoder {
    /// Decoded bytes so far.
    public private(set) var decodedBytes: UInt64 = 0
    /// Bytes resolved from the receiver's store.
    public private(set) var referencedBytes: UInt64 = 0
    /// Bytes rebuilt from deltas against chunks of the receiver's store.
    public private(set) var deltaBytes: UInt64 = 0
    private let decompressor: ZstdCodec.Decompressor
    private var buffer: [UInt8] = []
    private var start = 0
    private var sawHeader = false
    private var ended = false

    /// Creates a decoder.
    /// - Throws: A zstd failure.
    public init() throws(EncodingError) {
        decompressor = try ZstdCodec.Decompressor()
    }

    /// Takes encoded bytes and hands over what they decode to.
    /// - Parameters:
    ///   - bytes: The next encoded bytes.
    ///   - lookup: A chunk of the receiver's store by key (nil if it does not hold it).
    ///   - storing: Each chunk that arrived as content (the receiver keeps it for the next transfer), with its key
    ///     when the decoder already computed it from these bytes (a delta's check), so it need not be hashed again.
    ///   - referenced: Each chunk resolved from the store by a reference (with `storing`, every chunk in order).
    ///   - output: The decoded bytes, in order.
    /// - Throws: ``EncodingError`` — `badMagic`/`unsupportedVersion`, `malformedRecord`, `limitExceeded`,
    ///   `decompressionFailed`, `unknownChunk` (a reference the store cannot resolve), `trailingBytes`.
    public mutating func append(
        _ bytes: UnsafeRawBufferPointer,
        lookup: (ChunkKey) -> [UInt8]?,
        storing: (UnsafeRawBufferPointer, ChunkKey?) -> Void,
        referenced: (UnsafeRawBufferPointer, ChunkKey) -> Void = { _, _ in },
        output: (UnsafeRawBufferPointer) -> Void
    ) throws(EncodingError) {
        guard !ended || bytes.isEmpty else {
            throw EncodingError(.trailingBytes, expected: "nothing after the end record", found: "\(bytes.count) bytes")
        }
        buffer.append(contentsOf: bytes)
        while let consumed = try decodeRecord(
            lookup: lookup, storing: storing, referenced: referenced, output: output)
        {
            start += consumed
        }
        if start > 0 && start * 2 >= buffer.count {
            buffer.removeFirst(start)
            start = 0
        }
    }

    /// Checks that the stream ended with its end record and nothing after it.
    public func finish() throws(EncodingError) {
        guard ended else {
            throw EncodingError(
                .truncated, expected: "the stream's end record", found: "\(buffer.count - start) undecoded bytes")
        }
    }

    /// Decodes one record at `start` if it is complete. - Returns: Its length, or nil when more bytes are needed.
    private mutating func decodeRecord(
        lookup: (ChunkKey) -> [UInt8]?,
        storing: (UnsafeRawBufferPointer, ChunkKey?) -> Void,
        referenced: (UnsafeRawBufferPointer, ChunkKey) -> Void,
        output: (UnsafeRawBufferPointer) -> Void
    ) throws(EncodingError) -> Int? {
        let available = buffer.count - start
        guard available > 0 else { return nil }
        if !sawHeader {
            guard available >= StreamFormat.headerLength else { return nil }
            guard buffer[start..<(start + 4)].elementsEqual(StreamFormat.magic) else {
                throw EncodingError(.badMagic, expected: "NCST", found: "\(Array(buffer[start..<(start + 4)]))")
            }
            guard buffer[start + 4] == StreamFormat.version, buffer[(start + 5)..<(start + 8)].allSatisfy({ $0 == 0 })
            else {
                throw EncodingError(
                    .unsupportedVersion, expected: "version 1 and zero reserved bytes",
                    found: "\(Array(buffer[(start + 4)..<(start + 8)]))")
            }
            sawHeader = true
            return StreamFormat.headerLength
        }
        if ended {
            throw EncodingError(.trailingBytes, expected: "nothing after the end record", found: "\(available) bytes")
        }
        let startOffset = start
        let outcome: Swift.Result<(Int, Action)?, EncodingError> = buffer.withUnsafeBytes { raw in
            var reader = ByteReader(UnsafeRawBufferPointer(rebasing: raw[startOffset...]), what: "a stream record")
            do throws(EncodingError) {
                return .success(try Self.parse(&reader))
            } catch  where error.code == .truncated {
                return .success(nil)
            } catch {
                return .failure(error)
            }
        }
        guard let (length, action) = try outcome.get() else { return nil }
        let record = startOffset..<(startOffset + length)
        switch action {
        case .end(let total):
            guard total == decodedBytes else {
                throw EncodingError(
                    .malformedRecord, expected: "an end record saying \(decodedBytes) decoded bytes", found: "\(total)")
            }
            ended = true
        case .delta(let chunkLength, let base, let key, let payload):
            guard let original = lookup(base) else {
                throw EncodingError(
                    .unknownChunk, expected: "delta base \(base) in the receiver's store",
                    found: "none", advice: "the sender's view of the store was stale; migrate again")
            }
            let payloadRange = (record.lowerBound + payload.lowerBound)..<(record.lowerBound + payload.upperBound)
            let chunk = try decompressor.decompress(Array(buffer[payloadRange]), limit: chunkLength, prefix: original)
            guard chunk.count == chunkLength else {
                throw EncodingError(
                    .malformedRecord, expected: "a delta of \(chunkLength) bytes", found: "\(chunk.count) decompressed")
            }
            try withBytes(of: chunk) { (raw) throws(EncodingError) in
                guard ChunkKey(of: raw) == key else {
                    throw EncodingError(
                        .checksumMismatch, expected: "a delta that rebuilds chunk \(key)", found: "other bytes")
                }
                storing(raw, key)
                output(raw)
            }
            decodedBytes += UInt64(chunkLength)
            deltaBytes += UInt64(chunkLength)
        case .reference(let chunkLength, let key):
            guard let chunk = lookup(key), chunk.count == chunkLength else {
                throw EncodingError(
                    .unknownChunk, expected: "chunk \(key) (\(chunkLength) bytes) in the receiver's store",
                    found: "none", advice: "the sender's view of the store was stale; migrate again")
            }
            chunk.withUnsafeBytes { raw in
                referenced(raw, key)
                output(raw)
            }
            decodedBytes += UInt64(chunkLength)
            referencedBytes += UInt64(chunkLength)
        case .batch(let lengths, let payload, let isCompressed):
            let total = lengths.reduce(0, +)
            let payloadRange = (record.lowerBound + payload.lowerBound)..<(record.lowerBound + payload.upperBound)
            let decoded: [UInt8]
            if isCompressed {
                decoded = try decompressor.decompress(Array(buffer[payloadRange]), limit: total)
                guard decoded.count == total else {
                    throw EncodingError(
                        .malformedRecord, expected: "a batch of \(total) bytes", found: "\(decoded.count) decompressed")
                }
            } else {
                decoded = Array(buffer[payloadRange])
            }
            decoded.withUnsafeBytes { raw in
                var offset = 0
                for length in lengths {
                    storing(UnsafeRawBufferPointer(rebasing: raw[offset..<(offset + length)]), nil)
                    offset += length
                }
                output(raw)
            }
            decodedBytes += UInt64(total)
        }
        return length
    }

    private enum Action {
        case end(UInt64)
        case reference(Int, ChunkKey)
        /// Chunk length, base, chunk key, the payload's range within the record.
        case delta(Int, ChunkKey, ChunkKey, Range<Int>)
        /// Chunk lengths, the payload's range within the record, compressed or raw.
        case batch([Int], Range<Int>, Bool)
    }

    /// Parses one record, checking every length before it needs the bytes; throws `truncated` when incomplete.
    private static func parse(_ reader: inout ByteReader) throws(EncodingError) -> (Int, Action) {
        let kind = try reader.readByte()
        switch StreamFormat.Record(rawValue: kind) {
        case .end:
            let total = try reader.read(UInt64.self)
            return (reader.offset, .end(total))
        case .reference:
            let length = try reader.readVarint()
            guard (1...StreamFormat.maximumChunkLength).contains(length) else {
                throw EncodingError(.limitExceeded, expected: "a chunk of 1 byte to 1 MiB", found: "\(length) bytes")
            }
            guard let key = ChunkKey(bytes: try reader.readBytes(ChunkKey.byteCount)) else {
                throw EncodingError(.malformedRecord, expected: "a 32-byte chunk key", found: "fewer bytes")
            }
            return (reader.offset, .reference(length, key))
        case .delta:
            let length = try reader.readVarint()
            guard (1...StreamFormat.maximumChunkLength).contains(length) else {
                throw EncodingError(.limitExceeded, expected: "a chunk of 1 byte to 1 MiB", found: "\(length) bytes")
            }
            guard let base = ChunkKey(bytes: try reader.readBytes(ChunkKey.byteCount)),
                let key = ChunkKey(bytes: try reader.readBytes(ChunkKey.byteCount))
            else {
                throw EncodingError(.malformedRecord, expected: "two 32-byte chunk keys", found: "fewer bytes")
            }
            let payloadLength = try reader.readVarint()
            guard (1...(length + length / 8 + 1024)).contains(payloadLength) else {
                throw EncodingError(
                    .malformedRecord, expected: "a delta payload of at most \(length + length / 8 + 1024) bytes",
                    found: "\(payloadLength)")
            }
            let payloadStart = reader.offset
            _ = try reader.readBytes(payloadLength)
            return (reader.offset, .delta(length, base, key, payloadStart..<reader.offset))
        case .batch:
            let count = try reader.readVarint()
            guard (1...StreamFormat.maximumBatchChunks).contains(count) else {
                throw EncodingError(
                    .limitExceeded, expected: "1 to \(StreamFormat.maximumBatchChunks) chunks in a batch",
                    found: "\(count)")
            }
            var lengths: [Int] = []
            lengths.reserveCapacity(count)
            var total = 0
            for _ in 0..<count {
                let length = try reader.readVarint()
                total += length
                guard (1...StreamFormat.maximumChunkLength).contains(length), total <= StreamFormat.maximumBatchBytes
                else {
                    throw EncodingError(
                        .limitExceeded, expected: "chunks of 1 byte to 1 MiB, at most 8 MiB a batch",
                        found: "a chunk of \(length) bytes, \(total) so far")
                }
                lengths.append(length)
            }
            let payloadKind = try reader.readByte()
            guard let payload = StreamFormat.Payload(rawValue: payloadKind) else {
                throw EncodingError(.malformedRecord, expected: "payload kind 0 or 1", found: "\(payloadKind)")
            }
            let payloadLength = try reader.readVarint()
            let allowed = payload == .raw ? total...total : 1...(total + total / 8 + 1024)
            guard allowed.contains(payloadLength) else {
                throw EncodingError(
                    .malformedRecord, expected: "a \(payload) payload of \(allowed) bytes for \(total) decoded",
                    found: "\(payloadLength)")
            }
            let payloadStart = reader.offset
            _ = try reader.readBytes(payloadLength)
            return (reader.offset, .batch(lengths, payloadStart..<reader.offset, payload == .zstd))
        case nil:
            throw EncodingError(.malformedRecord, expected: "record kind 0 to 3", found: "\(kind)")
        }
    }
}
