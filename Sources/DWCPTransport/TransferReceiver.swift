/// The receiving side of one transfer (AMST, sans-IO): which chunks to store, which are duplicates,
/// which break the protocol, and when the object is whole.
///
/// It accepts a chunk only within `windowChunks` of its first missing chunk, which bounds what an
/// in-order sink (standard output) must buffer, and it checks every chunk's index and size against
/// the offer, so a confused or hostile sender cannot make it write outside the object.
public struct TransferReceiver: Sendable {
    /// What to do with an arriving chunk.
    public enum Disposition: Hashable, Sendable {
        /// New: store it, then acknowledge it.
        case store
        /// Already held (a re-send after a stream failed): acknowledge it again, store nothing.
        case duplicate
    }

    /// The chunk size in force.
    public let chunkSize: Int
    /// How far past the first missing chunk chunks are accepted.
    public let windowChunks: Int
    /// The object's size if the offer stated it.
    public let declaredBytes: UInt64?
    /// Chunks held (stored in this attempt or an earlier one).
    public private(set) var present: ChunkBitmap
    /// The first chunk not yet held: every chunk before it is.
    public private(set) var contiguousChunks: Int
    /// Bytes of the chunks stored in this attempt.
    public private(set) var bytesStored: UInt64 = 0
    private var finalChunks: Int?
    private var shortChunk: (index: Int, size: Int)?
    private var highestIndex = -1

    /// Creates the receiving side.
    /// - Parameters:
    ///   - chunkSize: Bytes per chunk; only the last chunk may be shorter.
    ///   - windowChunks: The reorder window in chunks.
    ///   - declaredBytes: The object's size from the offer, or `nil` for a stream of unknown length.
    ///   - present: Chunks already held from an earlier attempt.
    public init(chunkSize: Int, windowChunks: Int, declaredBytes: UInt64?, present: ChunkBitmap = ChunkBitmap()) {
        precondition(chunkSize > 0 && windowChunks > 0, "chunk size and window must be positive")
        self.chunkSize = chunkSize
        self.windowChunks = windowChunks
        self.declaredBytes = declaredBytes
        self.present = present
        self.contiguousChunks = present.firstAbsent(from: 0)
        if let declaredBytes {
            finalChunks = Int((declaredBytes + UInt64(chunkSize) - 1) / UInt64(chunkSize))
        }
    }

    /// The object's chunk count, once known (from the offer, or from `finish` for a stream).
    public var totalChunks: Int? { finalChunks }

    /// Whether every chunk is held and the sender has said how many there are.
    public var isComplete: Bool { finalChunks.map { contiguousChunks >= $0 } ?? false }

    /// The byte offset of chunk `index` in the object.
    public func offset(of index: Int) -> UInt64 { UInt64(index) * UInt64(chunkSize) }

    /// A chunk arrived.
    /// - Returns: Whether to store it or only acknowledge it.
    /// - Throws: ``TransportError/Code/protocolViolation`` for an index outside the object or the
    ///   window, or a size that does not fit the object.
    public mutating func chunkArrived(index: Int, size: Int) throws(TransportError) -> Disposition {
        guard index >= 0, index < contiguousChunks + windowChunks else {
            throw violation("a chunk index in \(contiguousChunks)..<\(contiguousChunks + windowChunks)", "\(index)")
        }
        if let finalChunks {
            guard index < finalChunks else {
                throw violation("a chunk index below the object's \(finalChunks) chunks", "\(index)")
            }
            if let declaredBytes {
                let expected = Int(min(UInt64(chunkSize), declaredBytes - offset(of: index)))
                guard size == expected else { throw violation("chunk \(index) of \(expected) bytes", "\(size) bytes") }
            }
        }
        guard size > 0, size <= chunkSize else {
            throw violation("a chunk of 1...\(chunkSize) bytes", "\(size) bytes")
        }
        if let shortChunk, index > shortChunk.index {
            throw violation("no chunk after the short chunk \(shortChunk.index)", "chunk \(index)")
        }
        if size < chunkSize {
            if let shortChunk, shortChunk.index != index {
                throw violation("one short (last) chunk", "short chunks \(shortChunk.index) and \(index)")
            }
            if highestIndex > index {
                throw violation("a short chunk only at the end", "short chunk \(index) before later chunks")
            }
            shortChunk = (index, size)
        }
        guard present.insert(index) else { return .duplicate }
        highestIndex = max(highestIndex, index)
        bytesStored += UInt64(size)
        contiguousChunks = present.firstAbsent(from: contiguousChunks)
        return .store
    }

    /// The sender has sent everything: `totalChunks` chunks, `totalBytes` bytes.
    /// - Returns: Whether every chunk is already held.
    /// - Throws: ``TransportError/Code/protocolViolation`` when the totals contradict the offer or
    ///   the chunks received.
    public mutating func finish(totalChunks: Int, totalBytes: UInt64) throws(TransportError) -> Bool {
        if let declaredBytes, declaredBytes != totalBytes {
            throw violation("\(declaredBytes) bytes, as offered", "\(totalBytes) in finish")
        }
        let expectedChunks = Int((totalBytes + UInt64(chunkSize) - 1) / UInt64(chunkSize))
        guard totalChunks == expectedChunks else {
            throw violation("\(expectedChunks) chunks for \(totalBytes) bytes", "\(totalChunks) in finish")
        }
        if let finalChunks, finalChunks != totalChunks {
            throw violation("\(finalChunks) chunks", "\(totalChunks) in finish")
        }
        if let shortChunk, shortChunk.index != totalChunks - 1 {
            throw violation("the short chunk to be the last", "short chunk \(shortChunk.index) of \(totalChunks)")
        }
        finalChunks = totalChunks
        guard present.firstAbsent(from: totalChunks) == totalChunks else {
            throw violation("no chunk at or past \(totalChunks)", "chunks beyond the end")
        }
        return isComplete
    }

    private func violation(_ expected: String, _ found: String) -> TransportError {
        TransportError(.protocolViolation, expected: expected, found: found, advice: "the sender is faulty; retry")
    }
}
