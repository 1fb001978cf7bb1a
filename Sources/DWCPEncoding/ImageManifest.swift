/// An image as a list of page keys: what a node keeps of every image it sent or received, so a later
/// transfer can be encoded against it (stage 3 deltas) when both nodes hold it — the pages themselves
/// are in the node's chunk store.
///
/// Serialized (little-endian): magic `NCIM`, version 1, 3 reserved zero bytes, the image's XXH3-128
/// identity (16 bytes, low half first), image length (UInt64), then per page one byte (0: all zero,
/// 1: a 32-byte SHA-256 key follows).
public struct ImageManifest: Sendable, Hashable {
    static let magic: [UInt8] = Array("NCIM".utf8)
    static let version: UInt8 = 1

    /// The image's identity (``ChunkIdentity`` of all its bytes).
    public var identity: ChunkIdentity
    /// The image's length in bytes.
    public var imageLength: Int
    /// Each page's key in the chunk store, `nil` for a page of zeros.
    public var pages: [ChunkKey?]

    /// Creates a manifest.
    /// - Parameters:
    ///   - identity: The image's identity.
    ///   - imageLength: Its length.
    ///   - pages: One key per 4 KiB page (the last may be shorter), nil for zero pages.
    public init(identity: ChunkIdentity, imageLength: Int, pages: [ChunkKey?]) {
        precondition(pages.count == (imageLength + ImageFormat.pageSize - 1) / ImageFormat.pageSize)
        self.identity = identity
        self.imageLength = imageLength
        self.pages = pages
    }

    /// How many non-zero pages `pages` has in common with this image at the same addresses.
    public func similarity(to pages: [ChunkKey?]) -> Int {
        zip(self.pages, pages).reduce(0) { count, pair in
            count + (pair.0 != nil && pair.0 == pair.1 ? 1 : 0)
        }
    }

    /// The wire (and file) form.
    public func serialized() -> [UInt8] {
        var bytes = Self.magic + [Self.version, 0, 0, 0]
        bytes.reserveCapacity(32 + pages.count * 33)
        bytes.appendLittleEndian(identity.low)
        bytes.appendLittleEndian(identity.high)
        bytes.appendLittleEndian(UInt64(imageLength))
        for page in pages {
            if let page {
                bytes.append(1)
                bytes.append(contentsOf: page.bytes)
            } else {
                bytes.append(0)
            }
        }
        return bytes
    }

    /// Reads the serialized form.
    /// - Parameters:
    ///   - bytes: What ``serialized()`` wrote.
    ///   - maximumImageLength: The largest image accepted.
    /// - Throws: ``EncodingError`` (`badMagic`, `unsupportedVersion`, `malformedHeader`, `limitExceeded`,
    ///   `truncated`, `trailingBytes`).
    public init(serialized bytes: [UInt8], maximumImageLength: Int = 1 << 40) throws(EncodingError) {
        self = try EncodedObjectOffer.parse(bytes, magic: Self.magic, what: "an image manifest") {
            (reader) throws(EncodingError) -> ImageManifest in
            let identity = ChunkIdentity(low: try reader.read(UInt64.self), high: try reader.read(UInt64.self))
            let length = try reader.read(UInt64.self)
            guard length <= UInt64(maximumImageLength) else {
                throw EncodingError(
                    .limitExceeded, expected: "an image of at most \(maximumImageLength) bytes", found: "\(length)")
            }
            let count = (Int(length) + ImageFormat.pageSize - 1) / ImageFormat.pageSize
            guard reader.remaining >= count else {
                throw EncodingError(.truncated, expected: "\(count) page entries", found: "\(reader.remaining) bytes")
            }
            var pages: [ChunkKey?] = []
            pages.reserveCapacity(count)
            for _ in 0..<count {
                switch try reader.readByte() {
                case 0: pages.append(nil)
                case 1: pages.append(ChunkKey(bytes: try reader.readBytes(ChunkKey.byteCount)))
                case let other:
                    throw EncodingError(.malformedRecord, expected: "a page entry 0 or 1", found: "\(other)")
                }
            }
            return ImageManifest(identity: identity, imageLength: Int(length), pages: pages)
        }
    }
}
