import Testing
import WANEmulation

/// An invalid parameter set and the flag its error must name (shown by that name in test output).
struct InvalidCase: CustomTestStringConvertible, Sendable {
    let parameters: LinkParameters
    let subject: String

    init(_ parameters: LinkParameters, _ subject: String) {
        self.parameters = parameters
        self.subject = subject
    }

    var testDescription: String { subject }
}

@Suite("Link parameters, profiles and validation")
struct ConfigurationTests {
    @Test("profiles carry the figures of WAN-EMULATION-NOTES.md")
    func profiles() throws {
        let expected: [(String, Double, Double, Double)] = [
            ("lan", 1, 1000, 0), ("regional", 30, 500, 0.0001), ("continental", 100, 1000, 0.001),
            ("global", 250, 1000, 0.005), ("lossy-edge", 300, 100, 0.02),
        ]
        for (name, rtt, rate, loss) in expected {
            let profile = try LinkProfile.named(name)
            #expect(profile.roundTripMilliseconds == rtt)
            #expect(profile.rateMegabitsPerSecond == rate)
            #expect(profile.loss == loss)
            let configuration = try profile.parameters.configuration()
            #expect(configuration.roundTripDelay == .nanoseconds(Int64(rtt * 1e6)))
            #expect(configuration.uplink.rate == .bitsPerSecond(UInt64(rate * 1e6)))
            #expect(configuration.downlink.loss.averageLoss == loss)
        }
        #expect(throws: WANEmulationError.self) { try LinkProfile.named("moon") }
    }

    @Test("parameters become a configuration: RTT split evenly, queue default 100 ms, overrides per direction")
    func parametersBecomeConfiguration() throws {
        var parameters = LinkParameters(
            roundTripMilliseconds: 80, rateMegabitsPerSecond: 200, loss: 0.01, jitterMilliseconds: 2,
            lossModel: .gilbertElliott, meanBurstLength: 4, seed: 9)
        parameters.downlink = DirectionOverrides(rateMegabitsPerSecond: 20, loss: 0)
        let configuration = try parameters.configuration()
        #expect(configuration.uplink.oneWayDelay == .milliseconds(40))
        #expect(configuration.downlink.oneWayDelay == .milliseconds(40))
        #expect(configuration.uplink.rate == .bitsPerSecond(200_000_000))
        #expect(configuration.downlink.rate == .bitsPerSecond(20_000_000))
        #expect(configuration.uplink.loss == .gilbertElliott(averageLoss: 0.01, meanBurstLength: 4))
        #expect(configuration.downlink.loss == .none)
        #expect(configuration.uplink.jitter == .milliseconds(2))
        #expect(configuration.uplink.queueLimit == .duration(.milliseconds(100)))
        #expect(configuration.seed == 9)
        parameters.queueBytes = 64_000
        #expect(try parameters.configuration().uplink.queueLimit == .bytes(64_000))
    }

    @Test(
        "invalid parameters get a typed error naming the flag, what was expected and what was found",
        arguments: [
            InvalidCase(LinkParameters(roundTripMilliseconds: -1, rateMegabitsPerSecond: 10), "--rtt-ms"),
            InvalidCase(LinkParameters(roundTripMilliseconds: .nan, rateMegabitsPerSecond: 10), "--rtt-ms"),
            InvalidCase(LinkParameters(roundTripMilliseconds: 10, rateMegabitsPerSecond: 0), "--rate-mbit"),
            InvalidCase(LinkParameters(roundTripMilliseconds: 10, rateMegabitsPerSecond: 10, loss: 1.5), "--loss"),
            InvalidCase(
                LinkParameters(roundTripMilliseconds: 10, rateMegabitsPerSecond: 10, jitterMilliseconds: -2),
                "--jitter-ms"),
            InvalidCase(
                LinkParameters(
                    roundTripMilliseconds: 10, rateMegabitsPerSecond: 10, queueMilliseconds: 5, queueBytes: 9000),
                "--queue-ms / --queue-bytes"),
            InvalidCase(
                LinkParameters(roundTripMilliseconds: 10, rateMegabitsPerSecond: 10, queueMilliseconds: 0), "--queue-ms"
            ),
            InvalidCase(
                LinkParameters(roundTripMilliseconds: 10, rateMegabitsPerSecond: 10, queueBytes: 100),
                "uplink queue limit"),
            InvalidCase(
                LinkParameters(roundTripMilliseconds: 10, rateMegabitsPerSecond: 10, meanBurstLength: 0.5),
                "--burst-length"),
            InvalidCase(
                LinkParameters(
                    roundTripMilliseconds: 10, rateMegabitsPerSecond: 10, loss: 0.9, lossModel: .gilbertElliott,
                    meanBurstLength: 2), "uplink loss"),
            InvalidCase(
                LinkParameters(
                    roundTripMilliseconds: 10, rateMegabitsPerSecond: 10, downlink: DirectionOverrides(loss: -0.1)),
                "--downlink-loss"),
            InvalidCase(
                LinkParameters(
                    roundTripMilliseconds: 10, rateMegabitsPerSecond: 10,
                    uplink: DirectionOverrides(oneWayDelayMilliseconds: .infinity)), "--uplink-delay-ms"),
        ])
    func invalidParameters(invalid: InvalidCase) {
        let subject = invalid.subject
        #expect {
            _ = try invalid.parameters.configuration()
        } throws: { error in
            guard let error = error as? WANEmulationError else { return false }
            return error.code == .invalidParameter && error.subject == subject && !error.expected.isEmpty
                && !error.found.isEmpty && error.description.contains(subject)
        }
    }

    @Test("an engine refuses an invalid configuration or capacity")
    func engineValidates() {
        #expect(throws: WANEmulationError.self) {
            try LinkEmulator(configuration: constantLink(megabits: 10, loss: .bernoulli(probability: 2)))
        }
        #expect(throws: WANEmulationError.self) {
            try LinkEmulator(configuration: constantLink(megabits: 10), capacity: 0)
        }
        #expect(throws: WANEmulationError.self) {
            try LinkEmulator(configuration: LinkConfiguration(rate: .bitsPerSecond(10), oneWayDelay: .zero))
        }
        #expect(throws: WANEmulationError.self) {
            try LinkEmulator(configuration: LinkConfiguration(rate: .bitsPerSecond(10_000), oneWayDelay: .seconds(-1)))
        }
    }

    @Test("a trace replaces the rate in its direction only")
    func traceReplacesRate() throws {
        let trace = try DeliveryTrace(parsing: "1\n")
        let parameters = LinkParameters(roundTripMilliseconds: 10, rateMegabitsPerSecond: 50, downlinkTrace: trace)
        let configuration = try parameters.configuration()
        #expect(configuration.uplink.rate == .bitsPerSecond(50_000_000))
        #expect(configuration.downlink.rate == .trace(trace))
        #expect(configuration.downlink.rate.averageBitsPerSecond == 12_000_000)
    }
}

@Suite("Histogram and generators")
struct SupportTests {
    @Test("percentiles are within the histogram's 1.6 % precision")
    func histogramPercentiles() {
        var histogram = DelayHistogram()
        for microseconds in 1...10_000 { histogram.record(nanoseconds: UInt64(microseconds) * 1000) }
        #expect(histogram.count == 10_000)
        #expect(histogram.maximumNanoseconds == 10_000_000)
        #expect(histogram.minimumNanoseconds == 1000)
        #expect(abs(Double(histogram.percentileNanoseconds(0.5)) / 5_000_000 - 1) < 0.016)
        #expect(abs(Double(histogram.percentileNanoseconds(0.99)) / 9_900_000 - 1) < 0.016)
        #expect(histogram.percentileNanoseconds(1) == 10_000_000)
        #expect(abs(histogram.meanNanoseconds - 5_000_500) < 1)
        #expect(DelayHistogram().percentileNanoseconds(0.5) == 0)
    }

    @Test("small values are exact")
    func histogramSmallValues() {
        var histogram = DelayHistogram()
        for value in [0, 0, 0, 5, 127] { histogram.record(nanoseconds: UInt64(value)) }
        #expect(histogram.percentileNanoseconds(0.5) == 0)
        #expect(histogram.percentileNanoseconds(0.8) == 5)
        #expect(histogram.percentileNanoseconds(0.99) == 127)
    }

    @Test("xoshiro256** is deterministic and roughly uniform")
    func generator() {
        var first = Xoshiro256StarStar(seed: 1)
        var second = Xoshiro256StarStar(seed: 1)
        var other = Xoshiro256StarStar(seed: 2)
        let a = (0..<100).map { _ in first.next() }
        #expect(a == (0..<100).map { _ in second.next() })
        #expect(a != (0..<100).map { _ in other.next() })
        var generator = Xoshiro256StarStar(seed: 3)
        let threshold = Xoshiro256StarStar.probabilityThreshold(0.25)
        let hits = (0..<100_000).filter { _ in generator.nextEvent(threshold: threshold) }.count
        #expect(abs(hits - 25_000) < 600)
        #expect(Xoshiro256StarStar.probabilityThreshold(0) == 0)
        #expect(Xoshiro256StarStar.probabilityThreshold(1) == .max)
    }
}
