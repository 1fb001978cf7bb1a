import CXXHash

/// Where a streaming decode puts the image: appended in order, batch by batch, and read back when a
/// `duplicate` record names a page of an earlier batch (a file's page cache, or memory).
public protocol DecodedImageSink: AnyObject {
    /// The next bytes of the image, in order (whole pages, except the image's last).
    /// - Parameter bytes: Valid only during the call.
    func append(_ bytes: UnsafeRawBufferPointer) throws(EncodingError)

    /// Copies bytes already appended back out.
    /// - Parameters:
    ///   - offset: Where in the image they start; `offset + destination.count` ≤ the bytes appended so far.
    ///   - destination: Where to copy them.
    func read(at offset: Int, into destination: UnsafeMutableRawBufferPointer) throws(EncodingError)

    /// The image will be `imageLength` bytes: called once, when its first batch has been checked (never for a
    /// header alone), so a sink may reserve room then. The default does nothing.
    func willAppend(imageLength: Int) throws(EncodingError)
}

extension DecodedImageSink {
    /// Does nothing.
    public func willAppend(imageLength: Int) throws(EncodingError) {}
}

/// The image held in memory (what ``ImageDecoder/decode(_:baseline:chunks:)`` returns).
final class MemoryImageSink: DecodedImageSink {
    var bytes: [UInt8] = []

    func willAppend(imageLength: Int) {
        bytes.reserveCapacity(imageLength)
    }

    func append(_ more: UnsafeRawBufferPointer) {
        bytes.append(contentsOf: more)
    }

    func read(at offset: Int, into destination: UnsafeMutableRawBufferPointer) {
        bytes.withUnsafeBytes {
            destination.copyMemory(from: UnsafeRawBufferPointer(rebasing: $0[offset...].prefix(destination.count)))
        }
    }
}

extension ImageDecoder {
    /// One image decoded as its stream arrives, in pieces of any size (sans-IO: bytes in, pages out to a
    /// ``DecodedImageSink``).
    ///
    /// It holds at most one batch of input (a batch's stored body never exceeds its body, at most
    /// 4096 × 4099 bytes, and is checked before it is waited for) and one batch of pages; every field is
    /// checked as for a whole stream, and the image's identity at the end. A stream that stops early is
    /// ``EncodingError/Code/truncated`` at ``finish()``.
    public final class Stream {
        private enum State {
            case header
            case batches(imageLength: Int, pageCount: Int, nextPage: Int)
            case ended(ChunkIdentity)
        }

        private let decoder: ImageDecoder
        private let baseline: UnsafeRawBufferPointer?
        private let chunks: (any ChunkProvider)?
        private let sink: any DecodedImageSink
        private var state = State.header
        /// Bytes of an incomplete header, batch or end record, kept until the rest arrives.
        private var input: [UInt8] = []
        /// The bytes being decoded (the caller's, or `input`) and how far into them.
        private var view = UnsafeRawBufferPointer(start: nil, count: 0)
        private var consumed = 0
        private var pages: [UInt8] = []
        private let hasher: OpaquePointer
        /// Stream bytes taken so far.
        public private(set) var streamBytes = 0
        /// Image bytes handed to the sink so far.
        public private(set) var imageBytes = 0
        /// The image's length, once the header is read.
        public private(set) var imageLength: Int?

        /// Starts decoding one stream.
        /// - Parameters:
        ///   - decoder: Supplies the limits and the zstd context (one stream at a time per decoder).
        ///   - baseline: The baseline the stream was encoded against, if any; it must stay valid until
        ///     ``finish()`` returns.
        ///   - chunks: The receiver's chunks, if the stream may refer to them.
        ///   - sink: Takes the image.
        public init(
            decoder: ImageDecoder, baseline: UnsafeRawBufferPointer? = nil, chunks: (any ChunkProvider)? = nil,
            sink: any DecodedImageSink
        ) {
            self.decoder = decoder
            self.baseline = baseline
            self.chunks = chunks
            self.sink = sink
            hasher = XXH3_createState()
            XXH3_128bits_reset(hasher)
        }

        deinit {
            XXH3_freeState(hasher)
        }

        /// Takes the next bytes of the stream and decodes every batch they complete.
        /// - Parameter bytes: Any number of bytes (valid only during the call).
        /// - Throws: An ``EncodingError`` for the first problem found; the stream is then unusable.
        public func feed(_ bytes: UnsafeRawBufferPointer) throws(EncodingError) {
            streamBytes += bytes.count
            if case .ended = state, bytes.count > 0 {
                throw EncodingError(
                    .trailingBytes, expected: "the stream to end after its end record",
                    found: "\(bytes.count) more bytes")
            }
            if input.isEmpty {
                let used = try decode(bytes)  // no copy: the caller's bytes are decoded in place
                input = Array(bytes[used...])
            } else {
                input.append(contentsOf: bytes)
                let held = input
                let used = try withBytes(of: held) { (raw) throws(EncodingError) in try decode(raw) }
                if used > 0 { input.removeFirst(used) }
            }
        }

        /// Decodes every whole element at the start of `bytes`.
        /// - Returns: The bytes those elements took.
        private func decode(_ bytes: UnsafeRawBufferPointer) throws(EncodingError) -> Int {
            view = bytes
            consumed = 0
            defer { view = UnsafeRawBufferPointer(start: nil, count: 0) }
            while try step() {}
            return consumed
        }

        /// Ends the stream.
        /// - Returns: The image's identity, checked against the end record.
        /// - Throws: ``EncodingError/Code/truncated`` if the stream stopped before its end record, or
        ///   ``EncodingError/Code/trailingBytes`` if bytes follow it.
        public func finish() throws(EncodingError) -> ChunkIdentity {
            guard case .ended(let identity) = state else {
                let place =
                    switch state {
                    case .header: "the header"
                    case .batches(_, let pageCount, let nextPage): "page \(nextPage) of \(pageCount)"
                    case .ended: "the end"
                    }
                throw EncodingError(
                    .truncated, expected: "a whole stream (\(place) is incomplete)",
                    found: "\(input.count) bytes after offset \(streamBytes - input.count)")
            }
            guard input.isEmpty else {
                throw EncodingError(
                    .trailingBytes, expected: "the stream to end after its end record",
                    found: "\(input.count) more bytes")
            }
            return identity
        }

        /// Decodes the next header, batch or end record if its bytes are all here.
        /// - Returns: Whether it did (so there may be another).
        private func step() throws(EncodingError) -> Bool {
            let available = view.count - consumed
            switch state {
            case .ended:
                guard available == 0 else {
                    throw EncodingError(
                        .trailingBytes, expected: "the stream to end after its end record",
                        found: "\(available) more bytes")
                }
                return false
            case .header:
                guard available >= ImageFormat.headerLength else { return false }
                let length = try withInput(ImageFormat.headerLength) { (reader) throws(EncodingError) in
                    try decoder.readHeader(&reader, baseline: baseline)
                }
                imageLength = length
                let pageCount = (length + ImageFormat.pageSize - 1) / ImageFormat.pageSize
                state = .batches(imageLength: length, pageCount: pageCount, nextPage: 0)
                return true
            case .batches(let length, let pageCount, let nextPage):
                guard available >= 1 else { return false }
                let tag = view[consumed]
                if tag == ImageFormat.endTag {
                    guard nextPage == pageCount else {
                        throw EncodingError(
                            .malformedRecord, expected: "\(pageCount) pages before the end record",
                            found: "\(nextPage)")
                    }
                    guard available >= ImageFormat.endLength else { return false }
                    let identity = try withInput(ImageFormat.endLength) { (reader) throws(EncodingError) in
                        _ = try reader.readByte()
                        return ChunkIdentity(low: try reader.read(UInt64.self), high: try reader.read(UInt64.self))
                    }
                    let digest = XXH3_128bits_digest(hasher)
                    let actual = ChunkIdentity(low: digest.low64, high: digest.high64)
                    guard actual == identity else {
                        throw EncodingError(
                            .checksumMismatch, expected: "image identity \(identity)", found: "\(actual)",
                            advice: "the stream, the baseline or a referenced chunk was corrupted")
                    }
                    state = .ended(identity)
                    return true
                }
                guard tag == ImageFormat.batchTag else {
                    throw EncodingError(
                        .malformedRecord,
                        expected: "a batch ('B') or end ('E') tag at offset \(streamBytes - available)",
                        found: "byte \(tag)")
                }
                let headerLength = ImageFormat.batchHeaderLength  // the tag included
                guard available >= headerLength else { return false }
                // Check the header before waiting for its body, so a hostile length is refused, not awaited.
                let stored = try withInput(headerLength) { (reader) throws(EncodingError) in
                    _ = try reader.readByte()
                    return try BatchHeader(&reader, firstPage: nextPage, pageCount: pageCount).storedLength
                }
                consumed -= headerLength
                guard available >= headerLength + stored else { return false }
                if nextPage == 0 { try sink.willAppend(imageLength: length) }
                let (batchPages, bytes) = try withInput(headerLength + stored) { (reader) throws(EncodingError) in
                    _ = try reader.readByte()
                    return try decoder.decodeBatch(
                        &reader, firstPage: nextPage, pageCount: pageCount, imageLength: length, into: &pages,
                        sink: sink, baseline: baseline, chunks: chunks)
                }
                try withBytes(of: pages) { (raw) throws(EncodingError) in
                    let decoded = UnsafeRawBufferPointer(rebasing: raw[0..<bytes])
                    XXH3_128bits_update(hasher, decoded.baseAddress, decoded.count)
                    try sink.append(decoded)
                }
                imageBytes += bytes
                state = .batches(imageLength: length, pageCount: pageCount, nextPage: nextPage + batchPages)
                return true
            }
        }

        /// Runs `body` on a reader over the next `count` bytes of the view and consumes them.
        private func withInput<Result>(
            _ count: Int, _ body: (inout ByteReader) throws(EncodingError) -> Result
        ) throws(EncodingError) -> Result {
            var reader = ByteReader(
                UnsafeRawBufferPointer(rebasing: view[consumed..<(consumed + count)]), what: "an HDE stream")
            let result = try body(&reader)
            consumed += count
            return result
        }
    }
}
