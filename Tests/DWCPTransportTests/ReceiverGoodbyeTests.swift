import DWCPWire
import Foundation
import NIOCore
import NIOPosix
import Synchronization
import Testing

@testable import DWCPTransport

/// When a successful receive returns: `novacron receive` exits right after it, so the sender's last answer must
/// have left by then.
@Suite("The receiver's goodbye", .timeLimit(.minutes(1)))
struct ReceiverGoodbyeTests {
    /// SHA-256 of no bytes.
    static let emptyDigest = SessionMessage.Digest(
        bytes: Array(
            stride(from: 0, to: 64, by: 2).map { offset in
                let hex = "e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855"
                let start = hex.index(hex.startIndex, offsetBy: offset)
                return UInt8(hex[start..<hex.index(start, offsetBy: 2)], radix: 16)!
            }))

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
            try await outbound.write(
                DWCPFrame(type: .control, sessionID: accept.sessionID, sequence: 0, payload: finish.encoded))
            // The finish goes out first (queued on the loop before the stall); then the receiver's answer and
            // its close wait, unread, for a second.
            control.channel.eventLoop.execute {
                Thread.sleep(forTimeInterval: 1)
                stalledUntil.withLock { $0 = .now }
            }
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
}
