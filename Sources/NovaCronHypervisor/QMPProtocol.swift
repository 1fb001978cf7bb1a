import Foundation

/// The QEMU Machine Protocol as a sans-IO state machine.
///
/// It turns commands into lines to send and received lines into decisions: which command completed
/// and how, which asynchronous event arrived, when the connection became ready. It performs no I/O;
/// ``QMPClient`` is its NIO shell.
///
/// A connection starts with QEMU's greeting; the machine answers with `qmp_capabilities` and is
/// ready when that succeeds. Commands issued earlier are queued and sent then. Every command carries
/// a numeric `id` that QEMU echoes, so replies are matched by id. A line that does not parse fails the
/// oldest outstanding command (QEMU answers in order), or is reported as a violation when nothing is
/// outstanding; either way the connection carries on.
public struct QMPProtocol: Sendable {
    /// QEMU's greeting.
    public struct Greeting: Hashable, Sendable {
        /// QEMU's version, e.g. `7.2.x`.
        public var version: String
        /// The capabilities QEMU offered.
        public var capabilities: [String]
    }

    /// An asynchronous QMP event (STOP, RESUME, SHUTDOWN, MIGRATION, …).
    public struct Event: Hashable, Sendable {
        /// The event's name.
        public var name: String
        /// Its data member, or `null`.
        public var data: JSONValue
        /// Seconds since the epoch when QEMU emitted it.
        public var timestamp: Double?
    }

    /// What the shell must do after an input.
    public enum Action: Sendable, Equatable {
        /// Write these bytes (one JSON line) to QEMU.
        case send([UInt8])
        /// The connection is ready for commands.
        case ready(Greeting)
        /// Command `id` finished with this result.
        case complete(id: UInt64, result: Result<JSONValue, HypervisorError>)
        /// An event arrived.
        case event(Event)
        /// Something arrived that nothing was waiting for; the connection carries on.
        case violation(HypervisorError)
        /// The connection cannot be used (capability negotiation failed): close it.
        case closeConnection(HypervisorError)
    }

    private enum State: Sendable {
        case awaitingGreeting
        case negotiating(Greeting)
        case ready
        case closed
    }

    private var state: State = .awaitingGreeting
    private var nextID: UInt64 = 1
    /// Commands sent and not yet answered, oldest first, with their names for error messages.
    private var outstanding: [(id: UInt64, command: String)] = []
    /// Commands issued before the connection was ready.
    private var queued: [[UInt8]] = []
    private static let capabilitiesID: UInt64 = 0

    /// Creates a machine waiting for QEMU's greeting.
    public init() {}

    /// Whether commands are being sent straight away.
    public var isReady: Bool {
        if case .ready = state { return true }
        return false
    }

    /// Issues a command.
    /// - Parameters:
    ///   - command: The QMP command name, e.g. `query-status`.
    ///   - arguments: Its arguments object, if any.
    /// - Returns: The id whose ``Action/complete(id:result:)`` will carry the answer, and the bytes to
    ///   send now (`nil` while the connection is not ready yet: they are sent on ``Action/ready(_:)``).
    public mutating func execute(_ command: String, arguments: JSONValue? = nil) -> (id: UInt64, send: [UInt8]?) {
        let id = nextID
        nextID += 1
        let line = Self.encode(command: command, arguments: arguments, id: id)
        outstanding.append((id, command))
        switch state {
        case .ready:
            return (id, line)
        case .awaitingGreeting, .negotiating:
            queued.append(line)
            return (id, nil)
        case .closed:
            preconditionFailure("QMPProtocol.execute(\(command)) after the connection closed")
        }
    }

    /// Feeds one line received from QEMU (without its line terminator).
    /// - Returns: What to do.
    public mutating func receive(line: some Collection<UInt8>) -> [Action] {
        guard case .object(let message) = (try? JSONDecoder().decode(JSONValue.self, from: Data(line))) else {
            return failOldest(
                HypervisorError(
                    .malformedMessage,
                    expected: "a JSON object",
                    found: Self.excerpt(line),
                    advice: "the peer on the QMP socket is not QEMU, or it is broken"
                )
            )
        }
        if let greeting = message["QMP"] {
            return receiveGreeting(greeting)
        }
        if let name = message["event"]?.stringValue {
            let seconds = message["timestamp"]?["seconds"]?.intValue
            let micros = message["timestamp"]?["microseconds"]?.intValue
            let timestamp = seconds.map { Double($0) + Double(micros ?? 0) / 1e6 }
            return [.event(Event(name: name, data: message["data"] ?? .null, timestamp: timestamp))]
        }
        guard message["return"] != nil || message["error"] != nil else {
            return failOldest(
                HypervisorError(
                    .malformedMessage,
                    expected: "a greeting, a return, an error or an event",
                    found: Self.excerpt(line)
                )
            )
        }
        guard let id = message["id"]?.intValue.flatMap(UInt64.init(exactly:)) else {
            return failOldest(
                HypervisorError(.malformedMessage, expected: "a reply with a numeric id", found: Self.excerpt(line))
            )
        }
        let result: Result<JSONValue, HypervisorError>
        if let error = message["error"] {
            let errorClass = error["class"]?.stringValue ?? "unknown"
            let description = error["desc"]?.stringValue ?? error.description
            let command = outstanding.first { $0.id == id }?.command ?? "command \(id)"
            result = .failure(
                HypervisorError(
                    .commandFailed, expected: "\(command) to succeed", found: "\(errorClass): \(description)")
            )
        } else {
            result = .success(message["return"]!)
        }
        if id == Self.capabilitiesID, case .negotiating(let greeting) = state {
            return finishNegotiation(greeting, result: result)
        }
        guard let index = outstanding.firstIndex(where: { $0.id == id }) else {
            return [
                .violation(
                    HypervisorError(
                        .unexpectedMessage,
                        expected: "a reply to an outstanding command",
                        found: "a reply with id \(id): \(Self.excerpt(line))"
                    )
                )
            ]
        }
        outstanding.remove(at: index)
        return [.complete(id: id, result: result)]
    }

    /// Reports a line the shell could not frame (e.g. too long); it fails the oldest outstanding command.
    public mutating func receiveUnframable(_ error: HypervisorError) -> [Action] {
        failOldest(error)
    }

    /// The connection closed: every outstanding command fails.
    public mutating func close(reason: String) -> [Action] {
        state = .closed
        queued.removeAll()
        let failed = outstanding.map { entry -> Action in
            .complete(
                id: entry.id,
                result: .failure(
                    HypervisorError(
                        .connectionClosed,
                        expected: "an answer to \(entry.command)",
                        found: "the QMP connection closed (\(reason))"
                    )
                )
            )
        }
        outstanding.removeAll()
        return failed
    }

    private mutating func receiveGreeting(_ greeting: JSONValue) -> [Action] {
        guard case .awaitingGreeting = state else {
            return [
                .violation(
                    HypervisorError(.unexpectedMessage, expected: "no second greeting", found: "a greeting \(greeting)")
                )
            ]
        }
        let version = greeting["version"]?["qemu"]
        let versionString = [version?["major"], version?["minor"], version?["micro"]]
            .map { $0?.intValue.map(String.init) ?? "?" }.joined(separator: ".")
        var capabilities: [String] = []
        if case .array(let offered) = greeting["capabilities"] {
            capabilities = offered.compactMap(\.stringValue)
        }
        state = .negotiating(Greeting(version: versionString, capabilities: capabilities))
        return [.send(Self.encode(command: "qmp_capabilities", arguments: nil, id: Self.capabilitiesID))]
    }

    private mutating func finishNegotiation(_ greeting: Greeting, result: Result<JSONValue, HypervisorError>)
        -> [Action]
    {
        switch result {
        case .success:
            state = .ready
            let lines = queued.map { Action.send($0) }
            queued.removeAll()
            return [.ready(greeting)] + lines
        case .failure(let error):
            return negotiationFailed(error)
        }
    }

    private mutating func negotiationFailed(_ error: HypervisorError) -> [Action] {
        let failure = HypervisorError(
            .connectFailed,
            expected: "QEMU to accept qmp_capabilities",
            found: "\(error)",
            advice: "the peer on the QMP socket is not a working QEMU"
        )
        return close(reason: "capability negotiation failed") + [.closeConnection(failure)]
    }

    private mutating func failOldest(_ error: HypervisorError) -> [Action] {
        if case .negotiating = state {
            return negotiationFailed(error)
        }
        guard !outstanding.isEmpty, case .ready = state else {
            return [.violation(error)]
        }
        let oldest = outstanding.removeFirst()
        return [.complete(id: oldest.id, result: .failure(error))]
    }

    static func encode(command: String, arguments: JSONValue?, id: UInt64) -> [UInt8] {
        var message: [String: JSONValue] = ["execute": .string(command), "id": .int(Int64(id))]
        if let arguments {
            message["arguments"] = arguments
        }
        let encoder = JSONEncoder()
        encoder.outputFormatting = [.sortedKeys, .withoutEscapingSlashes]
        // Encoding a JSONValue cannot fail: every case maps to plain JSON.
        return Array(try! encoder.encode(JSONValue.object(message))) + [0x0D, 0x0A]
    }

    static func excerpt(_ line: some Collection<UInt8>) -> String {
        let text = String(decoding: line.prefix(160), as: UTF8.self)
        return "'\(text)\(line.count > 160 ? "…" : "")' (\(line.count) bytes)"
    }
}

extension HypervisorError: Equatable {
    /// Errors compare by code and text, not by where they were raised.
    public static func == (lhs: HypervisorError, rhs: HypervisorError) -> Bool {
        lhs.code == rhs.code && lhs.expected == rhs.expected && lhs.found == rhs.found
    }
}
