import DWCPTransport
import Foundation
import Testing

@Suite("Control connections")
struct ControlChannelTests {
    /// Runs `body` with a client connection to an echo server on a free loopback port.
    func withEchoConnection(_ body: (ControlConnection) async throws -> Void) async throws {
        try await withEchoServer { port in
            try await ControlChannel.withConnection(
                host: "127.0.0.1", port: port, security: .insecurePlaintext, nodeName: "client", body)
        }
    }

    /// Serves an echo handler on a free loopback port for the duration of `body`.
    func withEchoServer(
        helloTimeout: Duration = ControlChannel.helloTimeout, _ body: (Int) async throws -> Void
    ) async throws {
        let (ports, continuation) = AsyncStream<Int>.makeStream()
        let server = Task {
            try await ControlChannel.serve(
                host: "127.0.0.1", port: 0, security: .insecurePlaintext, nodeName: "server",
                helloTimeout: helloTimeout, onListening: { continuation.yield($0) }
            ) { connection in
                while let message = try? await connection.receive() {
                    try? await connection.send(Array(message.reversed()) + Array(connection.peerName.utf8))
                }
            }
        }
        defer { server.cancel() }
        var iterator = ports.makeAsyncIterator()
        let port = try #require(await iterator.next())
        try await body(port)
    }

    @Test("Messages go both ways in order, and each side knows the other's node name")
    func roundTrip() async throws {
        try await withEchoConnection { connection in
            #expect(connection.peerName == "server")
            for message in [[1, 2, 3], [], Array(repeating: 7, count: ControlChannel.maximumMessageLength - 6)]
                as [[UInt8]]
            {
                try await connection.send(message)
                let answer = try await connection.receive()
                #expect(answer == Array(message.reversed()) + Array("client".utf8))
            }
        }
    }

    @Test("A message over the limit is refused before it is sent; the connection stays usable")
    func oversizedMessage() async throws {
        try await withEchoConnection { connection in
            await #expect(throws: TransportError.self) {
                try await connection.send(Array(repeating: 0, count: ControlChannel.maximumMessageLength + 1))
            }
            try await connection.send([9])
            #expect(try await connection.receive() == [9] + Array("client".utf8))
        }
    }

    @Test("Nobody listening: a connection failure, not a hang")
    func nobodyListening() async throws {
        await #expect(throws: TransportError.self) {
            try await ControlChannel.withConnection(
                host: "127.0.0.1", port: 1, security: .insecurePlaintext, nodeName: "client"
            ) { _ in }
        }
    }

    @Test(
        "A peer that accepts TCP and never speaks: a stalled error after the hello timeout, not a hang",
        .timeLimit(.minutes(1)))
    func silentPeer() async throws {
        // A listening socket nobody accepts on: the kernel completes TCP, nothing answers the hello.
        let listener = socket(AF_INET, Int32(SOCK_STREAM.rawValue), 0)
        try #require(listener >= 0)
        defer { close(listener) }
        var address = SilentClient.loopback(port: 0)
        var length = socklen_t(MemoryLayout<sockaddr_in>.size)
        let bound = withUnsafeMutablePointer(to: &address) {
            $0.withMemoryRebound(to: sockaddr.self, capacity: 1) {
                bind(listener, $0, length) == 0 && listen(listener, 4) == 0 && getsockname(listener, $0, &length) == 0
            }
        }
        try #require(bound)
        let port = Int(UInt16(bigEndian: address.sin_port))
        let started = ContinuousClock.now
        do {
            try await ControlChannel.withConnection(
                host: "127.0.0.1", port: port, security: .insecurePlaintext, nodeName: "client",
                helloTimeout: .milliseconds(300)
            ) { _ in }
            Issue.record("a silent peer completed the hello")
        } catch let error as TransportError {
            #expect(error.code == .stalled, "\(error)")
        }
        // Generous: on 2 cores the suite's other tests can delay the timer by seconds (9 s seen in CI).
        #expect(ContinuousClock.now - started < .seconds(45))
    }

    @Test(
        "A client that connects and never speaks is closed after the hello timeout; others are still served",
        .timeLimit(.minutes(1)))
    func silentClient() async throws {
        // 2 s: long enough that the real client after it, on a loaded machine, still gets through its hello.
        try await withEchoServer(helloTimeout: .seconds(2)) { port in
            let silent = try #require(SilentClient(port: port))
            // Without the bound the server would hold the connection (and a task) as long as the client does.
            #expect(await silent.closedByPeer(within: .seconds(20)))
            try await ControlChannel.withConnection(
                host: "127.0.0.1", port: port, security: .insecurePlaintext, nodeName: "client"
            ) { connection in
                try await connection.send([1, 2])
                #expect(try await connection.receive() == [2, 1] + Array("client".utf8))
            }
        }
    }
}
