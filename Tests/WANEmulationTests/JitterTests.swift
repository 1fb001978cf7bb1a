import Testing
import WANEmulation

@Suite("Jitter")
struct JitterTests {
    private func jitteredRun(allowsReordering: Bool, seed: UInt64 = 5) throws -> VirtualRun {
        var link = try LinkEmulator(
            configuration: constantLink(
                megabits: 1000, oneWayDelayMilliseconds: 50, jitterMilliseconds: 10,
                allowsReordering: allowsReordering),
            seed: seed)
        // 1000-byte packets every 500 us (16 Mbit/s): never queued, 8 us of serialisation each.
        return drive(&link, arrivals: periodicArrivals(count: 20_000, size: 1000, intervalNanoseconds: 500_000))
    }

    @Test("jitter never reorders unless allowed", arguments: [UInt64(1), 2, 3])
    func jitterKeepsOrder(seed: UInt64) throws {
        let run = try jitteredRun(allowsReordering: false, seed: seed)
        #expect(run.delivered.map(\.handle.slot) == (0..<20_000).map(Int32.init))
        let departures = run.delivered.map(\.departure)
        #expect(zip(departures, departures.dropFirst()).allSatisfy { $0 <= $1 })
        // Delays stay within delay ± jitter (+ serialisation); order-keeping only delays, never advances.
        let delays = run.delivered.map { $0.departure.nanoseconds - $0.arrival.nanoseconds }
        #expect(delays.allSatisfy { $0 >= 40_008_000 && $0 <= 60_008_000 })
        #expect(Set(delays).count > 1000, "jitter must actually vary the delay")
    }

    @Test("with reordering allowed, jitter reorders, departures still come out in time order, and the mean is kept")
    func reorderingJitter() throws {
        let run = try jitteredRun(allowsReordering: true)
        let order = run.delivered.map(\.handle.slot)
        #expect(order != (0..<20_000).map(Int32.init), "20 ms of jitter over 0.5 ms spacing must reorder")
        #expect(Set(order).count == 20_000)
        let departures = run.delivered.map(\.departure)
        #expect(zip(departures, departures.dropFirst()).allSatisfy { $0 <= $1 })
        let delays = run.delivered.map { Double($0.departure.nanoseconds - $0.arrival.nanoseconds) }
        #expect(delays.allSatisfy { $0 >= 40_008_000 && $0 <= 60_008_000 })
        let mean = delays.reduce(0, +) / Double(delays.count)
        // Uniform ±10 ms: standard deviation 5.8 ms, so the mean of 20000 is within 0.2 ms with overwhelming odds.
        #expect(abs(mean - 50_008_000) < 200_000, "mean delay \(mean / 1e6) ms")
    }
}
