import NIOCore

/// The limits a decoder enforces.
public struct DWCPFrameLimits: Hashable, Sendable {
    /// The longest payload accepted, at most ``DWCPFrame/hardMaximumPayloadLength``.
    public var maximumPayloadLength: Int
    /// The protocol versions accepted in frame headers.
    public var acceptedVersions: ClosedRange<UInt8>

    /// Creates limits.
    /// - Parameters:
    ///   - maximumPayloadLength: The longest payload accepted; clamped to the hard limit.
    ///   - acceptedVersions: The versions accepted in frame headers.
    public init(
        maximumPayloadLength: Int = DWCPFrame.hardMaximumPayloadLength,
        acceptedVersions: ClosedRange<UInt8> = DWCPFrame.supportedVersions
    ) {
        self.maximumPayloadLength = max(0, min(maximumPayloadLength, DWCPFrame.hardMaximumPayloadLength))
        self.acceptedVersions = acceptedVersions
    }
}

extension ByteBuffer {
    /// Appends `frame` in wire format.
    /// - Parameter frame: The frame to encode.
    /// - Returns: The number of bytes written.
    /// - Throws: ``DWCPWireError/Code/payloadTooLarge`` if the payload exceeds the hard limit, and
    ///   ``DWCPWireError/Code/reservedFlagsSet`` if flags outside ``DWCPFrame/Flags/defined`` are set.
    @discardableResult
    public mutating func writeDWCPFrame(_ frame: DWCPFrame) throws(DWCPWireError) -> Int {
        let start = writerIndex
        reserveCapacity(minimumWritableBytes: DWCPFrame.headerLength + frame.payload.readableBytes)
        try writeDWCPFrameHeader(frame)
        writeImmutableBuffer(frame.payload)
        return writerIndex - start
    }

    /// Appends only the 40-byte header of `frame`; its payload must follow it on the wire.
    ///
    /// Lets a writer send a large payload without copying it behind the header.
    /// - Throws: As ``writeDWCPFrame(_:)``.
    public mutating func writeDWCPFrameHeader(_ frame: DWCPFrame) throws(DWCPWireError) {
        let payloadLength = frame.payload.readableBytes
        guard payloadLength <= DWCPFrame.hardMaximumPayloadLength else {
            throw DWCPWireError(
                .payloadTooLarge,
                expected: "a payload of at most \(DWCPFrame.hardMaximumPayloadLength) bytes",
                found: "\(payloadLength) bytes",
                advice: "split the data into several frames"
            )
        }
        guard frame.flags.isSubset(of: .defined) else {
            throw DWCPWireError(
                .reservedFlagsSet,
                expected: "flags within 0x\(String(DWCPFrame.Flags.defined.rawValue, radix: 16))",
                found: "0x\(String(frame.flags.rawValue, radix: 16))"
            )
        }
        let start = writerIndex
        writeInteger(DWCPFrame.magic)
        writeInteger(frame.version)
        writeInteger(frame.type.rawValue)
        writeInteger(frame.flags.rawValue)
        writeInteger(frame.sessionID)
        writeInteger(frame.sequence)
        writeInteger(UInt32(payloadLength))
        writeInteger(Checksum.xxh3(frame.payload))
        writeInteger(Checksum.header(self, at: start))
    }

    /// Reads one frame if a whole one is readable.
    ///
    /// Follows `ByteBuffer`'s conventions: returns `nil` and leaves the reader index alone when more
    /// bytes are needed; throws on malformed input. Malformed input is recognised as early as the
    /// bytes allow — a wrong magic after one byte, an oversize length as soon as the header is in —
    /// so a decoder never waits for bytes that cannot make a valid frame.
    /// - Parameter limits: The payload size and versions to accept.
    /// - Returns: The frame, or `nil` if more bytes are needed.
    /// - Throws: ``DWCPWireError`` with code `badMagic`, `unsupportedVersion`, `headerChecksumMismatch`,
    ///   `unknownFrameType`, `reservedFlagsSet`, `payloadTooLarge` or `payloadChecksumMismatch`.
    public mutating func readDWCPFrame(
        limits: DWCPFrameLimits = DWCPFrameLimits()
    ) throws(DWCPWireError) -> DWCPFrame? {
        let start = readerIndex
        try checkMagic(at: start)
        guard let version = getInteger(at: start + 4, as: UInt8.self) else { return nil }
        guard limits.acceptedVersions.contains(version) else {
            throw DWCPWireError(
                .unsupportedVersion,
                expected: "version \(limits.acceptedVersions.describedAsVersions)",
                found: "version \(version)",
                advice: "upgrade the older peer; versions are negotiated in the hello exchange"
            )
        }
        guard readableBytes >= DWCPFrame.headerLength else { return nil }

        let storedHeaderChecksum = getInteger(at: start + DWCPFrame.headerChecksumOffset, as: UInt32.self)!
        let headerChecksum = Checksum.header(self, at: start)
        guard storedHeaderChecksum == headerChecksum else {
            throw DWCPWireError(
                .headerChecksumMismatch,
                expected: "header checksum \(headerChecksum.hex)",
                found: "\(storedHeaderChecksum.hex)",
                advice: "the frame header was corrupted in transit or by the sender"
            )
        }
        let typeByte = getInteger(at: start + 5, as: UInt8.self)!
        guard let type = DWCPFrame.FrameType(rawValue: typeByte) else {
            throw DWCPWireError(
                .unknownFrameType,
                expected: "a frame type in 1...\(DWCPFrame.FrameType.allCases.count)",
                found: "type \(typeByte)"
            )
        }
        let flags = DWCPFrame.Flags(rawValue: getInteger(at: start + 6, as: UInt16.self)!)
        guard flags.isSubset(of: .defined) else {
            throw DWCPWireError(
                .reservedFlagsSet,
                expected: "flags within 0x\(String(DWCPFrame.Flags.defined.rawValue, radix: 16))",
                found: "0x\(String(flags.rawValue, radix: 16))"
            )
        }
        let sessionID = getInteger(at: start + 8, as: UInt64.self)!
        let sequence = getInteger(at: start + 16, as: UInt64.self)!
        let payloadLength = Int(getInteger(at: start + 24, as: UInt32.self)!)
        guard payloadLength <= limits.maximumPayloadLength else {
            throw DWCPWireError(
                .payloadTooLarge,
                expected: "a payload of at most \(limits.maximumPayloadLength) bytes",
                found: "a header announcing \(payloadLength) bytes"
            )
        }
        guard readableBytes >= DWCPFrame.headerLength + payloadLength else { return nil }

        let storedPayloadChecksum = getInteger(at: start + 28, as: UInt64.self)!
        let payloadChecksum = Checksum.xxh3(self, at: start + DWCPFrame.headerLength, length: payloadLength)
        guard storedPayloadChecksum == payloadChecksum else {
            throw DWCPWireError(
                .payloadChecksumMismatch,
                expected: "payload checksum \(payloadChecksum.hex)",
                found: "\(storedPayloadChecksum.hex) for \(type) frame \(sequence) of session \(sessionID.hex)",
                advice: "the payload was corrupted; the frame must be sent again"
            )
        }
        moveReaderIndex(forwardBy: DWCPFrame.headerLength)
        let payload = readSlice(length: payloadLength)!
        return DWCPFrame(
            version: version,
            type: type,
            flags: flags,
            sessionID: sessionID,
            sequence: sequence,
            payload: payload
        )
    }

    /// Throws unless the readable bytes (as many as there are, up to four) match the magic.
    private func checkMagic(at start: Int) throws(DWCPWireError) {
        let available = Swift.min(readableBytes, 4)
        for offset in 0..<available {
            let expectedByte = UInt8(truncatingIfNeeded: DWCPFrame.magic >> (24 - 8 * offset))
            if getInteger(at: start + offset, as: UInt8.self)! != expectedByte {
                let found = getBytes(at: start, length: available)!
                throw DWCPWireError(
                    .badMagic,
                    expected: "the bytes 44 57 43 50 (\"DWCP\")",
                    found: found.hexDump,
                    advice: "the peer does not speak DWCP, or the stream lost its framing"
                )
            }
        }
    }
}

extension ClosedRange<UInt8> {
    var describedAsVersions: String {
        lowerBound == upperBound ? "\(lowerBound)" : "\(lowerBound)...\(upperBound)"
    }
}

extension FixedWidthInteger {
    var hex: String {
        let digits = String(self, radix: 16)
        return "0x" + String(repeating: "0", count: Swift.max(0, bitWidth / 4 - digits.count)) + digits
    }
}

extension [UInt8] {
    var hexDump: String {
        map { byte in
            let digits = String(byte, radix: 16)
            return digits.count == 1 ? "0" + digits : digits
        }.joined(separator: " ")
    }
}
