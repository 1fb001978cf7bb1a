import Testing
import WANEmulation

@Suite("Droptail queue")
struct QueueTests {
    @Test("a byte-bounded queue drops exactly what exceeds the bound")
    func byteBoundDropsBeyondBound() throws {
        // 12 Mbit/s: one 1500-byte packet per millisecond; the bound holds 10 packets, the one in service included.
        var link = try LinkEmulator(configuration: constantLink(megabits: 12, queue: .bytes(15_000)))
        let burst = (0..<30).map { _ in (LinkInstant.zero, 1500) }
        let run = drive(&link, arrivals: burst)
        #expect(run.decisions.prefix(10).allSatisfy { $0.isScheduled })
        #expect(run.decisions.dropFirst(10).allSatisfy { $0 == .droppedByQueue })
        #expect(link.counters.droppedByQueuePackets == 20)
        #expect(link.counters.droppedByQueueBytes == 30_000)
        #expect(run.delivered.map(\.departure.nanoseconds) == (1...10).map { UInt64($0) * 1_000_000 })
    }

    @Test("a time-bounded queue drops packets that would wait longer than the bound")
    func timeBoundDropsBeyondBound() throws {
        var link = try LinkEmulator(configuration: constantLink(megabits: 12, queue: .duration(.milliseconds(10))))
        let burst = (0..<30).map { _ in (LinkInstant.zero, 1500) }
        let run = drive(&link, arrivals: burst)
        // Packet i waits i ms: 0 ... 10 ms are accepted, 11 ms is over the bound.
        #expect(run.scheduledCount == 11)
        #expect(run.decisions.dropFirst(11).allSatisfy { $0 == .droppedByQueue })
        #expect(link.counters.queueDelay.maximumNanoseconds == 10_000_000)
    }

    @Test("the queue accepts again once it has drained")
    func queueRecoversAfterDraining() throws {
        var link = try LinkEmulator(configuration: constantLink(megabits: 12, queue: .bytes(15_000)))
        var arrivals = (0..<20).map { _ in (LinkInstant.zero, 1500) }
        // 5 ms later five packets have been serialised: room for exactly five more.
        arrivals += (0..<8).map { _ in (LinkInstant.milliseconds(5), 1500) }
        let run = drive(&link, arrivals: arrivals)
        #expect(run.decisions[20..<25].allSatisfy { $0.isScheduled })
        #expect(run.decisions[25...].allSatisfy { $0 == .droppedByQueue })
    }

    @Test("drops start only when the offered load exceeds the rate long enough to fill the queue")
    func dropsStartWhenQueueFills() throws {
        // 100 Mbit/s link, 20 ms queue, fed at 125 Mbit/s: the queue grows by 25 Mbit/s and fills in 80 ms.
        var link = try LinkEmulator(configuration: constantLink(megabits: 100, queue: .duration(.milliseconds(20))))
        let run = drive(&link, arrivals: periodicArrivals(count: 20_000, size: 1500, intervalNanoseconds: 96_000))
        let firstDrop = try #require(run.decisions.firstIndex(of: .droppedByQueue))
        let firstDropTime = Double(firstDrop) * 96e-6
        #expect(abs(firstDropTime - 0.080) < 0.002, "first drop at \(firstDropTime) s")
        #expect(link.counters.queueDelay.percentileNanoseconds(0.99) > 19_000_000)
        #expect(link.counters.queueDelay.percentileNanoseconds(0.99) <= 20_000_000)
    }

    @Test("more packets in flight than descriptors is an overload, not a silent queue drop")
    func capacityExhaustionIsOverload() throws {
        var link = try LinkEmulator(
            configuration: constantLink(megabits: 1000, oneWayDelayMilliseconds: 50), capacity: 4)
        let decisions = (0..<6).map { link.enqueue(PacketHandle(slot: Int32($0)), size: 1500, at: .zero) }
        #expect(decisions.prefix(4).allSatisfy { $0.isScheduled })
        #expect(decisions.suffix(2).allSatisfy { $0 == .droppedByCapacity })
        #expect(link.isOverloaded)
        #expect(link.overloadReasons.count == 1)
        // After the first packet leaves, its descriptor is free again.
        let first = try #require(link.nextDeparture)
        let dequeued = link.dequeue(readyAt: first)
        #expect(dequeued != nil)
        let decision = link.enqueue(PacketHandle(slot: 9), size: 1500, at: first)
        #expect(decision.isScheduled)
    }
}
