import Testing
import WANEmulation

@Suite("Serialisation rate and propagation delay in virtual time")
struct RateAndDelayTests {
    @Test(
        "a saturating flow gets the configured rate within 1 %",
        arguments: [(1.0, 1500), (12.0, 1500), (100.0, 1500), (500.0, 1200), (1000.0, 1500), (100.0, 64)])
    func saturatingFlowGetsConfiguredRate(megabits: Double, size: Int) throws {
        var link = try LinkEmulator(
            configuration: constantLink(
                megabits: megabits, oneWayDelayMilliseconds: 20, queue: .duration(.milliseconds(50))),
            capacity: 1 << 20)
        // Offer 1.25x the rate for a virtual second.
        let interval = UInt64(Double(size * 8) / (megabits * 1.25e6) * 1e9)
        let count = Int(1_000_000_000 / interval)
        let run = drive(&link, arrivals: periodicArrivals(count: count, size: size, intervalNanoseconds: interval))
        #expect(run.droppedByQueueCount > 0, "the offered load exceeds the rate, so the queue must overflow")
        // Steady state: departures between 200 ms and 900 ms of virtual time.
        let measured = run.deliveredBitsPerSecond(in: 200_000_000...900_000_000)
        #expect(abs(measured / (megabits * 1e6) - 1) < 0.01, "measured \(measured / 1e6) Mbit/s")
        #expect(link.counters.forwardedPackets == UInt64(run.delivered.count))
    }

    @Test("a flow below the rate is not queued and loses nothing")
    func flowBelowRateIsNotQueued() throws {
        var link = try LinkEmulator(configuration: constantLink(megabits: 100, oneWayDelayMilliseconds: 5))
        // 1500 B every 200 us = 60 Mbit/s.
        let run = drive(&link, arrivals: periodicArrivals(count: 5000, size: 1500, intervalNanoseconds: 200_000))
        #expect(run.scheduledCount == 5000)
        #expect(link.counters.queueDelay.maximumNanoseconds == 0)
        for packet in run.delivered {
            #expect(packet.departure.nanoseconds - packet.arrival.nanoseconds == 5_000_000 + 120_000)
        }
    }

    @Test("round-trip time is exact in virtual time", arguments: LinkProfile.all)
    func roundTripTimeIsExact(profile: LinkProfile) throws {
        var link = try WANLink(configuration: profile.parameters.configuration())
        // An 84-byte ICMP echo from side a, echoed by side b the moment it arrives.
        let echoSize = 84
        guard case .scheduled(let atSideB) = link.uplink.enqueue(PacketHandle(slot: 0), size: echoSize, at: .zero)
        else {
            Issue.record("the echo request was dropped on a link without loss decisions for the first packet")
            return
        }
        #expect(link.uplink.dequeue(readyAt: LinkInstant(nanoseconds: atSideB.nanoseconds - 1)) == nil)
        let request = link.uplink.dequeue(readyAt: atSideB)
        #expect(request?.handle == PacketHandle(slot: 0))
        guard
            case .scheduled(let backAtSideA) = link.downlink.enqueue(PacketHandle(slot: 1), size: echoSize, at: atSideB)
        else {
            Issue.record("the echo reply was dropped")
            return
        }
        let serialisation = UInt64(echoSize * 8) * 1_000_000_000 / UInt64(profile.rateMegabitsPerSecond * 1e6)
        let expected = UInt64(profile.roundTripMilliseconds * 1e6) + 2 * serialisation
        #expect(backAtSideA.nanoseconds == expected)
    }

    @Test("asymmetric links serialise each direction at its own rate")
    func asymmetricRates() throws {
        var parameters = LinkParameters(roundTripMilliseconds: 40, rateMegabitsPerSecond: 100)
        parameters.downlink.rateMegabitsPerSecond = 10
        parameters.uplink.oneWayDelayMilliseconds = 5
        parameters.downlink.oneWayDelayMilliseconds = 35
        parameters.queueMilliseconds = 1000
        var link = try WANLink(configuration: parameters.configuration(), capacityPerDirection: 1 << 18)
        let arrivals = periodicArrivals(count: 20_000, size: 1500, intervalNanoseconds: 50_000)  // 240 Mbit/s
        let up = drive(&link.uplink, arrivals: arrivals)
        let down = drive(&link.downlink, arrivals: arrivals)
        #expect(abs(up.deliveredBitsPerSecond(in: 100_000_000...900_000_000) / 100e6 - 1) < 0.01)
        #expect(abs(down.deliveredBitsPerSecond(in: 100_000_000...900_000_000) / 10e6 - 1) < 0.01)
        #expect(up.delivered[0].departure.nanoseconds == 5_000_000 + 120_000)
        #expect(down.delivered[0].departure.nanoseconds == 35_000_000 + 1_200_000)
    }

    @Test("packets leave in arrival order and nextDeparture names the head")
    func departuresAreOrdered() throws {
        var link = try LinkEmulator(configuration: constantLink(megabits: 10, oneWayDelayMilliseconds: 1))
        for index in 0..<10 {
            _ = link.enqueue(PacketHandle(slot: Int32(index)), size: 1000 + index, at: .microseconds(UInt64(index)))
        }
        var previous = LinkInstant.zero
        var handles: [Int32] = []
        while let next = link.nextDeparture {
            #expect(next >= previous)
            let early = link.dequeue(readyAt: LinkInstant(nanoseconds: next.nanoseconds - 1))
            #expect(early == nil)
            guard let packet = link.dequeue(readyAt: next) else {
                Issue.record("nextDeparture \(next) was not ready at that instant")
                return
            }
            #expect(packet.departure == next)
            handles.append(packet.handle.slot)
            previous = next
        }
        #expect(handles == Array(0..<10))
        #expect(link.counters.forwardedBytes == UInt64((0..<10).reduce(0) { $0 + 1000 + $1 }))
    }
}
