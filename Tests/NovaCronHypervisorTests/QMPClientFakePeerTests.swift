import Foundation
import NIOCore
import NIOPosix
import Testing

@testable import NovaCronHypervisor

#if canImport(Glibc)
    import Glibc
#endif

/// `QMPClient` against a fake QEMU on a real unix socket: the peer sends QEMU 7.2's greeting, accepts
/// `qmp_capabilities`, then follows each test's script.
@Suite("QMP client against a fake QMP peer", .timeLimit(.minutes(1)))
struct QMPClientFakePeerTests {
    @Test("A command's return value comes back, after the greeting was recorded")
    func commandReturnsValue() async throws {
        let status = try await FakeQMPPeer.run { peer in
            let command = try await peer.expectCommand("query-status")
            #expect(command.arguments == nil)
            let status = #"{"status": "running", "singlestep": false, "running": true}"#
            try await peer.reply(to: command, returning: status)
            return .waitForClientToClose
        } client: { client in
            #expect(await client.greeting == QMPProtocol.Greeting(version: "7.2.0", capabilities: ["oob"]))
            return try await client.execute("query-status")
        }
        #expect(status == ["status": "running", "singlestep": false, "running": true])
    }

    @Test("An error reply fails the command with commandFailed carrying QEMU's class and description")
    func errorReplyFailsCommand() async throws {
        try await FakeQMPPeer.run { peer in
            let command = try await peer.expectCommand("device_del")
            #expect(command.arguments == ["id": "nope"])
            try await peer.send(
                #"{"error": {"class": "DeviceNotFound", "desc": "Device 'nope' not found"}, "id": \#(command.id)}"#
            )
            return .waitForClientToClose
        } client: { client in
            let error = await #expect(throws: HypervisorError.self) {
                try await client.execute("device_del", ["id": "nope"])
            }
            #expect(error?.code == .commandFailed)
            #expect(error?.found.contains("DeviceNotFound") == true)
            #expect(error?.found.contains("Device 'nope' not found") == true)
        }
    }

    @Test("A malformed reply fails the command with malformedMessage; the next command on the connection works")
    func malformedReplyThenNextCommandWorks() async throws {
        try await FakeQMPPeer.run { peer in
            _ = try await peer.expectCommand("query-status")
            try await peer.send("this is not JSON")
            let next = try await peer.expectCommand("query-name")
            try await peer.reply(to: next, returning: #"{"name": "vm1"}"#)
            return .waitForClientToClose
        } client: { client in
            let error = await #expect(throws: HypervisorError.self) { try await client.execute("query-status") }
            #expect(error?.code == .malformedMessage)
            #expect(error?.found.contains("this is not JSON") == true)

            let name = try await client.execute("query-name")
            #expect(name == ["name": "vm1"])
            #expect(await client.violations.isEmpty)
        }
    }

    @Test("A reply with an unexpected id is recorded as a violation and the connection carries on")
    func unexpectedReplyIDIsRecorded() async throws {
        try await FakeQMPPeer.run { peer in
            let first = try await peer.expectCommand("query-status")
            try await peer.send(#"{"return": {"stale": true}, "id": 4242}"#)
            try await peer.reply(to: first, returning: #"{"status": "paused", "running": false}"#)
            let second = try await peer.expectCommand("cont")
            try await peer.reply(to: second, returning: "{}")
            return .waitForClientToClose
        } client: { client in
            let status = try await client.execute("query-status")
            #expect(status == ["status": "paused", "running": false])
            // The stray line came before the reply, and lines are handled in order.
            let violations = await client.violations
            #expect(violations.count == 1)
            #expect(violations.first?.code == .unexpectedMessage)
            #expect(violations.first?.found.contains("4242") == true)

            let resumed = try await client.execute("cont")
            #expect(resumed == [:])
        }
    }

    @Test("An event sent while a command is outstanding arrives on events; the command still completes")
    func eventArrivesOnEvents() async throws {
        try await FakeQMPPeer.run { peer in
            let command = try await peer.expectCommand("stop")
            try await peer.send(
                #"{"timestamp": {"seconds": 1700000000, "microseconds": 500000}, "event": "STOP"}"#
            )
            try await peer.reply(to: command, returning: "{}")
            return .waitForClientToClose
        } client: { client in
            var events = client.events.makeAsyncIterator()
            let stopped = try await client.execute("stop")
            #expect(stopped == [:])
            let event = await events.next()
            #expect(event == QMPProtocol.Event(name: "STOP", data: .null, timestamp: 1_700_000_000.5))
        }
    }

    @Test("Events arrive in order, and events finishes when the peer closes the connection")
    func eventsFinishWhenPeerCloses() async throws {
        try await FakeQMPPeer.run { peer in
            try await peer.send(
                #"{"event": "MIGRATION", "data": {"status": "active"}, "timestamp": {"seconds": 1, "microseconds": 0}}"#
            )
            try await peer.send(
                #"{"event": "MIGRATION", "data": {"status": "completed"}, "timestamp": {"seconds": 2, "microseconds": 0}}"#
            )
            return .closeConnection
        } client: { client in
            var received: [QMPProtocol.Event] = []
            for await event in client.events {
                received.append(event)
            }
            #expect(
                received == [
                    QMPProtocol.Event(name: "MIGRATION", data: ["status": "active"], timestamp: 1),
                    QMPProtocol.Event(name: "MIGRATION", data: ["status": "completed"], timestamp: 2),
                ]
            )
        }
    }

    @Test("The peer closing mid-command fails it with connectionClosed; later commands fail at once")
    func peerClosingMidCommand() async throws {
        try await FakeQMPPeer.run { peer in
            _ = try await peer.expectCommand("query-migrate")
            return .closeConnection
        } client: { client in
            let error = await #expect(throws: HypervisorError.self) { try await client.execute("query-migrate") }
            #expect(error?.code == .connectionClosed)
            #expect(error?.expected.contains("query-migrate") == true)

            let later = await #expect(throws: HypervisorError.self) { try await client.execute("query-status") }
            #expect(later?.code == .connectionClosed)
        }
    }

    @Test("A line over maximumLineLength fails the command with messageTooLong; the connection carries on")
    func overlongLineIsSkipped() async throws {
        try await FakeQMPPeer.run { peer in
            let command = try await peer.expectCommand("query-status")
            let padding = String(repeating: "x", count: QMPClient.maximumLineLength)
            try await peer.reply(to: command, returning: "\"\(padding)\"")
            let next = try await peer.expectCommand("query-name")
            try await peer.reply(to: next, returning: #"{"name": "vm1"}"#)
            return .waitForClientToClose
        } client: { client in
            let error = await #expect(throws: HypervisorError.self) { try await client.execute("query-status") }
            #expect(error?.code == .messageTooLong)
            let length = error.flatMap { Int($0.found.prefix { $0.isNumber }) } ?? 0
            #expect(length > QMPClient.maximumLineLength, "reported length in '\(error?.found ?? "")'")

            let name = try await client.execute("query-name")
            #expect(name == ["name": "vm1"])
        }
    }

    /// What is at the socket path when the client tries to connect.
    enum AbsentListener: String, CaseIterable, Sendable {
        /// No file at all (QEMU has not created the socket yet).
        case noSocketFile
        /// A socket file nobody listens on (QEMU died and left it behind).
        case staleSocketFile
    }

    @Test(
        "Connecting where nothing listens fails with connectFailed once connectTimeout has passed",
        arguments: AbsentListener.allCases
    )
    func connectFailsAfterTimeout(listener: AbsentListener) async throws {
        let directory = try FakeQMPPeer.makeDirectory()
        defer { try? FileManager.default.removeItem(atPath: directory) }
        let path = directory + "/qmp.sock"
        if listener == .staleSocketFile {
            try FakeQMPPeer.makeStaleSocket(at: path)
            try #require(FileManager.default.fileExists(atPath: path))
        }

        let timeout = Duration.milliseconds(300)
        let start = ContinuousClock.now
        let error = await #expect(throws: HypervisorError.self) {
            try await QMPClient.withClient(socketPath: path, connectTimeout: timeout) { _ in
                Issue.record("connected to \(path), where nothing listens")
            }
        }
        let elapsed = ContinuousClock.now - start
        #expect(error?.code == .connectFailed)
        #expect(elapsed >= timeout, "gave up after \(elapsed), before the \(timeout) timeout")
        // The upper bound only catches a client that ignores its timeout; it is loose because CI runs
        // this beside QEMU guests and a build on two cores, where scheduling can add seconds.
        #expect(elapsed < timeout + .seconds(30), "took \(elapsed) for a \(timeout) timeout")
    }

    @Test("Connecting stops retrying as soon as the peer is no longer alive")
    func connectStopsWhenPeerIsDead() async throws {
        let directory = try FakeQMPPeer.makeDirectory()
        defer { try? FileManager.default.removeItem(atPath: directory) }
        let path = directory + "/qmp.sock"

        let start = ContinuousClock.now
        let error = await #expect(throws: HypervisorError.self) {
            try await QMPClient.withClient(socketPath: path, connectTimeout: .seconds(30), isPeerAlive: { false }) {
                Issue.record("connected to \(path), where nothing listens: \($0)")
            }
        }
        let elapsed = ContinuousClock.now - start
        #expect(error?.code == .connectFailed)
        #expect(error?.advice == "QEMU has exited")
        #expect(elapsed < .seconds(20), "kept trying for \(elapsed) after the peer died (it was told 30 s)")
    }
}

// MARK: - The fake peer

/// A fake QEMU: a NIO server on a unix socket in a fresh temporary directory that accepts one
/// connection, greets it as QEMU 7.2 does, accepts `qmp_capabilities`, and runs a script.
enum FakeQMPPeer {
    static let greeting =
        #"{"QMP": {"version": {"qemu": {"micro": 0, "minor": 2, "major": 7}, "package": "Debian 1:7.2"}, "capabilities": ["oob"]}}"#

    /// What the peer does once its script returns.
    enum Ending: Sendable {
        /// Keep the connection open until the client closes it (reading nothing more from it).
        case waitForClientToClose
        /// Close the connection now.
        case closeConnection
    }

    /// Runs a fake peer and a `QMPClient` connected to it.
    /// - Parameters:
    ///   - script: What the peer does after negotiation.
    ///   - body: What the client does; it runs inside `QMPClient.withClient`.
    /// - Returns: What `body` returns.
    static func run<Result: Sendable>(
        script: @escaping @Sendable (inout FakeQMPConnection) async throws -> Ending,
        client body: (QMPClient) async throws -> Result
    ) async throws -> Result {
        let directory = try makeDirectory()
        defer { try? FileManager.default.removeItem(atPath: directory) }
        let socketPath = directory + "/qmp.sock"
        let server = try await ServerBootstrap(group: MultiThreadedEventLoopGroup.singleton)
            .bind(unixDomainSocketPath: socketPath) { child in
                child.eventLoop.makeCompletedFuture {
                    try NIOAsyncChannel<ByteBuffer, ByteBuffer>(wrappingChannelSynchronously: child)
                }
            }
        // If the client fails, leaving the group cancels the peer, which then closes the server channel.
        return try await withThrowingTaskGroup(of: Void.self) { group in
            group.addTask {
                do {
                    try await serve(server, script: script)
                } catch is ExpectationFailedError, is CancellationError {
                    // Already recorded, or the test is over.
                } catch {
                    Issue.record(error, "the fake QMP peer failed")
                }
            }
            let result = try await QMPClient.withClient(socketPath: socketPath, connectTimeout: .seconds(10), body)
            try await group.waitForAll()
            return result
        }
    }

    private static func serve(
        _ server: NIOAsyncChannel<NIOAsyncChannel<ByteBuffer, ByteBuffer>, Never>,
        script: @Sendable (inout FakeQMPConnection) async throws -> Ending
    ) async throws {
        try await server.executeThenClose { connections in
            for try await connection in connections {
                try await connection.executeThenClose { inbound, outbound in
                    var peer = FakeQMPConnection(inbound: inbound.makeAsyncIterator(), outbound: outbound)
                    try await peer.send(greeting)
                    let capabilities = try await peer.expectCommand("qmp_capabilities")
                    #expect(capabilities.id == 0)
                    try await peer.reply(to: capabilities, returning: "{}")
                    if try await script(&peer) == .waitForClientToClose {
                        let extra = try await peer.readLine()
                        #expect(extra == nil, "the client sent a line the script did not expect")
                    }
                }
                return
            }
        }
    }

    /// Creates a fresh directory with a short path (unix socket paths are limited to 107 bytes).
    static func makeDirectory() throws -> String {
        let path = FileManager.default.temporaryDirectory
            .appendingPathComponent("qmp-\(UUID().uuidString.prefix(8))").path
        try FileManager.default.createDirectory(atPath: path, withIntermediateDirectories: false)
        return path
    }

    /// Leaves a unix socket file at `path` that nothing listens on: bound, never listening, closed.
    static func makeStaleSocket(at path: String) throws {
        let descriptor = socket(AF_UNIX, Int32(SOCK_STREAM.rawValue), 0)
        try #require(descriptor >= 0)
        defer { close(descriptor) }
        var address = sockaddr_un()
        address.sun_family = sa_family_t(AF_UNIX)
        try #require(path.utf8.count < MemoryLayout.size(ofValue: address.sun_path))
        withUnsafeMutableBytes(of: &address.sun_path) { raw in
            raw.copyBytes(from: path.utf8)
            raw[path.utf8.count] = 0
        }
        let result = withUnsafePointer(to: &address) { pointer in
            pointer.withMemoryRebound(to: sockaddr.self, capacity: 1) {
                bind(descriptor, $0, socklen_t(MemoryLayout<sockaddr_un>.size))
            }
        }
        try #require(result == 0, "bind(\(path)) failed: \(String(cString: strerror(errno)))")
    }
}

/// The peer's side of one QMP connection, as the scripts see it.
struct FakeQMPConnection {
    /// A command the client sent.
    struct Command {
        /// The id to echo.
        var id: Int64
        /// The `arguments` member, if any.
        var arguments: JSONValue?
    }

    private var inbound: NIOAsyncChannelInboundStream<ByteBuffer>.AsyncIterator
    private let outbound: NIOAsyncChannelOutboundWriter<ByteBuffer>
    private var received = ByteBuffer()

    init(
        inbound: NIOAsyncChannelInboundStream<ByteBuffer>.AsyncIterator,
        outbound: NIOAsyncChannelOutboundWriter<ByteBuffer>
    ) {
        self.inbound = inbound
        self.outbound = outbound
    }

    /// The next line from the client without its CRLF, or `nil` when the client closed the connection.
    mutating func readLine() async throws -> String? {
        while true {
            if let newline = received.readableBytesView.firstIndex(of: UInt8(ascii: "\n")) {
                var line = received.readSlice(length: newline - received.readerIndex)!
                received.moveReaderIndex(forwardBy: 1)
                if line.readableBytesView.last == UInt8(ascii: "\r") {
                    line.moveWriterIndex(to: line.writerIndex - 1)
                }
                return String(buffer: line)
            }
            guard var chunk = try await inbound.next() else { return nil }
            received.writeBuffer(&chunk)
        }
    }

    /// Reads the next line and requires it to be the command `name` with a numeric id.
    mutating func expectCommand(_ name: String, sourceLocation: SourceLocation = #_sourceLocation) async throws
        -> Command
    {
        let line = try await readLine()
        let text = try #require(
            line,
            "the client closed the connection instead of sending \(name)",
            sourceLocation: sourceLocation
        )
        let message = try JSONDecoder().decode(JSONValue.self, from: Data(text.utf8))
        try #require(
            message["execute"] == .string(name),
            "expected \(name), got \(text)",
            sourceLocation: sourceLocation
        )
        let id = try #require(message["id"]?.intValue, "no numeric id in \(text)", sourceLocation: sourceLocation)
        return Command(id: id, arguments: message["arguments"])
    }

    /// Sends one line as QEMU does, terminated by CRLF.
    func send(_ line: String) async throws {
        try await outbound.write(ByteBuffer(string: line + "\r\n"))
    }

    /// Answers `command` with `{"return": RESULT, "id": ID}`.
    /// - Parameters:
    ///   - command: The command to answer.
    ///   - result: The JSON text of the return value.
    func reply(to command: Command, returning result: String) async throws {
        try await send(#"{"return": \#(result), "id": \#(command.id)}"#)
    }
}
