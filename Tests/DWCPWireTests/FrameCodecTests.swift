import NIOCore
import Testing

@testable import DWCPWire

/// Encodes `frame` into a fresh buffer.
func encoded(_ frame: DWCPFrame) throws -> ByteBuffer {
    var buffer = ByteBuffer()
    try buffer.writeDWCPFrame(frame)
    return buffer
}

/// A frame of `type` with `length` payload bytes of a recognisable pattern.
func sampleFrame(_ type: DWCPFrame.FrameType, payloadLength: Int, flags: DWCPFrame.Flags = []) -> DWCPFrame {
    var payload = ByteBuffer()
    payload.writeBytes((0..<payloadLength).map { UInt8(truncatingIfNeeded: $0 &* 31 &+ 7) })
    return DWCPFrame(type: type, flags: flags, sessionID: 0xDEAD_BEEF_0000_0001, sequence: 42, payload: payload)
}

/// Recomputes the header checksum after a test edits header bytes, so the edit reaches later checks.
func resealHeader(_ buffer: inout ByteBuffer) {
    let start = buffer.readerIndex
    buffer.setInteger(Checksum.header(buffer, at: start), at: start + DWCPFrame.headerChecksumOffset)
}

func expectWireError(
    _ code: DWCPWireError.Code,
    sourceLocation: SourceLocation = #_sourceLocation,
    _ body: () throws -> Void
) {
    do {
        try body()
        Issue.record("expected a \(code) error, but nothing was thrown", sourceLocation: sourceLocation)
    } catch let error as DWCPWireError {
        #expect(error.code == code, "\(error)", sourceLocation: sourceLocation)
    } catch {
        Issue.record("expected a DWCPWireError, got \(error)", sourceLocation: sourceLocation)
    }
}

@Suite("Frame codec")
struct FrameCodecTests {
    @Test(
        "Every frame type round-trips",
        arguments: DWCPFrame.FrameType.allCases, [0, 1, 4096, 70_000]
    )
    func roundTrip(type: DWCPFrame.FrameType, payloadLength: Int) throws {
        let frame = sampleFrame(type, payloadLength: payloadLength, flags: payloadLength == 1 ? .endOfStream : [])
        var buffer = try encoded(frame)
        #expect(buffer.readableBytes == DWCPFrame.headerLength + payloadLength)
        #expect(buffer.readableBytes == frame.encodedLength)
        let decoded = try buffer.readDWCPFrame()
        #expect(decoded == frame)
        #expect(buffer.readableBytes == 0)
    }

    @Test("The header layout is the documented one")
    func headerLayout() throws {
        let frame = DWCPFrame(type: .chunk, flags: .endOfStream, sessionID: 0x0102_0304_0506_0708, sequence: 9)
        let bytes = try encoded(frame).readableBytesView.map { $0 }
        #expect(Array(bytes[0..<4]) == Array("DWCP".utf8))
        #expect(bytes[4] == 1)  // version
        #expect(bytes[5] == DWCPFrame.FrameType.chunk.rawValue)
        #expect(Array(bytes[6..<8]) == [0, 1])  // flags, big-endian
        #expect(Array(bytes[8..<16]) == [1, 2, 3, 4, 5, 6, 7, 8])
        #expect(Array(bytes[16..<24]) == [0, 0, 0, 0, 0, 0, 0, 9])
        #expect(Array(bytes[24..<28]) == [0, 0, 0, 0])  // payload length
    }

    @Test("Several frames back to back decode in order")
    func backToBack() throws {
        var buffer = ByteBuffer()
        let frames = DWCPFrame.FrameType.allCases.enumerated().map { index, type in
            sampleFrame(type, payloadLength: index * 100)
        }
        for frame in frames {
            try buffer.writeDWCPFrame(frame)
        }
        var decoded: [DWCPFrame] = []
        while let frame = try buffer.readDWCPFrame() {
            decoded.append(frame)
        }
        #expect(decoded == frames)
    }

    @Test("A frame cut at every byte offset asks for more bytes and leaves the buffer alone")
    func truncatedAtEveryOffset() throws {
        let whole = try encoded(sampleFrame(.chunk, payloadLength: 300))
        for length in 0..<whole.readableBytes {
            var prefix = whole.getSlice(at: 0, length: length)!
            let frame = try prefix.readDWCPFrame()
            #expect(frame == nil, "a \(length)-byte prefix decoded to a frame")
            #expect(prefix.readerIndex == 0 && prefix.readableBytes == length)
        }
    }

    @Test("Bad magic is recognised from the first wrong byte", arguments: 0..<4)
    func badMagic(position: Int) throws {
        var buffer = try encoded(sampleFrame(.ping, payloadLength: 8))
        buffer.setInteger(buffer.getInteger(at: position, as: UInt8.self)! ^ 0x20, at: position)
        var prefix = buffer.getSlice(at: 0, length: position + 1)!
        expectWireError(.badMagic) { _ = try prefix.readDWCPFrame() }
        #expect(prefix.readerIndex == 0)
        expectWireError(.badMagic) { _ = try buffer.readDWCPFrame() }
    }

    @Test("An unknown version is refused as soon as its byte arrives", arguments: [UInt8(0), 2, 255])
    func unknownVersion(version: UInt8) throws {
        var buffer = try encoded(sampleFrame(.chunk, payloadLength: 8))
        buffer.setInteger(version, at: 4)
        var prefix = buffer.getSlice(at: 0, length: 5)!
        expectWireError(.unsupportedVersion) { _ = try prefix.readDWCPFrame() }
        expectWireError(.unsupportedVersion) { _ = try buffer.readDWCPFrame() }
    }

    @Test("A decoder configured for other versions refuses version 1")
    func acceptedVersionsAreConfigurable() throws {
        var buffer = try encoded(sampleFrame(.chunk, payloadLength: 8))
        expectWireError(.unsupportedVersion) {
            _ = try buffer.readDWCPFrame(limits: DWCPFrameLimits(acceptedVersions: 2...3))
        }
    }

    @Test("A corrupted header byte is caught by the header checksum", arguments: Array(6..<40))
    func corruptedHeader(offset: Int) throws {
        var buffer = try encoded(sampleFrame(.chunk, payloadLength: 64))
        buffer.setInteger(buffer.getInteger(at: offset, as: UInt8.self)! ^ 0x01, at: offset)
        expectWireError(.headerChecksumMismatch) { _ = try buffer.readDWCPFrame() }
        #expect(buffer.readerIndex == 0)
    }

    @Test("A corrupted length is caught before its payload arrives")
    func corruptedLengthDoesNotStall() throws {
        var buffer = try encoded(sampleFrame(.chunk, payloadLength: 64))
        buffer.setInteger(UInt32(1_000), at: 24)
        var header = buffer.getSlice(at: 0, length: DWCPFrame.headerLength)!
        expectWireError(.headerChecksumMismatch) { _ = try header.readDWCPFrame() }
    }

    @Test("A corrupted payload byte is caught by the payload checksum")
    func corruptedPayload() throws {
        var buffer = try encoded(sampleFrame(.chunk, payloadLength: 64))
        let offset = DWCPFrame.headerLength + 17
        buffer.setInteger(buffer.getInteger(at: offset, as: UInt8.self)! ^ 0x80, at: offset)
        expectWireError(.payloadChecksumMismatch) { _ = try buffer.readDWCPFrame() }
        #expect(buffer.readerIndex == 0)
    }

    @Test("A corrupted payload checksum (header resealed) is caught")
    func corruptedPayloadChecksum() throws {
        var buffer = try encoded(sampleFrame(.chunk, payloadLength: 64))
        buffer.setInteger(buffer.getInteger(at: 28, as: UInt64.self)! ^ 1, at: 28)
        resealHeader(&buffer)
        expectWireError(.payloadChecksumMismatch) { _ = try buffer.readDWCPFrame() }
    }

    @Test("An oversize length is refused from the header alone")
    func oversizeLength() throws {
        var buffer = try encoded(sampleFrame(.chunk, payloadLength: 0))
        buffer.setInteger(UInt32(DWCPFrame.hardMaximumPayloadLength + 1), at: 24)
        resealHeader(&buffer)
        expectWireError(.payloadTooLarge) { _ = try buffer.readDWCPFrame() }
    }

    @Test("A configured payload limit is enforced, and clamped to the hard limit")
    func configuredLimit() throws {
        var buffer = try encoded(sampleFrame(.chunk, payloadLength: 1025))
        expectWireError(.payloadTooLarge) {
            _ = try buffer.readDWCPFrame(limits: DWCPFrameLimits(maximumPayloadLength: 1024))
        }
        #expect(try buffer.readDWCPFrame(limits: DWCPFrameLimits(maximumPayloadLength: 1025)) != nil)
        #expect(DWCPFrameLimits(maximumPayloadLength: .max).maximumPayloadLength == DWCPFrame.hardMaximumPayloadLength)
    }

    @Test("An unknown frame type is refused", arguments: [UInt8(0), 10, 200])
    func unknownType(type: UInt8) throws {
        var buffer = try encoded(sampleFrame(.chunk, payloadLength: 4))
        buffer.setInteger(type, at: 5)
        resealHeader(&buffer)
        expectWireError(.unknownFrameType) { _ = try buffer.readDWCPFrame() }
    }

    @Test("Reserved flag bits are refused by decoder and encoder")
    func reservedFlags() throws {
        var buffer = try encoded(sampleFrame(.chunk, payloadLength: 4))
        buffer.setInteger(UInt16(0x8001), at: 6)
        resealHeader(&buffer)
        expectWireError(.reservedFlagsSet) { _ = try buffer.readDWCPFrame() }

        let frame = DWCPFrame(type: .chunk, flags: DWCPFrame.Flags(rawValue: 0x0100), sessionID: 1, sequence: 1)
        expectWireError(.reservedFlagsSet) { _ = try encoded(frame) }
    }

    @Test("The encoder refuses a payload over the hard limit")
    func encoderRefusesOversizePayload() {
        let payload = ByteBuffer(repeating: 0, count: DWCPFrame.hardMaximumPayloadLength + 1)
        let frame = DWCPFrame(type: .chunk, sessionID: 1, sequence: 1, payload: payload)
        expectWireError(.payloadTooLarge) { _ = try encoded(frame) }
    }

    @Test("Errors say what was expected and what was found")
    func errorDescription() throws {
        var buffer = ByteBuffer(string: "GET / HTTP/1.1\r\n")
        do {
            _ = try buffer.readDWCPFrame()
            Issue.record("HTTP decoded as DWCP")
        } catch {
            #expect(error.code == .badMagic)
            #expect(error.description.contains("47 45 54 20"))
            #expect(error.description.contains("\"DWCP\""))
        }
    }
}
