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
        var reader = ByteReader(stream, what: "an HDE stream")
        let imageLength = try readHeader(&reader, baseline: baseline)
        let pageSize = ImageFormat.pageSize
        let pageCount = (imageLength + pageSize - 1) / pageSize
        var image: [UInt8] = []
        // The whole image is reserved once a batch follows a valid header (not for a header alone); from then on
        // a stream can make the decoder allocate no more than the header's length, which the limit bounds.
        var page = 0
        while true {
            let tag = try reader.readByte()
            if tag == ImageFormat.endTag {
                break
            }
            guard tag == ImageFormat.batchTag else {
                throw EncodingError(
                    .malformedRecord, expected: "a batch ('B') or end ('E') tag at offset \(reader.offset - 1)",
                    found: "byte \(tag)")
            }
            if image.capacity < imageLength {
                image.reserveCapacity(imageLength)
            }
            page = try decodeBatch(
                &reader, firstPage: page, pageCount: pageCount, imageLength: imageLength, into: &image,
                baseline: baseline, chunks: chunks)
        }
        guard page == pageCount else {
            throw EncodingError(
                .malformedRecord, expected: "\(pageCount) pages before the end record", found: "\(page)")
        }
        let identity = ChunkIdentity(low: try reader.read(UInt64.self), high: try reader.read(UInt64.self))
        guard reader.remaining == 0 else {
            throw EncodingError(
                .trailingBytes, expected: "the stream to end after its end record",
                found: "\(reader.remaining) more bytes")
        }
        let actual = ChunkIdentity(of: image)
        guard actual == identity else {
            throw EncodingError(
                .checksumMismatch, expected: "image identity \(identity)", found: "\(actual)",
                advice: "the stream, the baseline or a referenced chunk was corrupted")
        }
        return image
    }

    private func readHeader(_ reader: inout ByteReader, baseline: UnsafeRawBufferPointer?) throws(EncodingError)
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

    private func decodeBatch(
        _ reader: inout ByteReader, firstPage: Int, pageCount: Int, imageLength: Int, into image: inout [UInt8],
        baseline: UnsafeRawBufferPointer?, chunks: (any ChunkProvider)?
    ) throws(EncodingError) -> Int {
        let encodingByte = try reader.readByte()
        let batchPages = Int(try reader.read(UInt16.self))
        let storedLength = Int(try reader.read(UInt32.self))
        let bodyLength = Int(try reader.read(UInt32.self))
        let bodyHash = try reader.read(UInt64.self)
        guard let encoding = ImageFormat.BodyEncoding(rawValue: encodingByte) else {
            throw EncodingError(.malformedRecord, expected: "body encoding 0 or 1", found: "\(encodingByte)")
        }
        guard batchPages >= 1, batchPages <= ImageFormat.maximumPagesPerBatch,
            batchPages <= pageCount - firstPage
        else {
            throw EncodingError(
                .limitExceeded,
                expected: "1...\(min(ImageFormat.maximumPagesPerBatch, pageCount - firstPage)) pages in the batch",
                found: "\(batchPages)")
        }
        let maximumBody = ImageFormat.maximumBodyLength(pageCount: batchPages)
        guard bodyLength <= maximumBody else {
            throw EncodingError(
                .limitExceeded, expected: "a body of at most \(maximumBody) bytes", found: "\(bodyLength)")
        }
        let stored = try reader.readBytes(storedLength)
        let bodyBytes: UnsafeRawBufferPointer
        switch encoding {
        case .stored:
            guard storedLength == bodyLength else {
                throw EncodingError(
                    .malformedRecord, expected: "a stored body of \(bodyLength) bytes", found: "\(storedLength)")
            }
            bodyBytes = stored
        case .zstd:
            let size = try decompressor.declaredContentSize(of: stored, limit: bodyLength)
            guard size == bodyLength else {
                throw EncodingError(
                    .malformedRecord, expected: "a frame of \(bodyLength) bytes", found: "one declaring \(size)")
            }
            if body.count < size {  // grows to the largest body seen, then is reused
                body = [UInt8](repeating: 0, count: max(size, ImageFormat.maximumBodyLength(pageCount: 256)))
            }
            _ = try withMutableBytes(of: &body) { (out) throws(EncodingError) in
                try decompressor.decompress(stored, limit: size, into: out)
            }
            bodyBytes = UnsafeRawBufferPointer(start: nil, count: 0)
        }
        if encoding == .zstd {
            try withBytes(of: body) { (raw) throws(EncodingError) in
                try decodeRecords(
                    UnsafeRawBufferPointer(rebasing: raw[0..<bodyLength]), hash: bodyHash, firstPage: firstPage,
                    pages: batchPages, imageLength: imageLength,
                    into: &image, baseline: baseline, chunks: chunks)
            }
        } else {
            try decodeRecords(
                bodyBytes, hash: bodyHash, firstPage: firstPage, pages: batchPages, imageLength: imageLength,
                into: &image, baseline: baseline, chunks: chunks)
        }
        return firstPage + batchPages
    }

    private func decodeRecords(
        _ records: UnsafeRawBufferPointer, hash: UInt64, firstPage: Int, pages: Int, imageLength: Int,
        into image: inout [UInt8], baseline: UnsafeRawBufferPointer?, chunks: (any ChunkProvider)?
    ) throws(EncodingError) {
        let actualHash = XXH3_64bits(records.baseAddress, records.count)
        guard actualHash == hash else {
            throw EncodingError(
                .checksumMismatch, expected: "batch body hash \(hash)", found: "\(actualHash)",
                advice: "the stream was corrupted in transit")
        }
        let pageSize = ImageFormat.pageSize
        var reader = ByteReader(records, what: "a batch body")
        for index in firstPage..<(firstPage + pages) {
            let start = index * pageSize
            let length = min(pageSize, imageLength - start)
            let kindByte = try reader.readByte()
            guard let kind = ImageFormat.RecordKind(rawValue: kindByte) else {
                throw EncodingError(.malformedRecord, expected: "a record kind 0...5", found: "\(kindByte)")
            }
            switch kind {
            case .zero:
                PageCompare.zeroPage.withUnsafeBytes {
                    image.append(contentsOf: UnsafeRawBufferPointer(rebasing: $0[0..<length]))
                }
            case .literal:
                image.append(contentsOf: try reader.readBytes(length))
            case .unchanged, .delta:
                guard let baseline, start + length <= baseline.count else {
                    throw EncodingError(
                        .malformedRecord, expected: "a baseline covering page \(index) for a \(kind) record",
                        found: "baseline of \(baseline?.count ?? 0) bytes")
                }
                image.append(contentsOf: UnsafeRawBufferPointer(rebasing: baseline[start..<(start + length)]))
                if kind == .delta {
                    let deltaLength = try reader.readVarint()
                    guard deltaLength > 0, deltaLength < length else {
                        throw EncodingError(
                            .malformedRecord, expected: "a delta of 1..<\(length) bytes", found: "\(deltaLength)")
                    }
                    let delta = try reader.readBytes(deltaLength)
                    try withMutableBytes(of: &image) { (raw) throws(EncodingError) in
                        try PageDelta.apply(delta, to: UnsafeMutableRawBufferPointer(rebasing: raw[start...]))
                    }
                }
            case .duplicate:
                let earlier = try reader.readVarint()
                guard earlier < index, length == pageSize else {
                    throw EncodingError(
                        .malformedRecord, expected: "a full page duplicating a page before \(index)",
                        found: "page \(earlier), length \(length)")
                }
                PageCompare.zeroPage.withUnsafeBytes { image.append(contentsOf: $0) }
                image.withUnsafeMutableBytes { raw in
                    let base = raw.baseAddress!
                    (base + start).copyMemory(from: base + earlier * pageSize, byteCount: length)
                }
            case .known:
                let key = ChunkKey(bytes: try reader.readBytes(ChunkKey.byteCount))!
                guard let contents = chunks?.contents(of: key), contents.count == length else {
                    throw EncodingError(
                        .unknownChunk, expected: "a \(length)-byte chunk \(key) in the receiver's store",
                        found: chunks == nil ? "no chunk store" : "no such chunk",
                        advice: "the sender's view of the receiver's chunks is stale; resend without it")
                }
                image.append(contentsOf: contents)
            }
        }
        guard reader.remaining == 0 else {
            throw EncodingError(
                .trailingBytes, expected: "the batch body to end after \(pages) records",
                found: "\(reader.remaining) more bytes")
        }
    }
}
