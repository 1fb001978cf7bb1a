import Testing

@testable import DWCPTransport

@Suite("Sender session machine")
struct SenderSessionTests {
    static func configuration(_ change: (inout SenderSession.Configuration) -> Void = { _ in })
        -> SenderSession.Configuration
    {
        var configuration = SenderSession.Configuration(
            SendConfiguration(host: "192.0.2.7", port: 7300, security: .insecurePlaintext, nodeName: "a"))
        change(&configuration)
        return configuration
    }

    static func accept(blockSize: UInt32 = 10, windowBlocks: UInt32 = 1000) -> SessionMessage.Accept {
        .init(
            sessionID: 1, token: .init(bytes: Array(repeating: 7, count: 16)), blockSize: blockSize,
            windowBlocks: windowBlocks, present: ChunkBitmap())
    }

    static let digest = SessionMessage.Digest(bytes: Array(0..<32))

    /// Reads chunks `range` (10 bytes each) and acknowledges every chunk sent, at `now`.
    static func readAndDeliver(_ session: inout SenderSession, _ range: Range<Int>, now: Duration) {
        for index in range {
            for case .send(let chunk, let stream) in session.chunkRead(index, size: 10, now: now) {
                _ = session.acknowledged(chunk, on: stream, now: now)
            }
        }
    }

    @Test("Connecting opens, at once, as many streams as the bandwidth-delay product needs")
    func connectingOpensStreams() {
        var session = SenderSession(configuration: Self.configuration())
        let actions = session.connected(roundTrip: .milliseconds(100), streamInFlightLimit: 2 << 20)
        let opened = actions.compactMap { action -> Int? in
            guard case .open(let stream, let delay) = action, delay == .zero else { return nil }
            return stream
        }
        // 1 Gbit/s × 100 ms = 12.5 MB over 2 MiB per stream.
        #expect(opened == Array(0..<6) && actions.count == 6)
    }

    @Test("Streams that keep failing back off, then the transfer fails with advice")
    func failingStreamsBackOffThenFail() {
        var session = SenderSession(
            configuration: Self.configuration {
                $0.initialStreams = 1
                $0.minimumStreams = 1
                $0.maximumConsecutiveFailures = 3
            })
        var stream = 0
        guard case .open(0, .zero) = session.connected(roundTrip: .milliseconds(50), streamInFlightLimit: 1 << 20).first
        else {
            Issue.record("no stream opened")
            return
        }
        var delays: [Duration] = []
        for _ in 0..<3 {
            guard case .open(let next, let delay) = session.streamEnded(stream, now: .zero, error: "refused").first
            else {
                Issue.record("no reopen after a failure")
                return
            }
            stream = next
            delays.append(delay)
        }
        #expect(delays == [.milliseconds(500), .milliseconds(1000), .milliseconds(2000)])
        let last = session.streamEnded(stream, now: .zero, error: "refused")
        guard case .fail(let error) = last.first, last.count == 1 else {
            Issue.record("expected the transfer to fail, got \(last)")
            return
        }
        #expect(error.code == .connectionFailed)
        #expect("\(error)".contains("4 failures in a row") && "\(error)".contains("--resume"))
        #expect(session.isOver && session.streamFailures == 4)
        #expect(session.streamEnded(stream + 1, now: .zero, error: nil).isEmpty)
    }

    @Test(
        "A whole transfer: chunks spread over streams, released when acknowledged, one finish as soon as the source ends"
    )
    func wholeTransfer() {
        var session = SenderSession(configuration: Self.configuration { $0.initialStreams = 2 })
        #expect(session.connected(roundTrip: .milliseconds(20), streamInFlightLimit: 1 << 20).count == 2)
        #expect(session.accepted(Self.accept(), objectSize: 35).isEmpty)
        _ = session.streamReady(0, now: .zero)
        _ = session.streamReady(1, now: .zero)
        var sends: [(chunk: ChunkAddress, stream: Int)] = []
        for index in 0..<4 {
            for case .send(let chunk, let stream) in session.chunkRead(index, size: index == 3 ? 5 : 10, now: .zero) {
                sends.append((chunk, stream))
            }
        }
        #expect(sends.map(\.chunk.index) == [0, 1, 2, 3] && Set(sends.map(\.stream)) == [0, 1])
        var finishes = 0
        var released: [Int] = []
        for (index, send) in sends.enumerated() {
            if index == 2 {
                // The finish goes at once, two chunks still in flight: the receiver answers it when they are in.
                for action in session.sourceEnded(blockCount: 4, totalBytes: 35, digest: Self.digest) {
                    guard case .sendFinish(0, 4, 35, Self.digest) = action else {
                        Issue.record("unexpected \(action)")
                        continue
                    }
                    finishes += 1
                }
                #expect(finishes == 1)
            }
            for action in session.acknowledged(send.chunk, on: send.stream, now: .milliseconds(30)) {
                switch action {
                case .release(let chunk): released.append(chunk.index)
                case .send: break  // the end game: an idle stream copies a chunk still in flight
                case .sendFinish(0, let chunks, let bytes, let digest):
                    finishes += 1
                    #expect(chunks == 4 && bytes == 35 && digest == Self.digest)
                default: Issue.record("unexpected \(action)")
                }
            }
        }
        // Acknowledgements after the finish still release chunks; the session lasts until the receiver's answer.
        #expect(released == [0, 1, 2, 3] && finishes == 1 && session.acknowledgedBytes == 35)
        #expect(!session.isOver && session.tick(now: .seconds(1)).isEmpty)
        #expect(session.completed(receiverDigest: Self.digest) == nil && session.allCommitted)
        let mismatch = session.completed(receiverDigest: .init(bytes: Array(repeating: 0, count: 32)))
        #expect(mismatch?.code == .checksumMismatch)
    }

    @Test("Two objects share one session and its window; each gets its finish; it ends after both commit")
    func twoObjectsShareTheSession() {
        var session = SenderSession(
            configuration: Self.configuration {
                $0.initialStreams = 1
                $0.minimumStreams = 1
                $0.maximumStreams = 1
                $0.objects = 2
                $0.windowBytes = 400
            })
        _ = session.connected(roundTrip: .milliseconds(20), streamInFlightLimit: 1 << 20)
        #expect(session.accepted(Self.accept(), object: 0, objectSize: 100, weight: 1).isEmpty)
        var accept = Self.accept()
        accept.object = 1
        #expect(session.accepted(accept, object: 1, objectSize: 100, weight: 3).isEmpty)
        // The objects share the session's window (400 bytes = 40 chunks of 10); each object's own window
        // is the receiver's reorder window for it (1000 chunks here).
        #expect(session.transfer?.windowBlocks == 40)
        #expect(session.transfer?.windowBlocks(object: 0) == 1000 && session.transfer?.windowBlocks(object: 1) == 1000)
        _ = session.streamReady(0, now: .zero)
        var order: [ChunkAddress] = []
        var pending: [ChunkAddress] = []
        var finished: [Int] = []
        func record(_ actions: [SenderSession.Action]) {
            for action in actions {
                switch action {
                case .send(let chunk, _): pending.append(chunk)
                case .sendFinish(let object, 10, 100, _): finished.append(object)
                case .release: break
                default: Issue.record("unexpected \(action)")
                }
            }
        }
        for index in 0..<10 {
            record(session.chunkRead(index, size: 10, object: 0, now: .zero))
            record(session.chunkRead(index, size: 10, object: 1, now: .zero))
        }
        record(session.sourceEnded(blockCount: 10, totalBytes: 100, digest: Self.digest, object: 0))
        record(session.sourceEnded(blockCount: 10, totalBytes: 100, digest: Self.digest, object: 1))
        while !pending.isEmpty {
            let chunk = pending.removeFirst()
            order.append(chunk)
            record(session.acknowledged(chunk, on: 0, now: .milliseconds(10)))
        }
        // Everything is delivered once (the order the weights give is checked in WeightedSchedulerTests
        // and end to end in the loopback tests).
        #expect(Set(order).count == 20 && finished.sorted() == [0, 1])
        #expect(!session.isOver && session.acknowledgedBytesByObject == [0: 100, 1: 100])
        #expect(session.completed(object: 1, receiverDigest: Self.digest) == nil && !session.allCommitted)
        #expect(session.completed(object: 0, receiverDigest: Self.digest) == nil && session.allCommitted)
    }

    @Test("The controller's probe opens a stream; a probe that buys nothing drains it, and its end is no failure")
    func probeOpensThenDrains() {
        var session = SenderSession(
            configuration: Self.configuration {
                $0.initialStreams = 2
                $0.minimumStreams = 1
                $0.maximumStreams = 4
            })
        _ = session.connected(roundTrip: .milliseconds(10), streamInFlightLimit: 1 << 20)
        _ = session.accepted(Self.accept(), objectSize: nil)
        _ = session.streamReady(0, now: .zero)
        _ = session.streamReady(1, now: .zero)
        Self.readAndDeliver(&session, 0..<10, now: .milliseconds(500))
        #expect(session.tick(now: .seconds(1)).isEmpty)  // the first sample starts
        Self.readAndDeliver(&session, 10..<20, now: .milliseconds(1500))
        let probe = session.tick(now: .seconds(2))
        guard case .open(2, .zero) = probe.first, probe.count == 1 else {
            Issue.record("expected a probe opening stream 2, got \(probe)")
            return
        }
        _ = session.streamReady(2, now: .seconds(2))
        #expect(session.activeStreams == 3)
        Self.readAndDeliver(&session, 20..<30, now: .milliseconds(2500))
        // Same goodput with three streams: the probe failed and the newest stream is drained.
        let drained = session.tick(now: .seconds(3))
        guard case .finishStream(2) = drained.first, drained.count == 1 else {
            Issue.record("expected stream 2 to be drained, got \(drained)")
            return
        }
        #expect(session.activeStreams == 2)
        #expect(session.streamEnded(2, now: .seconds(3), error: nil).isEmpty)
        #expect(session.streamFailures == 0)
    }

    @Test("A stalled stream is closed at its timeout, its chunks go out on another, and it is replaced")
    func stalledStreamReplaced() {
        var session = SenderSession(
            configuration: Self.configuration {
                $0.initialStreams = 2
                $0.maximumStreams = 2
                $0.stallTimeout = .seconds(5)
            })
        _ = session.connected(roundTrip: .milliseconds(10), streamInFlightLimit: 1 << 20)
        _ = session.accepted(Self.accept(), objectSize: nil)
        _ = session.streamReady(0, now: .zero)
        _ = session.streamReady(1, now: .zero)
        var sends: [(chunk: ChunkAddress, stream: Int)] = []
        for index in 0..<4 {
            for case .send(let chunk, let stream) in session.chunkRead(index, size: 10, now: .zero) {
                sends.append((chunk, stream))
            }
        }
        var onStalled: [ChunkAddress] = []
        for send in sends {
            if send.stream == 0 {
                _ = session.acknowledged(send.chunk, on: 0, now: .seconds(1))
            } else {
                onStalled.append(send.chunk)
            }
        }
        #expect(!onStalled.isEmpty)
        #expect(!session.tick(now: .seconds(3)).contains { if case .closeStream = $0 { true } else { false } })
        let closing = session.tick(now: .seconds(6))
        guard case .closeStream(1) = closing.first else {
            Issue.record("expected stream 1 to be closed, got \(closing)")
            return
        }
        let after = session.streamEnded(1, now: .seconds(6), error: "stalled")
        var resent: [ChunkAddress] = []
        var reopened = false
        for action in after {
            switch action {
            case .send(let chunk, 0): resent.append(chunk)
            case .open(2, .milliseconds(500)): reopened = true
            default: Issue.record("unexpected \(action)")
            }
        }
        #expect(resent == onStalled && reopened && session.streamFailures == 1)
    }

    @Test("Only a broken session the receiver had accepted is re-established, with a doubling wait")
    func reconnectPolicy() {
        let broken = TransportError(.connectionFailed, expected: "open", found: "closed")
        var policy = ReconnectPolicy(attempts: 3, firstDelay: .seconds(1), resumable: true)
        // Nothing ever accepted: a wrong address fails at once.
        #expect(policy.attemptFailed(broken, accepted: false) == nil)
        #expect(policy.attemptFailed(broken, accepted: true) == .seconds(1))
        // Accepted once: a receiver restarting (its connection refused) is waited for.
        #expect(policy.attemptFailed(broken, accepted: false) == .seconds(2))
        #expect(policy.attemptFailed(broken, accepted: false) == .seconds(4))
        #expect(policy.attemptFailed(broken, accepted: false) == nil && policy.reconnects == 3)
        // Final errors and unreadable-again sources.
        var other = ReconnectPolicy(attempts: 3, firstDelay: .seconds(1), resumable: true)
        let refused = TransportError(.refused, expected: "accept", found: "refuse")
        #expect(other.attemptFailed(refused, accepted: true) == nil)
        var stream = ReconnectPolicy(attempts: 3, firstDelay: .seconds(1), resumable: false)
        #expect(stream.attemptFailed(broken, accepted: true) == nil)
    }
}
