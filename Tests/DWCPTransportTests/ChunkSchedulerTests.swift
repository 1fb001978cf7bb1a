import Testing

@testable import DWCPTransport

@Suite("Chunk scheduler")
struct ChunkSchedulerTests {
    static func chunks(_ count: Int, size: Int = 100) -> [ChunkScheduler.Chunk] {
        (0..<count).map { ChunkScheduler.Chunk(index: $0, size: size) }
    }

    @Test("Chunks go to the stream with the most free window, within every window")
    func respectsWindows() {
        var scheduler = ChunkScheduler()
        scheduler.streamOpened(0, window: 300)
        scheduler.streamOpened(1, window: 500)
        scheduler.enqueue(Self.chunks(20))
        let assignments = scheduler.assign()
        #expect(assignments.filter { $0.stream == 0 }.count == 3)
        #expect(assignments.filter { $0.stream == 1 }.count == 5)
        #expect(assignments.first?.stream == 1)
        #expect(assignments.map(\.chunk.index) == Array(0..<8))
        #expect(scheduler.pendingCount == 12)
    }

    @Test("A stalled stream does not stall the transfer")
    func stalledStreamDoesNotStall() {
        var scheduler = ChunkScheduler()
        for stream in 0..<4 {
            scheduler.streamOpened(stream, window: 200)
        }
        scheduler.enqueue(Self.chunks(1000))
        var delivered = Set<Int>()
        var round = 0
        while !scheduler.isIdle && round < 10_000 {
            round += 1
            for assignment in scheduler.assign() where assignment.stream != 2 {
                // Stream 2 is stalled: it accepted chunks but never acknowledges them.
                scheduler.acknowledged(assignment.chunk.address, on: assignment.stream)
                delivered.insert(assignment.chunk.index)
            }
            if scheduler.pendingCount == 0 { break }
        }
        // Everything but what the stalled stream holds (at most its window) got through.
        #expect(delivered.count == 1000 - 2)
        #expect(scheduler.pendingCount == 0)
        #expect(scheduler.inFlightCount == 2)
    }

    @Test("A dead stream's unacknowledged chunks are re-sent on the others, first")
    func deadStreamChunksMove() {
        var scheduler = ChunkScheduler()
        scheduler.streamOpened(0, window: 300)
        scheduler.streamOpened(1, window: 300)
        scheduler.enqueue(Self.chunks(10))
        let first = scheduler.assign()
        let onOne = first.filter { $0.stream == 1 }.map(\.chunk.index)
        for assignment in first where assignment.stream == 0 {
            scheduler.acknowledged(assignment.chunk.address, on: 0)
        }
        let lost = scheduler.streamFailed(1)
        #expect(lost.map(\.index) == onOne.sorted())
        let second = scheduler.assign()
        #expect(second.allSatisfy { $0.stream == 0 })
        #expect(Array(second.map(\.chunk.index).prefix(lost.count)) == lost.map(\.index))
    }

    @Test("Duplicate or unknown acknowledgements change nothing")
    func duplicateAcknowledgements() {
        var scheduler = ChunkScheduler()
        scheduler.streamOpened(0, window: 1000)
        scheduler.enqueue(Self.chunks(2))
        _ = scheduler.assign()
        let first = scheduler.acknowledged(ChunkAddress(index: 0), on: 0)
        let duplicate = scheduler.acknowledged(ChunkAddress(index: 0), on: 0)
        let unknown = scheduler.acknowledged(ChunkAddress(index: 7), on: 0)
        let wrongStream = scheduler.acknowledged(ChunkAddress(index: 1), on: 5)
        #expect(first?.address == ChunkAddress(index: 0))
        #expect(duplicate == nil && unknown == nil && wrongStream == nil)
        #expect(scheduler.inFlightCount == 1)
    }

    @Test("A chunk larger than every window still moves on an idle stream")
    func oversizeChunkProgresses() {
        var scheduler = ChunkScheduler()
        scheduler.streamOpened(0, window: 10)
        scheduler.enqueue([ChunkScheduler.Chunk(index: 0, size: 1_000_000)])
        #expect(scheduler.assign().count == 1)
        #expect(scheduler.assign().isEmpty)
    }
}

@Suite("Chunk scheduler: objects sharing streams by weight")
struct WeightedSchedulerTests {
    /// Queues chunks 0..<count of `object`.
    static func enqueue(_ scheduler: inout ChunkScheduler, object: Int, count: Int, size: Int) {
        scheduler.enqueue((0..<count).map { ChunkScheduler.Chunk(object: object, index: $0, size: size) })
    }

    /// Serves at least `count` chunks (as many as the windows take, each round acknowledged before
    /// the next) and returns which object the first `count` came from, in order.
    static func serve(_ scheduler: inout ChunkScheduler, _ count: Int) -> [Int] {
        var order: [Int] = []
        while order.count < count {
            let assignments = scheduler.assign()
            guard !assignments.isEmpty else { break }
            for assignment in assignments {
                order.append(assignment.chunk.object)
                scheduler.acknowledged(assignment.chunk.address, on: assignment.stream)
            }
        }
        return Array(order.prefix(count))
    }

    @Test("While both have chunks waiting, weights 1 and 4 get 1/5 and 4/5 of the bytes, interleaved")
    func sharesFollowWeights() {
        var scheduler = ChunkScheduler()
        scheduler.streamOpened(0, window: 100)
        scheduler.setWeight(1, for: 0)
        scheduler.setWeight(4, for: 1)
        Self.enqueue(&scheduler, object: 0, count: 100, size: 100)
        Self.enqueue(&scheduler, object: 1, count: 100, size: 100)
        let order = Self.serve(&scheduler, 50)
        #expect(order.filter { $0 == 1 }.count == 40)
        // Interleaved, not in bursts: every window of five chunks holds exactly one of object 0.
        for start in stride(from: 0, to: 50, by: 5) {
            #expect(order[start..<start + 5].filter { $0 == 0 }.count == 1)
        }
        // Byte shares, not chunk counts: object 1's chunks are now four times larger.
        var bySize = ChunkScheduler()
        bySize.streamOpened(0, window: 400)
        Self.enqueue(&bySize, object: 0, count: 100, size: 100)
        Self.enqueue(&bySize, object: 1, count: 100, size: 400)
        let sized = Self.serve(&bySize, 50)
        #expect(sized.filter { $0 == 0 }.count == 40)
    }

    @Test("An object that had nothing waiting does not bank its share: it rejoins at the current time")
    func idleTimeIsNoCredit() {
        var scheduler = ChunkScheduler()
        scheduler.streamOpened(0, window: 100)
        Self.enqueue(&scheduler, object: 0, count: 100, size: 100)
        #expect(Self.serve(&scheduler, 30) == Array(repeating: 0, count: 30))
        Self.enqueue(&scheduler, object: 1, count: 100, size: 100)
        let order = Self.serve(&scheduler, 20)
        #expect(order.filter { $0 == 1 }.count == 10)
        #expect(!order.starts(with: [1, 1, 1]))
        // Once object 0 runs dry, object 1 gets everything (the sharing is work-conserving).
        var drained = ChunkScheduler()
        drained.streamOpened(0, window: 100)
        drained.setWeight(200, for: 0)
        Self.enqueue(&drained, object: 0, count: 3, size: 100)
        Self.enqueue(&drained, object: 1, count: 10, size: 100)
        let both = Self.serve(&drained, 13)
        #expect(both.count == 13 && both.suffix(9) == Array(repeating: 1, count: 9))
    }

    @Test("Chunks of a failed stream are re-sent first, whatever their object's weight")
    func resendsGoFirst() {
        var scheduler = ChunkScheduler()
        scheduler.streamOpened(0, window: 100)
        scheduler.streamOpened(1, window: 100)
        scheduler.setWeight(9, for: 1)
        Self.enqueue(&scheduler, object: 0, count: 4, size: 100)
        Self.enqueue(&scheduler, object: 1, count: 40, size: 100)
        let first = scheduler.assign()
        let onZero = first.filter { $0.stream == 0 }.map(\.chunk)
        #expect(scheduler.streamFailed(0) == onZero)
        let next = scheduler.assign()
        #expect(next.isEmpty)  // stream 1 is full, stream 0 is closed
        for assignment in first where assignment.stream == 1 {
            scheduler.acknowledged(assignment.chunk.address, on: 1)
        }
        #expect(scheduler.assign().map(\.chunk) == onZero)
    }
}
