/// QEMU's RAM page records within its migration stream (`migration/ram.c`, QEMU 7.2): a big-endian 64-bit
/// word with the page's offset in its RAM block and flags in the bits below the page size, the block's name
/// (a length byte and the name) unless the record continues the previous record's block, then the 4 KiB page.
///
/// With this framing the stream codec cuts each page record as a chunk of its own and knows its slot (stream,
/// block, offset), so a page QEMU sends again — in a later pre-copy pass, or in the next migration of the same
/// VM — goes as a delta against the version the receiver holds. Finding records is a heuristic that only
/// decides where the stream is cut: a false match costs ratio, never bytes (every byte still goes through the
/// codec, whose format knows nothing of QEMU).
public enum QEMUPageFraming {
    static let pageSize = 4096
    static let flagMask: UInt64 = 0xFFF
    static let flagZero: UInt64 = 0x02
    static let flagPage: UInt64 = 0x08
    static let flagEndOfSection: UInt64 = 0x10
    static let flagContinue: UInt64 = 0x20
    /// No RAM block is this large: a word with a larger offset is not a header.
    static let offsetLimit: UInt64 = 1 << 48
    /// A page record keeps the non-page records that follow it (zero pages, a section's end) in its chunk
    /// when the next page record starts within this many bytes; longer runs become chunks of their own.
    static let trailingLimit = 1024

    enum Match: Equatable {
        /// A page record of this length (header, name, page).
        case record(Int)
        case absent
        /// The bytes end before the answer is known.
        case needMore
    }

    struct Header {
        let offset: UInt64
        /// The block's name within the bytes, when the record names it.
        let block: Range<Int>?
        let length: Int
    }

    static func word(_ bytes: UnsafeRawBufferPointer, at position: Int) -> UInt64 {
        UInt64(bigEndian: bytes.loadUnaligned(fromByteOffset: position, as: UInt64.self))
    }

    /// The page record header at `position`, if one starts there.
    static func pageHeader(_ bytes: UnsafeRawBufferPointer, at position: Int) -> (Header?, needsMore: Bool) {
        guard bytes.count - position >= 8 else { return (nil, true) }
        let value = word(bytes, at: position)
        let offset = value & ~flagMask
        guard offset < offsetLimit else { return (nil, false) }
        switch value & flagMask {
        case flagPage | flagContinue:
            return (Header(offset: offset, block: nil, length: 8), false)
        case flagPage:
            guard bytes.count - position >= 9 else { return (nil, true) }
            let nameLength = Int(bytes[position + 8])
            guard nameLength > 0 else { return (nil, false) }
            guard bytes.count - position >= 9 + nameLength else { return (nil, true) }
            let name = (position + 9)..<(position + 9 + nameLength)
            guard bytes[name].allSatisfy({ (0x21...0x7E).contains($0) }) else { return (nil, false) }
            return (Header(offset: offset, block: name, length: 9 + nameLength), false)
        default:
            return (nil, false)
        }
    }

    /// Whether a RAM record of any kind QEMU sends in pre-copy (page, zero page, end of section) starts at
    /// `position`; needs 8 bytes.
    static func isRecordStart(_ bytes: UnsafeRawBufferPointer, at position: Int) -> Bool {
        let value = word(bytes, at: position)
        guard value & ~flagMask < offsetLimit else { return false }
        switch value & flagMask & ~flagContinue {
        case flagPage, flagZero: return true
        case flagEndOfSection: return value & flagContinue == 0
        default: return false
        }
    }

    /// Whether a whole page record starts at `position`, followed by the start of another record (which makes
    /// a false match in other bytes unlikely) or by the end of what was read when `isFinal`.
    static func pageRecord(_ bytes: UnsafeRawBufferPointer, at position: Int, isFinal: Bool) -> Match {
        let (header, needsMore) = pageHeader(bytes, at: position)
        guard let header else { return needsMore && !isFinal ? .needMore : .absent }
        let end = position + header.length + pageSize
        if bytes.count >= end + 8 {
            return isRecordStart(bytes, at: end) ? .record(end - position) : .absent
        }
        guard isFinal else { return .needMore }
        return bytes.count >= end ? .record(end - position) : .absent
    }

    /// The length of the next chunk at the start of `bytes`: a page record with the short run of other records after it, or
    /// the bytes up to the next page record (cut content-defined by `fallback` when no page record starts
    /// within its maximum). Returns nil when more bytes are needed.
    static func nextChunkLength(in bytes: UnsafeRawBufferPointer, fallback: Chunker.FastCDC, isFinal: Bool) -> Int? {
        guard !bytes.isEmpty else { return isFinal ? 0 : nil }
        switch pageRecord(bytes, at: 0, isFinal: isFinal) {
        case .needMore:
            return nil
        case .record(let length):
            let limit = length + trailingLimit
            var position = length
            while position < min(limit, bytes.count) {
                switch pageRecord(bytes, at: position, isFinal: isFinal) {
                case .record: return position
                case .needMore: return nil
                case .absent: position += 1
                }
            }
            if position >= limit { return length }  // a long run of other records follows
            return isFinal ? bytes.count : nil
        case .absent:
            let window = min(bytes.count, fallback.maximumSize)
            var position = 1
            while position < window {
                switch pageRecord(bytes, at: position, isFinal: isFinal) {
                case .record: return position
                case .needMore: return nil
                case .absent: position += 1
                }
            }
            guard window == fallback.maximumSize || isFinal else { return nil }
            return fallback.nextChunkLength(in: UnsafeRawBufferPointer(rebasing: bytes[..<window]), isFinal: true)
                ?? window
        }
    }
}

/// Where a page lives: the stream (one VM's migrations share it), the RAM block, the offset. Slots are
/// compared only within one process (their hashes are the process's own).
public struct PageSlot: Hashable, Sendable {
    let stream: Int
    let block: Int
    let offset: UInt64
}

/// Names the page slot of each chunk of a stream, in order: a chunk that starts with a page record is that
/// page's; a record that continues its block belongs to the block the last named record named. Sender and
/// receiver run one over the same chunks in the same order, so both name them alike.
public struct PageSlotTracker: Sendable {
    private let stream: Int
    private var block = 0

    /// Creates a tracker for the stream `name` (the migrations of one VM share a name).
    public init(stream name: String) {
        stream = name.hashValue
    }

    /// The slot of `chunk` if it starts with a whole page record.
    public mutating func slot(of chunk: UnsafeRawBufferPointer) -> PageSlot? {
        guard let header = QEMUPageFraming.pageHeader(chunk, at: 0).0,
            chunk.count >= header.length + QEMUPageFraming.pageSize
        else { return nil }
        if let name = header.block {
            var hasher = Hasher()
            hasher.combine(bytes: UnsafeRawBufferPointer(rebasing: chunk[name]))
            block = hasher.finalize()
        }
        return PageSlot(stream: stream, block: block, offset: header.offset)
    }
}
