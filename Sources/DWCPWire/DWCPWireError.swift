/// An error raised while encoding, decoding or negotiating DWCP frames.
///
/// Every error says what was expected, what was found, and where it was raised, so a log line is
/// enough to tell a corrupted link from a peer that speaks another protocol or version.
public struct DWCPWireError: Error, Sendable, CustomStringConvertible {
    /// A stable, comparable identifier for the kind of failure.
    public struct Code: Hashable, Sendable, CustomStringConvertible {
        private enum Backing: String, Hashable, Sendable {
            case badMagic = "bad magic"
            case unsupportedVersion = "unsupported version"
            case headerChecksumMismatch = "header checksum mismatch"
            case unknownFrameType = "unknown frame type"
            case reservedFlagsSet = "reserved flags set"
            case payloadTooLarge = "payload too large"
            case payloadChecksumMismatch = "payload checksum mismatch"
            case truncatedFrame = "truncated frame"
            case malformedPayload = "malformed payload"
            case noCommonVersion = "no common version"
            case unexpectedFrame = "unexpected frame"
            case rejectedByPeer = "rejected by peer"
        }

        private let backing: Backing

        private init(_ backing: Backing) {
            self.backing = backing
        }

        /// The first four bytes are not `DWCP`: the peer does not speak DWCP, or the stream lost its framing.
        public static let badMagic = Code(.badMagic)
        /// The frame's version byte names a version this decoder does not accept.
        public static let unsupportedVersion = Code(.unsupportedVersion)
        /// The header's own checksum does not match its bytes: the header was corrupted.
        public static let headerChecksumMismatch = Code(.headerChecksumMismatch)
        /// The frame type byte is not one of ``DWCPFrame/FrameType``.
        public static let unknownFrameType = Code(.unknownFrameType)
        /// Flag bits that this version does not define are set.
        public static let reservedFlagsSet = Code(.reservedFlagsSet)
        /// The payload length exceeds the configured or the hard limit.
        public static let payloadTooLarge = Code(.payloadTooLarge)
        /// The payload's checksum does not match its bytes: the payload was corrupted.
        public static let payloadChecksumMismatch = Code(.payloadChecksumMismatch)
        /// The stream ended inside a frame.
        public static let truncatedFrame = Code(.truncatedFrame)
        /// A frame's payload does not parse as the message its type announces.
        public static let malformedPayload = Code(.malformedPayload)
        /// The two peers share no protocol version.
        public static let noCommonVersion = Code(.noCommonVersion)
        /// A frame arrived that the protocol does not allow in the current state.
        public static let unexpectedFrame = Code(.unexpectedFrame)
        /// The peer refused the handshake and said why.
        public static let rejectedByPeer = Code(.rejectedByPeer)

        /// A short human-readable name of the code.
        public var description: String { backing.rawValue }
    }

    /// What kind of failure this is.
    public let code: Code
    /// What the decoder or state machine expected.
    public let expected: String
    /// What it found instead.
    public let found: String
    /// What an operator can do about it, if anything is known.
    public let advice: String?
    /// The source file that raised the error.
    public let file: String
    /// The source line that raised the error.
    public let line: UInt

    /// Creates an error.
    /// - Parameters:
    ///   - code: The kind of failure.
    ///   - expected: What was expected.
    ///   - found: What was found instead.
    ///   - advice: What to do about it, if known.
    public init(
        _ code: Code,
        expected: String,
        found: String,
        advice: String? = nil,
        file: String = #fileID,
        line: UInt = #line
    ) {
        self.code = code
        self.expected = expected
        self.found = found
        self.advice = advice
        self.file = file
        self.line = line
    }

    /// One line: the code, expected and found, and advice when there is some.
    public var description: String {
        var text = "DWCP wire error (\(code)): expected \(expected), found \(found)"
        if let advice {
            text += "; \(advice)"
        }
        return text
    }
}
