import Crypto
import NIOCore
import NIOPosix

#if canImport(Glibc)
    import Glibc
#endif

/// What a sender reads: a file (its size known, so a transfer can resume) or a stream such as
/// standard input or a pipe from QEMU's migration (read once, in order, length unknown until it ends).
public enum TransferSource: Sendable {
    /// A regular file.
    case file(path: String)
    /// Standard input.
    case standardInput
    /// An open, readable descriptor — a pipe or socket, e.g. the one QEMU writes its migration stream
    /// to — read to its end. The caller keeps it open until the send returns and closes it after.
    case descriptor(Int32, name: String)
    /// Bytes a ``TransferProducer`` makes (an encoder): offered with its content, read once, in order.
    case producer(any TransferProducer)

    /// Whether it can be read again from the start (only a file can: a resumed or re-established
    /// session needs that).
    public var isRereadable: Bool {
        if case .file = self { true } else { false }
    }

    /// Opens `path` for reading, requiring a regular file.
    /// - Parameters:
    ///   - path: The file.
    ///   - advice: What to do instead when it is a directory or a special file.
    /// - Returns: The descriptor (the caller closes it) and the file's status.
    /// - Throws: ``TransportError/Code/sourceFailed`` saying what was found.
    public static func openRegularFile(_ path: String, advice: String) throws(TransportError) -> (Int32, stat) {
        let fd = open(path, O_RDONLY | O_CLOEXEC)
        guard fd >= 0 else {
            throw TransportError(
                .sourceFailed, expected: "a readable file at \(path)", found: String(cString: strerror(errno)),
                advice: "check the path and its permissions")
        }
        var status = stat()
        guard fstat(fd, &status) == 0, (status.st_mode & S_IFMT) == S_IFREG else {
            close(fd)
            throw TransportError(
                .sourceFailed, expected: "a regular file at \(path)", found: "a directory or special file",
                advice: advice)
        }
        return (fd, status)
    }

    /// The descriptor a stream source reads, `nil` for a file.
    var streamDescriptor: Int32? {
        switch self {
        case .file: nil
        case .standardInput: STDIN_FILENO
        case .descriptor(let descriptor, _): descriptor
        case .producer: nil
        }
    }
}

/// Reads a source chunk by chunk, in order, hashing everything it reads (the end-to-end SHA-256).
final class SourceReader: @unchecked Sendable {
    let descriptor: Int32
    let name: String
    let size: UInt64?
    let transferID: [UInt8]
    /// Makes the bytes instead of `descriptor` (which is then -1).
    let producer: (any TransferProducer)?
    private let ownsDescriptor: Bool
    private var hasher = SHA256()
    /// Bytes read so far.
    private(set) var bytesRead: UInt64 = 0

    init(_ source: TransferSource) throws {
        switch source {
        case .producer(let made):
            descriptor = -1
            ownsDescriptor = false
            name = made.name
            size = nil
            transferID = (0..<16).map { _ in UInt8.random(in: .min ... .max) }
            producer = made
        case .standardInput, .descriptor:
            producer = nil
            descriptor = source.streamDescriptor!
            ownsDescriptor = false
            if case .descriptor(_, let given) = source { name = given } else { name = "stdin" }
            size = nil
            transferID = (0..<16).map { _ in UInt8.random(in: .min ... .max) }
        case .file(let path):
            producer = nil
            let (fd, status) = try TransferSource.openRegularFile(
                path, advice: "send a file, or pipe a stream with `novacron send -`")
            descriptor = fd
            ownsDescriptor = true
            name = String(path.split(separator: "/").last ?? Substring(path))
            size = UInt64(status.st_size)
            // The same file (path, size, modification time) gets the same id, so --resume finds its partial copy.
            var identity = SHA256()
            identity.update(
                data: Array("\(path)|\(status.st_size)|\(status.st_mtim.tv_sec).\(status.st_mtim.tv_nsec)".utf8))
            transferID = Array(identity.finalize().prefix(16))
        }
    }

    deinit {
        if ownsDescriptor { close(descriptor) }
    }

    /// What the offer carries for the receiver's consumer (empty unless a producer makes the bytes).
    var offerContent: [UInt8] { producer?.offerContent ?? [] }

    /// The receiver accepted the object: its reply goes to the producer, if any.
    /// - Returns: The producer's query for the receiver, if it has one.
    func accepted(reply: [UInt8]) async throws -> [UInt8]? {
        guard let producer else { return nil }
        return try await NIOThreadPool.singleton.runIfActive { try producer.accepted(reply: reply) }
    }

    /// The receiver's consumer answered the producer's query.
    func answered(_ answer: [UInt8]) async throws {
        guard let producer else { return }
        try await NIOThreadPool.singleton.runIfActive { try producer.answered(answer) }
    }

    /// Reads the next chunk of at most `chunkSize` bytes (fewer only at the end); `nil` at the end.
    func readChunk(chunkSize: Int) async throws -> ByteBuffer? {
        let buffer = try await NIOThreadPool.singleton.runIfActive { [self] () throws -> ByteBuffer in
            var buffer = ByteBufferAllocator().buffer(capacity: chunkSize)
            if let producer {
                while buffer.readableBytes < chunkSize,
                    var more = try producer.read(maximum: chunkSize - buffer.readableBytes)
                {
                    buffer.writeBuffer(&more)
                }
                return buffer
            }
            var total = 0
            while total < chunkSize {
                var count = 0
                var failure: Int32 = 0
                buffer.writeWithUnsafeMutableBytes(minimumWritableBytes: chunkSize - total) { pointer in
                    let result = read(descriptor, pointer.baseAddress, chunkSize - total)
                    guard result >= 0 else {
                        failure = errno
                        return 0
                    }
                    count = result
                    return result
                }
                if failure == EINTR { continue }
                guard failure == 0 else {
                    throw TransportError(
                        .sourceFailed, expected: "to read the source", found: String(cString: strerror(failure)))
                }
                if count == 0 { break }
                total += count
            }
            return buffer
        }
        guard buffer.readableBytes > 0 else { return nil }
        buffer.withUnsafeReadableBytes { hasher.update(bufferPointer: $0) }
        bytesRead += UInt64(buffer.readableBytes)
        return buffer
    }

    /// The SHA-256 of everything read so far.
    func digest() -> SessionMessage.Digest {
        SessionMessage.Digest(bytes: Array(hasher.finalize()))
    }
}
