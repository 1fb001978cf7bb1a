/// The receiving side of one transfer (AMST, sans-IO): which chunks to store, which are duplicates,
/// which break the protocol, and when the object is whole.
///
/// The object is counted in blocks of `blockSize` bytes; a chunk is a run of consecutive blocks
/// (``ChunkSizer``), addressed by its first. It accepts a chunk only when its last block lies within
/// `windowBlocks` of the first missing block, which bounds what an in-order sink (standard output)
/// must buffer, and it checks every chunk's blocks and size against the offer and against the chunks
/// before it, so a confused or hostile sender cannot make it write outside the object, or write a
/// block twice.
public struct TransferReceiver: Sendable {
    /// What to do with an arriving chunk.
    public enum Disposition: Hashable, Sendable {
        /// New: store it, then acknowledge it.
        case store
        /// Already held (a re-send after a stream failed): acknowledge it again, store nothing.
        case duplicate
    }

    /// Bytes per block.
    public let blockSize: Int
    /// How far past the first missing block chunks are accepted.
    public let windowBlocks: Int
    /// The object's size if the offer stated it.
    public let declaredBytes: UInt64?
    /// Blocks held (stored in this attempt or an earlier one).
    public private(set) var present: ChunkBitmap
    /// The first block not yet held: every block before it is.
    public private(set) var contiguousBlocks: Int
    /// Bytes of the chunks stored in this attempt.
    public private(set) var bytesStored: UInt64 = 0
    private var finalBlocks: Int?
    /// The last block of the chunk that ended with a partial block (the end of a stream).
    private var shortBlock: Int?
    /// Where that chunk ended.
    private var shortEnd: UInt64?
    private var highestIndex = -1

    /// Creates the receiving side.
    /// - Parameters:
    ///   - blockSize: Bytes per block; only the object's last block may be shorter.
    ///   - windowBlocks: The reorder window in blocks.
    ///   - declaredBytes: The object's size from the offer, or `nil` for a stream of unknown length.
    ///   - present: Blocks already held from an earlier attempt.
    public init(blockSize: Int, windowBlocks: Int, declaredBytes: UInt64?, present: ChunkBitmap = ChunkBitmap()) {
        precondition(blockSize > 0 && windowBlocks > 0, "block size and window must be positive")
        self.blockSize = blockSize
        self.windowBlocks = windowBlocks
        self.declaredBytes = declaredBytes
        self.present = present
        self.contiguousBlocks = present.firstAbsent(from: 0)
        if let declaredBytes {
            finalBlocks = Int((declaredBytes + UInt64(blockSize) - 1) / UInt64(blockSize))
        }
    }

    /// The object's block count, once known (from the offer, or from `finish` for a stream).
    public var totalBlocks: Int? { finalBlocks }

    /// The object's length, once known: from the offer, or for a stream from the chunk that ended in a
    /// partial block (a stream whose length is a whole number of blocks tells it only in `finish`).
    public var knownLength: UInt64? { declaredBytes ?? shortEnd }

    /// Whether every block is held and the sender has said how many there are.
    public var isComplete: Bool { finalBlocks.map { contiguousBlocks >= $0 } ?? false }

    /// The byte offset of block `index` in the object.
    public func offset(of index: Int) -> UInt64 { UInt64(index) * UInt64(blockSize) }

    /// The blocks a chunk of `size` bytes spans.
    public func blocks(in size: Int) -> Int { (size + blockSize - 1) / blockSize }

    /// A chunk arrived.
    /// - Parameters:
    ///   - index: Its first block.
    ///   - size: Its bytes: whole blocks, except for the chunk that ends the object.
    /// - Returns: Whether to store it or only acknowledge it.
    /// - Throws: ``TransportError/Code/protocolViolation`` for blocks outside the object or the
    ///   window, a size that does not fit the object, or a chunk that overlaps held blocks in part.
    public mutating func chunkArrived(index: Int, size: Int) throws(TransportError) -> Disposition {
        guard size > 0, size <= DWCPFrameLimitsForTransport.maximumChunkSize else {
            throw violation("a chunk of 1...\(DWCPFrameLimitsForTransport.maximumChunkSize) bytes", "\(size) bytes")
        }
        let blocks = blocks(in: size)
        let end = index + blocks
        guard index >= 0, end <= contiguousBlocks + windowBlocks else {
            throw violation(
                "a chunk within blocks \(contiguousBlocks)..<\(contiguousBlocks + windowBlocks)",
                "blocks \(index)..<\(end)")
        }
        let isShort = size % blockSize != 0
        if let finalBlocks {
            guard end <= finalBlocks else {
                throw violation("a chunk within the object's \(finalBlocks) blocks", "blocks \(index)..<\(end)")
            }
            if let declaredBytes {
                let fits = offset(of: index) + UInt64(size) == declaredBytes || (!isShort && end < finalBlocks)
                guard fits else {
                    throw violation(
                        "whole blocks, or the object's last bytes, in the chunk at block \(index)", "\(size) bytes")
                }
            }
        }
        if let shortBlock, end - 1 > shortBlock {
            throw violation("no block after the short block \(shortBlock)", "blocks \(index)..<\(end)")
        }
        if isShort {
            if let shortBlock, shortBlock != end - 1 {
                throw violation("one short (last) block", "short blocks \(shortBlock) and \(end - 1)")
            }
            if highestIndex > end - 1 {
                throw violation("a short block only at the end", "short block \(end - 1) before later blocks")
            }
            shortBlock = end - 1
            shortEnd = offset(of: index) + UInt64(size)
        }
        let held = (index..<end).reduce(0) { $0 + (present.contains($1) ? 1 : 0) }
        guard held == 0 else {
            if held == blocks { return .duplicate }
            throw violation(
                "a chunk of new blocks, or a copy of a chunk held", "blocks \(index)..<\(end), \(held) held")
        }
        for block in index..<end { present.insert(block) }
        highestIndex = max(highestIndex, end - 1)
        bytesStored += UInt64(size)
        contiguousBlocks = present.firstAbsent(from: contiguousBlocks)
        return .store
    }

    /// The sender has sent everything: `totalBlocks` blocks, `totalBytes` bytes.
    /// - Returns: Whether every block is already held.
    /// - Throws: ``TransportError/Code/protocolViolation`` when the totals contradict the offer or
    ///   the chunks received.
    public mutating func finish(totalBlocks: Int, totalBytes: UInt64) throws(TransportError) -> Bool {
        if let declaredBytes, declaredBytes != totalBytes {
            throw violation("\(declaredBytes) bytes, as offered", "\(totalBytes) in finish")
        }
        let expectedBlocks = Int((totalBytes + UInt64(blockSize) - 1) / UInt64(blockSize))
        guard totalBlocks == expectedBlocks else {
            throw violation("\(expectedBlocks) blocks for \(totalBytes) bytes", "\(totalBlocks) in finish")
        }
        if let finalBlocks, finalBlocks != totalBlocks {
            throw violation("\(finalBlocks) blocks", "\(totalBlocks) in finish")
        }
        if let shortBlock, shortBlock != totalBlocks - 1 {
            throw violation("the short block to be the last", "short block \(shortBlock) of \(totalBlocks)")
        }
        finalBlocks = totalBlocks
        guard present.firstAbsent(from: totalBlocks) == totalBlocks else {
            throw violation("no block at or past \(totalBlocks)", "blocks beyond the end")
        }
        return isComplete
    }

    private func violation(_ expected: String, _ found: String) -> TransportError {
        TransportError(.protocolViolation, expected: expected, found: found, advice: "the sender is faulty; retry")
    }
}
