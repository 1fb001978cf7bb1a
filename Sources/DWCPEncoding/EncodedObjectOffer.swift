/// What a sender says about an object it will send as an HDE image stream, before any of it (the content of
/// a transport offer): the image's length and, most similar first, earlier images it holds
/// (``ImageManifest``s) that the stream could be encoded against. The receiver answers with an
/// ``EncodedObjectReply``.
///
/// Serialized (little-endian): magic `NCHO`, version 1, 3 reserved zero bytes, image length (UInt64),
/// baseline count (UInt8, at most ``maximumBaselines``), the baselines' identities (16 bytes each, low half
/// first).
public struct EncodedObjectOffer: Sendable, Hashable {
    static let magic: [UInt8] = Array("NCHO".utf8)
    static let version: UInt8 = 1
    /// The most baselines an offer names.
    public static let maximumBaselines = 8

    /// The image's length in bytes.
    public var imageLength: UInt64
    /// Earlier images the sender could encode against, most similar first.
    public var baselines: [ChunkIdentity]

    /// Creates an offer.
    /// - Parameters:
    ///   - imageLength: The image's length.
    ///   - baselines: At most ``maximumBaselines`` candidate baselines, most similar first.
    public init(imageLength: UInt64, baselines: [ChunkIdentity] = []) {
        precondition(baselines.count <= Self.maximumBaselines, "at most \(Self.maximumBaselines) baselines")
        self.imageLength = imageLength
        self.baselines = baselines
    }

    /// Whether `content` (a transport offer's) is an encoded-object offer at all (its magic).
    public static func isOffer(_ content: [UInt8]) -> Bool {
        content.starts(with: magic)
    }

    /// The wire form.
    public func serialized() -> [UInt8] {
        var bytes = Self.magic + [Self.version, 0, 0, 0]
        bytes.appendLittleEndian(imageLength)
        bytes.append(UInt8(baselines.count))
        for baseline in baselines {
            bytes.appendLittleEndian(baseline.low)
            bytes.appendLittleEndian(baseline.high)
        }
        return bytes
    }

    /// Reads the wire form.
    /// - Parameters:
    ///   - bytes: What the sender sent.
    ///   - maximumImageLength: The largest image the receiver accepts.
    /// - Throws: ``EncodingError/Code/badMagic``, ``EncodingError/Code/unsupportedVersion``,
    ///   ``EncodingError/Code/malformedHeader``, ``EncodingError/Code/limitExceeded``, ``EncodingError/Code/truncated``
    ///   or ``EncodingError/Code/trailingBytes``.
    public init(serialized bytes: [UInt8], maximumImageLength: Int) throws(EncodingError) {
        self = try Self.parse(bytes, magic: Self.magic, what: "an encoded-object offer") {
            (reader) throws(EncodingError) -> EncodedObjectOffer in
            let imageLength = try reader.read(UInt64.self)
            guard imageLength <= UInt64(maximumImageLength) else {
                throw EncodingError(
                    .limitExceeded, expected: "an image of at most \(maximumImageLength) bytes",
                    found: "\(imageLength) bytes")
            }
            let count = Int(try reader.readByte())
            guard count <= Self.maximumBaselines else {
                throw EncodingError(
                    .malformedHeader, expected: "at most \(Self.maximumBaselines) baselines", found: "\(count)")
            }
            var baselines: [ChunkIdentity] = []
            for _ in 0..<count {
                baselines.append(ChunkIdentity(low: try reader.read(UInt64.self), high: try reader.read(UInt64.self)))
            }
            return EncodedObjectOffer(imageLength: imageLength, baselines: baselines)
        }
    }

    /// Checks magic, version and reserved bytes, runs `body` on the rest, and requires it to read all of it.
    static func parse<Value>(
        _ bytes: [UInt8], magic: [UInt8], what: String, _ body: (inout ByteReader) throws(EncodingError) -> Value
    ) throws(EncodingError) -> Value {
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
        return try withBytes(of: bytes) { (raw) throws(EncodingError) -> Value in
            var reader = ByteReader(raw, what: what)
            reader.offset = 8
            let value = try body(&reader)
            guard reader.remaining == 0 else {
                throw EncodingError(
                    .trailingBytes, expected: "the end of \(what)", found: "\(reader.remaining) more bytes")
            }
            return value
        }
    }
}

/// The receiver's answer to an ``EncodedObjectOffer`` (the content of a transport accept): whether it keeps a
/// chunk store, which offered baseline the stream must be encoded against (the first it holds too), and
/// whether its store holds anything worth a query (``EncodedObjectQuery``).
///
/// Serialized: magic `NCHR`, version 1, 3 reserved zero bytes, flags (UInt8: bit 0 = the receiver has a chunk
/// store, bit 1 = it wants the sender's query), the chosen baseline (UInt8: its index in the offer's list,
/// 255 for none).
public struct EncodedObjectReply: Sendable, Hashable {
    static let magic: [UInt8] = Array("NCHR".utf8)

    /// Whether the receiver keeps a chunk store.
    public var hasStore: Bool
    /// Whether the sender should ask which of its pages the store holds (false for an empty store).
    public var wantsQuery: Bool
    /// The offered baseline the stream must be encoded against (its index), or nil.
    public var baseline: Int?

    /// Creates a reply.
    public init(hasStore: Bool, wantsQuery: Bool, baseline: Int? = nil) {
        precondition(baseline.map { (0..<EncodedObjectOffer.maximumBaselines).contains($0) } ?? true)
        self.hasStore = hasStore
        self.wantsQuery = wantsQuery
        self.baseline = baseline
    }

    /// The wire form.
    public func serialized() -> [UInt8] {
        Self.magic + [
            EncodedObjectOffer.version, 0, 0, 0, (hasStore ? 1 : 0) | (wantsQuery ? 2 : 0), UInt8(baseline ?? 255),
        ]
    }

    /// Reads the wire form.
    /// - Parameters:
    ///   - bytes: What the receiver sent.
    ///   - baselines: The number of baselines offered.
    /// - Throws: An ``EncodingError`` for anything but a valid reply naming an offered baseline.
    public init(serialized bytes: [UInt8], baselines: Int) throws(EncodingError) {
        self = try EncodedObjectOffer.parse(bytes, magic: Self.magic, what: "an encoded-object reply") {
            (reader) throws(EncodingError) -> EncodedObjectReply in
            let flags = try reader.readByte()
            let baseline = try reader.readByte()
            guard flags <= 3, baseline == 255 || Int(baseline) < baselines else {
                throw EncodingError(
                    .malformedHeader, expected: "flags ⊆ 0x03 and a baseline below \(baselines) or 255",
                    found: "flags \(flags), baseline \(baseline)")
            }
            return EncodedObjectReply(
                hasStore: flags & 1 != 0, wantsQuery: flags & 2 != 0, baseline: baseline == 255 ? nil : Int(baseline))
        }
    }
}

/// The sender's question to a receiver whose store holds chunks (a transport query): the key prefixes
/// (``ChunkKey/prefix``) of the distinct non-zero pages it may refer to. The receiver answers per prefix
/// (``EncodedObjectAnswer``); the sender then refers by full key (`known` records) only to pages whose
/// prefix it holds. A prefix held for another chunk (about n·m / 2^64 for n pages and m stored chunks:
/// ~10^-8 for a 4 GiB image against a 16 GiB store) makes the decoder report
/// ``EncodingError/Code/unknownChunk``, never a wrong byte: the `known` record carries the whole SHA-256.
///
/// Serialized: magic `NCHQ`, version 1, 3 reserved zero bytes, prefix count (UInt32), the prefixes (UInt64
/// each).
public struct EncodedObjectQuery: Sendable, Hashable {
    static let magic: [UInt8] = Array("NCHQ".utf8)
    /// The most prefixes a query carries (8 MiB, the transport's limit for a message's content, less the header).
    public static let maximumPrefixes = (1 << 20) - 2

    /// Prefixes of the keys of the pages the sender may refer to, each once.
    public var prefixes: [UInt64]

    /// Creates a query of at most ``maximumPrefixes`` prefixes.
    public init(prefixes: [UInt64]) {
        precondition(prefixes.count <= Self.maximumPrefixes, "at most \(Self.maximumPrefixes) prefixes")
        self.prefixes = prefixes
    }

    /// The wire form.
    public func serialized() -> [UInt8] {
        var bytes = Self.magic + [EncodedObjectOffer.version, 0, 0, 0]
        bytes.reserveCapacity(12 + 8 * prefixes.count)
        bytes.appendLittleEndian(UInt32(prefixes.count))
        for prefix in prefixes { bytes.appendLittleEndian(prefix) }
        return bytes
    }

    /// Reads the wire form.
    /// - Throws: An ``EncodingError`` for anything but a valid query.
    public init(serialized bytes: [UInt8]) throws(EncodingError) {
        self = try EncodedObjectOffer.parse(bytes, magic: Self.magic, what: "an encoded-object query") {
            (reader) throws(EncodingError) -> EncodedObjectQuery in
            let count = Int(try reader.read(UInt32.self))
            guard count <= Self.maximumPrefixes, reader.remaining == 8 * count else {
                throw EncodingError(
                    .malformedHeader, expected: "\(min(count, Self.maximumPrefixes)) prefixes of 8 bytes",
                    found: "\(reader.remaining) bytes for \(count)")
            }
            var prefixes: [UInt64] = []
            prefixes.reserveCapacity(count)
            for _ in 0..<count { prefixes.append(try reader.read(UInt64.self)) }
            return EncodedObjectQuery(prefixes: prefixes)
        }
    }
}

/// The receiver's answer to an ``EncodedObjectQuery``: for each prefix, whether its store holds a chunk
/// whose key starts with it.
///
/// Serialized: magic `NCHA`, version 1, 3 reserved zero bytes, prefix count (UInt32), then ⌈count / 8⌉
/// bytes of flags, bit i of byte i/8 for prefix i (unused high bits zero).
public struct EncodedObjectAnswer: Sendable, Hashable {
    static let magic: [UInt8] = Array("NCHA".utf8)

    /// One flag per prefix of the query, in order.
    public var held: [Bool]

    /// Creates an answer.
    public init(held: [Bool]) {
        self.held = held
    }

    /// The wire form.
    public func serialized() -> [UInt8] {
        var bytes = Self.magic + [EncodedObjectOffer.version, 0, 0, 0]
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
    ///   - expectedCount: The number of prefixes asked about.
    /// - Throws: An ``EncodingError`` for anything but an answer to exactly that many prefixes.
    public init(serialized bytes: [UInt8], expectedCount: Int) throws(EncodingError) {
        self = try EncodedObjectOffer.parse(bytes, magic: Self.magic, what: "an encoded-object answer") {
            (reader) throws(EncodingError) -> EncodedObjectAnswer in
            let count = Int(try reader.read(UInt32.self))
            let flagBytes = (expectedCount + 7) / 8
            guard count == expectedCount, reader.remaining == flagBytes else {
                throw EncodingError(
                    .malformedHeader, expected: "flags for exactly \(expectedCount) prefixes",
                    found: "\(count) prefixes in \(reader.remaining) bytes")
            }
            let flags = try reader.readBytes(flagBytes)
            let tail = expectedCount % 8
            guard tail == 0 || flags[flagBytes - 1] >> UInt8(tail) == 0 else {
                throw EncodingError(.malformedHeader, expected: "no flags past the last prefix", found: "stray bits")
            }
            return EncodedObjectAnswer(held: (0..<expectedCount).map { flags[$0 / 8] >> UInt8($0 % 8) & 1 == 1 })
        }
    }
}
