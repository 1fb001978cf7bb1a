/// Sizes the chunks to the path (AMST, sans-IO).
///
/// An object is cut into *blocks* of one size, fixed for the transfer: the receiver's bitmap, its
/// journal, the windows and a resume count blocks. A *chunk*, what one frame on one stream carries
/// and one acknowledgement confirms, is a run of consecutive blocks of one object. Its length is a
/// quarter of what one stream may hold in flight (the session's window over the stream count), rounded
/// down to a power of two blocks, from one block (256 KiB) to four (1 MiB). The stream count follows
/// the path (its bandwidth-delay product, then goodput probes; ``StreamCountController``), and so does
/// the chunk: with the default 64 MiB window it is 1 MiB up to 16 streams, and it shrinks when more
/// streams, or a smaller window, leave each stream less.
///
/// Why a quarter of a stream's share: a stream takes a new chunk only when the chunk fits in its free
/// share of the window, so with fewer than about four chunks in its share it idles for a round trip
/// now and then; and a chunk is the unit the head-of-line rescue copies to an idle stream, so a
/// stream's backlog stuck in loss recovery is freed in a few copies. Measured through wanem on
/// lossy-edge (16 streams sharing 100 Mbit/s): with a 64 MiB window (4 MiB per stream) fixed chunks of
/// 1 MiB gave 75–76 Mbit/s, 4 MiB 66–70, 256 KiB 69–72; with a 16 MiB window (1 MiB per stream) 256 KiB
/// chunks gave 79.4 and fixed 1 MiB ones 73.0. Why at most 1 MiB: on loopback (1 GiB, TLS) 1 MiB chunks
/// were the fastest, 1.92 s against 2.19 s for 4 MiB and 2.43 s for 2 MiB (docs/transport.md).
public struct ChunkSizer: Hashable, Sendable {
    /// The block size of an adaptive transfer.
    public static let adaptiveBlockSize = 256 << 10
    /// The largest chunk of an adaptive transfer.
    public static let adaptiveMaximumChunkSize = 1 << 20
    /// How many chunks one stream's share of the window holds at least.
    public static let chunksPerStreamShare = 4

    /// Bytes per block.
    public let blockSize: Int
    /// The most blocks in a chunk.
    public let maximumBlocks: Int

    /// Creates a sizer.
    /// - Parameters:
    ///   - blockSize: Bytes per block.
    ///   - maximumChunkSize: The largest chunk in bytes; at most `blockSize` keeps every chunk one block.
    public init(blockSize: Int, maximumChunkSize: Int) {
        precondition(blockSize > 0, "a block size must be positive, not \(blockSize)")
        self.blockSize = blockSize
        maximumBlocks = max(1, maximumChunkSize / blockSize)
    }

    /// The blocks per chunk when `streams` data streams share a window of `windowBytes`.
    /// - Returns: A power of two from 1 to ``maximumBlocks``.
    public func blocks(windowBytes: Int, streams: Int) -> Int {
        let wanted = windowBytes / (Self.chunksPerStreamShare * max(1, streams)) / blockSize
        guard wanted >= 2 else { return 1 }
        let powerOfTwo = 1 << (Int.bitWidth - 1 - wanted.leadingZeroBitCount)
        return min(maximumBlocks, powerOfTwo)
    }
}
