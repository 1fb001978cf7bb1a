import NIOCore

/// Cuts a byte stream into ``DWCPFrame``s for a NIO pipeline.
///
/// Use it as `ByteToMessageHandler(DWCPFrameDecoder())`. Malformed input fails the channel with a
/// ``DWCPWireError``; bytes left over when the stream ends raise ``DWCPWireError/Code/truncatedFrame``.
public struct DWCPFrameDecoder: NIOSingleStepByteToMessageDecoder {
    /// The decoder's output.
    public typealias InboundOut = DWCPFrame

    /// The limits enforced on every frame.
    public var limits: DWCPFrameLimits

    /// Creates a decoder.
    /// - Parameter limits: The payload size and versions to accept.
    public init(limits: DWCPFrameLimits = DWCPFrameLimits()) {
        self.limits = limits
    }

    /// Decodes one frame, or returns `nil` when more bytes are needed.
    /// - Throws: ``DWCPWireError`` on malformed input.
    public mutating func decode(buffer: inout ByteBuffer) throws -> DWCPFrame? {
        try buffer.readDWCPFrame(limits: limits)
    }

    /// Decodes what is left when the stream ends.
    /// - Throws: ``DWCPWireError/Code/truncatedFrame`` if the stream ended inside a frame.
    public mutating func decodeLast(buffer: inout ByteBuffer, seenEOF: Bool) throws -> DWCPFrame? {
        if let frame = try decode(buffer: &buffer) {
            return frame
        }
        guard buffer.readableBytes == 0 else {
            throw DWCPWireError(
                .truncatedFrame,
                expected: "a complete frame or nothing",
                found: "\(buffer.readableBytes) bytes of an incomplete frame at the end of the stream",
                advice: "the peer closed the connection in the middle of a frame"
            )
        }
        return nil
    }
}

/// Writes ``DWCPFrame``s for a NIO pipeline. Use it as `MessageToByteHandler(DWCPFrameEncoder())`.
public struct DWCPFrameEncoder: MessageToByteEncoder, Sendable {
    /// The encoder's input.
    public typealias OutboundIn = DWCPFrame

    /// Creates an encoder.
    public init() {}

    /// Encodes `data` into `out`.
    /// - Throws: ``DWCPWireError`` if the frame cannot be encoded (see ``NIOCore/ByteBuffer/writeDWCPFrame(_:)``).
    public func encode(data: DWCPFrame, out: inout ByteBuffer) throws {
        try out.writeDWCPFrame(data)
    }
}

/// Writes ``DWCPFrame``s for a NIO pipeline without copying payloads: the header goes out as its own
/// 40-byte buffer, followed by the payload buffer itself. Prefer it to ``DWCPFrameEncoder`` for bulk
/// data, where the copy would double the memory held in flight.
public final class DWCPFrameWriter: ChannelOutboundHandler, RemovableChannelHandler {
    /// The handler's input.
    public typealias OutboundIn = DWCPFrame
    /// The handler's output.
    public typealias OutboundOut = ByteBuffer

    /// Creates a writer.
    public init() {}

    /// Writes the frame's header and payload.
    public func write(context: ChannelHandlerContext, data: NIOAny, promise: EventLoopPromise<Void>?) {
        let frame = unwrapOutboundIn(data)
        var header = context.channel.allocator.buffer(capacity: DWCPFrame.headerLength)
        do {
            try header.writeDWCPFrameHeader(frame)
        } catch {
            promise?.fail(error)
            return
        }
        if frame.payload.readableBytes == 0 {
            context.write(wrapOutboundOut(header), promise: promise)
        } else {
            context.write(wrapOutboundOut(header), promise: nil)
            context.write(wrapOutboundOut(frame.payload), promise: promise)
        }
    }
}
