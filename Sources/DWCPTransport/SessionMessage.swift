import NIOCore

/// The control messages of a transfer session, carried as the payload of `control` frames.
///
/// A session opens on the control stream with the offer of object 0 (`offer` → `accept` or
/// `refuse`); a session that carries several objects offers objects 1, 2, … on the same control
/// stream, and each gets its own `accept`. Each data stream opens with `attach`, proving with the
/// session's token that it belongs, and carries chunks of any of the session's objects. When the
/// sender has sent all of an object it says `finish` with the object's SHA-256, and the receiver
/// answers `complete` once its own SHA-256 matches, or `failed` (which ends the session). An offer may carry
/// content for the receiver's consumer and its accept a reply; after the accept the sender may ask one
/// `query` per object, answered by an `answer` (see ``TransferProducer``). Layout: a kind byte, then the fields in order, integers
/// big-endian, strings as `u16 length + UTF-8`.
public enum SessionMessage: Hashable, Sendable {
    /// The sender proposes a transfer.
    case offer(Offer)
    /// The receiver accepts it and says what it already holds.
    case accept(Accept)
    /// The receiver refuses it.
    case refuse(reason: String)
    /// The first message on a data stream: which session it belongs to.
    case attach(sessionID: UInt64, token: Token, stream: UInt16)
    /// The sender has sent every chunk of `object`: the totals and the object's SHA-256.
    case finish(object: UInt16, totalBlocks: UInt64, totalBytes: UInt64, sha256: Digest)
    /// The receiver verified `object` (its SHA-256 matched) and committed it.
    case complete(object: UInt16, sha256: Digest)
    /// The receiver could not complete the transfer.
    case failed(reason: String)
    /// The sender's producer asks the receiver's consumer of `object` something (after the accept).
    case query(object: UInt16, content: [UInt8])
    /// The consumer's answer to a query.
    case answer(object: UInt16, content: [UInt8])

    /// 16 random bytes that prove a data stream belongs to a session.
    public struct Token: Hashable, Sendable {
        /// The bytes.
        public var bytes: [UInt8]

        /// Creates a token from 16 bytes.
        public init(bytes: [UInt8]) {
            precondition(bytes.count == 16, "a session token is 16 bytes, not \(bytes.count)")
            self.bytes = bytes
        }

        /// A fresh token from the system's random source.
        public static func random() -> Token {
            var generator = SystemRandomNumberGenerator()
            return Token(bytes: (0..<16).map { _ in UInt8.random(in: .min ... .max, using: &generator) })
        }
    }

    /// A 32-byte SHA-256 digest.
    public struct Digest: Hashable, Sendable, CustomStringConvertible {
        /// The bytes.
        public var bytes: [UInt8]

        /// Creates a digest from 32 bytes.
        public init(bytes: [UInt8]) {
            precondition(bytes.count == 32, "a SHA-256 digest is 32 bytes, not \(bytes.count)")
            self.bytes = bytes
        }

        /// Lower-case hexadecimal.
        public var description: String { bytes.map { ($0 < 16 ? "0" : "") + String($0, radix: 16) }.joined() }
    }

    /// What a sender proposes.
    public struct Offer: Hashable, Sendable {
        /// Identifies the object across attempts, so a resumed transfer finds its partial copy.
        public var transferID: [UInt8]
        /// The object's name, for the receiver's logs and default file name.
        public var name: String
        /// The object's size, or `nil` for a stream of unknown length.
        public var totalBytes: UInt64?
        /// The block size the sender proposes (``ChunkSizer``; its chunks are runs of blocks).
        public var blockSize: UInt32
        /// Whether the sender wants to continue a previous attempt from what the receiver holds.
        public var resume: Bool
        /// The object's number in the session: 0 opens the session, 1… follow on its control stream.
        public var object: UInt16
        /// How many objects the session carries (1…65535).
        public var objects: UInt16
        /// The object's share of the data streams relative to the session's other objects (1…255).
        public var weight: UInt8
        /// What the bytes are, for the receiver's ``TransferConsumerFactory`` (an encoding and its
        /// parameters); empty for plain bytes, which the transport writes itself. At most
        /// ``SessionMessage/maximumContentLength`` bytes.
        public var content: [UInt8]

        /// Creates an offer.
        public init(
            transferID: [UInt8],
            name: String,
            totalBytes: UInt64?,
            blockSize: UInt32,
            resume: Bool,
            object: UInt16 = 0,
            objects: UInt16 = 1,
            weight: UInt8 = 1,
            content: [UInt8] = []
        ) {
            precondition(transferID.count == 16, "a transfer id is 16 bytes, not \(transferID.count)")
            precondition(content.count <= SessionMessage.maximumContentLength, "offer content over the limit")
            self.transferID = transferID
            self.name = name
            self.totalBytes = totalBytes
            self.blockSize = blockSize
            self.resume = resume
            self.object = object
            self.objects = objects
            self.weight = weight
            self.content = content
        }
    }

    /// What a receiver grants for one object.
    public struct Accept: Hashable, Sendable {
        /// The object it answers.
        public var object: UInt16
        /// The session's identifier; every frame of the session carries it.
        public var sessionID: UInt64
        /// The secret data streams present in `attach`.
        public var token: Token
        /// The block size in force (the receiver's partial copy decides it when resuming).
        public var blockSize: UInt32
        /// How far past its first missing block the receiver accepts chunks (its reorder window), in blocks.
        public var windowBlocks: UInt32
        /// The blocks the receiver already holds (empty unless resuming).
        public var present: ChunkBitmap
        /// The receiver's consumer's answer to the offer's ``Offer/content`` (empty for plain bytes).
        public var reply: [UInt8]

        /// Creates an accept.
        public init(
            object: UInt16 = 0,
            sessionID: UInt64,
            token: Token,
            blockSize: UInt32,
            windowBlocks: UInt32,
            present: ChunkBitmap,
            reply: [UInt8] = []
        ) {
            precondition(reply.count <= SessionMessage.maximumContentLength, "accept reply over the limit")
            self.object = object
            self.sessionID = sessionID
            self.token = token
            self.blockSize = blockSize
            self.windowBlocks = windowBlocks
            self.present = present
            self.reply = reply
        }
    }

    /// Checks a session's offers as a whole (sans-IO): objects 0…n-1 in order, every offer declaring
    /// the same count n, and a stream destination (standard output, a descriptor) taking one object only.
    /// - Throws: ``TransportError/Code/protocolViolation`` for numbering; ``TransportError/Code/invalidArgument``
    ///   for several objects to a stream.
    public static func checkSession(_ offers: [Offer], streamDestination: Bool) throws(TransportError) {
        guard let count = offers.first.map({ Int($0.objects) }), offers.count == count,
            offers.enumerated().allSatisfy({ Int($1.object) == $0 && Int($1.objects) == count })
        else {
            throw TransportError(
                .protocolViolation, expected: "objects 0…n-1 offered in order, each declaring n",
                found: "\(offers.map { "\($0.object)/\($0.objects)" })")
        }
        if streamDestination, count > 1 {
            throw TransportError(
                .invalidArgument, expected: "one object for a stream destination", found: "\(count) objects",
                advice: "give the receiver --out DIR")
        }
    }

    private enum Kind: UInt8 {
        case offer = 1, accept, refuse, attach, finish, complete, failed, query, answer
    }

    /// The longest string a message carries, in UTF-8 bytes.
    public static let maximumStringLength = 4096
    /// The most bytes an offer's content or an accept's reply carries (8 MiB; a control frame holds 16).
    public static let maximumContentLength = 8 << 20

    /// Appends the message's wire form to `buffer`.
    public func encode(into buffer: inout ByteBuffer) {
        switch self {
        case .offer(let offer):
            buffer.writeInteger(Kind.offer.rawValue)
            buffer.writeBytes(offer.transferID)
            buffer.writeString16(offer.name)
            buffer.writeInteger(offer.totalBytes ?? .max)
            buffer.writeInteger(offer.blockSize)
            buffer.writeInteger(UInt8(offer.resume ? 1 : 0))
            buffer.writeInteger(offer.object)
            buffer.writeInteger(offer.objects)
            buffer.writeInteger(offer.weight)
            buffer.writeInteger(UInt32(offer.content.count))
            buffer.writeBytes(offer.content)
        case .accept(let accept):
            buffer.writeInteger(Kind.accept.rawValue)
            buffer.writeInteger(accept.object)
            buffer.writeInteger(accept.sessionID)
            buffer.writeBytes(accept.token.bytes)
            buffer.writeInteger(accept.blockSize)
            buffer.writeInteger(accept.windowBlocks)
            accept.present.encode(into: &buffer)
            buffer.writeInteger(UInt32(accept.reply.count))
            buffer.writeBytes(accept.reply)
        case .refuse(let reason):
            buffer.writeInteger(Kind.refuse.rawValue)
            buffer.writeString16(reason)
        case .attach(let sessionID, let token, let stream):
            buffer.writeInteger(Kind.attach.rawValue)
            buffer.writeInteger(sessionID)
            buffer.writeBytes(token.bytes)
            buffer.writeInteger(stream)
        case .finish(let object, let totalBlocks, let totalBytes, let sha256):
            buffer.writeInteger(Kind.finish.rawValue)
            buffer.writeInteger(object)
            buffer.writeInteger(totalBlocks)
            buffer.writeInteger(totalBytes)
            buffer.writeBytes(sha256.bytes)
        case .complete(let object, let sha256):
            buffer.writeInteger(Kind.complete.rawValue)
            buffer.writeInteger(object)
            buffer.writeBytes(sha256.bytes)
        case .failed(let reason):
            buffer.writeInteger(Kind.failed.rawValue)
            buffer.writeString16(reason)
        case .query(let object, let content), .answer(let object, let content):
            if case .query = self {
                buffer.writeInteger(Kind.query.rawValue)
            } else {
                buffer.writeInteger(Kind.answer.rawValue)
            }
            buffer.writeInteger(object)
            buffer.writeInteger(UInt32(content.count))
            buffer.writeBytes(content)
        }
    }

    /// The message as a fresh buffer.
    public var encoded: ByteBuffer {
        var buffer = ByteBuffer()
        encode(into: &buffer)
        return buffer
    }

    /// Parses a control frame's payload.
    /// - Throws: ``TransportError/Code/malformedMessage`` for an unknown kind, a truncated field, an
    ///   overlong string, invalid UTF-8 or trailing bytes.
    public init(decoding payload: ByteBuffer) throws(TransportError) {
        var buffer = payload
        let kindByte = try buffer.readField(UInt8.self, "message kind")
        guard let kind = Kind(rawValue: kindByte) else {
            throw TransportError(
                .malformedMessage,
                expected: "a session message kind 1...9",
                found: "\(kindByte)",
                advice: "the peer speaks another version of the session protocol"
            )
        }
        switch kind {
        case .offer:
            let transferID = try buffer.readFixedBytes(16, "offer transfer id")
            let name = try buffer.readString16("offer name")
            let totalBytes = try buffer.readField(UInt64.self, "offer size")
            let blockSize = try buffer.readField(UInt32.self, "offer block size")
            let resume = try buffer.readField(UInt8.self, "offer resume flag")
            let object = try buffer.readField(UInt16.self, "offer object number")
            let objects = try buffer.readField(UInt16.self, "offer object count")
            let weight = try buffer.readField(UInt8.self, "offer weight")
            let content = try buffer.readContent("offer content")
            guard objects >= 1, object < objects, weight >= 1 else {
                throw TransportError(
                    .malformedMessage,
                    expected: "an object number below the object count and a weight of at least 1",
                    found: "object \(object) of \(objects), weight \(weight)"
                )
            }
            self = .offer(
                Offer(
                    transferID: transferID,
                    name: name,
                    totalBytes: totalBytes == .max ? nil : totalBytes,
                    blockSize: blockSize,
                    resume: resume != 0,
                    object: object,
                    objects: objects,
                    weight: weight,
                    content: content
                )
            )
        case .accept:
            let object = try buffer.readField(UInt16.self, "accept object number")
            let sessionID = try buffer.readField(UInt64.self, "accept session id")
            let token = Token(bytes: try buffer.readFixedBytes(16, "accept token"))
            let blockSize = try buffer.readField(UInt32.self, "accept block size")
            let windowBlocks = try buffer.readField(UInt32.self, "accept window")
            let present = try ChunkBitmap(decoding: &buffer)
            let reply = try buffer.readContent("accept reply")
            self = .accept(
                Accept(
                    object: object,
                    sessionID: sessionID,
                    token: token,
                    blockSize: blockSize,
                    windowBlocks: windowBlocks,
                    present: present,
                    reply: reply
                )
            )
        case .refuse:
            self = .refuse(reason: try buffer.readString16("refusal reason"))
        case .attach:
            let sessionID = try buffer.readField(UInt64.self, "attach session id")
            let token = Token(bytes: try buffer.readFixedBytes(16, "attach token"))
            self = .attach(
                sessionID: sessionID, token: token, stream: try buffer.readField(UInt16.self, "attach stream"))
        case .finish:
            let object = try buffer.readField(UInt16.self, "finish object number")
            let totalBlocks = try buffer.readField(UInt64.self, "finish block count")
            let totalBytes = try buffer.readField(UInt64.self, "finish byte count")
            let digest = Digest(bytes: try buffer.readFixedBytes(32, "finish SHA-256"))
            self = .finish(object: object, totalBlocks: totalBlocks, totalBytes: totalBytes, sha256: digest)
        case .complete:
            let object = try buffer.readField(UInt16.self, "complete object number")
            self = .complete(object: object, sha256: Digest(bytes: try buffer.readFixedBytes(32, "complete SHA-256")))
        case .failed:
            self = .failed(reason: try buffer.readString16("failure reason"))
        case .query:
            let object = try buffer.readField(UInt16.self, "query object number")
            self = .query(object: object, content: try buffer.readContent("query content"))
        case .answer:
            let object = try buffer.readField(UInt16.self, "answer object number")
            self = .answer(object: object, content: try buffer.readContent("answer content"))
        }
        guard buffer.readableBytes == 0 else {
            throw TransportError(
                .malformedMessage,
                expected: "the end of the \(kind) message",
                found: "\(buffer.readableBytes) more bytes"
            )
        }
    }
}

extension ByteBuffer {
    fileprivate mutating func writeString16(_ string: String) {
        var utf8 = Substring(string)
        while utf8.utf8.count > SessionMessage.maximumStringLength {
            utf8.removeLast()
        }
        writeInteger(UInt16(utf8.utf8.count))
        writeString(String(utf8))
    }

    fileprivate mutating func readField<Value: FixedWidthInteger>(
        _ type: Value.Type,
        _ name: String
    ) throws(TransportError) -> Value {
        guard let value = readInteger(as: Value.self) else {
            throw TransportError(
                .malformedMessage,
                expected: "\(MemoryLayout<Value>.size) bytes for the \(name)",
                found: "\(readableBytes) bytes"
            )
        }
        return value
    }

    fileprivate mutating func readFixedBytes(_ count: Int, _ name: String) throws(TransportError) -> [UInt8] {
        guard let bytes = readBytes(length: count) else {
            throw TransportError(
                .malformedMessage,
                expected: "\(count) bytes for the \(name)",
                found: "\(readableBytes) bytes"
            )
        }
        return bytes
    }

    /// A length field of type `Length`, refused above `limit` before anything is read or allocated.
    fileprivate mutating func readLength<Length: FixedWidthInteger>(
        _ type: Length.Type, limit: Int, _ name: String
    ) throws(TransportError) -> Int {
        let length = Int(try readField(Length.self, "\(name) length"))
        guard length <= limit else {
            throw TransportError(
                .malformedMessage, expected: "at most \(limit) bytes for the \(name)", found: "\(length)")
        }
        return length
    }

    fileprivate mutating func readContent(_ name: String) throws(TransportError) -> [UInt8] {
        try readFixedBytes(readLength(UInt32.self, limit: SessionMessage.maximumContentLength, name), name)
    }

    fileprivate mutating func readString16(_ name: String) throws(TransportError) -> String {
        let length = try readLength(UInt16.self, limit: SessionMessage.maximumStringLength, name)
        let bytes = try readFixedBytes(length, name)
        guard let string = String(validating: bytes, as: UTF8.self) else {
            throw TransportError(.malformedMessage, expected: "UTF-8 for the \(name)", found: "invalid UTF-8")
        }
        return string
    }
}
