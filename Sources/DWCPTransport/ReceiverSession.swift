import CNovaCronSystem
import Crypto
import Foundation
import NIOCore

#if canImport(Glibc)
    import Glibc
#endif

/// One object being received: the ``TransferReceiver`` machine plus the files it drives.
///
/// Chunks are written where they belong (`pwrite`) as they arrive, and the indexes of each stored
/// chunk's blocks are appended to a journal next to the partial file; the journal is the block bitmap a
/// resumed transfer starts from. The SHA-256 follows the contiguous prefix: chunks that arrive ahead of it are
/// read back from the file (page cache) when the prefix reaches them, or, for a stream (standard output, a
/// descriptor), wait
/// in memory (at most the window). Writeback to disk starts behind the prefix (``WritebackSchedule``),
/// so the `fsync` before the commit is short. The object appears
/// under its final name only after the whole SHA-256 matched the sender's and the data was synced;
/// until then it is `NAME.novacron-partial`.
actor ReceiverSession {
    let sessionID: UInt64
    let offer: SessionMessage.Offer
    let peer: String
    let accept: SessionMessage.Accept
    nonisolated let finalPath: String?

    private var machine: TransferReceiver
    private let partialPath: String?
    private let journalPath: String?
    private var dataDescriptor: Int32
    /// Where a stream destination writes, in order; `nil` for a file.
    private let streamDescriptor: Int32?
    /// Takes the bytes in order when the offer carries content (an encoding).
    private let consumer: (any TransferConsumer)?
    private var journalDescriptor: Int32
    private var hasher = SHA256()
    private var hashedUpTo = 0
    /// Chunks held for the SHA-256 (and an in-order sink), by first block.
    private var pending: [Int: ByteBuffer] = [:]
    /// The most blocks read back from the partial file at once (4 MiB).
    private var readBackBlocks: Int { max(1, (4 << 20) / machine.blockSize) }
    private var writeback = WritebackSchedule()
    private let resumedBytes: UInt64
    private let started = ContinuousClock.now
    private(set) var isClosed = false
    /// A finish that came before the last chunks (the sender sends it once its source ended): resumed with
    /// true when every block is held, false when the object is let go first.
    private var completionWaiter: CheckedContinuation<Bool, Never>?

    static let journalMagic: UInt32 = 0x4E43_4A31  // "NCJ1"
    static let journalHeaderLength = 4 + 16 + 4 + 8

    /// Opens the destination of one offered object.
    /// - Parameters:
    ///   - sessionID: The session the object belongs to.
    ///   - token: The session's token, for the accept.
    ///   - offer: The sender's offer.
    ///   - blockSize: The session's block size when this is not its first object (all share one).
    ///   - peer: The sender, for the report.
    ///   - configuration: Where and how to write.
    init(
        sessionID: UInt64,
        token: SessionMessage.Token,
        offer: SessionMessage.Offer,
        blockSize sessionBlockSize: Int?,
        peer: String,
        configuration: ReceiveConfiguration
    ) throws {
        self.sessionID = sessionID
        self.offer = offer
        self.streamDescriptor = offer.content.isEmpty ? configuration.destination.streamDescriptor : nil
        self.peer = peer
        guard (4096...DWCPFrameLimitsForTransport.maximumChunkSize).contains(Int(offer.blockSize)) else {
            throw TransportError(
                .invalidArgument,
                expected: "a block size of 4 KiB to \(DWCPFrameLimitsForTransport.maximumChunkSize >> 20) MiB",
                found: "\(offer.blockSize)"
            )
        }
        var blockSize = sessionBlockSize ?? Int(offer.blockSize)
        var present = ChunkBitmap()
        if offer.content.isEmpty {
            consumer = nil
        } else {
            guard let factory = configuration.consumers else {
                throw TransportError(
                    .refused, expected: "plain bytes", found: "an object with content (an encoding) it cannot read",
                    advice: "send with --encode none, or upgrade the receiver")
            }
            guard !offer.resume else {
                throw TransportError(
                    .invalidArgument, expected: "plain bytes to resume", found: "an encoded object",
                    advice: "send it again without --resume")
            }
            consumer = try factory.consumer(
                for: offer, destination: configuration.destination, overwrite: configuration.overwrite)
        }
        switch consumer == nil ? configuration.destination : .standardOutput {
        case .standardOutput, .descriptor:
            dataDescriptor = -1
            journalDescriptor = -1
            finalPath = consumer?.path
            partialPath = nil
            journalPath = nil
            if offer.resume {
                throw TransportError(
                    .invalidArgument, expected: "a file destination to resume into", found: "a stream")
            }
        case .path(let path):
            let target = try Self.resolve(path, name: offer.name)
            finalPath = target
            partialPath = target + ".novacron-partial"
            journalPath = target + ".novacron-journal"
            if FileManager.default.fileExists(atPath: target) && !configuration.overwrite {
                throw TransportError(
                    .destinationFailed,
                    expected: "no file at \(target)",
                    found: "an existing file",
                    advice: "remove it or pass --overwrite"
                )
            }
            if offer.resume, let journal = Self.loadJournal(journalPath!, offer: offer),
                sessionBlockSize == nil || journal.blockSize == sessionBlockSize
            {
                blockSize = journal.blockSize
                present = journal.present
            }
            (dataDescriptor, journalDescriptor) = try Self.openFiles(
                partial: partialPath!, journal: journalPath!, transferID: offer.transferID,
                totalBytes: offer.totalBytes, fresh: present.count == 0, blockSize: blockSize)
        }
        // Standard output holds the chunks ahead of the prefix in memory: its reorder window is the
        // configured one. A file reads them back from the page cache, so its window can span more: a
        // chunk stuck on a slow stream, or an object sharing the sender's window with others, does not
        // stop the chunks behind it (the sender's own window still bounds what is in flight).
        // A consumer's object (an encoded image) is held in memory like a stream's, but spans the file
        // window: measured over wanem (global, 512 MiB of random bytes, --encode auto), 64 MiB held the
        // sender back to 15.3 s against 10.8 s for the same bytes as a file; 256 MiB took 11.4 s.
        let spread = dataDescriptor >= 0 || !offer.content.isEmpty ? ReceiveConfiguration.fileWindowSpread : 1
        let windowBlocks = max(4, spread * configuration.windowBytes / blockSize)
        machine = TransferReceiver(
            blockSize: blockSize, windowBlocks: windowBlocks, declaredBytes: offer.totalBytes, present: present)
        resumedBytes = min(UInt64(present.count) * UInt64(blockSize), offer.totalBytes ?? .max)
        accept = SessionMessage.Accept(
            object: offer.object,
            sessionID: sessionID,
            token: token,
            blockSize: UInt32(blockSize),
            windowBlocks: UInt32(windowBlocks),
            present: present,
            reply: consumer?.reply ?? []
        )
    }

    /// Where the object goes: `path` itself, or `path/name` when `path` is a directory.
    static func resolve(_ path: String, name: String) throws -> String {
        var isDirectory: ObjCBool = false
        guard FileManager.default.fileExists(atPath: path, isDirectory: &isDirectory), isDirectory.boolValue else {
            return path
        }
        let base = name.split(separator: "/").last.map(String.init) ?? ""
        guard !base.isEmpty, base != ".", base != ".." else {
            throw TransportError(
                .invalidArgument,
                expected: "a usable file name from the sender",
                found: "\"\(name)\"",
                advice: "give --out a file path"
            )
        }
        return (path as NSString).appendingPathComponent(base)
    }

    private nonisolated static func loadJournal(
        _ path: String,
        offer: SessionMessage.Offer
    ) -> (blockSize: Int, present: ChunkBitmap)? {
        guard let data = FileManager.default.contents(atPath: path), data.count >= journalHeaderLength else {
            return nil
        }
        var buffer = ByteBuffer(bytes: data)
        guard buffer.readInteger(as: UInt32.self) == journalMagic,
            buffer.readBytes(length: 16) == offer.transferID,
            let blockSize = buffer.readInteger(as: UInt32.self), blockSize > 0,
            let totalBytes = buffer.readInteger(as: UInt64.self), totalBytes == offer.totalBytes
        else { return nil }
        let blockCount = Int((totalBytes + UInt64(blockSize) - 1) / UInt64(blockSize))
        var present = ChunkBitmap()
        // A record cut short by a crash is ignored, like any index outside the object.
        while let index = buffer.readInteger(endianness: .little, as: UInt64.self) {
            if index < blockCount { present.insert(Int(index)) }
        }
        return (Int(blockSize), present)
    }

    private static func openFiles(
        partial: String,
        journal: String,
        transferID: [UInt8],
        totalBytes: UInt64?,
        fresh: Bool,
        blockSize: Int
    ) throws -> (Int32, Int32) {
        let flags = O_RDWR | O_CREAT | O_CLOEXEC | (fresh ? O_TRUNC : 0)
        let data = open(partial, flags, 0o644)
        guard data >= 0 else { throw ioError("create \(partial)") }
        let journalDescriptor = open(journal, flags | O_APPEND, 0o644)
        guard journalDescriptor >= 0 else {
            Glibc.close(data)
            throw ioError("create \(journal)")
        }
        if fresh {
            var header = ByteBuffer()
            header.writeInteger(journalMagic)
            header.writeBytes(transferID)
            header.writeInteger(UInt32(blockSize))
            header.writeInteger(totalBytes ?? .max)
            do {
                try writeAll(journalDescriptor, header, what: "the journal")
            } catch {
                Glibc.close(data)
                Glibc.close(journalDescriptor)
                throw error
            }
        }
        return (data, journalDescriptor)
    }

    // MARK: Events

    /// A chunk arrived on a data stream.
    func store(_ index: Int, _ payload: ByteBuffer) throws -> TransferReceiver.Disposition {
        guard !isClosed else {
            // A late copy (the sender's end game) of a chunk the committed object already holds.
            if machine.present.contains(index) { return .duplicate }
            throw TransportError(.cancelled, expected: "an open session", found: "session \(sessionID) closed")
        }
        let disposition = try machine.chunkArrived(index: index, size: payload.readableBytes)
        guard disposition == .store else { return disposition }
        if dataDescriptor >= 0 {
            try payload.withUnsafeReadableBytes { bytes in
                var done = 0
                while done < bytes.count {
                    let count = pwrite(
                        dataDescriptor, bytes.baseAddress! + done, bytes.count - done,
                        off_t(machine.offset(of: index)) + off_t(done))
                    guard count > 0 else {
                        if count < 0 && errno == EINTR { continue }
                        throw ioError("write \(partialPath!)")
                    }
                    done += count
                }
            }
            var record = ByteBuffer()
            for block in index..<index + machine.blocks(in: payload.readableBytes) {
                record.writeInteger(UInt64(block), endianness: .little)
            }
            try Self.writeAll(journalDescriptor, record, what: "the journal")
        }
        if index == hashedUpTo {
            pending[index] = payload
        } else if dataDescriptor < 0 {
            // Standard output (or a consumer) needs order: hold the chunk until the prefix reaches it, as a compact copy
            // (the received buffer may be a slice pinning a larger read buffer).
            var copy = ByteBufferAllocator().buffer(capacity: payload.readableBytes)
            copy.writeImmutableBuffer(payload)
            pending[index] = copy
        }  // A file destination reads it back from the page cache when the prefix gets there.
        try advanceHash()
        if machine.isComplete, let waiter = completionWaiter {
            completionWaiter = nil
            waiter.resume(returning: true)
        }
        return .store
    }

    /// The sender's producer asks this object's consumer something.
    func answer(query: [UInt8]) throws -> [UInt8] {
        guard let consumer else {
            throw TransportError(
                .protocolViolation, expected: "a query for an object with a consumer", found: "plain bytes")
        }
        do {
            let answer = try consumer.answer(query: query)
            guard answer.count <= SessionMessage.maximumContentLength else {
                throw TransportError(
                    .invalidArgument, expected: "an answer of at most \(SessionMessage.maximumContentLength) bytes",
                    found: "\(answer.count)")
            }
            return answer
        } catch let error as TransportError {
            throw error
        } catch {
            throw TransportError(.malformedMessage, expected: "a query the consumer understands", found: "\(error)")
        }
    }

    /// The sender's source ended: `totalBlocks` blocks, `totalBytes` bytes, this SHA-256. The sender says so
    /// as soon as it read the end, so chunks may still be on their way: the answer waits for them (the
    /// acknowledgement of the last chunk and the finish no longer cross the link one after the other).
    /// - Returns: The answer for the control stream and, on success, the report; nil when the object was let
    ///   go (``abandon()``, ``withdraw()``) before its last chunks arrived: nothing to answer.
    func finish(
        totalBlocks: UInt64,
        totalBytes: UInt64,
        digest: SessionMessage.Digest
    ) async -> (SessionMessage, Result<ReceivedObject, TransportError>)? {
        do {
            if try !machine.finish(totalBlocks: Int(totalBlocks), totalBytes: totalBytes) {
                guard !isClosed else {
                    throw TransportError(.cancelled, expected: "an open session", found: "\(offer.name) was let go")
                }
                guard completionWaiter == nil else {
                    throw TransportError(
                        .protocolViolation, expected: "one finish per object", found: "another for \(offer.name)")
                }
                let arrived = await withCheckedContinuation { completionWaiter = $0 }
                guard arrived else { return nil }
            }
            try advanceHash()
            let ours = SessionMessage.Digest(bytes: Array(hasher.finalize()))
            guard ours == digest else {
                discard()
                throw TransportError(
                    .checksumMismatch,
                    expected: "SHA-256 \(digest) as the sender computed it",
                    found: "\(ours) over the bytes received",
                    advice: "the partial copy was deleted; send again"
                )
            }
            var made = totalBytes
            if let consumer {
                do {
                    made = try consumer.commit()
                    close()
                } catch {
                    discard()
                    throw error as? TransportError
                        ?? TransportError(.destinationFailed, expected: "to commit the object", found: "\(error)")
                }
            } else {
                try commit()
            }
            let report = ReceivedObject(
                name: offer.name,
                path: finalPath,
                bytes: made,
                receivedBytes: machine.bytesStored,
                resumedBytes: resumedBytes,
                seconds: (ContinuousClock.now - started).seconds,
                sha256: "\(ours)",
                decoded: consumer != nil
            )
            return (.complete(object: offer.object, sha256: ours), .success(report))
        } catch {
            if consumer != nil { discard() } else { close() }
            let failure =
                error as? TransportError
                ?? TransportError(.destinationFailed, expected: "to commit the object", found: "\(error)")
            let reason = failure.code == .checksumMismatch ? "checksum mismatch: \(failure)" : "\(failure)"
            return (.failed(reason: reason), .failure(failure))
        }
    }

    /// The control stream went away: keep the partial copy and its journal for a resume (a consumer's
    /// output cannot resume and goes).
    func abandon() {
        if consumer != nil { discard() } else { close() }
    }

    /// The session was refused after this object was opened: its files go unless they hold data from
    /// an earlier attempt (kept for a resume).
    func withdraw() {
        if resumedBytes == 0 && machine.bytesStored == 0 {
            discard()
        } else {
            close()
        }
    }

    /// Progress so far: bytes held, and the object's size if known.
    func progress() -> (done: UInt64, total: UInt64?) {
        (machine.bytesStored + resumedBytes, offer.totalBytes)
    }

    // MARK: Files

    private func advanceHash() throws(TransportError) {
        while hashedUpTo < machine.contiguousBlocks {
            let chunk: ByteBuffer
            if let held = pending.removeValue(forKey: hashedUpTo) {
                chunk = held
            } else {
                chunk = try readBack(hashedUpTo, blocks: min(machine.contiguousBlocks - hashedUpTo, readBackBlocks))
            }
            chunk.withUnsafeReadableBytes { hasher.update(bufferPointer: $0) }
            if let stream = streamDescriptor {
                try Self.writeAll(
                    stream, chunk, what: stream == STDOUT_FILENO ? "standard output" : "descriptor \(stream)")
            } else if let consumer {
                do {
                    try consumer.consume(chunk)
                } catch {
                    throw error as? TransportError
                        ?? TransportError(.destinationFailed, expected: "to take the object's bytes", found: "\(error)")
                }
            }
            hashedUpTo += machine.blocks(in: chunk.readableBytes)
        }
        if dataDescriptor >= 0, let range = writeback.prefixReached(machine.offset(of: hashedUpTo)) {
            // Advisory: an I/O error here shows again, and is reported, at the fsync before the commit.
            _ = novacron_start_writeback(dataDescriptor, off_t(range.lowerBound), off_t(range.count))
        }
    }

    /// Reads `blocks` blocks from block `index` back from the partial file.
    private func readBack(_ index: Int, blocks: Int) throws(TransportError) -> ByteBuffer {
        // A stream's last block may be short: it is known once its chunk arrived.
        let size = Int(
            min(UInt64(blocks * machine.blockSize), (machine.knownLength ?? .max) - machine.offset(of: index)))
        var buffer = ByteBufferAllocator().buffer(capacity: size)
        var count = 0
        buffer.writeWithUnsafeMutableBytes(minimumWritableBytes: size) { pointer in
            count = pread(dataDescriptor, pointer.baseAddress, size, off_t(machine.offset(of: index)))
            return max(count, 0)
        }
        guard count >= 0 else { throw ioError("read back block \(index) of \(partialPath ?? "?")") }
        guard count == size else {
            throw TransportError(
                .destinationFailed, expected: "to read back \(size) bytes from block \(index) of \(partialPath ?? "?")",
                found: "\(count) bytes", advice: "something else truncated the partial file; send again")
        }
        return buffer
    }

    private static func writeAll(_ descriptor: Int32, _ buffer: ByteBuffer, what: String) throws(TransportError) {
        var failure: TransportError?
        buffer.withUnsafeReadableBytes { bytes in
            var done = 0
            while done < bytes.count {
                let count = write(descriptor, bytes.baseAddress! + done, bytes.count - done)
                guard count > 0 else {
                    if count < 0 && errno == EINTR { continue }
                    failure = ioError("write \(what)")
                    return
                }
                done += count
            }
        }
        if let failure { throw failure }
    }

    private func commit() throws(TransportError) {
        guard let partialPath, let finalPath else { return }
        guard fsync(dataDescriptor) == 0 else { throw ioError("sync \(partialPath)") }
        guard rename(partialPath, finalPath) == 0 else { throw ioError("rename \(partialPath) to \(finalPath)") }
        close()
        unlink(journalPath!)
    }

    private func discard() {
        if !isClosed { consumer?.discard() }
        close()
        if let partialPath { unlink(partialPath) }
        if let journalPath { unlink(journalPath) }
    }

    private func close() {
        isClosed = true
        if let waiter = completionWaiter {
            completionWaiter = nil
            waiter.resume(returning: false)
        }
        pending.removeAll()
        if dataDescriptor >= 0 { Glibc.close(dataDescriptor) }
        if journalDescriptor >= 0 { Glibc.close(journalDescriptor) }
        dataDescriptor = -1
        journalDescriptor = -1
    }

    private nonisolated func ioError(_ action: String) -> TransportError {
        Self.ioError(action)
    }

    private static func ioError(_ action: String) -> TransportError {
        let code = errno
        return TransportError(
            .destinationFailed,
            expected: "to \(action)",
            found: String(cString: strerror(code)),
            advice: code == ENOSPC ? "free space at the destination, then send again with --resume" : nil
        )
    }
}

/// Limits the transport applies on top of the frame format's.
enum DWCPFrameLimitsForTransport {
    /// The largest chunk a session accepts (the frame payload limit).
    static let maximumChunkSize = 16 << 20
}
