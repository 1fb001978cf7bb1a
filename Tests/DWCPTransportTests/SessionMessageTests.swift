import NIOCore
import Testing

@testable import DWCPTransport

@Suite("Session messages")
struct SessionMessageTests {
    static var bitmap: ChunkBitmap {
        var bitmap = ChunkBitmap()
        for index in [0, 1, 2, 63, 64, 200] { bitmap.insert(index) }
        return bitmap
    }

    static let digest = SessionMessage.Digest(bytes: (0..<32).map { UInt8($0) })
    static let token = SessionMessage.Token(bytes: (0..<16).map { UInt8(200 + $0) })

    static let messages: [SessionMessage] = [
        .offer(
            .init(
                transferID: Array(repeating: 7, count: 16), name: "ram.img", totalBytes: 1 << 33, blockSize: 1 << 20,
                resume: true)),
        .offer(
            .init(
                transferID: Array(repeating: 1, count: 16), name: "stdin", totalBytes: nil, blockSize: 4096,
                resume: false)),
        .accept(.init(sessionID: 42, token: token, blockSize: 1 << 20, windowBlocks: 96, present: bitmap)),
        .accept(.init(sessionID: 1, token: token, blockSize: 4096, windowBlocks: 4, present: ChunkBitmap())),
        .offer(
            .init(
                transferID: Array(repeating: 2, count: 16), name: "disk.qcow2", totalBytes: 5, blockSize: 4096,
                resume: false, object: 3, objects: 5, weight: 200)),
        .accept(
            .init(object: 3, sessionID: 1, token: token, blockSize: 4096, windowBlocks: 4, present: ChunkBitmap())),
        .refuse(reason: "no space — ünïcödé"),
        .attach(sessionID: 42, token: token, stream: 9),
        .finish(object: 2, totalBlocks: 3, totalBytes: 2_500_000, sha256: digest),
        .complete(object: 2, sha256: digest),
        .failed(reason: "disk full"),
        .offer(
            .init(
                transferID: Array(repeating: 3, count: 16), name: "ram.img", totalBytes: nil, blockSize: 1 << 18,
                resume: false, content: Array("NCHO with some content".utf8))),
        .accept(
            .init(
                object: 0, sessionID: 9, token: token, blockSize: 1 << 18, windowBlocks: 256, present: ChunkBitmap(),
                reply: [1, 2, 3])),
        .query(object: 4, content: Array(repeating: 0xAB, count: 1000)),
        .answer(object: 4, content: []),
    ]

    @Test("Every message survives a round trip", arguments: messages)
    func roundTrip(_ message: SessionMessage) throws {
        #expect(try SessionMessage(decoding: message.encoded) == message)
    }

    @Test("Every truncation of every message is a typed error, never a crash", arguments: messages)
    func truncations(_ message: SessionMessage) {
        let full = message.encoded
        for length in 0..<full.readableBytes {
            let cut = full.getSlice(at: full.readerIndex, length: length)!
            #expect(throws: TransportError.self) { try SessionMessage(decoding: cut) }
        }
    }

    @Test("Trailing bytes, an unknown kind and an oversized bitmap are refused")
    func malformed() {
        var trailing = SessionMessage.complete(object: 0, sha256: Self.digest).encoded
        trailing.writeInteger(UInt8(0))
        #expect(throws: TransportError.self) { try SessionMessage(decoding: trailing) }
        #expect(throws: TransportError.self) { try SessionMessage(decoding: ByteBuffer(bytes: [99])) }
        // Content longer than the limit is refused on its length field alone.
        var oversized = ByteBuffer(bytes: [8, 0, 1])
        oversized.writeInteger(UInt32(SessionMessage.maximumContentLength + 1))
        #expect(throws: TransportError.self) { try SessionMessage(decoding: oversized) }
        var accept = ByteBuffer(bytes: [2])
        accept.writeInteger(UInt16(0))
        accept.writeInteger(UInt64(1))
        accept.writeBytes(Self.token.bytes)
        accept.writeInteger(UInt32(4096))
        accept.writeInteger(UInt32(4))
        accept.writeInteger(UInt32.max - 63)  // a bitmap length far beyond the limit
        let error = #expect(throws: TransportError.self) { try SessionMessage(decoding: accept) }
        #expect(error?.code == .malformedMessage)
    }

    @Test("A session's offers are checked as a whole: numbering, count, and one object for a stream")
    func sessionOffersChecked() throws {
        func offer(_ object: UInt16, of objects: UInt16) -> SessionMessage.Offer {
            .init(
                transferID: Array(repeating: UInt8(object), count: 16), name: "o\(object)", totalBytes: 1,
                blockSize: 4096, resume: false, object: object, objects: objects)
        }
        try SessionMessage.checkSession([offer(0, of: 1)], streamDestination: true)
        try SessionMessage.checkSession([offer(0, of: 2), offer(1, of: 2)], streamDestination: false)
        for bad in [[offer(1, of: 2), offer(0, of: 2)], [offer(0, of: 2)], [offer(0, of: 2), offer(1, of: 3)], []] {
            let error = #expect(throws: TransportError.self) {
                try SessionMessage.checkSession(bad, streamDestination: false)
            }
            #expect(error?.code == .protocolViolation)
        }
        let stream = #expect(throws: TransportError.self) {
            try SessionMessage.checkSession([offer(0, of: 2), offer(1, of: 2)], streamDestination: true)
        }
        #expect(stream?.code == .invalidArgument)
    }

    @Test("An offer whose object number is not below its object count, or whose weight is 0, is refused")
    func malformedObjectNumbers() {
        for (object, objects, weight) in [(UInt16(1), UInt16(1), UInt8(1)), (0, 0, 1), (0, 2, 0)] {
            let offer = SessionMessage.offer(
                .init(
                    transferID: Array(repeating: 2, count: 16), name: "a", totalBytes: 5, blockSize: 4096,
                    resume: false, object: 0, objects: 1, weight: 1))
            var bytes = offer.encoded
            // The last five bytes are the object number, the object count and the weight.
            bytes.moveWriterIndex(to: bytes.writerIndex - 5)
            bytes.writeInteger(object)
            bytes.writeInteger(objects)
            bytes.writeInteger(weight)
            let error = #expect(throws: TransportError.self) { try SessionMessage(decoding: bytes) }
            #expect(error?.code == .malformedMessage)
        }
    }

    @Test("A bitmap finds the first absent chunk across full words")
    func bitmapFirstAbsent() {
        var bitmap = ChunkBitmap()
        for index in 0..<130 { bitmap.insert(index) }
        bitmap.insert(131)
        #expect(bitmap.firstAbsent(from: 0) == 130)
        #expect(bitmap.firstAbsent(from: 131) == 132)
        #expect(bitmap.count == 131)
        let insertedAgain = bitmap.insert(5)
        #expect(!insertedAgain)
    }
}

@Suite("Token bucket")
struct TokenBucketTests {
    @Test("Over many reservations the rate holds; a burst goes at once after idling")
    func rate() {
        var bucket = TokenBucket(bytesPerSecond: 1_000_000, burst: .milliseconds(50))
        var now = Duration.zero
        #expect(bucket.reserve(50_000, now: now) == .zero)
        for _ in 0..<1000 {
            now += bucket.reserve(10_000, now: now)
        }
        // The 50 kB burst went at once; the next 999 × 10 kB start at 1 MB/s.
        #expect(abs(now.seconds - 9.99) < 0.001)
        now += .seconds(5)
        #expect(bucket.reserve(40_000, now: now) == .zero)
    }
}
