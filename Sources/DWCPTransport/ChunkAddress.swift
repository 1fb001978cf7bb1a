/// Where a chunk belongs in a session: the object (0, 1, … in the order the sender offered them) and
/// the chunk's index within that object.
///
/// On the wire it is the `sequence` of the chunk's `chunk` frame and of its `ack`: the object in the
/// top 16 bits, the index in the low 48 (2^48 chunks of at least 4 KiB: more than any object).
public struct ChunkAddress: Hashable, Sendable, Comparable, CustomStringConvertible {
    /// The most objects one session carries.
    public static let maximumObjects = 1 << 16
    /// The most chunks one object has.
    public static let maximumIndex = 1 << 48

    /// The object's number within its session.
    public var object: Int
    /// The chunk's index within its object.
    public var index: Int

    /// Creates an address.
    public init(object: Int = 0, index: Int) {
        precondition((0..<Self.maximumObjects).contains(object), "object \(object) is outside 0..<65536")
        precondition((0..<Self.maximumIndex).contains(index), "chunk index \(index) is outside 0..<2^48")
        self.object = object
        self.index = index
    }

    /// Reads a frame's sequence number.
    public init(sequence: UInt64) {
        object = Int(sequence >> 48)
        index = Int(sequence & (1 << 48 - 1))
    }

    /// The frame sequence number that carries this address.
    public var sequence: UInt64 { UInt64(object) << 48 | UInt64(index) }

    /// Object first, then index.
    public static func < (lhs: Self, rhs: Self) -> Bool { (lhs.object, lhs.index) < (rhs.object, rhs.index) }

    /// `object/index`.
    public var description: String { "\(object)/\(index)" }
}
