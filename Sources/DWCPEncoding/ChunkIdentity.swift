import CXXHash

/// The identity of a chunk or page: its XXH3-128 digest.
///
/// XXH3-128 is fast (see docs/encoding.md) but not cryptographic: identities are only compared between
/// cooperating peers. A chunk store that must resist crafted collisions keys by SHA-256 instead.
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

/// The chunks a receiver is known to hold, as the sender sees them (HDE stage 2).
///
/// The persistent, content-addressed chunk store implements this; a session announces it to the sender.
/// `contains` MUST return true only for chunks the receiver can produce through ``ChunkProvider``.
public protocol KnownChunks {
    /// Whether the receiver holds the chunk with this identity.
    /// - Parameter identity: A chunk identity.
    /// - Returns: True if the receiver can produce the chunk.
    func contains(_ identity: ChunkIdentity) -> Bool
}

/// The receiver's side of ``KnownChunks``: the contents of chunks by identity.
public protocol ChunkProvider {
    /// The contents of a chunk, or nil if it is not held.
    /// - Parameter identity: A chunk identity.
    /// - Returns: The chunk's bytes. Implementations SHOULD verify them against the identity.
    func contents(of identity: ChunkIdentity) -> [UInt8]?
}

/// An in-memory chunk set, for tests and for a session's short-lived state.
public struct InMemoryChunkStore: KnownChunks, ChunkProvider, Sendable {
    private var chunks: [ChunkIdentity: [UInt8]] = [:]

    /// Creates an empty store.
    public init() {}

    /// The number of chunks held.
    public var count: Int { chunks.count }

    /// Adds a chunk.
    /// - Parameter bytes: The chunk's content.
    /// - Returns: Its identity.
    @discardableResult
    public mutating func insert(_ bytes: [UInt8]) -> ChunkIdentity {
        let identity = ChunkIdentity(of: bytes)
        chunks[identity] = bytes
        return identity
    }

    /// Whether the store holds the chunk.
    /// - Parameter identity: A chunk identity.
    /// - Returns: True if held.
    public func contains(_ identity: ChunkIdentity) -> Bool {
        chunks[identity] != nil
    }

    /// The chunk's content, or nil.
    /// - Parameter identity: A chunk identity.
    /// - Returns: The bytes, if held.
    public func contents(of identity: ChunkIdentity) -> [UInt8]? {
        chunks[identity]
    }
}
