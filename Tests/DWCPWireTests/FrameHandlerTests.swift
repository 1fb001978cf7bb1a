import NIOCore
import NIOEmbedded
import NIOTestUtils
import Testing

@testable import DWCPWire

@Suite("Frame decoder and encoder handlers")
struct FrameHandlerTests {
    @Test("ByteToMessageDecoderVerifier accepts the decoder")
    func verifier() throws {
        let pairs = try DWCPFrame.FrameType.allCases.enumerated().map { index, type in
            let frame = sampleFrame(type, payloadLength: index * 37)
            return (try encoded(frame), [frame])
        }
        try ByteToMessageDecoderVerifier.verifyDecoder(inputOutputPairs: pairs) {
            DWCPFrameDecoder()
        }
    }

    @Test("Frames fed one byte at a time come out whole")
    func byteByByte() throws {
        let channel = EmbeddedChannel(handler: ByteToMessageHandler(DWCPFrameDecoder()))
        let frames = [sampleFrame(.hello, payloadLength: 5), sampleFrame(.chunk, payloadLength: 1000)]
        var bytes = ByteBuffer()
        for frame in frames {
            try bytes.writeDWCPFrame(frame)
        }
        while let byte = bytes.readSlice(length: 1) {
            try channel.writeInbound(byte)
        }
        #expect(try channel.readInbound(as: DWCPFrame.self) == frames[0])
        #expect(try channel.readInbound(as: DWCPFrame.self) == frames[1])
        #expect(try channel.readInbound(as: DWCPFrame.self) == nil)
        #expect(try channel.finish().isClean)
    }

    @Test("Malformed input fails the channel with a typed error")
    func malformedInputFails() throws {
        let channel = EmbeddedChannel(handler: ByteToMessageHandler(DWCPFrameDecoder()))
        #expect(throws: DWCPWireError.self) {
            try channel.writeInbound(ByteBuffer(string: "SSH-2.0-OpenSSH_9.2"))
        }
        _ = try? channel.finish()
    }

    @Test("A stream that ends inside a frame reports a truncated frame")
    func endOfStreamInsideFrame() throws {
        let channel = EmbeddedChannel(handler: ByteToMessageHandler(DWCPFrameDecoder()))
        let whole = try encoded(sampleFrame(.chunk, payloadLength: 100))
        try channel.writeInbound(whole.getSlice(at: 0, length: 70)!)
        do {
            _ = try channel.finish()
            Issue.record("finishing inside a frame did not fail")
        } catch let error as DWCPWireError {
            #expect(error.code == .truncatedFrame)
        }
    }

    @Test("The encoder writes bytes the decoder reads back")
    func encoderRoundTrip() throws {
        let channel = EmbeddedChannel(handler: MessageToByteHandler(DWCPFrameEncoder()))
        let frame = sampleFrame(.control, payloadLength: 300, flags: .endOfStream)
        try channel.writeOutbound(frame)
        var written = try #require(try channel.readOutbound(as: ByteBuffer.self))
        #expect(try written.readDWCPFrame() == frame)
        #expect(try channel.finish().isClean)
    }

    @Test("The zero-copy writer sends the header, then the payload buffer itself", arguments: [0, 1, 70_000])
    func writerRoundTrip(payloadLength: Int) throws {
        let channel = EmbeddedChannel(handler: DWCPFrameWriter())
        let frame = sampleFrame(.chunk, payloadLength: payloadLength, flags: [])
        try channel.writeOutbound(frame)
        var wire = try #require(try channel.readOutbound(as: ByteBuffer.self))
        #expect(wire.readableBytes == DWCPFrame.headerLength)
        if payloadLength > 0 {
            var payload = try #require(try channel.readOutbound(as: ByteBuffer.self))
            #expect(payload == frame.payload)
            wire.writeBuffer(&payload)
        }
        #expect(try wire.readDWCPFrame() == frame)
        #expect(try channel.finish().isClean)
    }

    @Test("The writer fails the write of a frame with reserved flags and sends nothing")
    func writerRejectsReservedFlags() throws {
        let channel = EmbeddedChannel(handler: DWCPFrameWriter())
        var frame = sampleFrame(.chunk, payloadLength: 10, flags: [])
        frame.flags = DWCPFrame.Flags(rawValue: 0x8000)
        #expect(throws: DWCPWireError.self) { try channel.writeOutbound(frame) }
        #expect(try channel.readOutbound(as: ByteBuffer.self) == nil)
        #expect(try channel.finish().isClean)
    }
}
