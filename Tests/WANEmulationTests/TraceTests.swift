import Foundation
import Testing
import WANEmulation

@Suite("Mahimahi delivery traces")
struct TraceTests {
    private func traceLink(_ text: String, queue: QueueLimit = .unlimited) throws -> LinkEmulator {
        let trace = try DeliveryTrace(parsing: text)
        return try LinkEmulator(
            configuration: LinkConfiguration(rate: .trace(trace), oneWayDelay: .zero, queueLimit: queue),
            capacity: 1 << 16)
    }

    @Test("parses timestamps, skipping blank lines and spaces")
    func parsesTrace() throws {
        let trace = try DeliveryTrace(parsing: " 0\n2\n2\n\n5 \n")
        #expect(trace.opportunityMilliseconds == [0, 2, 2, 5])
        #expect(trace.periodMilliseconds == 5)
        #expect(trace.averageBitsPerSecond() == 4 * 12_000 / 0.005)
    }

    @Test(
        "malformed traces get a typed error naming the line",
        arguments: [
            ("", WANEmulationError.Code.emptyTrace, "t"),
            ("\n \n", .emptyTrace, "t"),
            ("1\n2\nabc\n", .nonNumericTraceLine, "t line 3"),
            ("1\n-2\n", .nonNumericTraceLine, "t line 2"),
            ("1\n2.5\n", .nonNumericTraceLine, "t line 2"),
            ("5\n7\n3\n", .decreasingTraceTimestamp, "t line 3"),
            ("0\n0\n", .traceWithoutDuration, "t"),
            ("99999999999\n", .nonNumericTraceLine, "t line 1"),
        ])
    func malformedTraces(text: String, code: WANEmulationError.Code, subject: String) {
        #expect {
            _ = try DeliveryTrace(parsing: text, source: "t")
        } throws: { error in
            guard let error = error as? WANEmulationError else { return false }
            return error.code == code && error.subject == subject && !error.expected.isEmpty
        }
    }

    @Test("a trace holding only 1 is a constant 12 Mbit/s link")
    func singleLineTraceIs12Megabits() throws {
        var link = try traceLink("1\n")
        // Offer 15 Mbit/s of 1500-byte packets for two virtual seconds.
        let run = drive(&link, arrivals: periodicArrivals(count: 2500, size: 1500, intervalNanoseconds: 800_000))
        let measured = run.deliveredBitsPerSecond(in: 100_000_000...1_900_000_000)
        #expect(abs(measured / 12e6 - 1) < 0.01, "measured \(measured / 1e6) Mbit/s")
    }

    @Test("each opportunity carries 1500 bytes at its millisecond, repeated stamps give several, and the trace loops")
    func opportunitiesAreUsedInOrder() throws {
        // Opportunities at 2, 2, 5 | 7, 7, 10 | 12, 12, 15 ...
        var link = try traceLink("2\n2\n5\n")
        let run = drive(&link, arrivals: (0..<7).map { _ in (LinkInstant.zero, 1500) })
        #expect(run.delivered.map { $0.departure.nanoseconds / 1_000_000 } == [2, 2, 5, 7, 7, 10, 12])
    }

    @Test("small packets share an opportunity, large ones span several, and unused bytes are lost")
    func opportunityBytesAreSharedAndLost() throws {
        var link = try traceLink("1\n2\n3\n4\n5\n6\n7\n8\n9\n10\n")
        let arrivals: [(LinkInstant, Int)] = [
            (.zero, 700),  // opportunity 1 ms, 800 bytes left
            (.zero, 700),  // same opportunity, 100 left
            (.zero, 3000),  // 100 of opportunity 1 + 1500 of 2 + 1400 of 3: leaves at 3 ms, 100 left
            (.microseconds(3500), 100),  // arrives after 3 ms: its 100 bytes are gone; uses opportunity 4
            (.microseconds(3900), 100),  // shares opportunity 4
        ]
        let run = drive(&link, arrivals: arrivals)
        #expect(run.delivered.map { $0.departure.nanoseconds / 1_000 } == [1000, 1000, 3000, 4000, 4000])
        #expect(link.counters.queueDelay.maximumNanoseconds == 1_000_000)
    }

    @Test("an idle link skips ahead without replaying missed opportunities")
    func idleLinkSkipsAhead() throws {
        var link = try traceLink("10\n20\n")
        _ = link.enqueue(PacketHandle(slot: 0), size: 1500, at: .zero)
        // 12.345 s later (many loops), the next opportunity at or after the arrival is used.
        let late = LinkInstant.milliseconds(12_345)
        guard case .scheduled(let departure) = link.enqueue(PacketHandle(slot: 1), size: 1500, at: late) else {
            Issue.record("not scheduled")
            return
        }
        #expect(departure == .milliseconds(12_350))
    }

    @Test("a real cellular trace delivers its average rate within 3 % in virtual time")
    func realTraceDeliversAverageRate() throws {
        guard let url = sharedDataFile("traces/mahimahi/Verizon-LTE-short.down") else {
            // The shared data set lives beside the repository (../shared/data); without it there is nothing to replay.
            print(
                "SKIPPED realTraceDeliversAverageRate: ../shared/data/traces/mahimahi/Verizon-LTE-short.down not found")
            return
        }
        let trace = try DeliveryTrace(parsing: String(contentsOf: url, encoding: .utf8), source: url.lastPathComponent)
        let average = trace.averageBitsPerSecond()
        let period = UInt64(trace.periodMilliseconds) * 1_000_000
        var link = try LinkEmulator(
            configuration: LinkConfiguration(
                rate: .trace(trace), oneWayDelay: .milliseconds(20), queueLimit: .duration(.seconds(2))),
            capacity: 1 << 16)
        // Offer 20 Mbit/s (above the trace's busiest second) for two loops of the trace.
        let interval: UInt64 = 600_000
        let count = Int(2 * period / interval)
        let run = drive(&link, arrivals: periodicArrivals(count: count, size: 1500, intervalNanoseconds: interval))
        let delay: UInt64 = 20_000_000
        let measured = run.deliveredBitsPerSecond(in: delay...(2 * period + delay))
        #expect(
            abs(measured / average - 1) < 0.03, "delivered \(measured / 1e6) Mbit/s, trace average \(average / 1e6)")
        #expect(link.counters.droppedByQueuePackets > 0)
    }

    @Test("bytes per opportunity scale a trace up")
    func scaledTrace() throws {
        let trace = try DeliveryTrace(parsing: "1\n")
        var link = try LinkEmulator(
            configuration: LinkConfiguration(
                rate: .trace(trace, bytesPerOpportunity: 15_000), oneWayDelay: .zero, queueLimit: .unlimited))
        let run = drive(&link, arrivals: periodicArrivals(count: 20_000, size: 1500, intervalNanoseconds: 80_000))
        let measured = run.deliveredBitsPerSecond(in: 100_000_000...1_500_000_000)
        #expect(abs(measured / 120e6 - 1) < 0.01, "measured \(measured / 1e6) Mbit/s")
    }
}
