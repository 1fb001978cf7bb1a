import DWCPTransport
import Foundation
import Logging
import NovaCronHypervisor
import Testing

@testable import NovaCronNode

/// A node agent in this process, over plaintext loopback, asked about an incoming migration on a connection other
/// than the migration's own — what a source does when its migration's connection broke after the guest paused.
/// Nothing here starts a QEMU: the negotiation only opens the data receiver.
@Suite("An incoming migration asked about on a new connection")
struct RemoveIncomingTests {
    /// Runs `body` with the port of an agent whose state lives in a fresh directory.
    func withAgent(_ body: (Int) async throws -> Void) async throws {
        let directory = "/tmp/nc-remove-\(UUID().uuidString.prefix(8))"
        defer { try? FileManager.default.removeItem(atPath: directory) }
        try FileManager.default.createDirectory(atPath: directory, withIntermediateDirectories: true)
        let agent = try NodeAgent(
            configuration: .init(
                host: "127.0.0.1", port: 0, security: .insecurePlaintext, nodeName: "b", stateDirectory: directory),
            logger: Logger(label: "test"))
        let (ports, continuation) = AsyncStream<Int>.makeStream()
        let server = Task { try await agent.run(onListening: { continuation.yield($0) }) }
        defer { server.cancel() }
        var iterator = ports.makeAsyncIterator()
        try await body(try #require(await iterator.next()))
    }

    func connect<Result>(_ port: Int, _ body: (ControlConnection) async throws -> Result) async throws -> Result {
        try await ControlChannel.withConnection(
            host: "127.0.0.1", port: port, security: .insecurePlaintext, nodeName: "a", body)
    }

    /// The failure code of `request`'s answer (nil: it succeeded).
    func failureCode(of request: AgentRequest, on connection: ControlConnection) async throws -> String? {
        try await connection.send(request)
        do {
            _ = try await connection.reply(timeout: .seconds(10))
            return nil
        } catch let failure as AgentFailure {
            return failure.code
        }
    }

    func negotiation(id: String, kernel: String) -> AgentRequest {
        .negotiate(
            IncomingRequest(id: id, spec: VMSpec(name: "guest", memoryMiB: 64, kernel: kernel), runOnArrival: true))
    }

    @Test("Unknown: said so. Known and not running: removed, then already gone, its name free; its id never reused")
    func removeOnANewConnection() async throws {
        let kernel = FileManager.default.temporaryDirectory.appendingPathComponent("nc-kernel-\(UUID())").path
        try Data([0]).write(to: URL(fileURLWithPath: kernel))
        defer { try? FileManager.default.removeItem(atPath: kernel) }
        try await withAgent { port in
            let unknown = try await connect(port) {
                try await failureCode(of: .removeIncoming(id: "never-seen"), on: $0)
            }
            #expect(unknown == AgentFailure.unknownMigration)
            // The migration's own connection stays open (its source has not gone silent yet).
            try await connect(port) { migration in
                try await migration.send(negotiation(id: "m1", kernel: kernel))
                guard case .incomingReady = try await migration.reply(timeout: .seconds(10)) else {
                    Issue.record("the migration was not accepted")
                    return
                }
                let answers = try await connect(port) { other in
                    [
                        try await failureCode(of: .removeIncoming(id: "m1"), on: other),
                        try await failureCode(of: .removeIncoming(id: "m1"), on: other),
                    ]
                }
                #expect(answers == [nil, nil], "removed, then already gone")
                // The migration's own connection learns it was rolled back.
                let prepare = try await failureCode(of: .prepareIncoming, on: migration)
                #expect(prepare == "migration")
            }
            let reused = try await connect(port) {
                try await failureCode(of: negotiation(id: "m1", kernel: kernel), on: $0)
            }
            #expect(reused == "invalidRequest", "an id is never negotiated twice")
            let next = try await connect(port) {
                try await failureCode(of: negotiation(id: "m2", kernel: kernel), on: $0)
            }
            #expect(next == nil, "the VM's name is free again")
        }
    }
}
