import CXXHash

/// The identity of a chunk or page: its XXH3-128 digest.
///
/// XXH3-128 is fast (see docs/encoding.md) but not cryptographic: it finds duplicate pages within an image
/// (confirmed with `memcmp`) and names whole images, never what a receiver's store serves; that is named by
/// SHA-256 (``ChunkKey``).
public struct ChunkIdentity: Hashable, Sendable, CustomStringConvertible {
    /// The low 64 bits of the digest.
    public let low: UInt64
    /// The high 64 bits of the digest.
    public let high: UInt64

    /// Creates an identity from the two halves of a digest.
    /// - Parameters:
    ///   - low: The low 64 bits.
    ///   - high: The high 64 bits.
    public init(low: UInt64, high: UInt64) {
        self.low = low
        self.high = high
    }

    /// Computes the identity of `bytes`.
    /// - Parameter bytes: The chunk's content.
    public init(of bytes: UnsafeRawBufferPointer) {
        let digest = XXH3_128bits(bytes.baseAddress, bytes.count)
        self.init(low: digest.low64, high: digest.high64)
    }

    /// Computes the identity of `bytes`.
    /// - Parameter bytes: The chunk's content.
    public init(of bytes: [UInt8]) {
        self = bytes.withUnsafeBytes { ChunkIdentity(of: $0) }
    }

    /// 32 hexadecimal digits, high half first (the canonical XXH3-128 order).
    public var description: String {
        func hex(_ value: UInt64) -> String {
            let digits = String(value, radix: 16)
            return String(repeating: "0", count: 16 - digits.count) + digits
        }
        return hex(high) + hex(low)
    }
}

/// The chunks a receiver is known to hold, as the sender sees them (HDE stage 2), by their SHA-256.
///
/// The persistent, content-addressed chunk store implements this; a session announces it to the sender.
/// `contains` MUST return true only for chunks the receiver can produce through ``ChunkProvider``.
public protocol KnownChunks {
    /// Whether the receiver holds the chunk with this key.
    /// - Parameter key: A chunk's SHA-256.
    /// - Returns: True if the receiver can produce the chunk.
    func contains(_ key: ChunkKey) -> Bool
}

/// The receiver's side of ``KnownChunks``: the contents of chunks by SHA-256.
public protocol ChunkProvider {
    /// The contents of a chunk, or nil if it is not held.
    /// - Parameter key: A chunk's SHA-256.
    /// - Returns: The chunk's bytes. Implementations SHOULD verify them (the image decoder also checks
    ///   the whole image's identity).
    func contents(of key: ChunkKey) -> [UInt8]?
}

/// An in-memory chunk set, for tests and for a session's short-lived state.
public struct InMemoryChunkStore: KnownChunks, ChunkProvider, Sendable {
    private var chunks: [ChunkKey: [UInt8]] = [:]

    /// Creates an empty store.
    public init() {}

    /// The number of chunks held.
    public var count: Int { chunks.count }

    /// Adds a chunk.
    /// - Parameter bytes: The chunk's content.
    /// - Returns: Its key.
    @discardableResult
    public mutating func insert(_ bytes: [UInt8]) -> ChunkKey {
        let key = ChunkKey(of: bytes)
        chunks[key] = bytes
        return key
    }

    /// Whether the store holds the chunk.
    /// - Parameter key: A chunk's SHA-256.
    /// - Returns: True if held.
    public func contains(_ key: ChunkKey) -> Bool {
        chunks[key] != nil
    }

    /// The chunk's content, or nil.
    /// - Parameter key: A chunk's SHA-256.
    /// - Returns: The bytes, if held.
    public func contents(of key: ChunkKey) -> [UInt8]? {
        chunks[key]
    }
}
