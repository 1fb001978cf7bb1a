/// An error from a DWCP transfer: the session protocol, a peer, the source or the destination.
///
/// Like every NovaCron error it says what was expected, what was found, and what to do.
public struct TransportError: Error, Sendable, CustomStringConvertible {
    /// A stable, comparable identifier for the kind of failure.
    public struct Code: Hashable, Sendable, CustomStringConvertible {
        private enum Backing: String, Hashable, Sendable {
            case malformedMessage = "malformed message"
            case protocolViolation = "protocol violation"
            case refused = "refused by peer"
            case connectionFailed = "connection failed"
            case authenticationFailed = "authentication failed"
            case checksumMismatch = "checksum mismatch"
            case sourceFailed = "source failed"
            case destinationFailed = "destination failed"
            case stalled = "stalled"
            case cancelled = "cancelled"
            case invalidArgument = "invalid argument"
        }

        private let backing: Backing

        private init(_ backing: Backing) {
            self.backing = backing
        }

        /// A control message or chunk frame does not parse.
        public static let malformedMessage = Code(.malformedMessage)
        /// The peer sent something the session protocol does not allow at this point.
        public static let protocolViolation = Code(.protocolViolation)
        /// The peer refused the transfer and said why.
        public static let refused = Code(.refused)
        /// A connection could not be opened or broke, and retrying did not help.
        public static let connectionFailed = Code(.connectionFailed)
        /// TLS failed: the peer's certificate is not from the cluster CA, names another host, or was not sent.
        public static let authenticationFailed = Code(.authenticationFailed)
        /// The bytes that arrived are not the bytes that were sent (end-to-end SHA-256 or a chunk checksum).
        public static let checksumMismatch = Code(.checksumMismatch)
        /// Reading what is being sent failed.
        public static let sourceFailed = Code(.sourceFailed)
        /// Writing what was received failed (disk full, permissions, a file in the way).
        public static let destinationFailed = Code(.destinationFailed)
        /// No progress for longer than the stall timeout.
        public static let stalled = Code(.stalled)
        /// The transfer was interrupted on purpose.
        public static let cancelled = Code(.cancelled)
        /// A setting is out of range.
        public static let invalidArgument = Code(.invalidArgument)

        /// A short human-readable name of the code.
        public var description: String { backing.rawValue }
    }

    /// What kind of failure this is.
    public let code: Code
    /// What was expected.
    public let expected: String
    /// What was found instead.
    public let found: String
    /// What to do about it, if known.
    public let advice: String?

    /// Creates an error.
    public init(_ code: Code, expected: String, found: String, advice: String? = nil) {
        self.code = code
        self.expected = expected
        self.found = found
        self.advice = advice
    }

    /// One line: the code, expected and found, and advice when there is some.
    public var description: String {
        "\(code): expected \(expected), found \(found)" + (advice.map { "; \($0)" } ?? "")
    }
}
