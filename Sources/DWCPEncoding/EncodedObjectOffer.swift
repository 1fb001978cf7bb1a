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
/// It also names, most similar first, earlier images the sender holds (``ImageManifest``s); the receiver
/// answers with the first it holds too, and the stream is then encoded against it (deltas).
///
/// Serialized (little-endian): magic `NCHO`, version 1, 3 reserved zero bytes, image length (UInt64),
/// baseline count (UInt8, at most ``maximumBaselines``), the baselines' identities (16 bytes each, low half
/// first), prefix count (UInt32), the prefixes (UInt64 each).
public struct EncodedObjectOffer: Sendable, Hashable {
    static let magic: [UInt8] = Array("NCHO".utf8)
    static let version: UInt8 = 1
    /// The most baselines an offer names.
    public static let maximumBaselines = 8
    /// The most prefixes an offer carries (8 MiB, the transport's limit for offer content, less the rest).
    public static let maximumPrefixes = (1 << 20) - 32

    /// The image's length in bytes.
    public var imageLength: UInt64
    /// Earlier images the sender could encode against, most similar first.
    public var baselines: [ChunkIdentity]
    /// Prefixes of the keys of the pages the sender may refer to, each once.
    public var prefixes: [UInt64]

    /// Creates an offer.
    /// - Parameters:
    ///   - imageLength: The image's length.
    ///   - baselines: At most ``maximumBaselines`` candidate baselines, most similar first.
    ///   - prefixes: At most ``maximumPrefixes`` key prefixes.
    public init(imageLength: UInt64, baselines: [ChunkIdentity] = [], prefixes: [UInt64]) {
        precondition(prefixes.count <= Self.maximumPrefixes, "at most \(Self.maximumPrefixes) prefixes")
        precondition(baselines.count <= Self.maximumBaselines, "at most \(Self.maximumBaselines) baselines")
        self.imageLength = imageLength
        self.baselines = baselines
        self.prefixes = prefixes
    }

    /// Whether `content` (a transport offer's) is an encoded-object offer at all (its magic).
    public static func isOffer(_ content: [UInt8]) -> Bool {
        content.starts(with: magic)
    }

    /// The wire form.
    public func serialized() -> [UInt8] {
        var bytes = Self.magic
        bytes.reserveCapacity(32 + 16 * baselines.count + 8 * prefixes.count)
        bytes.append(contentsOf: [Self.version, 0, 0, 0])
        bytes.appendLittleEndian(imageLength)
        bytes.append(UInt8(baselines.count))
        for baseline in baselines {
            bytes.appendLittleEndian(baseline.low)
            bytes.appendLittleEndian(baseline.high)
        }
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
        let fields = try withBytes(of: bytes) { (raw) throws(EncodingError) -> (UInt64, [ChunkIdentity], [UInt64]) in
            var cursor = ByteReader(raw, what: "an encoded-object offer")
            cursor.offset = start
            let imageLength = try cursor.read(UInt64.self)
            guard imageLength <= UInt64(maximumImageLength) else {
                throw EncodingError(
                    .limitExceeded, expected: "an image of at most \(maximumImageLength) bytes",
                    found: "\(imageLength) bytes")
            }
            let baselineCount = Int(try cursor.readByte())
            guard baselineCount <= Self.maximumBaselines else {
                throw EncodingError(
                    .malformedHeader, expected: "at most \(Self.maximumBaselines) baselines", found: "\(baselineCount)")
            }
            var baselines: [ChunkIdentity] = []
            for _ in 0..<baselineCount {
                baselines.append(ChunkIdentity(low: try cursor.read(UInt64.self), high: try cursor.read(UInt64.self)))
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
            return (imageLength, baselines, prefixes)
        }
        self.init(imageLength: fields.0, baselines: fields.1, prefixes: fields.2)
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
/// receiver has a chunk store), the chosen baseline (UInt8: its index in the offer's list, 255 for none),
/// prefix count (UInt32), then ⌈count / 8⌉ bytes of flags, bit i of byte i/8 for prefix i (unused high
/// bits zero).
public struct EncodedObjectReply: Sendable, Hashable {
    static let magic: [UInt8] = Array("NCHR".utf8)
    static let version: UInt8 = 1

    /// Whether the receiver keeps a chunk store (without one nothing is ever held).
    public var hasStore: Bool
    /// The offered baseline the stream must be encoded against: the first of the offer's list the receiver
    /// holds (index), or nil.
    public var baseline: Int?
    /// One flag per prefix of the offer, in order.
    public var held: [Bool]

    /// Creates a reply.
    public init(hasStore: Bool, baseline: Int? = nil, held: [Bool]) {
        precondition(baseline.map { (0..<EncodedObjectOffer.maximumBaselines).contains($0) } ?? true)
        self.hasStore = hasStore
        self.baseline = baseline
        self.held = held
    }

    /// The wire form.
    public func serialized() -> [UInt8] {
        var bytes = Self.magic + [Self.version, 0, 0, 0, hasStore ? 1 : 0, UInt8(baseline ?? 255)]
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
    ///   - baselines: The number of baselines offered.
    public init(serialized bytes: [UInt8], expectedCount: Int, baselines: Int) throws(EncodingError) {
        let start = try EncodedObjectOffer.checkHeader(
            bytes, magic: Self.magic, version: Self.version, what: "an encoded-object reply")
        let flagBytes = (expectedCount + 7) / 8
        guard bytes.count == start + 6 + flagBytes, bytes[start] <= 1,
            bytes[start + 1] == 255 || Int(bytes[start + 1]) < baselines
        else {
            throw EncodingError(
                .malformedHeader,
                expected: "\(start + 6 + flagBytes) bytes for \(expectedCount) prefixes, a baseline below \(baselines)",
                found: "\(bytes.count) bytes")
        }
        baseline = bytes[start + 1] == 255 ? nil : Int(bytes[start + 1])
        let count = bytes[(start + 2)..<(start + 6)].enumerated().reduce(0) { $0 | Int($1.element) << (8 * $1.offset) }
        let tail = expectedCount % 8
        guard count == expectedCount, tail == 0 || bytes[bytes.count - 1] >> UInt8(tail) == 0 else {
            throw EncodingError(
                .malformedHeader, expected: "flags for exactly \(expectedCount) prefixes", found: "\(count)")
        }
        hasStore = bytes[start] == 1
        held = (0..<expectedCount).map { bytes[start + 6 + $0 / 8] >> UInt8($0 % 8) & 1 == 1 }
    }
}
