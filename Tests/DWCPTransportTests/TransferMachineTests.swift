import Testing

@testable import DWCPTransport

@Suite("Transfer sender and receiver machines")
struct TransferMachineTests {
    @Test("The sender reads only within the window past the first unacknowledged chunk")
    func windowBoundsReading() {
        var sender = TransferSender(blockSize: 100, windowBlocks: 4, totalBlocks: 10)
        sender.streamOpened(0, window: 10_000, now: .zero)
        #expect((0..<4).allSatisfy { sender.admits($0) })
        #expect(!sender.admits(4))
        for index in 0..<4 { sender.chunkRead(index, size: 100) }
        let sent = sender.assign(now: .zero)
        #expect(sent.map(\.chunk.index) == [0, 1, 2, 3])
        // Acknowledging 1..3 does not move the window: chunk 0 still holds it.
        for index in 1..<4 {
            let first = sender.acknowledged(ChunkAddress(index: index), on: 0, now: .zero)
            #expect(first)
        }
        #expect(!sender.admits(4))
        let outcome1 = sender.acknowledged(ChunkAddress(index: 0), on: 0, now: .zero)
        #expect(outcome1)
        #expect(sender.admits(7) && !sender.admits(8))
        // A second acknowledgement of the same chunk releases nothing.
        let outcome2 = !sender.acknowledged(ChunkAddress(index: 0), on: 0, now: .zero)
        #expect(outcome2)
    }

    @Test("A stream that stops acknowledging does not hold up the transfer, and is reported stalled")
    func stalledStreamIsReplaced() {
        let total = 200
        var sender = TransferSender(blockSize: 10, windowBlocks: 32, totalBlocks: total, stallTimeout: .seconds(5))
        for stream in 0..<3 { sender.streamOpened(stream, window: 40, now: .zero) }
        var now = Duration.zero
        var next = 0
        while !sender.isComplete, now < .seconds(600) {
            while next < total, sender.admits(next) {
                sender.chunkRead(next, size: 10)
                next += 1
            }
            for assignment in sender.assign(now: now) where assignment.stream != 1 {
                // Stream 1 is stalled: it takes chunks and never acknowledges them.
                _ = sender.acknowledged(assignment.chunk.address, on: assignment.stream, now: now)
            }
            now += .milliseconds(100)
            for stream in sender.stalledStreams(now: now) {
                #expect(stream == 1)
                let outcome3 = sender.streamFailed(stream) > 0
                #expect(outcome3)
            }
        }
        #expect(sender.isComplete)
        // Copies of the stuck chunks went out on the others long before the stall timeout.
        #expect(now < .seconds(5), "the window waited for the stalled stream")
        #expect(sender.chunksDuplicated > 0 && sender.chunksDuplicated <= 8)
        // The stalled stream still holds its chunks; after the timeout it is reported for replacement.
        #expect(sender.stalledStreams(now: now + .seconds(6)) == [1])
        #expect(sender.stalledStreams(now: now).isEmpty)
    }

    @Test("Resuming skips what the receiver holds")
    func resumeSkipsPresent() {
        var present = ChunkBitmap()
        for index in 0..<5 { present.insert(index) }
        present.insert(7)
        var sender = TransferSender(blockSize: 10, windowBlocks: 4, totalBlocks: 8, present: present)
        #expect(sender.admits(5) && sender.admits(8) && !sender.admits(9))
        sender.streamOpened(0, window: 100, now: .zero)
        sender.chunkRead(5, size: 10)
        sender.chunkRead(6, size: 10)
        for assignment in sender.assign(now: .zero) {
            _ = sender.acknowledged(assignment.chunk.address, on: 0, now: .zero)
        }
        #expect(sender.isComplete)
    }

    @Test("The receiver refuses chunks outside the object or the window, and wrong sizes")
    func receiverBounds() throws {
        var receiver = TransferReceiver(blockSize: 100, windowBlocks: 4, declaredBytes: 950)
        #expect(receiver.totalBlocks == 10)
        let outcome4 = try receiver.chunkArrived(index: 0, size: 100) == .store
        #expect(outcome4)
        let outcome5 = try receiver.chunkArrived(index: 0, size: 100) == .duplicate
        #expect(outcome5)
        #expect(throws: TransportError.self) { try receiver.chunkArrived(index: 5, size: 100) }  // past the window
        #expect(throws: TransportError.self) { try receiver.chunkArrived(index: 1, size: 99) }  // not the last chunk
        #expect(throws: TransportError.self) { try receiver.chunkArrived(index: -1, size: 100) }
        for index in 1..<9 {
            let disposition = try receiver.chunkArrived(index: index, size: 100)
            #expect(disposition == .store)
        }
        #expect(throws: TransportError.self) { try receiver.chunkArrived(index: 9, size: 100) }  // last is 50
        let outcome6 = try receiver.chunkArrived(index: 9, size: 50) == .store
        #expect(outcome6)
        #expect(throws: TransportError.self) { try receiver.finish(totalBlocks: 10, totalBytes: 951) }
        let outcome7 = try receiver.finish(totalBlocks: 10, totalBytes: 950)
        #expect(outcome7)
        #expect(receiver.bytesStored == 950)
    }

    @Test("A stream of unknown length: one short chunk, only at the end, and finish fixes the count")
    func receiverUnknownLength() throws {
        var receiver = TransferReceiver(blockSize: 100, windowBlocks: 8, declaredBytes: nil)
        let outcome8 = try receiver.chunkArrived(index: 1, size: 100) == .store
        #expect(outcome8)
        let outcome9 = try receiver.chunkArrived(index: 2, size: 30) == .store
        #expect(outcome9)
        #expect(throws: TransportError.self) { try receiver.chunkArrived(index: 3, size: 100) }
        let outcome10 = try !receiver.finish(totalBlocks: 3, totalBytes: 230)
        #expect(outcome10)  // chunk 0 still missing
        let outcome11 = try receiver.chunkArrived(index: 0, size: 100) == .store
        #expect(outcome11)
        #expect(receiver.isComplete)
        var early = TransferReceiver(blockSize: 100, windowBlocks: 8, declaredBytes: nil)
        _ = try early.chunkArrived(index: 3, size: 100)
        #expect(throws: TransportError.self) { try early.chunkArrived(index: 1, size: 10) }
    }
}

@Suite("End game")
struct EndGameTests {
    /// `count` chunks of 10 bytes (one block each) of an object of that many blocks, sent on two streams.
    static func chunksOnTwoStreams(_ count: Int, streamWindow: Int, sourceEnded: Bool = false)
        -> (TransferSender, [TransferSender.Assignment])
    {
        var sender = TransferSender(blockSize: 10, windowBlocks: 16, totalBlocks: count)
        sender.streamOpened(0, window: streamWindow, now: .zero)
        sender.streamOpened(1, window: streamWindow, now: .zero)
        for index in 0..<count { sender.chunkRead(index, size: 10) }
        if sourceEnded { sender.sourceEnded(blockCount: count) }
        let assignments = sender.assign(now: .zero)
        return (sender, assignments)
    }

    @Test("At the end an idle stream takes a copy of a chunk stuck on a slow stream, and the transfer completes")
    func idleStreamCopiesStuckChunk() {
        var (sender, first) = Self.chunksOnTwoStreams(6, streamWindow: 30)
        #expect(Set(first.map(\.chunk.index)) == Set(0..<6))
        // Stream 0 delivers everything it carried; stream 1 is slow and acknowledges nothing.
        for assignment in first where assignment.stream == 0 {
            _ = sender.acknowledged(assignment.chunk.address, on: 0, now: .zero)
        }
        #expect(!sender.isComplete)
        let copies = sender.assign(now: .milliseconds(10))
        #expect(!copies.isEmpty && copies.allSatisfy { $0.stream == 0 })
        for copy in copies { _ = sender.acknowledged(copy.chunk.address, on: 0, now: .milliseconds(20)) }
        // Idle again: the next stuck chunk goes; repeat until done.
        var rounds = 0
        while !sender.isComplete && rounds < 10 {
            rounds += 1
            for copy in sender.assign(now: .milliseconds(30)) {
                _ = sender.acknowledged(copy.chunk.address, on: copy.stream, now: .milliseconds(40))
            }
        }
        #expect(sender.isComplete)
        #expect(sender.chunksDuplicated == 3)
        // The slow stream's late acknowledgements release nothing twice.
        let late = first.filter { $0.stream == 1 }.map {
            sender.acknowledged($0.chunk.address, on: 1, now: .seconds(1))
        }
        #expect(late.allSatisfy { !$0 })
    }

    @Test(
        "At the very end an idle stream takes copies of every chunk of a silent stream, as its window allows",
        arguments: [(at: 12, copies: 1), (at: 100, copies: 3)])
    func endGameCopiesFillAnIdleStream(at milliseconds: Int, copies expected: Int) {
        var (sender, first) = Self.chunksOnTwoStreams(8, streamWindow: 40, sourceEnded: true)
        #expect(first.count == 8)
        // Chunks take 10 ms: stream 0 delivers its four, stream 1 its first, then nothing (a fresh stream still in
        // slow start, say, or one in loss recovery).
        let onOne = first.filter { $0.stream == 1 }.map(\.chunk)
        for assignment in first where assignment.stream == 0 || assignment.chunk == onOne[0] {
            _ = sender.acknowledged(assignment.chunk.address, on: assignment.stream, now: .milliseconds(10))
        }
        // At 12 ms stream 1 has been silent for 2 ms, less than half the usual 10 ms: only its oldest chunk is
        // copied. At 100 ms it is silent: its three chunks at once (the window holds 4), not one per round trip.
        let copies = sender.assign(now: .milliseconds(milliseconds))
        #expect(
            copies.map(\.chunk) == Array(onOne.dropFirst().prefix(expected)) && copies.allSatisfy { $0.stream == 0 })
        for copy in copies {
            _ = sender.acknowledged(copy.chunk.address, on: 0, now: .milliseconds(milliseconds + 10))
        }
        #expect(sender.isComplete == (expected == 3) && sender.chunksDuplicated == expected)
    }

    @Test("A window held up by a slow stream: idle streams copy its oldest chunks, and reading resumes")
    func windowHeldUpBySlowStream() {
        // An endless source, a window of 8 chunks, two streams of 4 chunks each.
        var sender = TransferSender(blockSize: 10, windowBlocks: 8, totalBlocks: nil)
        sender.streamOpened(0, window: 40, now: .zero)
        sender.streamOpened(1, window: 40, now: .zero)
        var next = 0
        while sender.admits(next) {
            sender.chunkRead(next, size: 10)
            next += 1
        }
        let first = sender.assign(now: .zero)
        #expect(first.count == 8)
        let slow = first.first { $0.chunk.index == 0 }!.stream
        let fast = 1 - slow
        // The fast stream delivers all it carries; the window cannot move past chunk 0 on the slow one.
        for assignment in first where assignment.stream == fast {
            _ = sender.acknowledged(assignment.chunk.address, on: fast, now: .milliseconds(5))
        }
        #expect(!sender.admits(next))
        let copies = sender.assign(now: .milliseconds(10))
        #expect(copies == [TransferSender.Assignment(chunk: .init(index: 0, size: 10), stream: fast)])
        // The copy arrives first: the window moves on, new chunks are read and go out normally.
        let released = sender.acknowledged(ChunkAddress(index: 0), on: fast, now: .milliseconds(20))
        #expect(released)
        #expect(sender.admits(next))
        sender.chunkRead(next, size: 10)
        let resumed = sender.assign(now: .milliseconds(20))
        #expect(resumed.map(\.chunk.index) == [next] && resumed[0].stream == fast)
        #expect(sender.chunksDuplicated == 1)
        // The slow stream's own copy of chunk 0 arrives late and releases nothing.
        let releasedAgain = sender.acknowledged(ChunkAddress(index: 0), on: slow, now: .seconds(1))
        #expect(!releasedAgain)
    }

    /// Two objects of weights 1 and 3 in an 8-chunk session window, one stream.
    static func weightedPair() -> TransferSender {
        var sender = TransferSender(blockSize: 10, windowBlocks: 8)
        sender.addObject(0, windowBlocks: 100, totalBlocks: 100, weight: 1)
        sender.addObject(1, windowBlocks: 100, totalBlocks: 100, weight: 3)
        sender.streamOpened(0, window: 80, now: .zero)
        return sender
    }

    @Test("Room in the window goes to the readers by weight, as grants, and the window bounds what they hold")
    func weightedGrants() {
        var sender = Self.weightedPair()
        var next = [0, 0]
        var order: [Int] = []
        var inFlight: [ChunkAddress] = []
        while order.count < 80 {
            var delivered = false
            for object in 0..<2 where sender.claimGrant(object: object) != nil {
                sender.chunkRead(next[object], size: 10, object: object)
                next[object] += 1
                order.append(object)
                delivered = true
            }
            inFlight += sender.assign(now: .zero).map(\.chunk.address)
            if !delivered {
                // No grant left: the window is full. The oldest chunk is acknowledged, freeing one slot.
                #expect(sender.heldChunks == 8)
                _ = sender.acknowledged(inFlight.removeFirst(), on: 0, now: .zero)
            }
        }
        // After the first window, every four slots freed go three to object 1 and one to object 0.
        let heavy = order.dropFirst(8).filter { $0 == 1 }.count
        #expect((53...55).contains(heavy), "\(heavy) of 72")
        // Interleaved: the light object never gets two slots in a row.
        #expect(!zip(order.dropFirst(8), order.dropFirst(9)).contains { $0 == 0 && $1 == 0 }, "\(order)")
    }

    @Test("A reader that is away keeps its grants (at most two), and the others get the rest of the window")
    func absentReaderKeepsGrants() {
        var sender = Self.weightedPair()
        var next = 0
        var inFlight: [ChunkAddress] = []
        // Object 1's reader never comes (a paused stream); object 0's reads whenever it can.
        for _ in 0..<50 {
            while sender.claimGrant(object: 0) != nil {
                sender.chunkRead(next, size: 10, object: 0)
                next += 1
            }
            inFlight += sender.assign(now: .zero).map(\.chunk.address)
            _ = sender.acknowledged(inFlight.removeFirst(), on: 0, now: .zero)
        }
        // Object 1 holds two grants for when its reader returns; object 0 moved on with the other six
        // slots (the last one freed is granted to it and not yet used).
        #expect(next == 50 + 5 && sender.heldChunks == 5)
        #expect(
            (sender.claimGrant(object: 1) != nil) && (sender.claimGrant(object: 1) != nil)
                && (sender.claimGrant(object: 1) == nil))
        // Its source ends: the unused grants go back to the window.
        sender.sourceEnded(blockCount: 0, object: 1)
        #expect((sender.claimGrant(object: 0) != nil) && (sender.claimGrant(object: 0) != nil))
    }

    /// An endless source with a 16-chunk window, two streams, four chunks read and assigned.
    static func fourChunksOnTwoStreams(streamWindow: Int) -> (TransferSender, [TransferSender.Assignment]) {
        var sender = TransferSender(blockSize: 10, windowBlocks: 16, totalBlocks: nil)
        sender.streamOpened(0, window: streamWindow, now: .zero)
        sender.streamOpened(1, window: streamWindow, now: .zero)
        for index in 0..<4 { sender.chunkRead(index, size: 10) }
        let assignments = sender.assign(now: .zero)
        return (sender, assignments)
    }

    @Test("No copies while the window has room and chunks can still be read")
    func noCopiesWhileReadingCanContinue() {
        var (sender, first) = Self.fourChunksOnTwoStreams(streamWindow: 20)
        for assignment in first where assignment.stream == 1 {
            _ = sender.acknowledged(assignment.chunk.address, on: 1, now: .zero)
        }
        // Stream 1 is idle and chunk 0 waits on stream 0, but the reader may go on: no copy.
        #expect(sender.assign(now: .zero).isEmpty && sender.chunksDuplicated == 0)
    }

    @Test("No copies while chunks are still waiting for a stream")
    func noCopiesBeforeTheEnd() {
        var (sender, first) = Self.fourChunksOnTwoStreams(streamWindow: 10)
        _ = sender.acknowledged(first[0].chunk.address, on: first[0].stream, now: .zero)
        let next = sender.assign(now: .zero)
        #expect(next.count == 1 && sender.chunksDuplicated == 0)
    }

    /// Three streams with room for plenty, chunk latency learnt from one chunk acknowledged after 100 ms.
    static func threeStreamsWithLatency() -> TransferSender {
        var sender = TransferSender(blockSize: 10, windowBlocks: 64, totalBlocks: nil)
        for stream in 0..<3 { sender.streamOpened(stream, window: 1000, now: .zero) }
        sender.chunkRead(0, size: 10)
        let first = sender.assign(now: .zero)
        _ = sender.acknowledged(first[0].chunk.address, on: first[0].stream, now: .milliseconds(100))
        return sender
    }

    @Test("A chunk overdue on a stream that carries on gets a copy elsewhere, while reading continues")
    func overdueChunkIsCopied() throws {
        var sender = Self.threeStreamsWithLatency()
        let overdueAfter = try #require(sender.chunkLatency.overdueAfter)
        #expect(overdueAfter == .milliseconds(300))  // 100 ms + 4 × 50 ms
        for index in 1..<7 { sender.chunkRead(index, size: 10) }
        let sent = sender.assign(now: .milliseconds(100))
        #expect(sent.count == 6)
        let slow = try #require(sent.first { $0.chunk.index == 1 }).stream
        // Every other stream delivers what it carries; the slow one delivers nothing.
        for assignment in sent where assignment.stream != slow {
            _ = sender.acknowledged(assignment.chunk.address, on: assignment.stream, now: .milliseconds(150))
        }
        #expect(sender.admits(20))  // not held up: the end-game rule would copy nothing
        #expect(sender.assign(now: .milliseconds(350)).isEmpty)  // 250 ms: not overdue yet
        let copies = sender.assign(now: .milliseconds(450))
        let slowChunks = sent.filter { $0.stream == slow }.map(\.chunk.index)
        #expect(copies.count == min(2, slowChunks.count))
        #expect(copies.allSatisfy { $0.stream != slow && slowChunks.contains($0.chunk.index) })
        #expect(copies.map(\.chunk.index) == Array(slowChunks.prefix(2)))  // oldest first
        #expect(sender.chunksOverdue == copies.count && sender.chunksDuplicated == copies.count)
        // The slow stream is lagging: a new chunk goes elsewhere, though its window has room.
        sender.chunkRead(7, size: 10)
        let next = sender.assign(now: .milliseconds(450))
        let fresh = try #require(next.first { $0.chunk.index == 7 })
        #expect(fresh.stream != slow)
        // Each chunk is copied once: later calls copy the rest and nothing twice.
        let later = sender.assign(now: .milliseconds(500)) + sender.assign(now: .milliseconds(550))
        let copied = (copies + later).filter { $0.chunk.index != 7 }.map(\.chunk.index)
        #expect(copied.sorted() == slowChunks.sorted())
        // A copy's acknowledgement releases the chunk; the slow stream's late one releases nothing.
        for copy in copies {
            let released = sender.acknowledged(copy.chunk.address, on: copy.stream, now: .milliseconds(700))
            #expect(released)
            let again = sender.acknowledged(copy.chunk.address, on: slow, now: .seconds(2))
            #expect(!again)
        }
    }

    @Test("No overdue copies before any chunk was acknowledged, nor while chunks arrive in time")
    func noOverdueCopiesWithoutCause() {
        var sender = TransferSender(blockSize: 10, windowBlocks: 64, totalBlocks: nil)
        for stream in 0..<2 { sender.streamOpened(stream, window: 1000, now: .zero) }
        for index in 0..<4 { sender.chunkRead(index, size: 10) }
        _ = sender.assign(now: .zero)
        #expect(sender.assign(now: .seconds(30)).isEmpty)  // no latency learnt: nothing is overdue
        var timely = Self.threeStreamsWithLatency()
        var now = Duration.milliseconds(100)
        for index in 1..<50 {
            timely.chunkRead(index, size: 10)
            for assignment in timely.assign(now: now) {
                _ = timely.acknowledged(assignment.chunk.address, on: assignment.stream, now: now + .milliseconds(90))
            }
            now += .milliseconds(100)
        }
        #expect(timely.chunksOverdue == 0 && timely.isLaggingFree)
    }

    @Test("Chunk latency: a smoothed mean and deviation; overdue after mean + 4 deviations, 2 × mean, 200 ms")
    func chunkLatencyEstimator() throws {
        var latency = ChunkLatency()
        #expect(latency.overdueAfter == nil)
        latency.record(.milliseconds(10))
        #expect(latency.overdueAfter == ChunkLatency.minimumOverdue)  // loopback-fast: the floor
        for _ in 0..<100 { latency.record(.seconds(1)) }
        let steady = try #require(latency.overdueAfter)
        #expect(steady > .milliseconds(1990) && steady <= .seconds(2))  // steady: twice the mean
        for sample in 0..<100 { latency.record(sample % 2 == 0 ? .milliseconds(200) : .milliseconds(1800)) }
        let jittery = try #require(latency.overdueAfter)
        let mean = try #require(latency.smoothed)
        #expect(jittery == mean + latency.deviation * 4 && jittery > .seconds(3))
    }
}

@Suite("Receiver writeback schedule")
struct WritebackScheduleTests {
    @Test("Whole steps of the prefix are handed over once, in order, as soon as they are complete")
    func wholeStepsOnceInOrder() {
        var schedule = WritebackSchedule(step: 100)
        #expect(schedule.prefixReached(99) == nil)
        #expect(schedule.prefixReached(100) == 0..<100)
        #expect(schedule.prefixReached(150) == nil)
        #expect(schedule.prefixReached(420) == 100..<400)
        #expect(schedule.prefixReached(420) == nil)
        #expect(schedule.prefixReached(399) == nil)
        #expect(schedule.startedUpTo == 400)
    }

    @Test("A resumed prefix starts at its last whole step")
    func resumedPrefix() {
        var schedule = WritebackSchedule(step: 100, startedUpTo: 250)
        #expect(schedule.prefixReached(299) == nil)
        #expect(schedule.prefixReached(300) == 200..<300)
    }
}
