/// An error raised by HDE (hierarchical delta encoding): a codec, a chunker or the image record stream.
///
/// Every error says what was expected, what was found, and where it was raised, so a log line is enough to
/// tell a corrupted or hostile stream from a misconfigured encoder.
public struct EncodingError: Error, Sendable, CustomStringConvertible {
    /// A stable, comparable identifier for the kind of failure.
    public struct Code: Hashable, Sendable, CustomStringConvertible {
        private enum Backing: String, Hashable, Sendable {
            case invalidConfiguration = "invalid configuration"
            case truncated = "truncated input"
            case badMagic = "bad magic"
            case unsupportedVersion = "unsupported version"
            case malformedHeader = "malformed header"
            case malformedRecord = "malformed record"
            case limitExceeded = "limit exceeded"
            case checksumMismatch = "checksum mismatch"
            case trailingBytes = "trailing bytes"
            case baselineRequired = "baseline required"
            case baselineMismatch = "baseline mismatch"
            case unknownChunk = "unknown chunk"
            case compressionFailed = "compression failed"
            case decompressionFailed = "decompression failed"
            case decompressionBomb = "decompression bomb"
            case dictionaryFailed = "dictionary failed"
            case ioFailed = "I/O failed"
            case storeInUse = "store in use"
            case malformedSummary = "malformed summary"
        }

        private let backing: Backing

        private init(_ backing: Backing) {
            self.backing = backing
        }

        /// A configuration value is out of its allowed range.
        public static let invalidConfiguration = Code(.invalidConfiguration)
        /// The input ended inside a header, record or frame.
        public static let truncated = Code(.truncated)
        /// The stream does not start with the HDE magic.
        public static let badMagic = Code(.badMagic)
        /// The stream's version is not one this decoder accepts.
        public static let unsupportedVersion = Code(.unsupportedVersion)
        /// A header field has a value the format does not allow.
        public static let malformedHeader = Code(.malformedHeader)
        /// A record's kind, index or length is invalid.
        public static let malformedRecord = Code(.malformedRecord)
        /// A length or count exceeds a hard or configured limit.
        public static let limitExceeded = Code(.limitExceeded)
        /// A checksum over decoded bytes does not match: the stream was corrupted.
        public static let checksumMismatch = Code(.checksumMismatch)
        /// Bytes follow the end of the stream or frame.
        public static let trailingBytes = Code(.trailingBytes)
        /// The stream refers to a baseline image that was not supplied.
        public static let baselineRequired = Code(.baselineRequired)
        /// The supplied baseline is not the one the stream was encoded against.
        public static let baselineMismatch = Code(.baselineMismatch)
        /// The stream refers to a chunk the receiver does not hold, or holds with another length.
        public static let unknownChunk = Code(.unknownChunk)
        /// libzstd failed to compress.
        public static let compressionFailed = Code(.compressionFailed)
        /// libzstd rejected a frame as corrupt, or it decoded to another size than it declared.
        public static let decompressionFailed = Code(.decompressionFailed)
        /// A frame does not declare its size, or declares more than the caller's limit.
        public static let decompressionBomb = Code(.decompressionBomb)
        /// A dictionary could not be trained or loaded.
        public static let dictionaryFailed = Code(.dictionaryFailed)

        /// A system call on the chunk store's directory or a segment file failed; ``EncodingError/systemError``
        /// says why.
        public static let ioFailed = Code(.ioFailed)
        /// Another chunk store instance, in this process or another one, holds the directory's lock.
        public static let storeInUse = Code(.storeInUse)
        /// Serialized chunk-store summary bytes are truncated, have a bad magic or version, or inconsistent fields.
        public static let malformedSummary = Code(.malformedSummary)

        /// A short human-readable name of the code.
        public var description: String { backing.rawValue }
    }

    /// What kind of failure this is.
    public let code: Code
    /// What the codec or decoder expected.
    public let expected: String
    /// What it found instead.
    public let found: String
    /// What an operator can do about it, if anything is known.
    public let advice: String?
    /// The `errno` of a failed system call, for ``Code/ioFailed`` and ``Code/storeInUse``.
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
        var text = "HDE encoding error (\(code)): expected \(expected), found \(found)"
        if let systemError {
            text += " (errno \(systemError))"
        }
        if let advice {
            text += "; \(advice)"
        }
        return text
    }
}
