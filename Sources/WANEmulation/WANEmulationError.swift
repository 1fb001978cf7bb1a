/// The error every WANEmulation API throws: what was wrong, what was expected, what was found, and where it was raised.
public struct WANEmulationError: Error, CustomStringConvertible, Sendable {
    /// A kind of failure, comparable in tests and stable across releases.
    public struct Code: Hashable, Sendable, CustomStringConvertible {
        private enum Base: String, Hashable, Sendable {
            case invalidParameter
            case emptyTrace
            case nonNumericTraceLine
            case decreasingTraceTimestamp
            case traceWithoutDuration
            case unknownProfile
            case missingTrace
        }

        private let base: Base

        private init(_ base: Base) {
            self.base = base
        }

        /// A link parameter is out of range or contradicts another one.
        public static let invalidParameter = Code(.invalidParameter)
        /// A delivery trace has no delivery opportunity.
        public static let emptyTrace = Code(.emptyTrace)
        /// A delivery trace line is not a whole number of milliseconds.
        public static let nonNumericTraceLine = Code(.nonNumericTraceLine)
        /// A delivery trace timestamp is smaller than the one before it.
        public static let decreasingTraceTimestamp = Code(.decreasingTraceTimestamp)
        /// A delivery trace's last timestamp is 0, so it has no period to loop over.
        public static let traceWithoutDuration = Code(.traceWithoutDuration)
        /// A profile name is not one of the named profiles.
        public static let unknownProfile = Code(.unknownProfile)
        /// A trace was asked for in one direction but not given.
        public static let missingTrace = Code(.missingTrace)

        /// The code's name.
        public var description: String { base.rawValue }
    }

    /// The kind of failure.
    public var code: Code
    /// What was being checked: a parameter name, or a trace source and line.
    public var subject: String
    /// What a valid value looks like.
    public var expected: String
    /// What was found instead.
    public var found: String
    /// The source file that raised the error.
    public var file: String
    /// The source line that raised the error.
    public var line: Int

    /// Creates an error.
    /// - Parameters:
    ///   - code: The kind of failure.
    ///   - subject: What was being checked.
    ///   - expected: What a valid value looks like.
    ///   - found: What was found instead.
    ///   - file: The raising source file (defaults to the caller's).
    ///   - line: The raising source line (defaults to the caller's).
    public init(
        _ code: Code,
        subject: String,
        expected: String,
        found: String,
        file: String = #fileID,
        line: Int = #line
    ) {
        self.code = code
        self.subject = subject
        self.expected = expected
        self.found = found
        self.file = file
        self.line = line
    }

    /// One line for an operator: the code, the subject, expected and found.
    public var description: String {
        "\(code): \(subject): expected \(expected), found \(found)"
    }
}
