import NIOCore

/// One line from a line-oriented stream (QMP, the serial console).
enum DecodedLine: Sendable, Equatable {
    /// A line without its `\n` (and without a `\r` before it).
    case line(ByteBuffer)
    /// A line longer than the limit, skipped; the associated value is how many bytes it had.
    case overlong(Int)
}

/// Splits a byte stream into lines of at most `maximumLength` bytes. A longer line is skipped and
/// reported as ``DecodedLine/overlong(_:)`` instead of failing the channel, so one bad line does not
/// end a QMP connection.
struct LineDecoder: NIOSingleStepByteToMessageDecoder {
    typealias InboundOut = DecodedLine

    let maximumLength: Int
    /// Bytes of an overlong line discarded so far, while looking for its end.
    private var discarding: Int?
    /// Readable bytes already searched for a newline, so each byte is searched once.
    private var searched = 0

    init(maximumLength: Int) {
        self.maximumLength = maximumLength
    }

    mutating func decode(buffer: inout ByteBuffer) throws -> DecodedLine? {
        let view = buffer.readableBytesView
        let newline = view[(view.startIndex + min(searched, view.count))...].firstIndex(of: UInt8(ascii: "\n"))
        searched = newline == nil ? view.count : 0
        if let skipped = discarding {
            guard let newline else {
                discarding = skipped + buffer.readableBytes
                buffer.moveReaderIndex(forwardBy: buffer.readableBytes)
                searched = 0
                return nil
            }
            let rest = newline - buffer.readerIndex
            buffer.moveReaderIndex(forwardBy: rest + 1)
            discarding = nil
            return .overlong(skipped + rest)
        }
        guard let newline else {
            if buffer.readableBytes > maximumLength {
                discarding = buffer.readableBytes
                buffer.moveReaderIndex(forwardBy: buffer.readableBytes)
                searched = 0
            }
            return nil
        }
        let length = newline - buffer.readerIndex
        guard length <= maximumLength else {
            buffer.moveReaderIndex(forwardBy: length + 1)
            return .overlong(length)
        }
        var line = buffer.readSlice(length: length)!
        buffer.moveReaderIndex(forwardBy: 1)
        if line.readableBytesView.last == UInt8(ascii: "\r") {
            line = line.getSlice(at: line.readerIndex, length: line.readableBytes - 1)!
        }
        return .line(line)
    }

    mutating func decodeLast(buffer: inout ByteBuffer, seenEOF: Bool) throws -> DecodedLine? {
        if let line = try decode(buffer: &buffer) {
            return line
        }
        if let skipped = discarding {
            discarding = nil
            return .overlong(skipped)
        }
        guard buffer.readableBytes > 0 else { return nil }
        // A last line without a newline (a console cut off mid-line) is still a line.
        return .line(buffer.readSlice(length: buffer.readableBytes)!)
    }
}

/// Forwards decoded lines into an `AsyncStream`, which finishes when the channel closes.
final class LineForwarder: ChannelInboundHandler {
    typealias InboundIn = DecodedLine

    private let continuation: AsyncStream<DecodedLine>.Continuation

    init(_ continuation: AsyncStream<DecodedLine>.Continuation) {
        self.continuation = continuation
    }

    func channelRead(context: ChannelHandlerContext, data: NIOAny) {
        continuation.yield(unwrapInboundIn(data))
    }

    func channelInactive(context: ChannelHandlerContext) {
        continuation.finish()
        context.fireChannelInactive()
    }

    func errorCaught(context: ChannelHandlerContext, error: any Error) {
        continuation.finish()
        context.close(promise: nil)
    }

    func handlerRemoved(context: ChannelHandlerContext) {
        continuation.finish()
    }
}
