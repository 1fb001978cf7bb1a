#if canImport(Glibc)
    import Glibc
#elseif canImport(Darwin)
    import Darwin
#endif

/// A compact summary of the chunks a receiver holds: a Bloom filter over their ``ChunkKey``s, sent to the sender
/// at the start of a session so it can send references instead of content.
///
/// `mayContain` never says false for a key that was inserted, and says true for a key that was not with about the
/// ``estimatedFalsePositiveRate`` (1 % by default, ~9.6 bits per key). False positives are harmless by
/// protocol: the receiver answers a reference it cannot resolve with a "want" (``PersistentChunkStore/missing(from:)``)
/// and the sender MUST then send the content. Keys are SHA-256 digests, already uniform, so the filter's `k`
/// indices come from the key's first 128 bits by double hashing.
///
/// Serialized form (little-endian): magic `NCBF`, version 1, hash count, 2 reserved zero bytes, bit count (UInt64,
/// a multiple of 64), inserted count (UInt64), then the bits as UInt64 words.
public struct ChunkSummary: Sendable, Hashable {
    static let magic: [UInt8] = Array("NCBF".utf8)
    static let version: UInt8 = 1
    static let headerLength = 24

    /// The number of bits in the filter (a multiple of 64).
    public let bitCount: Int
    /// The number of bit positions set per key.
    public let hashCount: Int
    /// The number of keys inserted.
    public private(set) var count: Int
    private var words: [UInt64]

    /// Creates an empty filter sized for `expectedCount` keys at `falsePositiveRate`.
    ///
    /// Uses the optimal m = −n·ln p / (ln 2)² bits and k = (m / n)·ln 2 hashes (at least 64 bits, 1...32 hashes).
    /// - Parameters:
    ///   - expectedCount: How many keys will be inserted.
    ///   - falsePositiveRate: The target false-positive rate, clamped to 1e-9...0.5.
    public init(expectedCount: Int, falsePositiveRate: Double = 0.01) {
        let rate = min(max(falsePositiveRate, 1e-9), 0.5)
        let keys = Double(max(expectedCount, 1))
        let bits = (-keys * log(rate) / (log(2.0) * log(2.0))).rounded(.up)
        let wordCount = max(1, Int(bits / 64) + (bits.truncatingRemainder(dividingBy: 64) == 0 ? 0 : 1))
        bitCount = wordCount * 64
        hashCount = min(32, max(1, Int((Double(bitCount) / keys * log(2.0)).rounded())))
        count = 0
        words = [UInt64](repeating: 0, count: wordCount)
    }

    /// Reads a serialized filter, as a sender receives it.
    /// - Parameters:
    ///   - bytes: The output of ``serialized()``.
    ///   - maximumBitCount: The largest filter accepted; default 2^33 bits (1 GiB).
    /// - Throws: ``EncodingError/Code/malformedSummary`` for bad magic, version, fields or length;
    ///   ``EncodingError/Code/limitExceeded`` for a filter above `maximumBitCount`.
    public init(serialized bytes: [UInt8], maximumBitCount: Int = 1 << 33) throws(EncodingError) {
        guard bytes.count >= ChunkSummary.headerLength, bytes[0..<4].elementsEqual(ChunkSummary.magic),
            bytes[4] == ChunkSummary.version, bytes[6] == 0, bytes[7] == 0
        else {
            throw EncodingError(
                .malformedSummary, expected: "a \(ChunkSummary.headerLength)-byte NCBF version 1 header",
                found: "\(bytes.count) bytes starting \(Array(bytes.prefix(8)))")
        }
        func field(_ offset: Int) -> UInt64 {
            (0..<8).reduce(UInt64(0)) { $0 | UInt64(bytes[offset + $1]) << (8 * UInt64($1)) }
        }
        let hashes = Int(bytes[5])
        let bits = field(8)
        let inserted = field(16)
        guard bits <= UInt64(maximumBitCount) else {
            throw EncodingError(
                .limitExceeded, expected: "a summary of at most \(maximumBitCount) bits", found: "\(bits) bits")
        }
        guard (1...32).contains(hashes), bits > 0, bits % 64 == 0,
            bytes.count == ChunkSummary.headerLength + Int(bits / 8), inserted <= UInt64(Int.max)
        else {
            throw EncodingError(
                .malformedSummary,
                expected: "1...32 hashes and a positive multiple of 64 bits matching the length",
                found: "\(hashes) hashes, \(bits) bits, \(bytes.count) bytes")
        }
        bitCount = Int(bits)
        hashCount = hashes
        count = Int(inserted)
        words = (0..<(bitCount / 64)).map { field(ChunkSummary.headerLength + $0 * 8) }
    }

    /// Adds a key.
    /// - Parameter key: A chunk key.
    public mutating func insert(_ key: ChunkKey) {
        var position = key.word0
        let step = key.word1 | 1
        let bits = UInt64(bitCount)
        for _ in 0..<hashCount {
            let bit = Int(position % bits)
            words[bit >> 6] |= 1 << UInt64(bit & 63)
            position &+= step
        }
        count += 1
    }

    /// Whether the key may have been inserted: false means certainly not.
    /// - Parameter key: A chunk key.
    /// - Returns: True for every inserted key, and for others with the false-positive rate.
    public func mayContain(_ key: ChunkKey) -> Bool {
        var position = key.word0
        let step = key.word1 | 1
        let bits = UInt64(bitCount)
        for _ in 0..<hashCount {
            let bit = Int(position % bits)
            if words[bit >> 6] & (1 << UInt64(bit & 63)) == 0 {
                return false
            }
            position &+= step
        }
        return true
    }

    /// The expected false-positive rate for the keys inserted so far: (1 − e^(−k·n/m))^k.
    public var estimatedFalsePositiveRate: Double {
        pow(1 - exp(-Double(hashCount) * Double(count) / Double(bitCount)), Double(hashCount))
    }

    /// The filter as bytes for the wire: a 24-byte header, then ``bitCount`` / 8 bytes.
    /// - Returns: The serialized filter; ``init(serialized:maximumBitCount:)`` reads it back.
    public func serialized() -> [UInt8] {
        var bytes = ChunkSummary.magic
        bytes.reserveCapacity(ChunkSummary.headerLength + words.count * 8)
        bytes += [ChunkSummary.version, UInt8(hashCount), 0, 0]
        for value in [UInt64(bitCount), UInt64(count)] + words {
            for shift in stride(from: 0, to: 64, by: 8) {
                bytes.append(UInt8(truncatingIfNeeded: value >> UInt64(shift)))
            }
        }
        return bytes
    }
}
