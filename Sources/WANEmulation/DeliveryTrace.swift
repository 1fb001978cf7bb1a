/// A Mahimahi delivery trace: the link's time-varying capacity as a list of delivery opportunities.
///
/// Each line of a Mahimahi trace file is a millisecond timestamp at which the link may deliver one MTU-sized
/// (1500-byte) packet; a repeated timestamp means several opportunities in that millisecond. The trace loops: after its
/// last timestamp it starts again, shifted by that last timestamp (its period). A file holding only `1` is a constant
/// 12 Mbit/s link. Bytes of an opportunity that no queued packet uses are lost, as in Mahimahi.
public struct DeliveryTrace: Sendable, Hashable {
    /// Bytes one opportunity can deliver in Mahimahi's format.
    public static let mahimahiOpportunityBytes = 1500

    /// The opportunities' timestamps in milliseconds, non-decreasing.
    public let opportunityMilliseconds: [UInt32]

    /// Creates a trace from timestamps.
    /// - Parameters:
    ///   - opportunityMilliseconds: Non-decreasing millisecond timestamps, the last one greater than zero.
    ///   - source: A name for errors (a file path).
    /// - Throws: ``WANEmulationError`` with `.emptyTrace`, `.decreasingTraceTimestamp` or `.traceWithoutDuration`.
    public init(opportunityMilliseconds: [UInt32], source: String = "trace") throws(WANEmulationError) {
        guard let last = opportunityMilliseconds.last else {
            throw WANEmulationError(
                .emptyTrace, subject: source, expected: "at least one timestamp line", found: "no timestamps")
        }
        for index in opportunityMilliseconds.indices.dropFirst()
        where opportunityMilliseconds[index] < opportunityMilliseconds[index - 1] {
            throw WANEmulationError(
                .decreasingTraceTimestamp, subject: "\(source) entry \(index + 1)",
                expected: "a timestamp >= \(opportunityMilliseconds[index - 1])",
                found: "\(opportunityMilliseconds[index])")
        }
        guard last > 0 else {
            throw WANEmulationError(
                .traceWithoutDuration, subject: source, expected: "a last timestamp > 0 ms (the loop period)",
                found: "0")
        }
        self.opportunityMilliseconds = opportunityMilliseconds
    }

    /// Parses the text of a Mahimahi trace file.
    ///
    /// Lines are decimal millisecond timestamps; blank lines and surrounding spaces are ignored.
    /// - Parameters:
    ///   - text: The file's contents.
    ///   - source: A name for errors (a file path).
    /// - Throws: ``WANEmulationError`` with `.emptyTrace`, `.nonNumericTraceLine` (with the line number),
    ///   `.decreasingTraceTimestamp` (with the line number) or `.traceWithoutDuration`.
    public init(parsing text: String, source: String = "trace") throws(WANEmulationError) {
        var timestamps: [UInt32] = []
        var lineNumber = 0
        var previous: UInt32 = 0
        for rawLine in text.utf8.split(separator: UInt8(ascii: "\n"), omittingEmptySubsequences: false) {
            lineNumber += 1
            var line = Substring(decoding: rawLine, as: UTF8.self)
            while let first = line.first, first.isWhitespace { line = line.dropFirst() }
            while let last = line.last, last.isWhitespace { line = line.dropLast() }
            if line.isEmpty { continue }
            guard line.utf8.allSatisfy({ $0 >= UInt8(ascii: "0") && $0 <= UInt8(ascii: "9") }),
                let value = UInt32(line)
            else {
                throw WANEmulationError(
                    .nonNumericTraceLine, subject: "\(source) line \(lineNumber)",
                    expected: "a whole number of milliseconds (0...\(UInt32.max))", found: "\"\(line.prefix(40))\"")
            }
            if value < previous {
                throw WANEmulationError(
                    .decreasingTraceTimestamp, subject: "\(source) line \(lineNumber)",
                    expected: "a timestamp >= \(previous)", found: "\(value)")
            }
            previous = value
            timestamps.append(value)
        }
        try self.init(opportunityMilliseconds: timestamps, source: source)
    }

    /// The loop period: the last timestamp, in milliseconds.
    public var periodMilliseconds: UInt32 {
        opportunityMilliseconds[opportunityMilliseconds.count - 1]
    }

    /// The number of delivery opportunities in one period.
    public var opportunityCount: Int {
        opportunityMilliseconds.count
    }

    /// The average rate the trace offers, in bits per second, if every opportunity carries `bytesPerOpportunity`.
    /// - Parameter bytesPerOpportunity: Bytes one opportunity delivers (Mahimahi: 1500).
    /// - Returns: Bits per second averaged over one period.
    public func averageBitsPerSecond(bytesPerOpportunity: Int = DeliveryTrace.mahimahiOpportunityBytes) -> Double {
        Double(opportunityCount) * Double(bytesPerOpportunity) * 8 / (Double(periodMilliseconds) / 1000)
    }
}
