/// An error from the hypervisor layer: QMP, the QEMU process, or a VM operation.
///
/// Says what was expected, what was found, and, where known, what to do.
public struct HypervisorError: Error, Sendable, CustomStringConvertible {
    /// A stable, comparable identifier for the kind of failure.
    public struct Code: Hashable, Sendable, CustomStringConvertible {
        private enum Backing: String, Hashable, Sendable {
            case malformedMessage = "malformed QMP message"
            case unexpectedMessage = "unexpected QMP message"
            case messageTooLong = "QMP message too long"
            case commandFailed = "QMP command failed"
            case connectionClosed = "QMP connection closed"
            case connectFailed = "QMP connect failed"
            case descriptorPassingFailed = "descriptor passing failed"
            case processExited = "QEMU exited"
            case launchFailed = "QEMU launch failed"
            case invalidSpec = "invalid VM spec"
            case timedOut = "timed out"
            case migrationFailed = "migration failed"
            case streamFailed = "state stream failed"
        }

        private let backing: Backing

        private init(_ backing: Backing) {
            self.backing = backing
        }

        /// A QMP line is not JSON, or not a greeting, reply or event.
        public static let malformedMessage = Code(.malformedMessage)
        /// A well-formed QMP message arrived that nothing was waiting for.
        public static let unexpectedMessage = Code(.unexpectedMessage)
        /// A QMP line exceeded the client's limit.
        public static let messageTooLong = Code(.messageTooLong)
        /// QEMU answered a command with an error.
        public static let commandFailed = Code(.commandFailed)
        /// The QMP connection closed while a command was outstanding.
        public static let connectionClosed = Code(.connectionClosed)
        /// The QMP socket could not be reached.
        public static let connectFailed = Code(.connectFailed)
        /// A descriptor could not be handed to QEMU.
        public static let descriptorPassingFailed = Code(.descriptorPassingFailed)
        /// The QEMU process exited (crashed, was killed, or shut down).
        public static let processExited = Code(.processExited)
        /// QEMU could not be started.
        public static let launchFailed = Code(.launchFailed)
        /// A VM spec is invalid.
        public static let invalidSpec = Code(.invalidSpec)
        /// An operation did not finish in time.
        public static let timedOut = Code(.timedOut)
        /// A migration ended in failure or was cancelled.
        public static let migrationFailed = Code(.migrationFailed)
        /// Copying a state stream to or from QEMU failed.
        public static let streamFailed = Code(.streamFailed)

        /// A short human-readable name of the code.
        public var description: String { backing.rawValue }
    }

    /// What kind of failure this is.
    public let code: Code
    /// What was expected.
    public let expected: String
    /// What was found instead.
    public let found: String
    /// What an operator can do, if known.
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
        var text = "\(code): expected \(expected), found \(found)"
        if let advice {
            text += "; \(advice)"
        }
        return text
    }
}
