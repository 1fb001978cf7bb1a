/// An error raised by the persistent chunk store (``PersistentChunkStore``) or a holdings summary
/// (``ChunkSummary``).
///
/// Like ``EncodingError`` it says what was expected, what was found and what to do; an I/O failure also carries
/// the path and the `errno` the system call returned.
public struct ChunkStoreError: Error, Sendable, CustomStringConvertible {
    /// A stable, comparable identifier for the kind of failure.
    public struct Code: Hashable, Sendable, CustomStringConvertible {
        private enum Backing: String, Hashable, Sendable {
            case invalidConfiguration = "invalid configuration"
            case ioFailed = "I/O failed"
            case storeInUse = "store in use"
            case checksumMismatch = "checksum mismatch"
            case limitExceeded = "limit exceeded"
            case malformedSummary = "malformed summary"
        }

        private let backing: Backing

        private init(_ backing: Backing) {
            self.backing = backing
        }

        /// A configuration value is out of its allowed range.
        public static let invalidConfiguration = Code(.invalidConfiguration)
        /// A system call on the store's directory or a segment file failed; ``ChunkStoreError/systemError`` says
        /// why.
        public static let ioFailed = Code(.ioFailed)
        /// Another store instance, in this process or another one, holds the directory's lock.
        public static let storeInUse = Code(.storeInUse)
        /// A stored record no longer matches its checksum (bit rot, or the file was changed behind the store's
        /// back). The chunk has been dropped from the index, so the sender will be asked for it again.
        public static let checksumMismatch = Code(.checksumMismatch)
        /// A chunk is larger than a segment can hold, or a summary larger than the caller allows.
        public static let limitExceeded = Code(.limitExceeded)
        /// Serialized summary bytes are truncated, have a bad magic or version, or inconsistent fields.
        public static let malformedSummary = Code(.malformedSummary)

        /// A short human-readable name of the code.
        public var description: String { backing.rawValue }
    }

    /// What kind of failure this is.
    public let code: Code
    /// What the store expected.
    public let expected: String
    /// What it found instead.
    public let found: String
    /// What an operator can do about it, if anything is known.
    public let advice: String?
    /// The `errno` of the failed system call, for ``Code/ioFailed`` and ``Code/storeInUse``.
    public let systemError: Int32?
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
    ///   - systemError: The `errno` of a failed system call, if one failed.
    public init(
        _ code: Code,
        expected: String,
        found: String,
        advice: String? = nil,
        systemError: Int32? = nil,
        file: String = #fileID,
        line: UInt = #line
    ) {
        self.code = code
        self.expected = expected
        self.found = found
        self.advice = advice
        self.systemError = systemError
        self.file = file
        self.line = line
    }

    /// One line: the code, expected and found, the `errno` and advice when there are some.
    public var description: String {
        var text = "HDE chunk store error (\(code)): expected \(expected), found \(found)"
        if let systemError {
            text += " (errno \(systemError))"
        }
        if let advice {
            text += "; \(advice)"
        }
        return text
    }
}
