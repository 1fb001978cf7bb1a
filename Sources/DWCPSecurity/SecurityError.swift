/// An error from NovaCron's cluster identity: certificates, keys, TLS configuration.
public struct SecurityError: Error, Sendable, CustomStringConvertible {
    /// A stable, comparable identifier for the kind of failure.
    public struct Code: Hashable, Sendable, CustomStringConvertible {
        private enum Backing: String, Hashable, Sendable {
            case alreadyExists = "already exists"
            case unreadable = "unreadable"
            case malformed = "malformed"
            case invalidName = "invalid name"
            case ioFailed = "I/O failed"
        }

        private let backing: Backing

        private init(_ backing: Backing) {
            self.backing = backing
        }

        /// Creating it would overwrite an existing CA or certificate.
        public static let alreadyExists = Code(.alreadyExists)
        /// A certificate or key file is missing or unreadable.
        public static let unreadable = Code(.unreadable)
        /// A certificate or key does not parse.
        public static let malformed = Code(.malformed)
        /// A node name or address is not usable in a certificate.
        public static let invalidName = Code(.invalidName)
        /// Writing a file failed.
        public static let ioFailed = Code(.ioFailed)

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
