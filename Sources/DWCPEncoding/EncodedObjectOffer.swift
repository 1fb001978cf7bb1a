/// What a sender says about an object it will send as an HDE image stream, before any of it (the content
/// of a transport offer): the image's length and the key prefixes of its distinct non-zero pages, so the
/// receiver can say which it holds in one round trip (``EncodedObjectReply``).
///
/// A prefix is the first 8 bytes of a page's SHA-256 (``ChunkKey/prefix``). The receiver answers per prefix;
/// the sender then refers by full key (`known` records) only to pages whose prefix the receiver holds.
/// A prefix held for another chunk (about n·m / 2^64 for n pages and m stored chunks: ~10^-8 for a 4 GiB
/// image against a 16 GiB store) makes the decoder report ``EncodingError/Code/unknownChunk``, never
/// a wrong byte: the `known` record carries the whole SHA-256.
///
/// Serialized (little-endian): magic `NCHO`, version 1, 3 reserved zero bytes, image length (UInt64),
/// prefix count (UInt32), the prefixes (UInt64 each).
public struct EncodedObjectOffer: Sendable, Hashable {
    static let magic: [UInt8] = Array("NCHO".utf8)
    static let version: UInt8 = 1
    static let headerLength = 20
    /// The most prefixes an offer carries (1 Mi: 8 MiB, the transport's limit for offer content, less the header).
    public static let maximumPrefixes = (1 << 20) - 3

    /// The image's length in bytes.
    public var imageLength: UInt64
    /// Prefixes of the keys of the pages the sender may refer to, each once.
    public var prefixes: [UInt64]

    /// Creates an offer.
    /// - Parameters:
    ///   - imageLength: The image's length.
    ///   - prefixes: At most ``maximumPrefixes`` key prefixes.
    public init(imageLength: UInt64, prefixes: [UInt64]) {
        precondition(prefixes.count <= Self.maximumPrefixes, "at most \(Self.maximumPrefixes) prefixes")
        self.imageLength = imageLength
        self.prefixes = prefixes
    }

    /// Whether `content` (a transport offer's) is an encoded-object offer at all (its magic).
    public static func isOffer(_ content: [UInt8]) -> Bool {
        content.starts(with: magic)
    }

    /// The wire form.
    public func serialized() -> [UInt8] {
        var bytes = Self.magic
        bytes.reserveCapacity(Self.headerLength + 8 * prefixes.count)
        bytes.append(contentsOf: [Self.version, 0, 0, 0])
        bytes.appendLittleEndian(imageLength)
        bytes.appendLittleEndian(UInt32(prefixes.count))
        for prefix in prefixes { bytes.appendLittleEndian(prefix) }
        return bytes
    }

    /// Reads the wire form.
    /// - Parameters:
    ///   - bytes: What the sender sent.
    ///   - maximumImageLength: The largest image the receiver accepts.
    /// - Throws: ``EncodingError/Code/badMagic``, ``EncodingError/Code/unsupportedVersion``,
    ///   ``EncodingError/Code/malformedHeader`` or ``EncodingError/Code/limitExceeded``.
    public init(serialized bytes: [UInt8], maximumImageLength: Int) throws(EncodingError) {
        let start = try Self.checkHeader(
            bytes, magic: Self.magic, version: Self.version, what: "an encoded-object offer")
        let fields = try withBytes(of: bytes) { (raw) throws(EncodingError) -> (UInt64, [UInt64]) in
            var cursor = ByteReader(raw, what: "an encoded-object offer")
            cursor.offset = start
            let imageLength = try cursor.read(UInt64.self)
            guard imageLength <= UInt64(maximumImageLength) else {
                throw EncodingError(
                    .limitExceeded, expected: "an image of at most \(maximumImageLength) bytes",
                    found: "\(imageLength) bytes")
            }
            let count = Int(try cursor.read(UInt32.self))
            guard count <= Self.maximumPrefixes, cursor.remaining == 8 * count else {
                throw EncodingError(
                    .malformedHeader, expected: "\(min(count, Self.maximumPrefixes)) prefixes of 8 bytes",
                    found: "\(cursor.remaining) bytes for \(count)")
            }
            var prefixes: [UInt64] = []
            prefixes.reserveCapacity(count)
            for _ in 0..<count { prefixes.append(try cursor.read(UInt64.self)) }
            return (imageLength, prefixes)
        }
        self.init(imageLength: fields.0, prefixes: fields.1)
    }

    /// Checks magic, version and reserved bytes; returns the offset after them.
    static func checkHeader(_ bytes: [UInt8], magic: [UInt8], version: UInt8, what: String) throws(EncodingError) -> Int
    {
        guard bytes.count >= 8, bytes.starts(with: magic) else {
            throw EncodingError(
                .badMagic, expected: "\(what) starting \"\(String(decoding: magic, as: UTF8.self))\"",
                found: "\(Array(bytes.prefix(8)))")
        }
        guard bytes[4] == version else {
            throw EncodingError(
                .unsupportedVersion, expected: "version \(version) of \(what)", found: "version \(bytes[4])",
                advice: "run the same NovaCron version on both nodes")
        }
        guard bytes[5] == 0, bytes[6] == 0, bytes[7] == 0 else {
            throw EncodingError(.malformedHeader, expected: "reserved zero bytes in \(what)", found: "\(bytes[5...7])")
        }
        return 8
    }
}

/// The receiver's answer to an ``EncodedObjectOffer`` (the content of a transport accept): for each
/// announced prefix, whether its chunk store holds a chunk with that key prefix.
///
/// Serialized (little-endian): magic `NCHR`, version 1, 3 reserved zero bytes, flags (UInt8: bit 0 = the
/// receiver has a chunk store), prefix count (UInt32), then ⌈count / 8⌉ bytes of flags, bit i of byte i/8
/// for prefix i (unused high bits zero).
public struct EncodedObjectReply: Sendable, Hashable {
    static let magic: [UInt8] = Array("NCHR".utf8)
    static let version: UInt8 = 1

    /// Whether the receiver keeps a chunk store (without one nothing is ever held).
    public var hasStore: Bool
    /// One flag per prefix of the offer, in order.
    public var held: [Bool]

    /// Creates a reply.
    public init(hasStore: Bool, held: [Bool]) {
        self.hasStore = hasStore
        self.held = held
    }

    /// The wire form.
    public func serialized() -> [UInt8] {
        var bytes = Self.magic + [Self.version, 0, 0, 0, hasStore ? 1 : 0]
        bytes.appendLittleEndian(UInt32(held.count))
        var byte: UInt8 = 0
        for (index, flag) in held.enumerated() {
            if flag { byte |= 1 << UInt8(index % 8) }
            if index % 8 == 7 {
                bytes.append(byte)
                byte = 0
            }
        }
        if held.count % 8 != 0 { bytes.append(byte) }
        return bytes
    }

    /// Reads the wire form.
    /// - Parameters:
    ///   - bytes: What the receiver sent.
    ///   - expectedCount: The number of prefixes offered.
    /// - Throws: ``EncodingError/Code/badMagic``, ``EncodingError/Code/unsupportedVersion`` or
    ///   ``EncodingError/Code/malformedHeader``.
    public init(serialized bytes: [UInt8], expectedCount: Int) throws(EncodingError) {
        let start = try EncodedObjectOffer.checkHeader(
            bytes, magic: Self.magic, version: Self.version, what: "an encoded-object reply")
        let flagBytes = (expectedCount + 7) / 8
        guard bytes.count == start + 5 + flagBytes, bytes[start] <= 1 else {
            throw EncodingError(
                .malformedHeader, expected: "\(start + 5 + flagBytes) bytes for \(expectedCount) prefixes",
                found: "\(bytes.count) bytes, flags \(bytes.count > start ? bytes[start] : 0)")
        }
        let count = bytes[(start + 1)..<(start + 5)].enumerated().reduce(0) { $0 | Int($1.element) << (8 * $1.offset) }
        let tail = expectedCount % 8
        guard count == expectedCount, tail == 0 || bytes[bytes.count - 1] >> UInt8(tail) == 0 else {
            throw EncodingError(
                .malformedHeader, expected: "flags for exactly \(expectedCount) prefixes", found: "\(count)")
        }
        hasStore = bytes[start] == 1
        held = (0..<expectedCount).map { bytes[start + 5 + $0 / 8] >> UInt8($0 % 8) & 1 == 1 }
    }
}
