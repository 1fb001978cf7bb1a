import Foundation
import NIOCore
import NIOEmbedded
import Testing

@testable import NovaCronHypervisor

/// `QMPProtocol` driven directly: every input is a line or a call, every decision an action; no sockets.
@Suite("QMP protocol state machine")
struct QMPProtocolTests {
    static let greeting =
        #"{"QMP":{"version":{"qemu":{"major":7,"minor":2,"micro":0},"package":""},"capabilities":["oob"]}}"#
    static let parsedGreeting = QMPProtocol.Greeting(version: "7.2.0", capabilities: ["oob"])
    static let capabilitiesAccepted = #"{"return": {}, "id": 0}"#

    /// A machine that has received the greeting and had `qmp_capabilities` accepted.
    static func readyMachine(sourceLocation: SourceLocation = #_sourceLocation) throws -> QMPProtocol {
        var machine = QMPProtocol()
        _ = machine.receive(line: greeting.utf8)
        let actions = machine.receive(line: capabilitiesAccepted.utf8)
        try #require(actions == [.ready(parsedGreeting)], sourceLocation: sourceLocation)
        return machine
    }

    /// The command object in one line the machine asked to send; the line MUST end in CRLF.
    static func command(in line: [UInt8], sourceLocation: SourceLocation = #_sourceLocation) throws -> JSONValue {
        try #require(line.suffix(2) == [0x0D, 0x0A], "a QMP line ends in CRLF", sourceLocation: sourceLocation)
        return try JSONDecoder().decode(JSONValue.self, from: Data(line.dropLast(2)))
    }

    // MARK: - Greeting and negotiation

    @Test(
        "The greeting is parsed and answered with qmp_capabilities (id 0); the machine is not ready yet",
        arguments: [
            (QMPProtocolTests.greeting, QMPProtocolTests.parsedGreeting),
            (
                #"{"QMP": {"version": {"qemu": {"micro": 2, "minor": 1, "major": 9}, "package": "Debian"}, "capabilities": []}}"#,
                QMPProtocol.Greeting(version: "9.1.2", capabilities: [])
            ),
        ]
    )
    func greetingIsAnsweredWithCapabilities(line: String, expected: QMPProtocol.Greeting) throws {
        var machine = QMPProtocol()
        let actions = machine.receive(line: line.utf8)
        try #require(actions.count == 1)
        let sent = try #require(actions[0].sentLine)
        #expect(try Self.command(in: sent) == ["execute": "qmp_capabilities", "id": 0])
        #expect(!machine.isReady)

        #expect(machine.receive(line: Self.capabilitiesAccepted.utf8) == [.ready(expected)])
        #expect(machine.isReady)
    }

    @Test("Commands issued before ready are queued, then sent in order right after .ready")
    func queuedCommandsAreFlushedInOrder() throws {
        var machine = QMPProtocol()
        let status = machine.execute("query-status")
        #expect(status.id == 1)
        #expect(status.send == nil)

        let onGreeting = machine.receive(line: Self.greeting.utf8)
        #expect(onGreeting.count == 1, "only qmp_capabilities goes out before ready: \(onGreeting)")

        let stop = machine.execute("stop", arguments: ["reason": "test"])
        #expect(stop.id == 2)
        #expect(stop.send == nil, "a command issued during negotiation waits too")

        let onReady = machine.receive(line: Self.capabilitiesAccepted.utf8)
        try #require(onReady.count == 3)
        #expect(onReady[0] == .ready(Self.parsedGreeting))
        let sent = try onReady.dropFirst().map { try Self.command(in: try #require($0.sentLine)) }
        #expect(
            sent == [
                ["execute": "query-status", "id": 1],
                ["execute": "stop", "arguments": ["reason": "test"], "id": 2],
            ]
        )
        #expect(machine.receive(line: #"{"return": {}, "id": 2}"#.utf8) == [.complete(id: 2, result: .success([:]))])
        #expect(machine.receive(line: #"{"return": {}, "id": 1}"#.utf8) == [.complete(id: 1, result: .success([:]))])
    }

    @Test("Once ready, a command is sent at once with its arguments and a fresh id")
    func readyCommandsAreSentAtOnce() throws {
        var machine = try Self.readyMachine()
        let first = machine.execute("migrate", arguments: ["uri": "fd:migrate", "detach": true])
        let second = machine.execute("query-migrate")
        #expect(first.id == 1)
        #expect(second.id == 2)
        #expect(
            try Self.command(in: try #require(first.send))
                == ["execute": "migrate", "arguments": ["uri": "fd:migrate", "detach": true], "id": 1]
        )
        #expect(try Self.command(in: try #require(second.send)) == ["execute": "query-migrate", "id": 2])
    }

    @Test("A failed qmp_capabilities closes the machine: queued commands fail and it never becomes ready")
    func capabilitiesFailureCloses() throws {
        var machine = QMPProtocol()
        let queued = machine.execute("query-status").id
        _ = machine.receive(line: Self.greeting.utf8)

        let actions = machine.receive(
            line: #"{"error": {"class": "GenericError", "desc": "Capability 'oob' not available"}, "id": 0}"#.utf8
        )
        try #require(actions.count == 2, "\(actions)")
        #expect(actions[0].completion?.id == queued)
        let error = try #require(actions[0].failure)
        #expect(error.code == .connectionClosed)
        #expect(error.found.contains("capability negotiation failed"))
        guard case .closeConnection(let closing) = actions[1] else {
            Issue.record("expected the machine to ask for the connection to close, got \(actions[1])")
            return
        }
        #expect(closing.code == .connectFailed)
        #expect(closing.found.contains("Capability 'oob' not available"))
        #expect(!machine.isReady)

        // A late success does not revive it, and nothing queued is ever sent.
        let late = machine.receive(line: Self.capabilitiesAccepted.utf8)
        #expect(late.count == 1)
        #expect(late.first?.violation?.code == .unexpectedMessage)
        #expect(!machine.isReady)
    }

    @Test("A second greeting is a violation and changes nothing", arguments: [false, true])
    func secondGreetingIsViolation(whenReady: Bool) throws {
        var machine = QMPProtocol()
        _ = machine.receive(line: Self.greeting.utf8)
        if whenReady {
            _ = machine.receive(line: Self.capabilitiesAccepted.utf8)
        }
        let actions = machine.receive(line: Self.greeting.utf8)
        try #require(actions.count == 1, "\(actions)")
        #expect(actions[0].violation?.code == .unexpectedMessage)
        #expect(machine.isReady == whenReady)
        if !whenReady {
            #expect(machine.receive(line: Self.capabilitiesAccepted.utf8) == [.ready(Self.parsedGreeting)])
        }
    }

    // MARK: - Replies

    @Test("Replies are matched by id, in whatever order they come")
    func outOfOrderRepliesMatchByID() throws {
        var machine = try Self.readyMachine()
        let status = machine.execute("query-status").id
        let name = machine.execute("query-name").id
        let kvm = machine.execute("query-kvm").id

        #expect(
            machine.receive(line: #"{"return": {"name": "vm1"}, "id": \#(name)}"#.utf8)
                == [.complete(id: name, result: .success(["name": "vm1"]))]
        )
        #expect(
            machine.receive(line: #"{"return": {"enabled": false, "present": true}, "id": \#(kvm)}"#.utf8)
                == [.complete(id: kvm, result: .success(["enabled": false, "present": true]))]
        )
        #expect(
            machine.receive(line: #"{"return": {"status": "running", "running": true}, "id": \#(status)}"#.utf8)
                == [.complete(id: status, result: .success(["status": "running", "running": true]))]
        )
    }

    @Test("An error reply fails the command with commandFailed naming the QMP error class and description")
    func errorReplyFailsCommand() throws {
        var machine = try Self.readyMachine()
        let other = machine.execute("query-status").id
        let id = machine.execute("device_del", arguments: ["id": "nope"]).id
        let actions = machine.receive(
            line: #"{"error": {"class": "DeviceNotFound", "desc": "Device 'nope' not found"}, "id": \#(id)}"#.utf8
        )
        try #require(actions.count == 1, "\(actions)")
        #expect(actions[0].completion?.id == id)
        let error = try #require(actions[0].failure)
        #expect(error.code == .commandFailed)
        #expect(error.found.contains("DeviceNotFound"))
        #expect(error.found.contains("Device 'nope' not found"))
        #expect(error.expected.contains("device_del"))

        // The other command is still outstanding.
        #expect(
            machine.receive(line: #"{"return": {}, "id": \#(other)}"#.utf8)
                == [.complete(id: other, result: .success([:]))]
        )
    }

    @Test(
        "A line that is not a reply fails the oldest outstanding command; later commands still complete",
        arguments: [
            "this is not JSON",
            "",
            "[1, 2, 3]",
            #"{"hello": "world"}"#,
            #"{"return": {}}"#,
            #"{"return": {}, "id": "1"}"#,
            #"{"return": {}, "id": -1}"#,
        ]
    )
    func malformedLineFailsOldest(line: String) throws {
        var machine = try Self.readyMachine()
        let oldest = machine.execute("query-status").id
        let next = machine.execute("query-name").id

        let actions = machine.receive(line: line.utf8)
        try #require(actions.count == 1, "\(actions)")
        #expect(actions[0].completion?.id == oldest)
        #expect(actions[0].failure?.code == .malformedMessage)

        #expect(
            machine.receive(line: #"{"return": {"name": "vm1"}, "id": \#(next)}"#.utf8)
                == [.complete(id: next, result: .success(["name": "vm1"]))]
        )
        // The failed command is not completed a second time by a late reply.
        #expect(machine.receive(line: #"{"return": {}, "id": \#(oldest)}"#.utf8).first?.violation != nil)
        // And the connection still works.
        let later = machine.execute("query-kvm").id
        #expect(
            machine.receive(line: #"{"return": {}, "id": \#(later)}"#.utf8)
                == [.complete(id: later, result: .success([:]))]
        )
    }

    @Test("A malformed line with nothing outstanding is a violation", arguments: ["this is not JSON", "42"])
    func malformedLineWithNothingOutstanding(line: String) throws {
        var machine = try Self.readyMachine()
        let actions = machine.receive(line: line.utf8)
        try #require(actions.count == 1, "\(actions)")
        #expect(actions[0].violation?.code == .malformedMessage)
        #expect(machine.isReady)
    }

    @Test("A malformed answer to qmp_capabilities fails the negotiation instead of hanging it")
    func malformedLineDuringNegotiationFailsIt() throws {
        var machine = QMPProtocol()
        let queued = machine.execute("query-status").id
        _ = machine.receive(line: Self.greeting.utf8)

        let actions = machine.receive(line: "garbage".utf8)
        try #require(actions.count == 2, "\(actions)")
        #expect(actions[0].completion?.id == queued)
        #expect(actions[0].failure?.code == .connectionClosed)
        guard case .closeConnection(let error) = actions[1] else {
            Issue.record("expected a close, got \(actions[1])")
            return
        }
        #expect(error.code == .connectFailed)
        #expect(error.found.contains("malformed"))
        #expect(!machine.isReady)
    }

    @Test(
        "A reply with an id nothing waits for is a violation; outstanding commands are untouched",
        arguments: [
            #"{"return": {}, "id": 99}"#,
            #"{"error": {"class": "GenericError", "desc": "late"}, "id": 99}"#,
            #"{"return": {}, "id": 0}"#,
        ]
    )
    func unknownReplyIDIsViolation(line: String) throws {
        var machine = try Self.readyMachine()
        let id = machine.execute("query-status").id

        let actions = machine.receive(line: line.utf8)
        try #require(actions.count == 1, "\(actions)")
        let violation = try #require(actions[0].violation)
        #expect(violation.code == .unexpectedMessage)

        #expect(
            machine.receive(line: #"{"return": {}, "id": \#(id)}"#.utf8) == [.complete(id: id, result: .success([:]))]
        )
    }

    @Test("Unframable input (an overlong line) fails the oldest outstanding command with the shell's error")
    func unframableInputFailsOldest() throws {
        var machine = try Self.readyMachine()
        let oldest = machine.execute("query-status").id
        _ = machine.execute("query-name")
        let tooLong = HypervisorError(.messageTooLong, expected: "a short line", found: "5000000 bytes")
        #expect(machine.receiveUnframable(tooLong) == [.complete(id: oldest, result: .failure(tooLong))])
    }

    @Test("Replies keep 64-bit integers beyond 2^53 exact")
    func repliesKeepLargeIntegersExact() throws {
        var machine = try Self.readyMachine()
        let id = machine.execute("query-migrate").id
        let ram = #"{"transferred": 9007199254740993, "total": 9223372036854775807}"#
        let reply = #"{"return": {"ram": \#(ram)}, "id": \#(id)}"#
        let actions = machine.receive(line: reply.utf8)
        #expect(
            actions == [
                .complete(
                    id: id,
                    result: .success(["ram": ["transferred": .int(9_007_199_254_740_993), "total": .int(.max)]])
                )
            ]
        )
    }

    // MARK: - Events

    @Test("Events carry name, data and timestamp, and do not complete commands")
    func eventsAreParsed() throws {
        var machine = QMPProtocol()
        _ = machine.receive(line: Self.greeting.utf8)
        // An event may arrive during negotiation.
        #expect(
            machine.receive(line: #"{"event": "RESUME"}"#.utf8)
                == [.event(QMPProtocol.Event(name: "RESUME", data: .null, timestamp: nil))]
        )
        _ = machine.receive(line: Self.capabilitiesAccepted.utf8)
        let id = machine.execute("migrate", arguments: ["uri": "fd:out"]).id

        let line =
            #"{"timestamp": {"seconds": 1700000000, "microseconds": 250000}, "event": "MIGRATION", "data": {"status": "completed"}}"#
        #expect(
            machine.receive(line: line.utf8)
                == [
                    .event(
                        QMPProtocol.Event(name: "MIGRATION", data: ["status": "completed"], timestamp: 1_700_000_000.25)
                    )
                ]
        )
        #expect(
            machine.receive(line: #"{"return": {}, "id": \#(id)}"#.utf8) == [.complete(id: id, result: .success([:]))]
        )
    }

    // MARK: - Closing

    @Test("close fails every outstanding command, queued or sent, oldest first, with connectionClosed")
    func closeFailsEveryOutstandingCommand() throws {
        var machine = QMPProtocol()
        let queued = machine.execute("query-status").id
        _ = machine.receive(line: Self.greeting.utf8)
        _ = machine.receive(line: Self.capabilitiesAccepted.utf8)
        let stop = machine.execute("stop").id
        let answered = machine.execute("query-name").id
        let cont = machine.execute("cont").id
        _ = machine.receive(line: #"{"return": {}, "id": \#(answered)}"#.utf8)

        let actions = machine.close(reason: "test hung up")
        #expect(actions.map { $0.completion?.id } == [queued, stop, cont])
        for (action, command) in zip(actions, ["query-status", "stop", "cont"]) {
            let error = try #require(action.failure)
            #expect(error.code == .connectionClosed)
            #expect(error.found.contains("test hung up"))
            #expect(error.expected.contains(command))
        }
        #expect(!machine.isReady)
        #expect(machine.close(reason: "again").isEmpty, "nothing is failed twice")
        #expect(machine.receive(line: #"{"return": {}, "id": \#(stop)}"#.utf8).first?.violation != nil)
    }

    @Test("close before the greeting fails queued commands, and nothing is sent afterwards")
    func closeBeforeReadyFailsQueuedCommands() throws {
        var machine = QMPProtocol()
        let id = machine.execute("query-status").id
        let actions = machine.close(reason: "QEMU exited")
        #expect(actions.count == 1)
        #expect(actions.first?.completion?.id == id)
        #expect(actions.first?.failure?.code == .connectionClosed)

        let afterwards = machine.receive(line: Self.greeting.utf8)
        #expect(!afterwards.contains { $0.sentLine != nil }, "\(afterwards)")
        #expect(!machine.isReady)
    }
}

// MARK: - LineDecoder

/// `LineDecoder` in a `ByteToMessageHandler` on an `EmbeddedChannel`, with a 16-byte limit.
@Suite("LineDecoder")
struct LineDecoderTests {
    static func makeChannel() throws -> EmbeddedChannel {
        let channel = EmbeddedChannel()
        try channel.pipeline.syncOperations.addHandler(ByteToMessageHandler(LineDecoder(maximumLength: 16)))
        return channel
    }

    static func line(_ text: String) -> DecodedLine {
        .line(ByteBuffer(string: text))
    }

    /// Writes `chunks` one read at a time and returns every decoded line so far.
    static func decode(_ chunks: [String], on channel: EmbeddedChannel) throws -> [DecodedLine] {
        var decoded: [DecodedLine] = []
        for chunk in chunks {
            try channel.writeInbound(ByteBuffer(string: chunk))
            while let line = try channel.readInbound(as: DecodedLine.self) {
                decoded.append(line)
            }
        }
        return decoded
    }

    @Test("Lines end at LF; one CR before it is stripped, other CRs are kept")
    func crlfIsStripped() throws {
        let channel = try Self.makeChannel()
        let lines = try Self.decode(["abc\r\ndef\n\r\n\nx\ry\n\r\r\n"], on: channel)
        #expect(lines == ["abc", "def", "", "", "x\ry", "\r"].map(Self.line))
        #expect(try channel.finish().isClean)
    }

    @Test(
        "Input split anywhere decodes to the same lines",
        arguments: [
            ["qu", "ery\r", "\nne", "xt\n"],
            ["query\r\nnext\n"],
            "query\r\nnext\n".unicodeScalars.map { String($0) },
        ]
    )
    func splitInput(chunks: [String]) throws {
        let channel = try Self.makeChannel()
        #expect(try Self.decode(chunks, on: channel) == [Self.line("query"), Self.line("next")])
        #expect(try channel.finish().isClean)
    }

    @Test(
        "A line of exactly the limit is a line; one byte more is overlong, whole or in pieces",
        arguments: [
            (["0123456789abcdef\n"], LineDecoderTests.line("0123456789abcdef")),
            (["0123456789abcdef", "\n"], LineDecoderTests.line("0123456789abcdef")),
            (["0123456789abcdefg\n"], DecodedLine.overlong(17)),
            (["0123456789abcdefg", "\n"], DecodedLine.overlong(17)),
        ]
    )
    func limitBoundary(chunks: [String], expected: DecodedLine) throws {
        let channel = try Self.makeChannel()
        #expect(try Self.decode(chunks, on: channel) == [expected])
        #expect(try channel.finish().isClean)
    }

    @Test("An overlong line is skipped and reported with its length; the next line decodes")
    func overlongLineIsSkipped() throws {
        let channel = try Self.makeChannel()
        #expect(try Self.decode(["0123456789abcdefXYZ\nok\n"], on: channel) == [.overlong(19), Self.line("ok")])
        #expect(try channel.finish().isClean)
    }

    @Test("An overlong line arriving in pieces is discarded as it comes, then reported once")
    func overlongLineInPieces() throws {
        let channel = try Self.makeChannel()
        #expect(try Self.decode(["0123456789abcdefXYZ", "more", "bytes"], on: channel).isEmpty)
        #expect(try Self.decode(["!\r\nok\r\n"], on: channel) == [.overlong(30), Self.line("ok")])
        #expect(try channel.finish().isClean)
    }

    @Test(
        "At EOF a last line without a newline is still delivered; an overlong one is reported",
        arguments: [
            ("abc\ndef", [LineDecoderTests.line("abc"), LineDecoderTests.line("def")]),
            ("abc\n", [LineDecoderTests.line("abc")]),
            ("0123456789abcdefXYZ", [DecodedLine.overlong(19)]),
        ]
    )
    func lastLineAtEOF(input: String, expected: [DecodedLine]) throws {
        let channel = try Self.makeChannel()
        var decoded = try Self.decode([input], on: channel)
        channel.pipeline.fireChannelInactive()
        while let line = try channel.readInbound(as: DecodedLine.self) {
            decoded.append(line)
        }
        #expect(decoded == expected)
        #expect(try channel.finish().isClean)
    }
}

// MARK: - JSONValue

@Suite("JSONValue")
struct JSONValueTests {
    static let beyondDoublePrecision: Int64 = (1 << 53) + 1

    @Test(
        "Encoding then decoding gives the same value",
        arguments: [
            JSONValue.null,
            .bool(true),
            .bool(false),
            .int(0),
            .int(1),
            .int(-1),
            .int(JSONValueTests.beyondDoublePrecision),
            .int(-JSONValueTests.beyondDoublePrecision),
            .int(.max),
            .int(.min),
            .double(1.5),
            .double(-0.25),
            .string(""),
            .string("quote \" backslash \\ slash / newline \n tab \t é 🚀"),
            .array([]),
            .object([:]),
            [1, "two", [.double(3.5)], ["four": .null], true] as JSONValue,
            [
                "ram": ["transferred": .int(JSONValueTests.beyondDoublePrecision), "status": "active"],
                "list": [[:], []],
            ],
        ]
    )
    func roundTrip(value: JSONValue) throws {
        let data = try JSONEncoder().encode(value)
        #expect(try JSONDecoder().decode(JSONValue.self, from: data) == value)
    }

    @Test("Integers beyond 2^53 are read and written digit for digit")
    func largeIntegersAreExact() throws {
        let decoded = try JSONDecoder().decode(JSONValue.self, from: Data("[9007199254740993, -9007199254740993]".utf8))
        #expect(decoded == [.int(Self.beyondDoublePrecision), .int(-Self.beyondDoublePrecision)])
        let encoded = try JSONEncoder().encode(JSONValue.int(Self.beyondDoublePrecision))
        #expect(String(decoding: encoded, as: UTF8.self) == "9007199254740993")
    }

    @Test("Accessors read the matching case only")
    func accessors() {
        let value: JSONValue = ["name": "vm1", "count": 3, "ratio": .double(2.0), "half": .double(0.5), "on": true]
        #expect(value["name"]?.stringValue == "vm1")
        #expect(value["count"]?.intValue == 3)
        #expect(value["ratio"]?.intValue == 2)
        #expect(value["half"]?.intValue == nil)
        #expect(value["on"]?.boolValue == true)
        #expect(value["on"]?.intValue == nil)
        #expect(value["count"]?.stringValue == nil)
        #expect(value["missing"] == nil)
        #expect(JSONValue.string("x")["name"] == nil)
    }
}

// MARK: - Helpers

extension QMPProtocol.Action {
    /// The bytes of a `.send`.
    fileprivate var sentLine: [UInt8]? {
        if case .send(let bytes) = self { return bytes }
        return nil
    }

    /// The id and result of a `.complete`.
    fileprivate var completion: (id: UInt64, result: Result<JSONValue, HypervisorError>)? {
        if case .complete(let id, let result) = self { return (id, result) }
        return nil
    }

    /// The error of a failed `.complete`.
    fileprivate var failure: HypervisorError? {
        if case .complete(_, .failure(let error)) = self { return error }
        return nil
    }

    /// The error of a `.violation`.
    fileprivate var violation: HypervisorError? {
        if case .violation(let error) = self { return error }
        return nil
    }
}
