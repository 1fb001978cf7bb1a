import NIOCore
import Testing

@testable import DWCPWire

/// Runs a client and a server handshake against each other, returning both final actions.
func handshake(
    client clientVersions: ClosedRange<UInt8>,
    server serverVersions: ClosedRange<UInt8>
) -> (client: HandshakeStateMachine.Action, server: HandshakeStateMachine.Action) {
    var client = HandshakeStateMachine.client(nodeName: "alpha", sessionID: 77, versions: clientVersions)
    var server = HandshakeStateMachine.server(nodeName: "beta", versions: serverVersions)
    let serverAction = server.receive(client.start())
    let reply: DWCPFrame
    switch serverAction {
    case .sendAndEstablish(let frame, _), .sendAndFail(let frame, _):
        reply = frame
    case .send, .establish, .fail:
        Issue.record("the server must answer a hello, got \(serverAction)")
        return (serverAction, serverAction)
    }
    return (client.receive(reply), serverAction)
}

@Suite("Handshake")
struct HandshakeTests {
    @Test(
        "Peers settle on the highest common version",
        arguments: [
            (UInt8(1)...UInt8(1), UInt8(1)...UInt8(1), UInt8(1)),
            (1...3, 2...5, 3),
            (4...9, 1...6, 6),
            (2...2, 1...7, 2),
        ]
    )
    func negotiation(client: ClosedRange<UInt8>, server: ClosedRange<UInt8>, expected: UInt8) {
        let (clientAction, serverAction) = handshake(client: client, server: server)
        guard case .establish(let clientOutcome) = clientAction,
            case .sendAndEstablish(_, let serverOutcome) = serverAction
        else {
            Issue.record("no agreement: client \(clientAction), server \(serverAction)")
            return
        }
        #expect(clientOutcome.version == expected)
        #expect(serverOutcome.version == expected)
        #expect(clientOutcome.peerName == "beta")
        #expect(serverOutcome.peerName == "alpha")
        #expect(serverOutcome.sessionID == 77 && clientOutcome.sessionID == 77)
    }

    @Test("Disjoint versions are rejected on both sides with the reason")
    func noCommonVersion() {
        let (clientAction, serverAction) = handshake(client: 1...2, server: 3...4)
        guard case .sendAndFail(_, let serverError) = serverAction, case .fail(let clientError) = clientAction else {
            Issue.record("expected a rejection, got client \(clientAction), server \(serverAction)")
            return
        }
        #expect(serverError.code == .noCommonVersion)
        #expect(clientError.code == .rejectedByPeer)
        #expect(clientError.found.contains("3...4"))
        #expect(clientError.found.contains("no common version"))
    }

    @Test("Handshake frames use base-version headers whatever the negotiated version")
    func baseVersionHeaders() {
        var client = HandshakeStateMachine.client(nodeName: "alpha", sessionID: 1, versions: 1...5)
        let hello = client.start()
        #expect(hello.version == DWCPFrame.baseVersion)
        var server = HandshakeStateMachine.server(nodeName: "beta", versions: 1...5)
        guard case .sendAndEstablish(let accept, let outcome) = server.receive(hello) else {
            Issue.record("server did not accept")
            return
        }
        #expect(accept.version == DWCPFrame.baseVersion)
        #expect(outcome.version == 5)
        #expect(server.outcome == outcome)
    }

    @Test("A server that gets something other than a hello rejects it")
    func serverRejectsNonHello() {
        var server = HandshakeStateMachine.server(nodeName: "beta")
        let action = server.receive(DWCPFrame(type: .chunk, sessionID: 5, sequence: 1))
        guard case .sendAndFail(let reply, let error) = action else {
            Issue.record("expected a rejection, got \(action)")
            return
        }
        #expect(error.code == .unexpectedFrame)
        #expect(reply.type == .helloReject)
        #expect(reply.sessionID == 5)
        #expect(server.outcome == nil)
    }

    @Test("A malformed hello is rejected, not trusted")
    func malformedHello() {
        var server = HandshakeStateMachine.server(nodeName: "beta")
        var payload = ByteBuffer()
        payload.writeInteger(UInt8(3))
        payload.writeInteger(UInt8(1))  // minimum > maximum
        let action = server.receive(DWCPFrame(type: .hello, sessionID: 5, sequence: 0, payload: payload))
        guard case .sendAndFail(_, let error) = action else {
            Issue.record("expected a rejection, got \(action)")
            return
        }
        #expect(error.code == .malformedPayload)
    }

    @Test("A client that gets an accept for a version it never offered fails")
    func acceptOutsideOfferedRange() {
        var client = HandshakeStateMachine.client(nodeName: "alpha", sessionID: 1, versions: 1...2)
        _ = client.start()
        var payload = ByteBuffer()
        HandshakeMessage.Accept(version: 9, nodeName: "liar").encode(into: &payload)
        let action = client.receive(DWCPFrame(type: .helloAccept, sessionID: 1, sequence: 0, payload: payload))
        guard case .fail(let error) = action else {
            Issue.record("expected a failure, got \(action)")
            return
        }
        #expect(error.code == .noCommonVersion)
        #expect(client.outcome == nil)
    }

    @Test("A client that gets neither accept nor reject fails")
    func clientUnexpectedFrame() {
        var client = HandshakeStateMachine.client(nodeName: "alpha", sessionID: 1)
        _ = client.start()
        guard case .fail(let error) = client.receive(DWCPFrame(type: .ping, sessionID: 1, sequence: 0)) else {
            Issue.record("expected a failure")
            return
        }
        #expect(error.code == .unexpectedFrame)
    }
}

@Suite("Handshake messages")
struct HandshakeMessageTests {
    @Test("Messages round-trip")
    func roundTrips() throws {
        let hello = HandshakeMessage.Hello(versions: 2...7, nodeName: "node-ä-1")
        var buffer = ByteBuffer()
        hello.encode(into: &buffer)
        #expect(try HandshakeMessage.Hello(decoding: buffer) == hello)

        let accept = HandshakeMessage.Accept(version: 3, nodeName: "b")
        buffer.clear()
        accept.encode(into: &buffer)
        #expect(try HandshakeMessage.Accept(decoding: buffer) == accept)

        let reject = HandshakeMessage.Reject(versions: 1...1, reason: "no thanks")
        buffer.clear()
        reject.encode(into: &buffer)
        #expect(try HandshakeMessage.Reject(decoding: buffer) == reject)
    }

    @Test("A hello with fields appended by a later version still parses")
    func trailingFieldsIgnored() throws {
        var buffer = ByteBuffer()
        HandshakeMessage.Hello(versions: 1...4, nodeName: "future").encode(into: &buffer)
        buffer.writeString("extension bytes from version 4")
        #expect(try HandshakeMessage.Hello(decoding: buffer).nodeName == "future")
    }

    @Test("Every truncated hello, accept and reject is a typed error")
    func truncatedMessages() {
        var hello = ByteBuffer()
        HandshakeMessage.Hello(versions: 1...1, nodeName: "truncate-me").encode(into: &hello)
        var accept = ByteBuffer()
        HandshakeMessage.Accept(version: 1, nodeName: "truncate-me").encode(into: &accept)
        var reject = ByteBuffer()
        HandshakeMessage.Reject(versions: 1...1, reason: "truncate-me").encode(into: &reject)
        for length in 0..<hello.readableBytes {
            expectWireError(.malformedPayload) {
                _ = try HandshakeMessage.Hello(decoding: hello.getSlice(at: 0, length: length)!)
            }
        }
        for length in 0..<accept.readableBytes {
            expectWireError(.malformedPayload) {
                _ = try HandshakeMessage.Accept(decoding: accept.getSlice(at: 0, length: length)!)
            }
        }
        for length in 0..<reject.readableBytes {
            expectWireError(.malformedPayload) {
                _ = try HandshakeMessage.Reject(decoding: reject.getSlice(at: 0, length: length)!)
            }
        }
    }

    @Test("Invalid UTF-8 in a name is refused")
    func invalidUTF8() {
        var buffer = ByteBuffer()
        buffer.writeInteger(UInt8(1))
        buffer.writeInteger(UInt8(1))
        buffer.writeInteger(UInt8(2))
        buffer.writeBytes([0xC3, 0x28])
        expectWireError(.malformedPayload) { _ = try HandshakeMessage.Hello(decoding: buffer) }
    }

    @Test("Over-long names are cut at a character boundary within the limit")
    func longNamesAreCut() throws {
        let name = String(repeating: "é", count: 200)  // 400 UTF-8 bytes
        var buffer = ByteBuffer()
        HandshakeMessage.Hello(versions: 1...1, nodeName: name).encode(into: &buffer)
        let decoded = try HandshakeMessage.Hello(decoding: buffer)
        #expect(decoded.nodeName.utf8.count <= HandshakeMessage.maximumNodeNameLength)
        #expect(decoded.nodeName == String(repeating: "é", count: 127))
    }
}
