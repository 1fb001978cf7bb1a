import CXXHash

#if canImport(Glibc)
    import Glibc
#elseif canImport(Darwin)
    import Darwin
#endif

/// The on-disk record of the persistent chunk store (all integers little-endian):
///
/// | offset | size | field |
/// |---:|---:|---|
/// | 0 | 4 | magic `NCCK` |
/// | 4 | 1 | version (1) |
/// | 5 | 3 | reserved, 0 |
/// | 8 | 4 | data length |
/// | 12 | 4 | reserved, 0 |
/// | 16 | 32 | key: SHA-256 of the data |
/// | 48 | 16 | XXH3-128 identity of the data (low half first); recorded, not indexed |
/// | 64 | 8 | data checksum: XXH3-64 of the data |
/// | 72 | 8 | header checksum: XXH3-64 of bytes 0..<72 (so it covers the data checksum too) |
/// | 80 | n | data |
enum ChunkRecord {
    static let magic: [UInt8] = Array("NCCK".utf8)
    static let version: UInt8 = 1
    static let headerLength = 80

    struct Header: Equatable {
        var length: Int
        var key: ChunkKey
        var identity: ChunkIdentity
        var dataChecksum: UInt64
    }

    static func checksum(of data: UnsafeRawBufferPointer) -> UInt64 {
        XXH3_64bits(data.baseAddress, data.count)
    }

    /// Writes the 80-byte header for `header` into `out`.
    static func encode(_ header: Header, into out: UnsafeMutableRawBufferPointer) {
        precondition(out.count >= headerLength, "a record header needs \(headerLength) bytes, got \(out.count)")
        for index in 0..<headerLength {
            out[index] = 0
        }
        for (index, byte) in magic.enumerated() {
            out[index] = byte
        }
        out[4] = version
        out.storeBytes(of: UInt32(header.length).littleEndian, toByteOffset: 8, as: UInt32.self)
        let words = [header.key.word0, header.key.word1, header.key.word2, header.key.word3]
        for (index, word) in words.enumerated() {
            out.storeBytes(of: word.bigEndian, toByteOffset: 16 + index * 8, as: UInt64.self)
        }
        out.storeBytes(of: header.identity.low.littleEndian, toByteOffset: 48, as: UInt64.self)
        out.storeBytes(of: header.identity.high.littleEndian, toByteOffset: 56, as: UInt64.self)
        out.storeBytes(of: header.dataChecksum.littleEndian, toByteOffset: 64, as: UInt64.self)
        let headerChecksum = checksum(of: UnsafeRawBufferPointer(rebasing: out[0..<72]))
        out.storeBytes(of: headerChecksum.littleEndian, toByteOffset: 72, as: UInt64.self)
    }

    /// Reads a header, or nil if its magic, version, reserved bytes or header checksum are wrong.
    static func decode(_ bytes: UnsafeRawBufferPointer) -> Header? {
        guard bytes.count >= headerLength, bytes[0..<4].elementsEqual(magic), bytes[4] == version,
            bytes[5] == 0, bytes[6] == 0, bytes[7] == 0, bytes.loadUnaligned(fromByteOffset: 12, as: UInt32.self) == 0
        else {
            return nil
        }
        let stored = UInt64(littleEndian: bytes.loadUnaligned(fromByteOffset: 72, as: UInt64.self))
        guard checksum(of: UnsafeRawBufferPointer(rebasing: bytes[0..<72])) == stored else {
            return nil
        }
        func word(_ index: Int) -> UInt64 {
            UInt64(bigEndian: bytes.loadUnaligned(fromByteOffset: 16 + index * 8, as: UInt64.self))
        }
        return Header(
            length: Int(UInt32(littleEndian: bytes.loadUnaligned(fromByteOffset: 8, as: UInt32.self))),
            key: ChunkKey(word0: word(0), word1: word(1), word2: word(2), word3: word(3)),
            identity: ChunkIdentity(
                low: UInt64(littleEndian: bytes.loadUnaligned(fromByteOffset: 48, as: UInt64.self)),
                high: UInt64(littleEndian: bytes.loadUnaligned(fromByteOffset: 56, as: UInt64.self))),
            dataChecksum: UInt64(littleEndian: bytes.loadUnaligned(fromByteOffset: 64, as: UInt64.self)))
    }
}

/// One append-only segment file, `segment-<16 hex digits>.log`, open for reading and appending.
final class ChunkSegment {
    let number: UInt64
    let path: String
    private(set) var descriptor: Int32
    /// The length of the valid records; appends go here.
    var length: Int
    /// ``length`` at the last ``sync()``: the prefix a power failure cannot take away.
    private(set) var syncedLength = 0
    /// The store's use clock at the last append into this segment (0 after a reopen).
    var lastAppendTick: UInt64 = 0

    static func fileName(_ number: UInt64) -> String {
        let digits = String(number, radix: 16)
        return "segment-" + String(repeating: "0", count: 16 - digits.count) + digits + ".log"
    }

    /// The segment number of a file name, or nil if the name is not a segment's.
    static func number(inFileName name: String) -> UInt64? {
        guard name.hasPrefix("segment-"), name.hasSuffix(".log"), name.utf8.count == 8 + 16 + 4 else {
            return nil
        }
        // Numbers past 2^32 − 2 are not the store's: it counts from 1 and the index keeps 32 bits.
        guard let number = UInt64(name.dropFirst(8).dropLast(4), radix: 16), number < UInt32.max else {
            return nil
        }
        return number
    }

    init(directory: String, number: UInt64, creating: Bool) throws(EncodingError) {
        self.number = number
        self.path = directory + "/" + ChunkSegment.fileName(number)
        let flags = O_RDWR | O_CLOEXEC | (creating ? O_CREAT | O_EXCL : 0)
        descriptor = open(path, flags, 0o644)
        guard descriptor >= 0 else {
            throw EncodingError.system("open", path: path)
        }
        var status = stat()
        guard fstat(descriptor, &status) == 0 else {
            let error = EncodingError.system("fstat", path: path)
            close(descriptor)
            throw error
        }
        length = Int(status.st_size)
    }

    deinit {
        if descriptor >= 0 {
            close(descriptor)
        }
    }

    /// Reads exactly `buffer.count` bytes at `offset`; returns false if the file ends first.
    func read(into buffer: UnsafeMutableRawBufferPointer, at offset: Int) throws(EncodingError) -> Bool {
        var done = 0
        while done < buffer.count {
            let got = pread(descriptor, buffer.baseAddress! + done, buffer.count - done, off_t(offset + done))
            if got < 0 {
                if errno == EINTR {
                    continue
                }
                throw EncodingError.system("pread", path: path)
            }
            if got == 0 {
                return false
            }
            done += got
        }
        return true
    }

    /// Writes all of `bytes` at the end of the valid records and advances ``length``. On failure the file is cut
    /// back to the old length, so a failed append leaves no partial record behind.
    func append(_ bytes: UnsafeRawBufferPointer) throws(EncodingError) {
        var done = 0
        while done < bytes.count {
            let wrote = pwrite(descriptor, bytes.baseAddress! + done, bytes.count - done, off_t(length + done))
            if wrote < 0 && errno == EINTR {
                continue
            }
            guard wrote > 0 else {
                let error = EncodingError.system("pwrite", path: path)
                _ = ftruncate(descriptor, off_t(length))
                throw error
            }
            done += wrote
        }
        length += bytes.count
    }

    /// Cuts the file to `newLength` bytes and makes the cut durable.
    func truncate(to newLength: Int) throws(EncodingError) {
        guard ftruncate(descriptor, off_t(newLength)) == 0 else {
            throw EncodingError.system("ftruncate", path: path)
        }
        length = newLength
        try sync()
    }

    /// `fsync`s the file.
    func sync() throws(EncodingError) {
        guard fsync(descriptor) == 0 else {
            throw EncodingError.system("fsync", path: path)
        }
        syncedLength = length
    }

    /// The file's length on disk, which can exceed ``length`` before recovery.
    func fileLength() throws(EncodingError) -> Int {
        var status = stat()
        guard fstat(descriptor, &status) == 0 else {
            throw EncodingError.system("fstat", path: path)
        }
        return Int(status.st_size)
    }

    /// Closes and deletes the file.
    func remove() throws(EncodingError) {
        close(descriptor)
        descriptor = -1
        guard unlink(path) == 0 || errno == ENOENT else {
            throw EncodingError.system("unlink", path: path)
        }
    }
}

extension EncodingError {
    /// An ``Code/ioFailed`` error for the system call that just failed, with its `errno`.
    static func system(_ call: String, path: String, file: String = #fileID, line: UInt = #line) -> EncodingError {
        let code = errno
        return EncodingError(
            .ioFailed, expected: "\(call) on \(path) to succeed", found: String(cString: strerror(code)),
            advice: "check the store directory's permissions and free space", systemError: code, file: file,
            line: line)
    }
}
