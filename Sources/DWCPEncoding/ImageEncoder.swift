import CXXHash

#if canImport(Glibc)
    import Glibc
#elseif canImport(Darwin)
    import Darwin
#endif

/// Encodes a RAM image into the HDE record stream (``ImageFormat``): each 4 KiB page becomes one record —
/// zero, unchanged since the baseline, duplicate of an earlier page, a chunk the receiver holds, an XOR delta
/// against the baseline, or a literal — and the records of each batch of pages are compressed together as one
/// zstd frame.
///
/// Sans-IO: bytes in, bytes out. The encoder owns a zstd context, so it is a non-`Sendable` class; use one per
/// thread or stream.
public final class ImageEncoder {
    /// Which stages run, and how hard batches are compressed.
    public struct Configuration: Sendable, Hashable {
        /// Stage 2: elide pages identical to an earlier page or to a chunk the receiver holds.
        public var eliminatesDuplicates: Bool
        /// Stage 3: encode pages against the baseline (unchanged pages and XOR deltas).
        public var usesDeltas: Bool
        /// Stage 4: the zstd level for batch bodies, or nil to store them raw.
        public var compressionLevel: Int?
        /// Pages per batch (one zstd frame each), 1...``ImageFormat/maximumPagesPerBatch``.
        public var pagesPerBatch: Int

        /// Creates a configuration; the defaults switch every stage on at zstd level 3.
        /// - Parameters:
        ///   - eliminatesDuplicates: Stage 2 on or off.
        ///   - usesDeltas: Stage 3 on or off.
        ///   - compressionLevel: The zstd level, or nil for none.
        ///   - pagesPerBatch: Pages per compressed batch.
        public init(
            eliminatesDuplicates: Bool = true, usesDeltas: Bool = true, compressionLevel: Int? = 3,
            pagesPerBatch: Int = 256
        ) {
            self.eliminatesDuplicates = eliminatesDuplicates
            self.usesDeltas = usesDeltas
            self.compressionLevel = compressionLevel
            self.pagesPerBatch = pagesPerBatch
        }
    }

    /// What one encoding produced.
    public struct Statistics: Sendable, Hashable {
        /// The number of pages encoded as each kind.
        public var pages: [ImageFormat.RecordKind: Int] = [:]
        /// The image's length.
        public var imageLength = 0
        /// The stream's length.
        public var encodedLength = 0

        /// The number of pages of `kind`.
        /// - Parameter kind: A record kind.
        /// - Returns: The count (0 if none).
        public func count(of kind: ImageFormat.RecordKind) -> Int { pages[kind, default: 0] }
    }

    /// The configuration in force.
    public let configuration: Configuration
    /// What the last ``encode(_:baseline:known:)`` produced.
    public private(set) var statistics = Statistics()
    private let dictionary: ZstdCodec.Dictionary?
    /// One zstd context per level used, made when first needed.
    private var compressors: [Int: ZstdCodec.Compressor] = [:]
    private var body: [UInt8] = []
    private var frame: [UInt8] = []
    /// The piece of the stream being built (header, one batch, or the end), handed out and reused.
    private var piece: [UInt8] = []
    private var firstIndex: [ChunkIdentity: UInt32] = [:]

    /// Creates an encoder.
    /// - Parameters:
    ///   - configuration: The stages and level.
    ///   - dictionary: A zstd dictionary for batch bodies; the decoder needs the same one.
    /// - Throws: ``EncodingError/Code/invalidConfiguration`` for a batch size or level out of range.
    public init(configuration: Configuration = Configuration(), dictionary: ZstdCodec.Dictionary? = nil)
        throws(EncodingError)
    {
        guard (1...ImageFormat.maximumPagesPerBatch).contains(configuration.pagesPerBatch) else {
            throw EncodingError(
                .invalidConfiguration, expected: "1...\(ImageFormat.maximumPagesPerBatch) pages per batch",
                found: "\(configuration.pagesPerBatch)")
        }
        self.configuration = configuration
        self.dictionary = dictionary
        if let level = configuration.compressionLevel {
            compressors[level] = try ZstdCodec.Compressor(level: level, dictionary: dictionary)
        }
    }

    /// Encodes `image`, optionally against the previous version the receiver holds.
    /// - Parameters:
    ///   - image: The RAM image.
    ///   - baseline: The previous image at the receiver (pages are compared address by address), or nil.
    ///   - known: The chunks the receiver holds, or nil.
    /// - Returns: The record stream.
    /// - Throws: ``EncodingError/Code/compressionFailed`` if libzstd fails.
    public func encode(_ image: [UInt8], baseline: [UInt8]? = nil, known: (any KnownChunks)? = nil)
        throws(EncodingError) -> [UInt8]
    {
        try withBytes(of: image) { (imageBytes) throws(EncodingError) -> [UInt8] in
            guard let baseline else {
                return try encode(imageBytes, baseline: nil, known: known)
            }
            return try withBytes(of: baseline) { (baselineBytes) throws(EncodingError) -> [UInt8] in
                try encode(imageBytes, baseline: baselineBytes, known: known)
            }
        }
    }

    /// Encodes `image`, optionally against the previous version the receiver holds.
    /// - Parameters:
    ///   - image: The RAM image.
    ///   - baseline: The previous image at the receiver, or nil.
    ///   - known: The chunks the receiver holds, or nil.
    /// - Returns: The record stream.
    /// - Throws: ``EncodingError/Code/compressionFailed`` if libzstd fails.
    public func encode(
        _ image: UnsafeRawBufferPointer, baseline: UnsafeRawBufferPointer?, known: (any KnownChunks)? = nil
    ) throws(EncodingError) -> [UInt8] {
        var output: [UInt8] = []
        output.reserveCapacity(ImageFormat.headerLength + image.count / 8)
        try encode(image, baseline: baseline, known: known) { (piece) throws(EncodingError) in
            output.append(contentsOf: piece)
        }
        return output
    }

    /// Encodes `image` piece by piece: the header, each batch and the end record go to `emit` as soon as
    /// they are made, so the stream is never held whole (the image may be a mapped file; a pipe or a
    /// socket may take the pieces). The pieces, concatenated, are the stream ``encode(_:baseline:known:)``
    /// returns; each is valid only during its call.
    /// - Parameters:
    ///   - image: The RAM image.
    ///   - baseline: The previous image at the receiver, or nil.
    ///   - known: The chunks the receiver holds, or nil.
    ///   - emit: Takes each piece in order; what it throws ends the encoding (map I/O failures to
    ///     ``EncodingError/Code/ioFailed``).
    /// - Throws: ``EncodingError/Code/compressionFailed`` if libzstd fails, or what `emit` throws.
    public func encode(
        _ image: UnsafeRawBufferPointer,
        baseline: UnsafeRawBufferPointer?,
        known: (any KnownChunks)? = nil,
        emit: (UnsafeRawBufferPointer) throws(EncodingError) -> Void
    ) throws(EncodingError) {
        let stream = Stream(encoder: self, image: image, baseline: baseline, known: known)
        while try stream.next(compressionLevel: configuration.compressionLevel, emit) != nil {}
    }

    /// One image encoded piece by piece on demand (what a transport pulls from), with the zstd level
    /// chosen per batch (``CompressionLevelController``). One stream at a time per encoder; it resets the
    /// encoder's ``statistics``.
    public final class Stream {
        private let encoder: ImageEncoder
        private let image: UnsafeRawBufferPointer
        private let baseline: UnsafeRawBufferPointer?
        private let known: (any KnownChunks)?
        private let pageCount: Int
        private var nextPage = -1
        /// Whether the end record has been handed out.
        public private(set) var isFinished = false

        /// Starts encoding `image`.
        /// - Parameters:
        ///   - encoder: Supplies the configuration (stages, batch size), buffers and zstd contexts.
        ///   - image: The image; it must stay valid until the end record is handed out.
        ///   - baseline: The previous image at the receiver, or nil (same lifetime).
        ///   - known: The chunks the receiver holds, or nil.
        public init(
            encoder: ImageEncoder, image: UnsafeRawBufferPointer, baseline: UnsafeRawBufferPointer?,
            known: (any KnownChunks)?
        ) {
            self.encoder = encoder
            self.image = image
            self.baseline = baseline
            self.known = known
            pageCount = (image.count + ImageFormat.pageSize - 1) / ImageFormat.pageSize
            encoder.statistics = Statistics()
            encoder.statistics.imageLength = image.count
            encoder.firstIndex.removeAll(keepingCapacity: true)
        }

        /// Makes the next piece — the header first, then one batch per call, then the end record — and
        /// hands it to `emit` (valid only during the call).
        /// - Parameters:
        ///   - compressionLevel: The zstd level for this batch's body, or nil to store it raw.
        ///   - emit: Takes the piece.
        /// - Returns: The image bytes the piece covers (0 for the header and the end), or nil once the end
        ///   record has been handed out.
        @discardableResult
        public func next(
            compressionLevel: Int?, _ emit: (UnsafeRawBufferPointer) throws(EncodingError) -> Void
        ) throws(EncodingError) -> Int? {
            guard !isFinished else { return nil }
            encoder.piece.removeAll(keepingCapacity: true)
            var covered = 0
            if nextPage < 0 {
                encoder.writeHeader(image: image, baseline: baseline, into: &encoder.piece)
                nextPage = 0
            } else if nextPage < pageCount {
                let batchPages = min(encoder.configuration.pagesPerBatch, pageCount - nextPage)
                encoder.body.removeAll(keepingCapacity: true)
                for index in nextPage..<(nextPage + batchPages) {
                    encoder.encodePage(index, image: image, baseline: baseline, known: known)
                }
                try encoder.writeBatch(pageCount: batchPages, level: compressionLevel, into: &encoder.piece)
                covered =
                    min(image.count, (nextPage + batchPages) * ImageFormat.pageSize) - nextPage * ImageFormat.pageSize
                nextPage += batchPages
            } else {
                encoder.piece.append(ImageFormat.endTag)
                let identity = ChunkIdentity(of: image)
                encoder.piece.appendLittleEndian(identity.low)
                encoder.piece.appendLittleEndian(identity.high)
                isFinished = true
            }
            try encoder.emitPiece(emit)
            return covered
        }
    }

    /// Hands the piece built so far to `emit`, counts it, and empties it.
    private func emitPiece(_ emit: (UnsafeRawBufferPointer) throws(EncodingError) -> Void) throws(EncodingError) {
        statistics.encodedLength += piece.count
        try withBytes(of: piece, emit)
        piece.removeAll(keepingCapacity: true)
    }

    private func writeHeader(
        image: UnsafeRawBufferPointer, baseline: UnsafeRawBufferPointer?, into output: inout [UInt8]
    ) {
        output.append(contentsOf: ImageFormat.magic)
        output.append(ImageFormat.version)
        output.append(baseline == nil ? 0 : ImageFormat.flagHasBaseline)
        output.append(ImageFormat.pageSizeLog2)
        output.append(0)
        output.appendLittleEndian(UInt64(image.count))
        let baselineIdentity = baseline.map { ChunkIdentity(of: $0) } ?? ChunkIdentity(low: 0, high: 0)
        output.appendLittleEndian(UInt64(baseline?.count ?? 0))
        output.appendLittleEndian(baselineIdentity.low)
        output.appendLittleEndian(baselineIdentity.high)
    }

    private func encodePage(
        _ index: Int, image: UnsafeRawBufferPointer, baseline: UnsafeRawBufferPointer?, known: (any KnownChunks)?
    ) {
        let pageSize = ImageFormat.pageSize
        let start = index * pageSize
        let end = min(start + pageSize, image.count)
        let page = UnsafeRawBufferPointer(rebasing: image[start..<end])
        let kind: ImageFormat.RecordKind
        defer { statistics.pages[kind, default: 0] += 1 }

        if PageCompare.isZero(page) {
            kind = .zero
            body.append(kind.rawValue)
            return
        }
        var old: UnsafeRawBufferPointer?
        if configuration.usesDeltas, let baseline, end <= baseline.count {
            let previous = UnsafeRawBufferPointer(rebasing: baseline[start..<end])
            if PageCompare.equal(page, previous) {
                kind = .unchanged
                body.append(kind.rawValue)
                return
            }
            old = previous
        }
        if configuration.eliminatesDuplicates {
            let identity = ChunkIdentity(of: page)
            if let earlier = firstIndex[identity] {
                let earlierStart = Int(earlier) * pageSize
                if earlierStart + page.count <= image.count, page.count == pageSize,
                    PageCompare.equal(
                        page, UnsafeRawBufferPointer(rebasing: image[earlierStart..<(earlierStart + pageSize)]))
                {
                    kind = .duplicate
                    body.append(kind.rawValue)
                    body.appendVarint(Int(earlier))
                    return
                }
            } else {
                firstIndex[identity] = UInt32(index)
            }
            if let known {
                // SHA-256 only when the receiver's chunks are known: ~2.6 µs per page (XXH3-128: ~0.2 µs).
                let key = ChunkKey(of: page)
                if known.contains(key) {
                    kind = .known
                    body.append(kind.rawValue)
                    body.append(contentsOf: key.bytes)
                    return
                }
            }
        }
        if let old {
            let mark = body.count
            body.append(ImageFormat.RecordKind.delta.rawValue)
            body.append(contentsOf: [0, 0])  // a 2-byte varint length, patched below
            if let length = PageDelta.encode(page, against: old, limit: page.count, appendingTo: &body) {
                body[mark + 1] = UInt8(length & 0x7F) | 0x80
                body[mark + 2] = UInt8(length >> 7)
                kind = .delta
                return
            }
            body.removeLast(body.count - mark)
        }
        kind = .literal
        body.append(kind.rawValue)
        body.append(contentsOf: page)
    }

    private func writeBatch(pageCount: Int, level: Int?, into output: inout [UInt8]) throws(EncodingError) {
        var compressor: ZstdCodec.Compressor?
        if let level {
            guard ZstdCodec.levels.contains(level) else {
                throw EncodingError(
                    .invalidConfiguration, expected: "a zstd level in \(ZstdCodec.levels)", found: "\(level)")
            }
            if let made = compressors[level] {
                compressor = made
            } else {
                let made = try ZstdCodec.Compressor(level: level, dictionary: dictionary)
                compressors[level] = made
                compressor = made
            }
        }
        output.append(ImageFormat.batchTag)
        let encodingOffset = output.count
        output.append(ImageFormat.BodyEncoding.stored.rawValue)
        output.appendLittleEndian(UInt16(pageCount))
        let storedLengthOffset = output.count
        output.appendLittleEndian(UInt32(0))
        output.appendLittleEndian(UInt32(body.count))
        let hash = body.withUnsafeBytes { XXH3_64bits($0.baseAddress, $0.count) }
        output.appendLittleEndian(hash)
        let start = output.count
        if let compressor {
            let bound = ZstdCodec.compressedBound(forLength: body.count)
            if frame.count < bound {
                frame = [UInt8](repeating: 0, count: bound)
            }
            let length = try withBytes(of: body) { (raw) throws(EncodingError) in
                try withMutableBytes(of: &frame) { (out) throws(EncodingError) in
                    try compressor.compress(raw, into: out)
                }
            }
            if length < body.count {
                output[encodingOffset] = ImageFormat.BodyEncoding.zstd.rawValue
                frame.withUnsafeBytes { output.append(contentsOf: UnsafeRawBufferPointer(rebasing: $0[0..<length])) }
            } else {
                output.append(contentsOf: body)
            }
        } else {
            output.append(contentsOf: body)
        }
        output.writeLittleEndian(UInt32(output.count - start), at: storedLengthOffset)
    }
}

/// Page comparisons over libc's vectorised `memcmp`.
enum PageCompare {
    static let zeroPage = [UInt8](repeating: 0, count: ImageFormat.pageSize)

    static func isZero(_ page: UnsafeRawBufferPointer) -> Bool {
        zeroPage.withUnsafeBytes { zero in
            page.count <= zero.count && memcmp(page.baseAddress!, zero.baseAddress!, page.count) == 0
        }
    }

    static func equal(_ left: UnsafeRawBufferPointer, _ right: UnsafeRawBufferPointer) -> Bool {
        left.count == right.count && (left.count == 0 || memcmp(left.baseAddress!, right.baseAddress!, left.count) == 0)
    }
}
