/// XOR + zero-run encoding of a page against its previous version (HDE stage 3), in the spirit of QEMU's
/// XBZRLE: the XOR of the two versions is a sequence of `(zero run varint, literal run varint, literal
/// bytes)`; the trailing zero run is implicit.
enum PageDelta {
    /// Equal bytes shorter than this inside a changed region are carried as literal XOR bytes (zero), since a
    /// new run pair would cost two varint bytes or more.
    static let gapToSplit = 3

    /// Encodes `new` against `old` (same length), appending to `output`; gives up and restores `output` once
    /// the encoding would reach `limit` bytes.
    /// - Returns: The encoded length, or nil if it is not below `limit`.
    static func encode(
        _ new: UnsafeRawBufferPointer, against old: UnsafeRawBufferPointer, limit: Int,
        appendingTo output: inout [UInt8]
    ) -> Int? {
        let count = new.count
        let start = output.count
        var position = 0
        var lastEnd = 0
        let newBytes = new.bindMemory(to: UInt8.self)
        let oldBytes = old.bindMemory(to: UInt8.self)
        while position < count {
            // Skip equal bytes, eight at a time where possible.
            while position + 8 <= count
                && new.loadUnaligned(fromByteOffset: position, as: UInt64.self)
                    == old.loadUnaligned(fromByteOffset: position, as: UInt64.self)
            {
                position += 8
            }
            while position < count && newBytes[position] == oldBytes[position] { position += 1 }
            if position == count { break }
            // A changed region runs until `gapToSplit` equal bytes in a row (or the end).
            let runStart = position
            var equalRun = 0
            var runEnd = position
            while position < count {
                if newBytes[position] == oldBytes[position] {
                    equalRun += 1
                    if equalRun >= gapToSplit { break }
                } else {
                    equalRun = 0
                    runEnd = position + 1
                }
                position += 1
            }
            output.appendVarint(runStart - lastEnd)
            output.appendVarint(runEnd - runStart)
            for index in runStart..<runEnd {
                output.append(newBytes[index] ^ oldBytes[index])
            }
            lastEnd = runEnd
            position = runEnd
            if output.count - start >= limit {
                output.removeLast(output.count - start)
                return nil
            }
        }
        return output.count - start
    }

    /// Applies an encoded delta to `page`, which holds the old version on entry and the new one on return.
    /// - Throws: ``EncodingError/Code/malformedRecord`` when a run leaves the page or is empty.
    static func apply(_ delta: UnsafeRawBufferPointer, to page: UnsafeMutableRawBufferPointer) throws(EncodingError) {
        var reader = ByteReader(delta, what: "a page delta")
        var position = 0
        while reader.remaining > 0 {
            let zeros = try reader.readVarint()
            let length = try reader.readVarint()
            guard length > 0, zeros <= page.count - position, length <= page.count - position - zeros else {
                throw EncodingError(
                    .malformedRecord,
                    expected: "a non-empty delta run inside the \(page.count)-byte page",
                    found: "skip \(zeros), length \(length) at offset \(position)")
            }
            position += zeros
            let bytes = try reader.readBytes(length)
            for index in 0..<length {
                page[position + index] ^= bytes[index]
            }
            position += length
        }
    }
}
