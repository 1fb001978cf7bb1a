import NIOCore

/// The body of every wire-format fuzz target: the libFuzzer executable (`make fuzz`) and the seeded
/// mutation test in `make test` both call ``exercise(_:)``.
@_spi(Fuzzing)
public enum WireFuzzing {
    /// Decodes `input` as a stream of frames and checks the decoder's promises, trapping on a broken one:
    /// a `nil` or a throw leaves the reader index alone; every decoded frame re-encodes to exactly the
    /// bytes it was decoded from; handshake payloads and the server handshake never crash.
    ///
    /// When the first byte is odd, the header and payload checksums of the first frame are recomputed
    /// before decoding, so the fuzzer reaches the checks that come after the checksums.
    /// - Parameter input: Arbitrary bytes.
    public static func exercise(_ input: UnsafeRawBufferPointer) {
        guard let mode = input.first else { return }
        var buffer = ByteBuffer(bytes: input.dropFirst())
        if mode & 1 == 1 {
            reseal(&buffer)
        }
        let original = buffer
        let limits = DWCPFrameLimits(maximumPayloadLength: 1 << 20)
        var handshake = HandshakeStateMachine.server(nodeName: "fuzz")
        var handshakeOpen = true
        while buffer.readableBytes > 0 {
            let before = buffer.readerIndex
            let frame: DWCPFrame?
            do {
                frame = try buffer.readDWCPFrame(limits: limits)
            } catch {
                precondition(buffer.readerIndex == before, "a throwing decode moved the reader index")
                return
            }
            guard let frame else {
                precondition(buffer.readerIndex == before, "a nil decode moved the reader index")
                return
            }
            var reencoded = ByteBuffer()
            do {
                try reencoded.writeDWCPFrame(frame)
            } catch {
                preconditionFailure("a decoded frame failed to re-encode: \(error)")
            }
            let consumed = original.getSlice(at: before, length: buffer.readerIndex - before)!
            precondition(reencoded == consumed, "a decoded frame re-encoded to different bytes")
            switch frame.type {
            case .hello: _ = try? HandshakeMessage.Hello(decoding: frame.payload)
            case .helloAccept: _ = try? HandshakeMessage.Accept(decoding: frame.payload)
            case .helloReject: _ = try? HandshakeMessage.Reject(decoding: frame.payload)
            default: break
            }
            if handshakeOpen {
                switch handshake.receive(frame) {
                case .sendAndEstablish, .sendAndFail, .fail: handshakeOpen = false
                case .send, .establish: preconditionFailure("a server handshake decides on the first frame")
                }
            }
        }
    }

    /// Recomputes the checksums of the frame at the reader index, as far as its bytes are present.
    static func reseal(_ buffer: inout ByteBuffer) {
        let start = buffer.readerIndex
        guard buffer.readableBytes >= DWCPFrame.headerLength else { return }
        let length = Int(buffer.getInteger(at: start + 24, as: UInt32.self)!)
        if buffer.readableBytes >= DWCPFrame.headerLength + length {
            let checksum = Checksum.xxh3(buffer, at: start + DWCPFrame.headerLength, length: length)
            buffer.setInteger(checksum, at: start + 28)
        }
        buffer.setInteger(Checksum.header(buffer, at: start), at: start + DWCPFrame.headerChecksumOffset)
    }
}
