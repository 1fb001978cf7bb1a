import NIOCore

/// Which blocks of an object are present: one bit per block index (a chunk is a run of blocks,
/// ``ChunkSizer``).
///
/// The receiver keeps one per transfer; its wire form tells a resuming sender what it may skip.
public struct ChunkBitmap: Hashable, Sendable {
    /// The most chunks a bitmap on the wire may describe (2^26 chunks: 64 TiB of 1 MiB chunks, 8 MiB of bits).
    public static let maximumWireCount = 1 << 26

    private var words: [UInt64] = []
    /// How many bits are set.
    public private(set) var count = 0

    /// Creates an empty bitmap.
    public init() {}

    /// Whether chunk `index` is present.
    public func contains(_ index: Int) -> Bool {
        let word = index >> 6
        return index >= 0 && word < words.count && words[word] & (1 << UInt64(index & 63)) != 0
    }

    /// Marks chunk `index` present.
    /// - Returns: Whether it was absent before.
    @discardableResult
    public mutating func insert(_ index: Int) -> Bool {
        precondition(index >= 0, "chunk index \(index) is negative")
        let word = index >> 6
        if word >= words.count {
            words.append(contentsOf: repeatElement(0, count: word + 1 - words.count))
        }
        let bit: UInt64 = 1 << UInt64(index & 63)
        guard words[word] & bit == 0 else { return false }
        words[word] |= bit
        count += 1
        return true
    }

    /// The first index at or after `start` that is absent.
    public func firstAbsent(from start: Int) -> Int {
        var index = max(start, 0)
        while contains(index) {
            if index & 63 == 0, index >> 6 < words.count, words[index >> 6] == .max {
                index += 64
            } else {
                index += 1
            }
        }
        return index
    }

    /// The first index at or after `start` that is present; `Int.max` when none is.
    public func firstPresent(from start: Int) -> Int {
        var word = max(start, 0) >> 6
        guard word < words.count else { return .max }
        // The first word without the bits below `start`.
        var bits = words[word] & (UInt64.max << UInt64(max(start, 0) & 63))
        while bits == 0 {
            word += 1
            guard word < words.count else { return .max }
            bits = words[word]
        }
        return word << 6 + bits.trailingZeroBitCount
    }

    /// Appends the wire form: `bitCount u32` then ⌈bitCount/8⌉ bytes, least significant bit first.
    public func encode(into buffer: inout ByteBuffer) {
        let bitCount = words.count * 64
        buffer.writeInteger(UInt32(bitCount))
        for word in words {
            buffer.writeInteger(word, endianness: .little)
        }
    }

    /// Parses the wire form.
    /// - Throws: ``TransportError/Code/malformedMessage`` when it is truncated or too large.
    public init(decoding buffer: inout ByteBuffer) throws(TransportError) {
        guard let bitCount = buffer.readInteger(as: UInt32.self) else {
            throw TransportError(.malformedMessage, expected: "a 4-byte chunk bitmap length", found: "end of message")
        }
        guard Int(bitCount) <= Self.maximumWireCount, bitCount % 64 == 0 else {
            throw TransportError(
                .malformedMessage,
                expected: "a chunk bitmap length that is a multiple of 64 and at most \(Self.maximumWireCount)",
                found: "\(bitCount)"
            )
        }
        let wordCount = Int(bitCount) / 64
        guard buffer.readableBytes >= wordCount * 8 else {
            throw TransportError(
                .malformedMessage,
                expected: "\(wordCount * 8) bytes of chunk bitmap",
                found: "\(buffer.readableBytes) bytes"
            )
        }
        words.reserveCapacity(wordCount)
        for _ in 0..<wordCount {
            let word = buffer.readInteger(endianness: .little, as: UInt64.self)!
            words.append(word)
            count += word.nonzeroBitCount
        }
    }
}
