import Foundation

/// The guest's serial console, line by line: kept in memory (bounded), mirrored to a log file, and
/// awaitable — ``waitForLine(after:timeout:where:)`` suspends until a matching line arrives.
public actor SerialConsole {
    /// Lines kept in memory; older ones remain only in the log file.
    public static let retainedLines = 100_000

    private var lines: [String] = []
    private var dropped = 0
    private var isClosed = false
    private var waiters: [UInt64: Waiter] = [:]
    private var nextWaiter: UInt64 = 0
    /// Waiters whose cancellation arrived before they registered.
    private var cancelledBeforeRegistering: Set<UInt64> = []
    private let log: FileHandle?
    /// The log file the console is mirrored to.
    public nonisolated let logPath: String

    private struct Waiter {
        var after: Int
        var predicate: @Sendable (String) -> Bool
        var continuation: CheckedContinuation<(index: Int, line: String), any Error>
    }

    init(logPath: String) {
        self.logPath = logPath
        _ = FileManager.default.createFile(atPath: logPath, contents: nil)
        self.log = FileHandle(forWritingAtPath: logPath)
    }

    /// How many lines have arrived so far (the index of the next one).
    public var lineCount: Int { dropped + lines.count }

    /// The lines still in memory, oldest first.
    public var retained: [String] { lines }

    /// Waits for the first line at index `after` or later that satisfies `predicate`.
    /// - Parameters:
    ///   - after: The first line index to consider (``lineCount`` for "from now on").
    ///   - timeout: How long to wait.
    ///   - predicate: The condition.
    /// - Returns: The line's index and text.
    /// - Throws: ``HypervisorError/Code/timedOut``, or ``HypervisorError/Code/processExited`` when the
    ///   console closed (QEMU exited) first.
    public func waitForLine(
        after: Int = 0,
        timeout: Duration,
        where predicate: @escaping @Sendable (String) -> Bool
    ) async throws -> (index: Int, line: String) {
        if let found = firstMatch(after: after, predicate) {
            return found
        }
        if isClosed {
            throw closedError(waitingFor: "a matching console line")
        }
        let id = nextWaiter
        nextWaiter += 1
        return try await withThrowingTaskGroup(of: (index: Int, line: String).self) { group in
            group.addTask {
                try await withTaskCancellationHandler {
                    try await self.register(id: id, after: after, predicate: predicate)
                } onCancel: {
                    Task { await self.cancel(id: id) }
                }
            }
            group.addTask {
                try await Task.sleep(for: timeout)
                throw HypervisorError(
                    .timedOut,
                    expected: "a matching console line within \(timeout)",
                    found: "none among \(await self.lineCount) lines",
                    advice: "see the console log \(self.logPath)"
                )
            }
            defer { group.cancelAll() }
            return try await group.next()!
        }
    }

    private func register(
        id: UInt64,
        after: Int,
        predicate: @escaping @Sendable (String) -> Bool
    ) async throws -> (index: Int, line: String) {
        if let found = firstMatch(after: after, predicate) {
            return found
        }
        if isClosed {
            throw closedError(waitingFor: "a matching console line")
        }
        if cancelledBeforeRegistering.remove(id) != nil {
            throw CancellationError()
        }
        return try await withCheckedThrowingContinuation { continuation in
            waiters[id] = Waiter(after: after, predicate: predicate, continuation: continuation)
        }
    }

    private func cancel(id: UInt64) {
        if let waiter = waiters.removeValue(forKey: id) {
            waiter.continuation.resume(throwing: CancellationError())
        } else {
            cancelledBeforeRegistering.insert(id)
        }
    }

    func append(_ line: String) {
        let index = lineCount
        lines.append(line)
        if lines.count > Self.retainedLines {
            lines.removeFirst(lines.count - Self.retainedLines)
            dropped = index + 1 - lines.count
        }
        log?.write(Data((line + "\n").utf8))
        for (id, waiter) in waiters where index >= waiter.after && waiter.predicate(line) {
            waiters.removeValue(forKey: id)
            waiter.continuation.resume(returning: (index, line))
        }
    }

    func close() {
        isClosed = true
        try? log?.close()
        for (_, waiter) in waiters {
            waiter.continuation.resume(throwing: closedError(waitingFor: "a matching console line"))
        }
        waiters.removeAll()
    }

    private func firstMatch(after: Int, _ predicate: (String) -> Bool) -> (index: Int, line: String)? {
        let start = max(after - dropped, 0)
        guard start < lines.count else { return nil }
        for offset in start..<lines.count where predicate(lines[offset]) {
            return (dropped + offset, lines[offset])
        }
        return nil
    }

    private func closedError(waitingFor what: String) -> HypervisorError {
        HypervisorError(.processExited, expected: what, found: "the console closed: QEMU exited")
    }
}

/// One heartbeat line of NovaCron's test guest (`guest/init.c`):
/// `NOVACRON-HEARTBEAT seq=N uptime_ms=M dirtied_pages=D verify=ok|FAIL checksum=HEX`.
public struct GuestHeartbeat: Hashable, Sendable {
    /// The heartbeat's sequence number; it lives in guest RAM, so it continues across a migration.
    public var sequence: Int
    /// Guest uptime in milliseconds.
    public var uptimeMilliseconds: Int
    /// Whether the guest's self-check of its memory passed.
    public var isVerified: Bool
    /// The guest's checksum over its page versions.
    public var checksum: String

    /// Parses a console line; `nil` if it is not a heartbeat.
    public init?(line: String) {
        guard line.hasPrefix("NOVACRON-HEARTBEAT ") else { return nil }
        var fields: [Substring: Substring] = [:]
        for word in line.split(separator: " ").dropFirst() {
            let parts = word.split(separator: "=", maxSplits: 1)
            if parts.count == 2 {
                fields[parts[0]] = parts[1]
            }
        }
        // The checksum's 16 hex digits make a line whole: one a migration or QEMU's exit cut short (the guest
        // writes its serial port a byte at a time) is not a heartbeat.
        guard let sequence = fields["seq"].flatMap({ Int($0) }),
            let uptime = fields["uptime_ms"].flatMap({ Int($0) }),
            let verify = fields["verify"],
            let checksum = fields["checksum"], checksum.count == 16, checksum.allSatisfy(\.isHexDigit)
        else { return nil }
        self.sequence = sequence
        self.uptimeMilliseconds = uptime
        self.isVerified = verify == "ok"
        self.checksum = String(checksum)
    }

    /// The sequence the first whole heartbeat on a migrated or restored guest's new console carries when none was
    /// lost: the one after the old console's last whole heartbeat, or the one after that when the pause cut a line
    /// in two. The test guest writes its serial port a byte at a time and, once running, writes only heartbeats,
    /// so a new console that does not begin with a whole heartbeat begins with the cut line's tail.
    /// - Parameters:
    ///   - last: The old console's last whole heartbeat.
    ///   - firstLine: The new console's first line.
    public static func expectedFirst(after last: Int, newConsoleFirstLine firstLine: String) -> Int {
        matches(firstLine) ? last + 1 : last + 2
    }

    /// Whether a console line is a heartbeat.
    public static func matches(_ line: String) -> Bool {
        GuestHeartbeat(line: line) != nil
    }
}
