/// The HDE image record stream, version 2 (specified in docs/encoding.md).
///
/// ```
/// header   "NCHD" | version u8 = 2 | flags u8 | pageSizeLog2 u8 = 12 | reserved u8 = 0
///          | imageLength u64 | baselineLength u64 | baselineIdentity 16 bytes      (40 bytes)
/// batch    'B' | bodyEncoding u8 | pageCount u16 | storedLength u32 | bodyLength u32 | bodyHash u64
///          | storedLength bytes (the body, raw or one zstd frame)                    (20 + n bytes)
/// end      'E' | imageIdentity 16 bytes                                              (17 bytes)
/// body     one record per page: kind u8, then the kind's fields
/// ```
/// All integers are little-endian; record fields use LEB128 varints of at most 5 bytes.
public enum ImageFormat {
    /// The four bytes every stream starts with.
    public static let magic: [UInt8] = Array("NCHD".utf8)
    /// The only version this module writes and reads.
    public static let version: UInt8 = 2
    /// The page size (4 KiB, as the x86 and ARM MMUs and QEMU's RAM migration use).
    public static let pageSize = 4096
    static let pageSizeLog2: UInt8 = 12
    /// The header's length in bytes.
    public static let headerLength = 40
    static let batchHeaderLength = 20
    static let endLength = 17
    /// The most pages one batch may hold (the hard limit a decoder enforces).
    public static let maximumPagesPerBatch = 4096
    /// The largest body a batch of `pageCount` pages can have: each record is a kind byte plus at most a page
    /// (a delta is strictly shorter than its page, and its length varint is at most 2 bytes for 4 KiB).
    static func maximumBodyLength(pageCount: Int) -> Int {
        pageCount * (pageSize + 3)
    }

    /// Whether a page (at most ``pageSize`` bytes) is all zeros (libc's vectorised `memcmp`).
    public static func isZeroPage(_ page: UnsafeRawBufferPointer) -> Bool {
        page.count == 0 || PageCompare.isZero(page)
    }

    static let flagHasBaseline: UInt8 = 0x01
    static let batchTag = UInt8(ascii: "B")
    static let endTag = UInt8(ascii: "E")

    /// How a batch body is stored.
    enum BodyEncoding: UInt8 {
        case stored = 0
        case zstd = 1
    }

    /// How one page is encoded.
    public enum RecordKind: UInt8, Sendable, CaseIterable, CustomStringConvertible {
        /// All bytes zero; no fields.
        case zero = 0
        /// The page's bytes follow (`pageLength` bytes); batch compression applies.
        case literal = 1
        /// Identical to the same address in the baseline; no fields.
        case unchanged = 2
        /// Identical to an earlier page of this image: varint page index.
        case duplicate = 3
        /// Identical to a chunk the receiver holds: its 32-byte SHA-256 (``ChunkKey``). Version 1 named it by
        /// its XXH3-128 identity, which a hostile sender can collide.
        case known = 4
        /// XOR against the baseline page, zero-run encoded: varint length, then the runs.
        case delta = 5

        /// The kind's name.
        public var description: String {
            switch self {
            case .zero: "zero"
            case .literal: "literal"
            case .unchanged: "unchanged"
            case .duplicate: "duplicate"
            case .known: "known"
            case .delta: "delta"
            }
        }
    }
}

/// Little-endian writers over a growing byte array.
extension Array where Element == UInt8 {
    mutating func appendLittleEndian<T: FixedWidthInteger>(_ value: T) {
        var little = value.littleEndian
        Swift.withUnsafeBytes(of: &little) { append(contentsOf: $0) }
    }

    mutating func appendVarint(_ value: Int) {
        var remaining = UInt64(value)
        while remaining >= 0x80 {
            append(UInt8(truncatingIfNeeded: remaining) | 0x80)
            remaining >>= 7
        }
        append(UInt8(remaining))
    }

    mutating func writeLittleEndian<T: FixedWidthInteger>(_ value: T, at offset: Int) {
        var little = value.littleEndian
        Swift.withUnsafeBytes(of: &little) { bytes in
            for index in 0..<bytes.count { self[offset + index] = bytes[index] }
        }
    }
}

/// A bounds-checked cursor over bytes; every read throws ``EncodingError/Code/truncated`` past the end.
struct ByteReader {
    let bytes: UnsafeRawBufferPointer
    var offset: Int
    let what: String

    init(_ bytes: UnsafeRawBufferPointer, what: String) {
        self.bytes = bytes
        self.offset = 0
        self.what = what
    }

    var remaining: Int { bytes.count - offset }

    mutating func require(_ count: Int) throws(EncodingError) {
        guard count >= 0, count <= remaining else {
            throw EncodingError(
                .truncated, expected: "\(count) more bytes of \(what) at offset \(offset)",
                found: "\(remaining)")
        }
    }

    mutating func readByte() throws(EncodingError) -> UInt8 {
        try require(1)
        defer { offset += 1 }
        return bytes[offset]
    }

    mutating func read<T: FixedWidthInteger>(_: T.Type) throws(EncodingError) -> T {
        try require(MemoryLayout<T>.size)
        defer { offset += MemoryLayout<T>.size }
        return T(littleEndian: bytes.loadUnaligned(fromByteOffset: offset, as: T.self))
    }

    mutating func readBytes(_ count: Int) throws(EncodingError) -> UnsafeRawBufferPointer {
        try require(count)
        defer { offset += count }
        return UnsafeRawBufferPointer(rebasing: bytes[offset..<(offset + count)])
    }

    /// A LEB128 varint of at most 5 bytes holding a value below 2^32.
    mutating func readVarint() throws(EncodingError) -> Int {
        var value: UInt64 = 0
        for shift in stride(from: UInt64(0), through: 28, by: 7) {
            let byte = try readByte()
            value |= UInt64(byte & 0x7F) << shift
            if byte & 0x80 == 0 {
                guard value <= UInt64(UInt32.max) else { break }
                return Int(value)
            }
        }
        throw EncodingError(.malformedRecord, expected: "a varint below 2^32 in \(what)", found: "an overlong varint")
    }
}

/// `withUnsafeBytes` for closures with typed throws (the standard library's version rethrows `any Error`).
func withBytes<Result>(
    of array: [UInt8], _ body: (UnsafeRawBufferPointer) throws(EncodingError) -> Result
) throws(EncodingError) -> Result {
    let outcome: Swift.Result<Result, EncodingError> = array.withUnsafeBytes { raw in
        Swift.Result { () throws(EncodingError) -> Result in try body(raw) }
    }
    return try outcome.get()
}

/// `withUnsafeMutableBytes` for closures with typed throws.
func withMutableBytes<Result>(
    of array: inout [UInt8], _ body: (UnsafeMutableRawBufferPointer) throws(EncodingError) -> Result
) throws(EncodingError) -> Result {
    let outcome: Swift.Result<Result, EncodingError> = array.withUnsafeMutableBytes { raw in
        Swift.Result { () throws(EncodingError) -> Result in try body(raw) }
    }
    return try outcome.get()
}
