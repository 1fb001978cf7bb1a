import NIOCore

/// Bytes a sender makes as the session asks for them instead of reading them from a file or a stream —
/// an encoder (HDE) turning a file into fewer bytes, shaped by what the receiver answered.
///
/// The transport sends the producer's ``offerContent`` with the offer, hands it the receiver's reply
/// before the first ``read(maximum:)``, and treats what it reads like a stream of unknown length: read
/// once, in order; it cannot resume. Calls come one at a time from a thread pool.
public protocol TransferProducer: AnyObject, Sendable {
    /// The object's name for the receiver.
    var name: String { get }
    /// What the bytes are, for the receiver's ``TransferConsumerFactory``: not empty, at most
    /// ``SessionMessage/maximumContentLength`` bytes.
    var offerContent: [UInt8] { get }
    /// The receiver accepted the object with this reply; called once, before the first read.
    /// - Returns: A question for the receiver's consumer (``TransferConsumer/answer(query:)``), at most
    ///   ``SessionMessage/maximumContentLength`` bytes, or nil. Its answer goes to ``answered(_:)``; the
    ///   producer decides whether its reads wait for it.
    func accepted(reply: [UInt8]) throws -> [UInt8]?
    /// The answer to the query ``accepted(reply:)`` returned.
    func answered(_ answer: [UInt8]) throws
    /// The object's next bytes: at least one and at most `maximum`, or nil at its end.
    func read(maximum: Int) throws -> ByteBuffer?
    /// The session ended (whatever the outcome): a producer waiting for an answer must stop waiting.
    func sessionEnded()
    /// Whether the sender should wait for more acknowledgements before it reads the object's next chunk.
    /// The receiver acknowledges a chunk once its consumer took it, so a producer whose bytes stand for many
    /// more (an HDE stream) can bound what waits to be decoded, which the session's window, in these bytes,
    /// does not. Asked between reads, never during one, and again after each acknowledgement; the sender
    /// only waits while some of what was read is unacknowledged. Default: never.
    /// - Parameter acknowledged: The object's bytes the receiver acknowledged so far.
    func holdsBack(acknowledged: UInt64) -> Bool
}

extension TransferProducer {
    /// Never holds the sender back: the session's window alone paces the reads.
    public func holdsBack(acknowledged: UInt64) -> Bool { false }
}

/// Makes the receiving side of objects whose offer carries content (``SessionMessage/Offer/content``).
public protocol TransferConsumerFactory: Sendable {
    /// Opens the consumer of one offered object; what it throws refuses the session (a
    /// ``TransportError`` says why; anything else is reported as a destination failure).
    /// - Parameters:
    ///   - offer: The offer, with its content.
    ///   - destination: The receiver's configured destination.
    ///   - overwrite: Whether an existing file may be replaced.
    func consumer(for offer: SessionMessage.Offer, destination: ReceiveDestination, overwrite: Bool) throws
        -> any TransferConsumer
}

/// The receiving side of one object whose bytes mean something to the application (an HDE stream):
/// it takes the bytes in order, and commits only after the transport verified their SHA-256.
///
/// Calls come one at a time, from the object's session.
public protocol TransferConsumer: AnyObject, Sendable {
    /// The answer the accept carries to the sender's producer.
    var reply: [UInt8] { get }
    /// Where the object will be, for the report (`nil` if not a file).
    var path: String? { get }
    /// Answers the sender's producer's query (see ``TransferProducer/accepted(reply:)``).
    func answer(query: [UInt8]) throws -> [UInt8]
    /// The object's next bytes, in order.
    func consume(_ bytes: ByteBuffer) throws
    /// Every byte arrived and matched the sender's SHA-256: check what was made, make it durable and
    /// put it in place. What it throws fails the object and the session.
    /// - Returns: The size of what the consumer made (the report's SHA-256 is the bytes', which both sides
    ///   compared).
    func commit() throws -> UInt64
    /// The object will not be committed: remove what was made.
    func discard()
}
