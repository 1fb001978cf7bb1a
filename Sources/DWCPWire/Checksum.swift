import CXXHash
import NIOCore

/// XXH3-64 checksums (libxxhash) over frame headers and payloads.
enum Checksum {
    /// XXH3-64 of the readable bytes of `buffer`.
    static func xxh3(_ buffer: ByteBuffer) -> UInt64 {
        buffer.withUnsafeReadableBytes { bytes in
            XXH3_64bits(bytes.baseAddress, bytes.count)
        }
    }

    /// XXH3-64 of `length` bytes of `buffer` starting at `index`, which must be readable.
    static func xxh3(_ buffer: ByteBuffer, at index: Int, length: Int) -> UInt64 {
        buffer.withUnsafeReadableBytes { bytes in
            let start = index - buffer.readerIndex
            precondition(start >= 0 && start + length <= bytes.count, "checksum range outside readable bytes")
            return XXH3_64bits(bytes.baseAddress.map { $0 + start }, length)
        }
    }

    /// The header checksum: the low 32 bits of XXH3-64 over the header bytes before it.
    static func header(_ buffer: ByteBuffer, at index: Int) -> UInt32 {
        UInt32(truncatingIfNeeded: xxh3(buffer, at: index, length: DWCPFrame.headerChecksumOffset))
    }
}
