import Testing
import WANEmulation

/// Runs `count` packets through a loss model on a link that never queues, returning the per-packet loss pattern.
private func lossPattern(_ model: LossModel, count: Int, seed: UInt64) throws -> [Bool] {
    var link = try LinkEmulator(configuration: constantLink(megabits: 1_000_000, loss: model), capacity: 16, seed: seed)
    var pattern: [Bool] = []
    pattern.reserveCapacity(count)
    for index in 0..<count {
        let now = LinkInstant.microseconds(UInt64(index))
        while link.dequeue(readyAt: now) != nil {}
        let decision = link.enqueue(PacketHandle(slot: 0), size: 100, at: now)
        #expect(decision != .droppedByQueue && decision != .droppedByCapacity)
        pattern.append(decision == .droppedByLoss)
    }
    return pattern
}

/// Mean length of runs of consecutive losses.
private func meanLossRun(_ pattern: [Bool]) -> Double {
    var runs = 0
    var losses = 0
    var previous = false
    for lost in pattern {
        if lost {
            losses += 1
            if !previous { runs += 1 }
        }
        previous = lost
    }
    return runs == 0 ? 0 : Double(losses) / Double(runs)
}

@Suite("Seeded random loss")
struct LossTests {
    @Test(
        "Bernoulli loss stays within 4 standard deviations of its probability", arguments: [0.0001, 0.001, 0.01, 0.02])
    func bernoulliWithinBounds(probability: Double) throws {
        let count = 400_000
        let lost = try lossPattern(.bernoulli(probability: probability), count: count, seed: 42).filter { $0 }.count
        let expected = Double(count) * probability
        let sigma = (expected * (1 - probability)).squareRoot()
        #expect(abs(Double(lost) - expected) <= 4 * sigma, "lost \(lost), expected \(expected) ± \(4 * sigma)")
        let run = meanLossRun(try lossPattern(.bernoulli(probability: probability), count: count, seed: 42))
        #expect(run < 1.1)
    }

    @Test("the same seed gives the same losses; another seed gives others")
    func lossIsDeterministicPerSeed() throws {
        let first = try lossPattern(.bernoulli(probability: 0.05), count: 10_000, seed: 7)
        let again = try lossPattern(.bernoulli(probability: 0.05), count: 10_000, seed: 7)
        let other = try lossPattern(.bernoulli(probability: 0.05), count: 10_000, seed: 8)
        #expect(first == again)
        #expect(first != other)
    }

    @Test("Gilbert–Elliott keeps the average loss but loses in bursts of the configured mean length")
    func gilbertElliottIsBurstier() throws {
        let count = 1_000_000
        let average = 0.02
        let burst = 5.0
        let bursty = try lossPattern(
            .gilbertElliott(averageLoss: average, meanBurstLength: burst), count: count, seed: 3)
        let independent = try lossPattern(.bernoulli(probability: average), count: count, seed: 3)
        let burstyRate = Double(bursty.filter { $0 }.count) / Double(count)
        let independentRate = Double(independent.filter { $0 }.count) / Double(count)
        // ~4000 bursts: the rate's relative standard deviation is about 1/sqrt(4000) = 1.6 %.
        #expect(abs(burstyRate / average - 1) < 0.08, "Gilbert–Elliott loss \(burstyRate)")
        #expect(abs(independentRate / average - 1) < 0.03, "Bernoulli loss \(independentRate)")
        let burstyRun = meanLossRun(bursty)
        let independentRun = meanLossRun(independent)
        #expect(abs(burstyRun / burst - 1) < 0.06, "mean Gilbert–Elliott burst \(burstyRun)")
        #expect(independentRun < 1.05, "mean Bernoulli run \(independentRun)")
    }

    @Test("loss and jitter draw from separate streams: adding jitter does not change which packets are lost")
    func jitterDoesNotPerturbLoss() throws {
        func lostHandles(jitter: Double) throws -> [Int32] {
            var link = try LinkEmulator(
                configuration: constantLink(
                    megabits: 1000, oneWayDelayMilliseconds: 10, jitterMilliseconds: jitter,
                    loss: .bernoulli(probability: 0.1)),
                seed: 99)
            let run = drive(&link, arrivals: periodicArrivals(count: 2000, size: 500, intervalNanoseconds: 100_000))
            return run.decisions.indices.filter { run.decisions[$0] == .droppedByLoss }.map { Int32($0) }
        }
        let without = try lostHandles(jitter: 0)
        let with = try lostHandles(jitter: 3)
        #expect(without.count > 100)
        #expect(without == with)
    }

    @Test("losses are counted in packets and bytes")
    func lossCounters() throws {
        var link = try LinkEmulator(configuration: constantLink(megabits: 1000, loss: .bernoulli(probability: 1)))
        for index in 0..<10 { _ = link.enqueue(PacketHandle(slot: 0), size: 100 + index, at: .zero) }
        #expect(link.counters.droppedByLossPackets == 10)
        #expect(link.counters.droppedByLossBytes == 1045)
        #expect(link.nextDeparture == nil)
    }
}
