/// Resemblance features of a chunk: two chunks that differ in a few bytes share most of them, so a chunk's
/// previous version can be found by feature even when its hash (and so its ``ChunkKey``) changed.
///
/// A gear hash runs over the chunk (each value depends on the last 64 bytes); at about one position in 32
/// (its top five bits zero) four fixed odd-multiplier transforms of it are taken, and each feature is the
/// largest value its transform reached. A change of a few bytes alters the hash at some 70 positions, of
/// which about two are sampled, so each feature survives unless one of those held its maximum.
public struct ChunkFeatures: Hashable, Sendable {
    /// How many features a chunk has.
    public static let count = 4
    private static let multipliers: [UInt64] = [
        0x9E37_79B9_7F4A_7C15, 0xBF58_476D_1CE4_E5B9, 0x94D0_49BB_1331_11EB, 0xD6E8_FEB8_6659_FD93,
    ]

    /// The features, one per transform (salted by index, so equal values of two transforms never collide).
    public let values: [UInt64]

    /// Computes the features of `chunk`.
    public init(of chunk: UnsafeRawBufferPointer) {
        var maxima = [UInt64](repeating: 0, count: Self.count)
        var hash: UInt64 = 0
        var sampled = false
        let bytes = chunk.bindMemory(to: UInt8.self)
        Chunker.FastCDC.gear.withUnsafeBufferPointer { gear in
            for byte in bytes {
                hash = (hash << 1) &+ gear[Int(byte)]
                guard hash >> 59 == 0 else { continue }
                sampled = true
                for index in 0..<Self.count {
                    maxima[index] = max(maxima[index], hash &* Self.multipliers[index] &+ UInt64(index))
                }
            }
        }
        values = sampled ? maxima.enumerated().map { $0.element ^ (UInt64($0.offset) << 60) } : []
    }
}

/// Chunks by their resemblance features, newest first per feature, bounded in memory: where a sender looks
/// for the previous version of a chunk to send it as a delta.
public struct SimilarityIndex: Sendable {
    private var table: [UInt64: ChunkKey] = [:]
    /// The most features kept; beyond it the index starts over (it is a cache: losing it costs ratio only).
    public let capacity: Int

    /// Creates an empty index.
    public init(capacity: Int = 4 << 20) {
        self.capacity = capacity
    }

    /// Features held.
    public var count: Int { table.count }

    /// Remembers `key` under each of its features (replacing older chunks with the same feature).
    public mutating func insert(_ features: ChunkFeatures, key: ChunkKey) {
        if table.count + features.values.count > capacity { table.removeAll(keepingCapacity: true) }
        for value in features.values { table[value] = key }
    }

    /// Chunks sharing at least one feature, most features first.
    public func candidates(for features: ChunkFeatures) -> [ChunkKey] {
        var found: [ChunkKey: Int] = [:]
        for value in features.values {
            if let key = table[value] { found[key, default: 0] += 1 }
        }
        return found.sorted { $0.value > $1.value }.map(\.key)
    }
}
