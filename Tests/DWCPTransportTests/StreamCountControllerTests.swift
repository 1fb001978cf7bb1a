import Foundation
import Testing

@testable import DWCPTransport

@Suite("Stream-count controller")
struct StreamCountControllerTests {
    /// Runs the controller against a goodput curve for `intervals` samples; returns the counts used.
    static func run(
        _ controller: inout StreamCountController,
        intervals: Int,
        goodput: (Int) -> Double
    ) -> [Int] {
        var counts: [Int] = []
        for _ in 0..<intervals {
            counts.append(controller.intervalElapsed(goodput: goodput(controller.streamCount)))
        }
        return counts
    }

    @Test("What one stream keeps in flight is half the smaller buffer ceiling")
    func inFlightLimit() {
        // Debian's defaults: tcp_rmem max 6 MiB (32 MiB in wanem's namespaces), tcp_wmem max 4 MiB.
        #expect(
            StreamCountController.streamInFlightLimit(receiveBufferMaximum: 32 << 20, sendBufferMaximum: 4 << 20)
                == 2 << 20)
        #expect(
            StreamCountController.streamInFlightLimit(receiveBufferMaximum: 6 << 20, sendBufferMaximum: 8 << 20)
                == 3 << 20)
    }

    /// Initial counts: (rate bit/s, round trip s, what one stream keeps in flight, expected count).
    static let initialCounts: [(Double, Double, Int, Int)] = [
        // 2 MiB per stream (Debian's defaults): the buffers bound it. 1 Gbit/s × 250 ms = 31.25 MB: 15 streams.
        (1e9, 0.25, 2 << 20, 15), (1e9, 0.1, 2 << 20, 6), (1e9, 0.001, 2 << 20, 1), (1e8, 0.03, 2 << 20, 1),
        // 32 MiB per stream (64 MiB buffers, as in the migration benchmark): slow start bounds it.
        // 31.25 MB ÷ (14 480 B × 2^8) = 8.4: 9 streams grow to it within 8 round trips (2 s), 1 stream in 11.
        (1e9, 0.25, 32 << 20, 9), (1e9, 0.1, 32 << 20, 4), (1e9, 0.005, 32 << 20, 1),
    ]

    @Test(
        "The initial count covers the bandwidth-delay product with what one stream keeps in flight, and grows to it within 8 round trips",
        arguments: initialCounts)
    func initialCount(_ example: (Double, Double, Int, Int)) {
        let (rate, roundTrip, limit, expected) = example
        #expect(
            StreamCountController.initialStreamCount(
                bitsPerSecond: rate, roundTripSeconds: roundTrip, streamInFlightLimit: limit) == expected)
    }

    @Test("It climbs to where extra streams stop paying off")
    func convergesUp() {
        var controller = StreamCountController(initialStreams: 2)
        // Each stream is window-limited to 100; the path carries 1000.
        let counts = Self.run(&controller, intervals: 80) { min(Double($0) * 100, 1000) }
        let settled = counts.suffix(20)
        #expect(settled.allSatisfy { (9...11).contains($0) }, "\(counts)")
    }

    @Test("It comes down when the path shrinks and more streams buy nothing")
    func convergesDown() {
        var controller = StreamCountController(initialStreams: 10)
        _ = Self.run(&controller, intervals: 40) { min(Double($0) * 100, 1000) }
        let counts = Self.run(&controller, intervals: 200) { min(Double($0) * 100, 400) }
        let settled = counts.suffix(30)
        #expect(settled.allSatisfy { (3...6).contains($0) }, "\(counts)")
    }

    @Test("Coming down does not ratchet: where each stream less costs 4 %, it stays within one stream of the top")
    func noDownwardRatchet() {
        var controller = StreamCountController(initialStreams: 10, configuration: .init(maximumStreams: 16))
        // Flat from 10 streams up; each stream below 10 costs 4 % (under the 5 % threshold). Before, every
        // step down was measured against the last, so the count slid to the minimum.
        let counts = Self.run(&controller, intervals: 200) { 1000 * pow(0.96, Double(max(0, 10 - $0))) }
        #expect(counts.allSatisfy { $0 >= 9 }, "\(counts)")
    }

    @Test("Streams held back by their send buffers make it add streams though goodput samples are flat")
    func bufferLimitedStreamsClimb() {
        var limited = StreamCountController(initialStreams: 4, configuration: .init(maximumStreams: 12))
        var counts: [Int] = []
        for _ in 0..<20 { counts.append(limited.intervalElapsed(goodput: 500, bufferLimited: 0.9)) }
        #expect(counts.last == 12 && counts == counts.sorted(), "\(counts)")
        // Not buffer-limited, the same flat samples say extra streams buy nothing: it never climbs.
        var free = StreamCountController(initialStreams: 4, configuration: .init(maximumStreams: 12))
        var freeCounts: [Int] = []
        for _ in 0..<20 { freeCounts.append(free.intervalElapsed(goodput: 500, bufferLimited: 0.1)) }
        #expect(freeCounts.allSatisfy { $0 <= 5 } && freeCounts.last! < 4, "\(freeCounts)")
    }

    @Test("It stays within its bounds", arguments: [(1, 4), (3, 3), (2, 16)])
    func staysInBounds(minimum: Int, maximum: Int) {
        let configuration = StreamCountController.Configuration(minimumStreams: minimum, maximumStreams: maximum)
        var controller = StreamCountController(initialStreams: 100, configuration: configuration)
        #expect(controller.streamCount == maximum)
        let rising = Self.run(&controller, intervals: 50) { Double($0) * 100 }
        let flat = Self.run(&controller, intervals: 100) { _ in 500 }
        #expect((rising + flat).allSatisfy { (minimum...maximum).contains($0) })
    }
}
