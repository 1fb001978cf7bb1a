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
                scheduler.acknowledged(assignment.chunk.index, on: assignment.stream)
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
            scheduler.acknowledged(assignment.chunk.index, on: 0)
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
        let first = scheduler.acknowledged(0, on: 0)
        let duplicate = scheduler.acknowledged(0, on: 0)
        let unknown = scheduler.acknowledged(7, on: 0)
        let wrongStream = scheduler.acknowledged(1, on: 5)
        #expect(first && !duplicate && !unknown && !wrongStream)
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
