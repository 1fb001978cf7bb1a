import Crypto
import DWCPWire
import Foundation
import NIOCore
import NIOPosix
import Synchronization
import Testing

@testable import DWCPTransport

/// Who waits for TLS's goodbye at the end of a session. `novacron receive` exits right after a successful receive,
/// so the sender's last answer must have left by then; the sender's data streams have nothing left to deliver
/// after its success, and do not wait.
@Suite("Goodbyes at the end of a session", .timeLimit(.minutes(1)))
struct GoodbyeTests {
    /// SHA-256 of no bytes.
    static let emptyDigest = SessionMessage.Digest(bytes: Array(SHA256.hash(data: [UInt8]())))

    @Test("A successful receive returns only after the sender has read its last answer and closed")
    func receiveWaitsForTheSendersGoodbye() async throws {
        let scratch = try LoopbackTransferTests.Scratch(size: 0)
        defer { scratch.remove() }
        let (receiver, port) = await LoopbackTransferTests.startReceiver(scratch)
        // The sender's side on an event loop of its own, which the test stalls.
        let group = MultiThreadedEventLoopGroup(numberOfThreads: 1)
        let control = try await TransportConnection.connect(
            host: "127.0.0.1", port: port, security: .mutualTLS(LoopbackTransferTests.senderIdentity),
            serverName: nil, nodeName: "sender", congestionControl: .systemDefault, faults: nil, group: group)
        let stalledUntil = Mutex<ContinuousClock.Instant?>(nil)
        try await control.executeThenClose { inbound, outbound in
            var iterator = inbound.makeAsyncIterator()
            let offer = SessionMessage.Offer(
                transferID: (0..<16).map { _ in UInt8.random(in: 0...255) }, name: "empty.bin", totalBytes: 0,
                blockSize: 1 << 20, resume: false)
            _ = try await TransportConnection.sayHello(
                inbound: &iterator, outbound: outbound, nodeName: "sender", peer: "receiver",
                pipelined: [
                    DWCPFrame(type: .control, sessionID: 0, sequence: 0, payload: SessionMessage.offer(offer).encoded)
                ])
            guard case .accept(let accept) = try await TransferClient.nextMessage(&iterator, peer: "receiver") else {
                Issue.record("the empty object was not accepted")
                return
            }
            let finish = SessionMessage.finish(object: 0, totalBlocks: 0, totalBytes: 0, sha256: Self.emptyDigest)
            // The loop is held until the finish and the stall after it are both queued: it then runs them in one
            // turn, with no read in between, so the receiver's answer and its close wait, unread, for a second.
            let gate = Mutex((held: false, queued: false))
            control.channel.eventLoop.execute {
                gate.withLock { $0.held = true }
                while !gate.withLock({ $0.queued }) { usleep(1000) }
            }
            while !gate.withLock({ $0.held }) { try await Task.sleep(for: .milliseconds(1)) }
            try await outbound.write(
                DWCPFrame(type: .control, sessionID: accept.sessionID, sequence: 0, payload: finish.encoded))
            control.channel.eventLoop.execute {
                Thread.sleep(forTimeInterval: 1)
                stalledUntil.withLock { $0 = .now }
            }
            gate.withLock { $0.queued = true }
            let report = try await receiver.value
            let returned = ContinuousClock.now
            let resumed = try #require(stalledUntil.withLock { $0 }, "receive returned while the sender was stalled")
            #expect(returned > resumed)
            #expect(report.objects.count == 1 && report.bytes == 0)
            guard case .complete = try await TransferClient.nextMessage(&iterator, peer: "receiver") else {
                Issue.record("the sender did not read its answer")
                return
            }
        }
        try await group.shutdownGracefully()
    }

    @Test("A connection closed without a goodbye is closed at once, though its peer is not answering")
    func closeWithoutGoodbye() async throws {
        // The receiving end on an event loop of its own, which the test stalls.
        let group = MultiThreadedEventLoopGroup(numberOfThreads: 1)
        let (listener, tlsContext) = try await TransportConnection.listen(
            host: "127.0.0.1", port: 0, security: .mutualTLS(LoopbackTransferTests.receiverIdentity), group: group)
        let port = try #require(listener.channel.localAddress?.port)
        let receiving = Task {
            try await listener.executeThenClose { connections in
                var accepted = connections.makeAsyncIterator()
                guard let channel = try await accepted.next() else { return }
                let connection = try await TransportConnection.adopt(channel, tlsContext: tlsContext)
                try? await connection.executeThenClose { inbound, outbound in
                    var iterator = inbound.makeAsyncIterator()
                    _ = try await TransportConnection.answerHello(
                        inbound: &iterator, outbound: outbound, nodeName: "receiver")
                    while try await iterator.next() != nil {}
                }
            }
        }
        let connection = try await TransportConnection.connect(
            host: "127.0.0.1", port: port, security: .mutualTLS(LoopbackTransferTests.senderIdentity),
            serverName: nil, nodeName: "sender", congestionControl: .systemDefault, faults: nil)
        let closing = try await connection.executeThenClose { inbound, outbound in
            var iterator = inbound.makeAsyncIterator()
            _ = try await TransportConnection.sayHello(
                inbound: &iterator, outbound: outbound, nodeName: "sender", peer: "receiver")
            group.any().execute { Thread.sleep(forTimeInterval: 2) }
            let start = ContinuousClock.now
            TransportConnection.closeWithoutGoodbye(connection.channel)
            try await connection.channel.closeFuture.get()
            return ContinuousClock.now - start
        }
        // A close with TLS's goodbye would wait for the stalled peer: 2 s.
        #expect(closing < .seconds(1))
        try await receiving.value
        try await group.shutdownGracefully()
    }

    @Test("A sender that goes away as soon as it reads its last answer does not leave the receiver waiting")
    func senderGoneOnTheLastAnswer() async throws {
        let scratch = try LoopbackTransferTests.Scratch(size: 0)
        defer { scratch.remove() }
        let registry = SessionRegistry(
            configuration: ReceiveConfiguration(
                host: "127.0.0.1", port: 0, security: .insecurePlaintext, nodeName: "receiver",
                destination: .path(scratch.directory + "/out")))
        let offer = SessionMessage.Offer(
            transferID: (0..<16).map { _ in UInt8.random(in: 0...255) }, name: "empty.bin", totalBytes: 0,
            blockSize: 1 << 20, resume: false)
        let (id, _) = try await registry.open([offer], peer: "sender")
        let committed = ReceivedObject(
            name: "empty.bin", path: scratch.destination, bytes: 0, receivedBytes: 0, resumedBytes: 0, seconds: 0,
            sha256: "\(Self.emptyDigest)")
        let closed = MultiThreadedEventLoopGroup.singleton.any().makeSucceededVoidFuture()
        // The commit is recorded, the answer goes out, the sender reads it and closes its control stream before
        // this side concludes: the control stream's end must not abandon the session.
        #expect(await registry.committed(0, of: id, .success(committed), goodbye: closed))
        await registry.abandon(id)
        #expect(await !registry.isFinished)
        await registry.conclude(id)
        #expect(try await registry.result().objects.map(\.sha256) == ["\(Self.emptyDigest)"])
        await registry.abandonAll()
    }
}
