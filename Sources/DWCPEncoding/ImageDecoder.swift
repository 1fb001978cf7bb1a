import CXXHash

/// Decodes the HDE record stream (``ImageFormat``) back into the RAM image, byte for byte.
///
/// Every length, count and index is checked against the header, the format's hard limits and the caller's
/// ``Limits`` before anything is allocated or copied; any malformed, truncated or hostile input ends in an
/// ``EncodingError``, never a crash. The decoder owns a zstd context, so it is a non-`Sendable` class.
public final class ImageDecoder {
    /// Caller-chosen limits on what a stream may make the decoder allocate.
    public struct Limits: Sendable, Hashable {
        /// The largest image accepted. Set it to the VM's RAM size: a stream of zero pages legitimately expands
        /// to this many bytes.
        public var maximumImageLength: Int

        /// Creates limits.
        /// - Parameter maximumImageLength: The largest image accepted; default 4 GiB.
        public init(maximumImageLength: Int = 4 << 30) {
            self.maximumImageLength = maximumImageLength
        }
    }

    /// The limits in force.
    public let limits: Limits
    private let decompressor: ZstdCodec.Decompressor
    private var body: [UInt8] = []

    /// Creates a decoder.
    /// - Parameters:
    ///   - limits: What a stream may make the decoder allocate.
    ///   - dictionary: The zstd dictionary the encoder used, if any.
    /// - Throws: ``EncodingError/Code/decompressionFailed`` if libzstd cannot allocate a context.
    public init(limits: Limits = Limits(), dictionary: ZstdCodec.Dictionary? = nil) throws(EncodingError) {
        self.limits = limits
        self.decompressor = try ZstdCodec.Decompressor(dictionary: dictionary)
    }

    /// Decodes a complete stream.
    /// - Parameters:
    ///   - stream: The record stream.
    ///   - baseline: The baseline image the stream was encoded against, if it was.
    ///   - chunks: The receiver's chunks, if the stream may refer to them.
    /// - Returns: The image.
    /// - Throws: An ``EncodingError`` describing the first problem found.
    public func decode(_ stream: [UInt8], baseline: [UInt8]? = nil, chunks: (any ChunkProvider)? = nil)
        throws(EncodingError) -> [UInt8]
    {
        try withBytes(of: stream) { (streamBytes) throws(EncodingError) -> [UInt8] in
            guard let baseline else {
                return try decode(streamBytes, baseline: nil, chunks: chunks)
            }
            return try withBytes(of: baseline) { (baselineBytes) throws(EncodingError) -> [UInt8] in
                try decode(streamBytes, baseline: baselineBytes, chunks: chunks)
            }
        }
    }

    /// Decodes a complete stream.
    /// - Parameters:
    ///   - stream: The record stream.
    ///   - baseline: The baseline image the stream was encoded against, if it was.
    ///   - chunks: The receiver's chunks, if the stream may refer to them.
    /// - Returns: The image.
    /// - Throws: An ``EncodingError`` describing the first problem found.
    public func decode(
        _ stream: UnsafeRawBufferPointer, baseline: UnsafeRawBufferPointer?, chunks: (any ChunkProvider)? = nil
    ) throws(EncodingError) -> [UInt8] {
        let image = MemoryImageSink()
        let decoding = Stream(decoder: self, baseline: baseline, chunks: chunks, sink: image)
        try decoding.feed(stream)
        _ = try decoding.finish()
        return image.bytes
    }

    func readHeader(_ reader: inout ByteReader, baseline: UnsafeRawBufferPointer?) throws(EncodingError)
        -> Int
    {
        let magic = try reader.readBytes(4)
        guard magic.elementsEqual(ImageFormat.magic) else {
            throw EncodingError(.badMagic, expected: "\"NCHD\"", found: "\(Array(magic))")
        }
        let version = try reader.readByte()
        guard version == ImageFormat.version else {
            throw EncodingError(
                .unsupportedVersion, expected: "version \(ImageFormat.version)", found: "version \(version)",
                advice: "upgrade the receiver or ask the sender for version \(ImageFormat.version)")
        }
        let flags = try reader.readByte()
        let pageSizeLog2 = try reader.readByte()
        let reserved = try reader.readByte()
        guard flags & ~ImageFormat.flagHasBaseline == 0, pageSizeLog2 == ImageFormat.pageSizeLog2, reserved == 0 else {
            throw EncodingError(
                .malformedHeader, expected: "flags ⊆ 0x01, page size 2^12, reserved 0",
                found: "flags \(flags), page size 2^\(pageSizeLog2), reserved \(reserved)")
        }
        let imageLength = try reader.read(UInt64.self)
        guard imageLength <= UInt64(limits.maximumImageLength) else {
            throw EncodingError(
                .limitExceeded, expected: "an image of at most \(limits.maximumImageLength) bytes",
                found: "\(imageLength) bytes")
        }
        let baselineLength = try reader.read(UInt64.self)
        let baselineIdentity = ChunkIdentity(low: try reader.read(UInt64.self), high: try reader.read(UInt64.self))
        if flags & ImageFormat.flagHasBaseline == 0 {
            guard baselineLength == 0, baselineIdentity == ChunkIdentity(low: 0, high: 0) else {
                throw EncodingError(
                    .malformedHeader, expected: "no baseline fields without the baseline flag",
                    found: "baseline length \(baselineLength)")
            }
        } else {
            guard let baseline else {
                throw EncodingError(
                    .baselineRequired, expected: "the \(baselineLength)-byte baseline \(baselineIdentity)",
                    found: "no baseline", advice: "decode with the image the sender used as the baseline")
            }
            guard UInt64(baseline.count) == baselineLength, ChunkIdentity(of: baseline) == baselineIdentity else {
                throw EncodingError(
                    .baselineMismatch, expected: "the \(baselineLength)-byte baseline \(baselineIdentity)",
                    found: "a \(baseline.count)-byte baseline \(ChunkIdentity(of: baseline))")
            }
        }
        return Int(imageLength)
    }

    /// Decodes one batch whose 20-byte header and stored body `reader` holds, writing its pages into `pages`
    /// (earlier pages of the image come from `sink`).
    /// - Returns: The number of image bytes the batch holds.
    func decodeBatch(
        _ reader: inout ByteReader, firstPage: Int, pageCount: Int, imageLength: Int, into pages: inout [UInt8],
        sink: any DecodedImageSink, baseline: UnsafeRawBufferPointer?, chunks: (any ChunkProvider)?
    ) throws(EncodingError) -> (pages: Int, bytes: Int) {
        let header = try BatchHeader(&reader, firstPage: firstPage, pageCount: pageCount)
        let stored = try reader.readBytes(header.storedLength)
        let pageSize = ImageFormat.pageSize
        let bytes = min(header.pages * pageSize, imageLength - firstPage * pageSize)
        if pages.count < bytes {  // grows to the largest batch seen, then is reused
            pages = [UInt8](repeating: 0, count: max(bytes, 256 * pageSize))
        }
        switch header.encoding {
        case .stored:
            try withMutableBytes(of: &pages) { (out) throws(EncodingError) in
                try decodeRecords(
                    stored, header: header, firstPage: firstPage, imageLength: imageLength,
                    into: UnsafeMutableRawBufferPointer(rebasing: out[0..<bytes]), sink: sink, baseline: baseline,
                    chunks: chunks)
            }
        case .zstd:
            let size = try decompressor.declaredContentSize(of: stored, limit: header.bodyLength)
            guard size == header.bodyLength else {
                throw EncodingError(
                    .malformedRecord, expected: "a frame of \(header.bodyLength) bytes", found: "one declaring \(size)")
            }
            if body.count < size {  // grows to the largest body seen, then is reused
                body = [UInt8](repeating: 0, count: max(size, ImageFormat.maximumBodyLength(pageCount: 256)))
            }
            _ = try withMutableBytes(of: &body) { (out) throws(EncodingError) in
                try decompressor.decompress(stored, limit: size, into: out)
            }
            try withBytes(of: body) { (raw) throws(EncodingError) in
                try withMutableBytes(of: &pages) { (out) throws(EncodingError) in
                    try decodeRecords(
                        UnsafeRawBufferPointer(rebasing: raw[0..<header.bodyLength]), header: header,
                        firstPage: firstPage, imageLength: imageLength,
                        into: UnsafeMutableRawBufferPointer(rebasing: out[0..<bytes]), sink: sink,
                        baseline: baseline, chunks: chunks)
                }
            }
        }
        return (header.pages, bytes)
    }

    private func decodeRecords(
        _ records: UnsafeRawBufferPointer, header: BatchHeader, firstPage: Int, imageLength: Int,
        into out: UnsafeMutableRawBufferPointer, sink: any DecodedImageSink, baseline: UnsafeRawBufferPointer?,
        chunks: (any ChunkProvider)?
    ) throws(EncodingError) {
        let actualHash = XXH3_64bits(records.baseAddress, records.count)
        guard actualHash == header.bodyHash else {
            throw EncodingError(
                .checksumMismatch, expected: "batch body hash \(header.bodyHash)", found: "\(actualHash)",
                advice: "the stream was corrupted in transit")
        }
        let pageSize = ImageFormat.pageSize
        var reader = ByteReader(records, what: "a batch body")
        for index in firstPage..<(firstPage + header.pages) {
            let start = index * pageSize
            let length = min(pageSize, imageLength - start)
            let page = UnsafeMutableRawBufferPointer(
                rebasing: out[(start - firstPage * pageSize)..<(start - firstPage * pageSize + length)])
            let kindByte = try reader.readByte()
            guard let kind = ImageFormat.RecordKind(rawValue: kindByte) else {
                throw EncodingError(.malformedRecord, expected: "a record kind 0...5", found: "\(kindByte)")
            }
            switch kind {
            case .zero:
                page.initializeMemory(as: UInt8.self, repeating: 0)
            case .literal:
                page.copyMemory(from: try reader.readBytes(length))
            case .unchanged, .delta:
                guard let baseline, start + length <= baseline.count else {
                    throw EncodingError(
                        .malformedRecord, expected: "a baseline covering page \(index) for a \(kind) record",
                        found: "baseline of \(baseline?.count ?? 0) bytes")
                }
                page.copyMemory(from: UnsafeRawBufferPointer(rebasing: baseline[start..<(start + length)]))
                if kind == .delta {
                    let deltaLength = try reader.readVarint()
                    guard deltaLength > 0, deltaLength < length else {
                        throw EncodingError(
                            .malformedRecord, expected: "a delta of 1..<\(length) bytes", found: "\(deltaLength)")
                    }
                    try PageDelta.apply(try reader.readBytes(deltaLength), to: page)
                }
            case .duplicate:
                let earlier = try reader.readVarint()
                guard earlier < index, length == pageSize else {
                    throw EncodingError(
                        .malformedRecord, expected: "a full page duplicating a page before \(index)",
                        found: "page \(earlier), length \(length)")
                }
                if earlier >= firstPage {
                    let from = (earlier - firstPage) * pageSize
                    page.copyMemory(from: UnsafeRawBufferPointer(rebasing: out[from..<(from + pageSize)]))
                } else {
                    try sink.read(at: earlier * pageSize, into: page)
                }
            case .known:
                let key = ChunkKey(bytes: try reader.readBytes(ChunkKey.byteCount))!
                guard let contents = chunks?.contents(of: key), contents.count == length else {
                    throw EncodingError(
                        .unknownChunk, expected: "a \(length)-byte chunk \(key) in the receiver's store",
                        found: chunks == nil ? "no chunk store" : "no such chunk",
                        advice: "the sender's view of the receiver's chunks is stale; resend without it")
                }
                contents.withUnsafeBytes { page.copyMemory(from: $0) }
            }
        }
        guard reader.remaining == 0 else {
            throw EncodingError(
                .trailingBytes, expected: "the batch body to end after \(header.pages) records",
                found: "\(reader.remaining) more bytes")
        }
    }
}

/// A batch's 20-byte header, checked against the format's limits and the pages left in the image.
struct BatchHeader {
    let encoding: ImageFormat.BodyEncoding
    let pages: Int
    let storedLength: Int
    let bodyLength: Int
    let bodyHash: UInt64

    /// Reads and checks the header after the batch tag.
    init(_ reader: inout ByteReader, firstPage: Int, pageCount: Int) throws(EncodingError) {
        let encodingByte = try reader.readByte()
        pages = Int(try reader.read(UInt16.self))
        storedLength = Int(try reader.read(UInt32.self))
        bodyLength = Int(try reader.read(UInt32.self))
        bodyHash = try reader.read(UInt64.self)
        guard let encoding = ImageFormat.BodyEncoding(rawValue: encodingByte) else {
            throw EncodingError(.malformedRecord, expected: "body encoding 0 or 1", found: "\(encodingByte)")
        }
        self.encoding = encoding
        guard pages >= 1, pages <= ImageFormat.maximumPagesPerBatch, pages <= pageCount - firstPage else {
            throw EncodingError(
                .limitExceeded,
                expected: "1...\(min(ImageFormat.maximumPagesPerBatch, pageCount - firstPage)) pages in the batch",
                found: "\(pages)")
        }
        let maximumBody = ImageFormat.maximumBodyLength(pageCount: pages)
        guard bodyLength <= maximumBody else {
            throw EncodingError(
                .limitExceeded, expected: "a body of at most \(maximumBody) bytes", found: "\(bodyLength)")
        }
        // An encoder compresses a body only when that makes it smaller, so nothing stored exceeds the body:
        // this bounds what a streaming decoder buffers for one batch.
        guard encoding == .stored ? storedLength == bodyLength : storedLength <= bodyLength else {
            throw EncodingError(
                .malformedRecord,
                expected: encoding == .stored
                    ? "a stored body of \(bodyLength) bytes" : "a zstd frame of at most \(bodyLength) bytes",
                found: "\(storedLength)")
        }
    }
}
