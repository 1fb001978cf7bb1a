import Testing
import WANEmulation

@Suite("Lateness and overload detection")
struct OverloadTests {
    private func transmit(late lateCount: Int, of total: Int, lateness: UInt64) throws -> LinkEmulator {
        var link = try LinkEmulator(configuration: constantLink(megabits: 100, oneWayDelayMilliseconds: 10))
        for index in 0..<total {
            let now = LinkInstant.microseconds(UInt64(index) * 200)
            while let packet = link.dequeue(readyAt: now) {
                let isLate = packet.handle.slot < Int32(lateCount)
                link.recordTransmission(of: packet, at: packet.departure.advanced(byNanoseconds: isLate ? lateness : 0))
            }
            _ = link.enqueue(PacketHandle(slot: Int32(index)), size: 1500, at: now)
        }
        while let next = link.nextDeparture, let packet = link.dequeue(readyAt: next) {
            link.recordTransmission(of: packet, at: packet.departure.advanced(byNanoseconds: 50_000))
        }
        return link
    }

    @Test("packets sent on time, or late within the 1 ms tolerance, keep the run valid")
    func onTimeRunIsValid() throws {
        let link = try transmit(late: 500, of: 2000, lateness: 900_000)
        #expect(link.counters.transmittedPackets == 2000)
        #expect(link.counters.latePackets == 0)
        #expect(link.counters.maximumLatenessNanoseconds == 900_000)
        #expect(!link.isOverloaded)
        #expect(link.overloadReasons.isEmpty)
    }

    @Test("a few late packets are counted but tolerated; more than 1 % marks the run invalid")
    func lateRunIsInvalid() throws {
        let tolerated = try transmit(late: 10, of: 2000, lateness: 5_000_000)
        #expect(tolerated.counters.latePackets == 10)
        #expect(!tolerated.isOverloaded)
        let overloaded = try transmit(late: 100, of: 2000, lateness: 5_000_000)
        #expect(overloaded.counters.latePackets == 100)
        #expect(overloaded.counters.lateFraction == 0.05)
        #expect(overloaded.isOverloaded)
        #expect(overloaded.overloadReasons.first?.contains("100 of 2000") == true)
    }

    @Test("a stricter policy flags smaller lateness")
    func stricterPolicy() throws {
        var link = try LinkEmulator(
            configuration: constantLink(megabits: 100),
            overloadPolicy: OverloadPolicy(latenessTolerance: .microseconds(100), maximumLateFraction: 0))
        _ = link.enqueue(PacketHandle(slot: 0), size: 100, at: .zero)
        let dequeued = link.dequeue(readyAt: .milliseconds(1))
        let packet = try #require(dequeued)
        link.recordTransmission(of: packet, at: packet.departure.advanced(byNanoseconds: 200_000))
        #expect(link.isOverloaded)
    }

    @Test("either direction's overload marks the link")
    func linkOverload() throws {
        var link = try WANLink(configuration: WANLinkConfiguration(symmetric: constantLink(megabits: 10)))
        _ = link.downlink.enqueue(PacketHandle(slot: 0), size: 100, at: .zero)
        let dequeued = link.downlink.dequeue(readyAt: .milliseconds(1))
        let packet = try #require(dequeued)
        link[.downlink].recordTransmission(of: packet, at: .milliseconds(20))
        #expect(link.isOverloaded)
        #expect(!link.uplink.isOverloaded)
    }
}
