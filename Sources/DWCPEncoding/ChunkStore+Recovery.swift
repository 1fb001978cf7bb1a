#if canImport(Glibc)
    import Glibc
#elseif canImport(Darwin)
    import Darwin
#endif

extension PersistentChunkStore {
    /// Opens every segment, oldest first, indexes its whole records and cuts off what follows the last one.
    ///
    /// Sealed segments were `fsync`ed before the next one was created, so only their headers are read (a header
    /// checksum failure still ends the segment there). The newest segment may end in a record torn by a crash: its
    /// records' data checksums are verified too. A record with a bad data checksum that is the segment's last is a
    /// torn tail and is cut off; one followed by further records is bit rot, skipped and counted.
    func recover() throws(EncodingError) {
        let numbers = try segmentNumbers()
        for (position, number) in numbers.enumerated() {
            let segment = try ChunkSegment(directory: directory, number: number, creating: false)
            segments[number] = segment
            order.append(number)
            try recover(segment, verifyingData: position == numbers.count - 1)
            totalSize += segment.length
        }
        if order.isEmpty {
            try startSegment()
        }
        recovery.segments = numbers.count
        recovery.chunks = index.count
    }

    private func recover(_ segment: ChunkSegment, verifyingData: Bool) throws(EncodingError) {
        let fileLength = try segment.fileLength()
        let headerLength = ChunkRecord.headerLength
        var offset = 0
        while offset + headerLength <= fileLength {
            ensureScratch(headerLength)
            let headerBuffer = UnsafeMutableRawBufferPointer(rebasing: scratch[0..<headerLength])
            guard try segment.read(into: headerBuffer, at: offset),
                let header = ChunkRecord.decode(UnsafeRawBufferPointer(headerBuffer)),
                offset + headerLength + header.length <= fileLength
            else {
                break
            }
            let end = offset + headerLength + header.length
            if verifyingData {
                ensureScratch(header.length)
                let data = UnsafeMutableRawBufferPointer(rebasing: scratch[0..<header.length])
                let isWhole = try segment.read(into: data, at: offset + headerLength)
                if !isWhole || ChunkRecord.checksum(of: UnsafeRawBufferPointer(data)) != header.dataChecksum {
                    recovery.corruptRecords += 1
                    if end == fileLength {
                        break  // a torn tail: cut off below
                    }
                    offset = end  // bit rot inside the segment: skip the record, keep the ones after it
                    continue
                }
            }
            index[header.key] = Location(
                identity: header.identity, segment: segment.number, offset: offset, length: header.length,
                lastUse: 0)
            segmentKeys[segment.number, default: []].append(header.key)
            offset = end
        }
        if offset < fileLength {
            try segment.truncate(to: offset)
            recovery.truncatedBytes += fileLength - offset
        }
        segment.length = offset
    }

    /// The numbers of the segment files in the directory, ascending.
    private func segmentNumbers() throws(EncodingError) -> [UInt64] {
        guard let stream = opendir(directory) else {
            throw EncodingError.system("opendir", path: directory)
        }
        defer { closedir(stream) }
        var numbers: [UInt64] = []
        while let entry = readdir(stream) {
            let name = withUnsafeBytes(of: entry.pointee.d_name) { raw in
                String(decoding: raw.prefix { $0 != 0 }, as: UTF8.self)
            }
            if let number = ChunkSegment.number(inFileName: name) {
                numbers.append(number)
            }
        }
        return numbers.sorted()
    }
}
