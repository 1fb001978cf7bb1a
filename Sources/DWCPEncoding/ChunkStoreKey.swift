import Crypto

/// The identity of a chunk in the receiver's persistent store: the SHA-256 of its content.
///
/// The store holds content that came from a peer, so identity must be collision resistant: with XXH3-128
/// (``ChunkIdentity``) a peer could craft two chunks with one identity and have the store serve the wrong one.
/// SHA-256 costs more per byte (docs/encoding.md, "Chunk store", has the measured figures) but stays far ahead
/// of the link.
public struct ChunkKey: Hashable, Sendable, Comparable, CustomStringConvertible {
    /// The length of a key in bytes.
    public static let byteCount = 32

    // The digest as four big-endian words, so word order is byte order and `<` is lexicographic.
    let word0: UInt64
    let word1: UInt64
    let word2: UInt64
    let word3: UInt64

    init(word0: UInt64, word1: UInt64, word2: UInt64, word3: UInt64) {
        self.word0 = word0
        self.word1 = word1
        self.word2 = word2
        self.word3 = word3
    }

    /// Computes the key of `bytes`.
    /// - Parameter bytes: The chunk's content.
    public init(of bytes: UnsafeRawBufferPointer) {
        var hasher = SHA256()
        hasher.update(bufferPointer: bytes)
        let digest = hasher.finalize()
        var words: (UInt64, UInt64, UInt64, UInt64) = (0, 0, 0, 0)
        var index = 0
        var word: UInt64 = 0
        for byte in digest {
            word = word << 8 | UInt64(byte)
            index += 1
            switch index {
            case 8: words.0 = word
            case 16: words.1 = word
            case 24: words.2 = word
            case 32: words.3 = word
            default: continue
            }
            word = 0
        }
        self.init(word0: words.0, word1: words.1, word2: words.2, word3: words.3)
    }

    /// Computes the key of `bytes`.
    /// - Parameter bytes: The chunk's content.
    public init(of bytes: [UInt8]) {
        self = bytes.withUnsafeBytes { ChunkKey(of: $0) }
    }

    /// Reads a key from its 32 digest bytes, as a peer sends it.
    /// - Parameter bytes: Exactly ``byteCount`` bytes.
    /// - Returns: The key, or nil if `bytes` is not 32 bytes long.
    public init?(bytes: some Collection<UInt8>) {
        guard bytes.count == ChunkKey.byteCount else {
            return nil
        }
        var words: [UInt64] = [0, 0, 0, 0]
        for (index, byte) in bytes.enumerated() {
            words[index / 8] = words[index / 8] << 8 | UInt64(byte)
        }
        self.init(word0: words[0], word1: words[1], word2: words[2], word3: words[3])
    }

    /// The digest's first 8 bytes as a big-endian integer: what a sender announces of a key
    /// (``EncodedObjectOffer``) before the receiver says whether it holds it.
    public var prefix: UInt64 { word0 }

    /// The 32 digest bytes, in SHA-256's order.
    public var bytes: [UInt8] {
        var result: [UInt8] = []
        result.reserveCapacity(ChunkKey.byteCount)
        for word in [word0, word1, word2, word3] {
            for shift in stride(from: 56, through: 0, by: -8) {
                result.append(UInt8(truncatingIfNeeded: word >> UInt64(shift)))
            }
        }
        return result
    }

    /// 64 hexadecimal digits, as `sha256sum` prints them.
    public var description: String {
        var text = ""
        for word in [word0, word1, word2, word3] {
            let digits = String(word, radix: 16)
            text += String(repeating: "0", count: 16 - digits.count) + digits
        }
        return text
    }

    /// Orders keys by their bytes.
    /// - Parameters:
    ///   - lhs: A key.
    ///   - rhs: Another key.
    /// - Returns: True if `lhs`'s bytes sort before `rhs`'s.
    public static func < (lhs: ChunkKey, rhs: ChunkKey) -> Bool {
        (lhs.word0, lhs.word1, lhs.word2, lhs.word3) < (rhs.word0, rhs.word1, rhs.word2, rhs.word3)
    }
}
