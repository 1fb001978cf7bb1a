import NIOCore

/// The payloads of the three handshake frames.
///
/// Their layouts belong to ``DWCPFrame/baseVersion`` and never change; later versions may append
/// fields, which older decoders skip (trailing bytes after the fields below are ignored).
public enum HandshakeMessage {
    /// The longest node name a handshake carries, in UTF-8 bytes.
    public static let maximumNodeNameLength = 255
    /// The longest rejection reason a handshake carries, in UTF-8 bytes.
    public static let maximumReasonLength = 1024

    /// Opens a connection: which versions the sender speaks, and who it is.
    ///
    /// Layout: `minVersion u8, maxVersion u8, nameLength u8, name (UTF-8)`.
    public struct Hello: Hashable, Sendable {
        /// The versions the sender speaks.
        public var versions: ClosedRange<UInt8>
        /// The sender's node name, for logs and errors.
        public var nodeName: String

        /// Creates a hello.
        /// - Parameters:
        ///   - versions: The versions the sender speaks.
        ///   - nodeName: The sender's name; at most ``HandshakeMessage/maximumNodeNameLength`` UTF-8 bytes.
        public init(versions: ClosedRange<UInt8> = DWCPFrame.supportedVersions, nodeName: String) {
            self.versions = versions
            self.nodeName = nodeName
        }
    }

    /// Accepts a hello: the version both sides now use, and who accepted.
    ///
    /// Layout: `version u8, nameLength u8, name (UTF-8)`.
    public struct Accept: Hashable, Sendable {
        /// The negotiated version.
        public var version: UInt8
        /// The acceptor's node name.
        public var nodeName: String

        /// Creates an accept.
        /// - Parameters:
        ///   - version: The negotiated version.
        ///   - nodeName: The acceptor's name.
        public init(version: UInt8, nodeName: String) {
            self.version = version
            self.nodeName = nodeName
        }
    }

    /// Refuses a hello, saying why and which versions the refuser speaks.
    ///
    /// Layout: `minVersion u8, maxVersion u8, reasonLength u16, reason (UTF-8)`.
    public struct Reject: Hashable, Sendable {
        /// The versions the refusing side speaks.
        public var versions: ClosedRange<UInt8>
        /// Why the hello was refused.
        public var reason: String

        /// Creates a reject.
        /// - Parameters:
        ///   - versions: The versions the refusing side speaks.
        ///   - reason: Why; at most ``HandshakeMessage/maximumReasonLength`` UTF-8 bytes are kept.
        public init(versions: ClosedRange<UInt8> = DWCPFrame.supportedVersions, reason: String) {
            self.versions = versions
            self.reason = reason
        }
    }
}

// MARK: - Encoding

extension HandshakeMessage.Hello {
    /// Appends this message's wire form to `buffer`.
    public func encode(into buffer: inout ByteBuffer) {
        buffer.writeInteger(versions.lowerBound)
        buffer.writeInteger(versions.upperBound)
        buffer.writeShortString(nodeName, limit: HandshakeMessage.maximumNodeNameLength, lengthType: UInt8.self)
    }

    /// Parses a hello payload.
    /// - Throws: ``DWCPWireError/Code/malformedPayload`` if it does not parse.
    public init(decoding buffer: ByteBuffer) throws(DWCPWireError) {
        var buffer = buffer
        let minimum = try buffer.readField(UInt8.self, "hello minimum version")
        let maximum = try buffer.readField(UInt8.self, "hello maximum version")
        guard minimum <= maximum else {
            throw DWCPWireError(
                .malformedPayload,
                expected: "hello minimum version <= maximum version",
                found: "\(minimum) > \(maximum)"
            )
        }
        self.versions = minimum...maximum
        self.nodeName = try buffer.readShortString(lengthType: UInt8.self, "hello node name")
    }
}

extension HandshakeMessage.Accept {
    /// Appends this message's wire form to `buffer`.
    public func encode(into buffer: inout ByteBuffer) {
        buffer.writeInteger(version)
        buffer.writeShortString(nodeName, limit: HandshakeMessage.maximumNodeNameLength, lengthType: UInt8.self)
    }

    /// Parses an accept payload.
    /// - Throws: ``DWCPWireError/Code/malformedPayload`` if it does not parse.
    public init(decoding buffer: ByteBuffer) throws(DWCPWireError) {
        var buffer = buffer
        self.version = try buffer.readField(UInt8.self, "accept version")
        self.nodeName = try buffer.readShortString(lengthType: UInt8.self, "accept node name")
    }
}

extension HandshakeMessage.Reject {
    /// Appends this message's wire form to `buffer`.
    public func encode(into buffer: inout ByteBuffer) {
        buffer.writeInteger(versions.lowerBound)
        buffer.writeInteger(versions.upperBound)
        buffer.writeShortString(reason, limit: HandshakeMessage.maximumReasonLength, lengthType: UInt16.self)
    }

    /// Parses a reject payload.
    /// - Throws: ``DWCPWireError/Code/malformedPayload`` if it does not parse.
    public init(decoding buffer: ByteBuffer) throws(DWCPWireError) {
        var buffer = buffer
        let minimum = try buffer.readField(UInt8.self, "reject minimum version")
        let maximum = try buffer.readField(UInt8.self, "reject maximum version")
        guard minimum <= maximum else {
            throw DWCPWireError(
                .malformedPayload,
                expected: "reject minimum version <= maximum version",
                found: "\(minimum) > \(maximum)"
            )
        }
        self.versions = minimum...maximum
        self.reason = try buffer.readShortString(lengthType: UInt16.self, "reject reason")
    }
}

extension ByteBuffer {
    /// Writes a length-prefixed UTF-8 string, cutting it at a character boundary to at most `limit` bytes.
    mutating func writeShortString<Length: FixedWidthInteger & UnsignedInteger>(
        _ string: String,
        limit: Int,
        lengthType: Length.Type
    ) {
        var utf8 = Array(string.utf8)
        if utf8.count > limit {
            var characters = Substring(string)
            while characters.utf8.count > limit {
                characters.removeLast()
            }
            utf8 = Array(characters.utf8)
        }
        writeInteger(Length(utf8.count))
        writeBytes(utf8)
    }

    mutating func readField<Value: FixedWidthInteger>(
        _ type: Value.Type,
        _ name: String
    ) throws(DWCPWireError) -> Value {
        guard let value = readInteger(as: Value.self) else {
            throw DWCPWireError(
                .malformedPayload,
                expected: "\(MemoryLayout<Value>.size) bytes for the \(name)",
                found: "\(readableBytes) bytes"
            )
        }
        return value
    }

    mutating func readShortString<Length: FixedWidthInteger & UnsignedInteger>(
        lengthType: Length.Type,
        _ name: String
    ) throws(DWCPWireError) -> String {
        let length = Int(try readField(Length.self, "\(name) length"))
        guard let bytes = readBytes(length: length) else {
            throw DWCPWireError(
                .malformedPayload,
                expected: "\(length) bytes for the \(name)",
                found: "\(readableBytes) bytes"
            )
        }
        guard let string = String(validating: bytes, as: UTF8.self) else {
            throw DWCPWireError(.malformedPayload, expected: "UTF-8 for the \(name)", found: "invalid UTF-8")
        }
        return string
    }
}
