import NIOCore

/// Faults a test or a benchmark injects into one connection (its outgoing bytes, or its lifetime), to
/// show that the transfer survives them. Never set in normal use.
public struct FaultInjection: Hashable, Sendable {
    /// Flip one byte at this offset of the stream's outgoing (pre-TLS) bytes: a corrupted chunk.
    public var corruptByteAt: Int?
    /// Close the connection once this many bytes have gone out: a data stream dying mid-transfer.
    public var closeAfterBytes: Int?

    /// Close the connection this long after it was set up: a link that breaks mid-transfer.
    public var closeAfter: Duration?

    /// Creates a fault set.
    public init(corruptByteAt: Int? = nil, closeAfterBytes: Int? = nil, closeAfter: Duration? = nil) {
        self.corruptByteAt = corruptByteAt
        self.closeAfterBytes = closeAfterBytes
        self.closeAfter = closeAfter
    }
}

/// Applies a ``FaultInjection`` to outgoing bytes (sits between the frame encoder and TLS).
final class FaultInjectingHandler: ChannelOutboundHandler {
    typealias OutboundIn = ByteBuffer
    typealias OutboundOut = ByteBuffer

    private let faults: FaultInjection
    private var written = 0
    private var isClosed = false

    init(_ faults: FaultInjection) {
        self.faults = faults
    }

    func handlerAdded(context: ChannelHandlerContext) {
        guard let delay = faults.closeAfter else { return }
        let (seconds, attoseconds) = delay.components
        let channel = context.channel
        context.eventLoop.scheduleTask(in: .nanoseconds(seconds * 1_000_000_000 + attoseconds / 1_000_000_000)) {
            channel.close(promise: nil)
        }
    }

    func write(context: ChannelHandlerContext, data: NIOAny, promise: EventLoopPromise<Void>?) {
        var buffer = unwrapOutboundIn(data)
        let range = written..<(written + buffer.readableBytes)
        written = range.upperBound
        guard !isClosed else {
            promise?.fail(ChannelError.ioOnClosedChannel)
            return
        }
        if let offset = faults.corruptByteAt, range.contains(offset) {
            let index = buffer.readerIndex + offset - range.lowerBound
            buffer.setInteger(buffer.getInteger(at: index, as: UInt8.self)! ^ 0xA5, at: index)
        }
        if let limit = faults.closeAfterBytes, range.upperBound >= limit {
            isClosed = true
            context.write(wrapOutboundOut(buffer.getSlice(at: buffer.readerIndex, length: limit - range.lowerBound)!))
                .whenComplete { _ in }
            context.flush()
            context.close(promise: nil)
            promise?.fail(ChannelError.ioOnClosedChannel)
            return
        }
        context.write(wrapOutboundOut(buffer), promise: promise)
    }
}
