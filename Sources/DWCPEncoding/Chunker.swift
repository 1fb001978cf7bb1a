/// HDE (hierarchical delta encoding) stage 1: segmentation into fixed pages or content-defined chunks.
public enum Chunker {
    /// Fixed-size segmentation: memory images are cut into pages at fixed offsets.
    public struct Fixed: Sendable, Hashable {
        /// The page size in bytes.
        public let size: Int

        /// Creates a fixed chunker.
        /// - Parameter size: The page size; must be positive.
        /// - Throws: ``EncodingError/Code/invalidConfiguration`` for a size below 1.
        public init(size: Int = 4096) throws(EncodingError) {
            guard size > 0 else {
                throw EncodingError(.invalidConfiguration, expected: "a positive page size", found: "\(size)")
            }
            self.size = size
        }

        /// The page ranges covering `length` bytes; the last page is short when `length` is not a multiple.
        /// - Parameter length: The object's length.
        /// - Returns: Consecutive ranges from 0 to `length`.
        public func ranges(forLength length: Int) -> [Range<Int>] {
            stride(from: 0, to: length, by: size).map { $0..<min($0 + size, length) }
        }
    }

    /// FastCDC content-defined chunking (Xia et al., USENIX ATC 2016): a gear rolling hash with cut-point
    /// skipping and normalized chunking (a stricter mask before the average size, a looser one after).
    ///
    /// Boundaries depend only on content, so an insertion or deletion moves only the chunks around it. The
    /// gear table is derived from a fixed seed: the same configuration cuts the same bytes identically on
    /// every node and in every version of this format.
    public struct FastCDC: Sendable, Hashable {
        /// The smallest chunk (except the last one of an object).
        public let minimumSize: Int
        /// The target average chunk size; a power of two.
        public let averageSize: Int
        /// The largest chunk.
        public let maximumSize: Int
        private let strictMask: UInt64
        private let looseMask: UInt64

        /// Creates a chunker.
        /// - Parameters:
        ///   - minimumSize: The smallest chunk; at least 64 bytes.
        ///   - averageSize: The target average; a power of two between the minimum and the maximum.
        ///   - maximumSize: The largest chunk; at most 16 MiB.
        /// - Throws: ``EncodingError/Code/invalidConfiguration`` when the sizes are not ordered or out of range.
        public init(minimumSize: Int = 2048, averageSize: Int = 8192, maximumSize: Int = 65536) throws(EncodingError) {
            guard minimumSize >= 64, minimumSize <= averageSize, averageSize <= maximumSize,
                maximumSize <= 16 << 20, averageSize.nonzeroBitCount == 1, averageSize >= 256
            else {
                throw EncodingError(
                    .invalidConfiguration,
                    expected: "64 ≤ minimum ≤ average ≤ maximum ≤ 16 MiB, average a power of two ≥ 256",
                    found: "\(minimumSize)/\(averageSize)/\(maximumSize)")
            }
            self.minimumSize = minimumSize
            self.averageSize = averageSize
            self.maximumSize = maximumSize
            // Normalization level 2: two more mask bits before the average, two fewer after. The mask uses the
            // high bits of the hash, which depend on the last 64 bytes (the low bits only on the last few).
            let bits = averageSize.trailingZeroBitCount
            strictMask = UInt64.max << UInt64(64 - (bits + 2))
            looseMask = UInt64.max << UInt64(64 - (bits - 2))
        }

        /// The length of the next chunk at the start of `buffer`, or nil when more bytes are needed.
        ///
        /// Sans-IO: feed at least ``maximumSize`` bytes (or the object's remaining bytes with `isFinal`).
        /// - Parameters:
        ///   - buffer: The unchunked bytes, starting at a chunk boundary.
        ///   - isFinal: True when `buffer` holds all remaining bytes of the object.
        /// - Returns: The chunk length (≥ 1 unless `buffer` is empty and final), or nil if the boundary may lie
        ///   beyond `buffer`.
        public func nextChunkLength(in buffer: UnsafeRawBufferPointer, isFinal: Bool) -> Int? {
            let available = buffer.count
            if available <= minimumSize {
                return isFinal ? available : nil
            }
            if available < maximumSize && !isFinal {
                return cutPoint(buffer, end: available)
            }
            return cutPoint(buffer, end: min(available, maximumSize)) ?? min(available, maximumSize)
        }

        private func cutPoint(_ buffer: UnsafeRawBufferPointer, end: Int) -> Int? {
            let normal = min(averageSize, end)  // the mask switch depends on the offset only
            var hash: UInt64 = 0
            var index = minimumSize
            let bytes = buffer.bindMemory(to: UInt8.self)
            return FastCDC.gear.withUnsafeBufferPointer { gear -> Int? in
                while index < normal {
                    hash = (hash << 1) &+ gear[Int(bytes[index])]
                    if hash & strictMask == 0 { return index + 1 }
                    index += 1
                }
                while index < end {
                    hash = (hash << 1) &+ gear[Int(bytes[index])]
                    if hash & looseMask == 0 { return index + 1 }
                    index += 1
                }
                return nil
            }
        }

        /// The chunk ranges covering all of `bytes`.
        /// - Parameter bytes: A whole object.
        /// - Returns: Consecutive ranges from 0 to `bytes.count`.
        public func ranges(of bytes: [UInt8]) -> [Range<Int>] {
            bytes.withUnsafeBytes { raw in
                var ranges: [Range<Int>] = []
                var start = 0
                while start < raw.count {
                    let rest = UnsafeRawBufferPointer(rebasing: raw[start...])
                    let length = nextChunkLength(in: rest, isFinal: true) ?? rest.count
                    ranges.append(start..<(start + length))
                    start += length
                }
                return ranges
            }
        }

        /// The gear table: 256 pseudo-random words from SplitMix64 seeded with a fixed constant.
        static let gear: [UInt64] = {
            var state: UInt64 = 0x4E6F_7661_4372_6F6E  // "NovaCron"
            return (0..<256).map { _ in
                state &+= 0x9E37_79B9_7F4A_7C15
                var z = state
                z = (z ^ (z >> 30)) &* 0xBF58_476D_1CE4_E5B9
                z = (z ^ (z >> 27)) &* 0x94D0_49BB_1331_11EB
                return z ^ (z >> 31)
            }
        }()
    }
}
