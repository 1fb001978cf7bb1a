/// What the link decided for an arriving packet.
public enum EnqueueDecision: Sendable, Hashable {
    /// Accepted: the packet leaves at `departure`; the shell keeps its slot until ``LinkEmulator/dequeue(readyAt:)``
    /// returns it.
    case scheduled(departure: LinkInstant)
    /// Lost by the random loss model; the shell frees the slot.
    case droppedByLoss
    /// The droptail queue was full; the shell frees the slot.
    case droppedByQueue
    /// The engine had no free descriptor (more packets in flight than its capacity): the emulator is overloaded; the
    /// shell frees the slot.
    case droppedByCapacity

    /// Whether the packet was accepted.
    public var isScheduled: Bool {
        if case .scheduled = self { return true }
        return false
    }
}

/// One direction of an emulated link: a sans-IO state machine fed with arrivals and asked for departures.
///
/// The shell reads a packet into a slot of its pool and calls ``enqueue(_:size:at:)`` with the current instant; the
/// engine decides at once whether the packet is lost or dropped, or when it will leave (its serialisation at the rate
/// or along the capacity trace, after the packets ahead of it, plus the one-way delay and jitter). The shell sleeps
/// until ``nextDeparture``, then calls ``dequeue(readyAt:)`` until it returns nil, writes each packet out and reports
/// when it actually did with ``recordTransmission(of:at:)`` so the engine can tell whether the shell keeps up.
///
/// Storage is allocated once at initialisation (a fixed-capacity ring of descriptors, or a heap when jitter may
/// reorder); the per-packet path never allocates. Instants passed in must not decrease; an earlier one is treated as
/// the latest seen.
public struct LinkEmulator: Sendable {
    /// The direction's configuration.
    public let configuration: LinkConfiguration
    /// The most packets the engine holds at once (queued, being serialised, or propagating).
    public let capacity: Int
    /// When the shell counts as not keeping up.
    public let overloadPolicy: OverloadPolicy
    /// What the direction did so far.
    public private(set) var counters = LinkCounters()

    private struct BacklogEntry: Sendable {
        var serviceEnd: UInt64
        var size: Int32
    }

    // Configuration, precomputed in nanoseconds.
    private let oneWayDelayNanoseconds: UInt64
    private let jitterNanoseconds: UInt64
    private let queueLimitNanoseconds: UInt64?
    private let queueLimitBytes: Int?
    private let latenessToleranceNanoseconds: UInt64
    private let bitsPerSecond: UInt64
    private let traceOffsets: [UInt64]
    private let tracePeriodNanoseconds: UInt64
    private let traceBytesPerOpportunity: Int

    // Service state.
    private var linkFreeAt: UInt64 = 0
    private var serialisationCarry: UInt64 = 0
    private var traceOpportunity = -1
    private var traceBytesLeft = 0

    // Packets.
    private var backlog: FixedRing<BacklogEntry>
    private var backlogBytes = 0
    private var inOrder: FixedRing<ScheduledPacket>
    private var reordering: DepartureHeap
    private var lastArrival: UInt64 = 0
    private var lastDeparture: UInt64 = 0

    // Randomness.
    private var loss: LossProcess
    private var jitterRandom: Xoshiro256StarStar

    /// Creates one direction of a link.
    /// - Parameters:
    ///   - configuration: The direction's configuration.
    ///   - capacity: The most packets held at once; the shell's pool SHOULD have at least this many slots.
    ///   - seed: Seed of the direction's loss and jitter generators.
    ///   - overloadPolicy: When the run counts as distorted.
    /// - Throws: ``WANEmulationError`` with `.invalidParameter` for an invalid configuration or capacity.
    public init(
        configuration: LinkConfiguration,
        capacity: Int = 65_536,
        seed: UInt64 = 1,
        overloadPolicy: OverloadPolicy = OverloadPolicy()
    ) throws(WANEmulationError) {
        try configuration.validate()
        guard capacity >= 1, capacity <= 1 << 26 else {
            throw WANEmulationError(
                .invalidParameter, subject: "capacity", expected: "1 ... \(1 << 26) packets", found: "\(capacity)")
        }
        guard overloadPolicy.latenessTolerance >= .zero, overloadPolicy.maximumLateFraction >= 0 else {
            throw WANEmulationError(
                .invalidParameter, subject: "overload policy", expected: "a tolerance >= 0 and a fraction >= 0",
                found: "\(overloadPolicy)")
        }
        self.configuration = configuration
        self.capacity = capacity
        self.overloadPolicy = overloadPolicy
        oneWayDelayNanoseconds = UInt64(configuration.oneWayDelay.wholeNanoseconds)
        jitterNanoseconds = UInt64(configuration.jitter.wholeNanoseconds)
        latenessToleranceNanoseconds = UInt64(overloadPolicy.latenessTolerance.wholeNanoseconds)
        switch configuration.queueLimit {
        case .duration(let limit):
            queueLimitNanoseconds = UInt64(limit.wholeNanoseconds)
            queueLimitBytes = nil
        case .bytes(let bytes):
            queueLimitNanoseconds = nil
            queueLimitBytes = bytes
        case .unlimited:
            queueLimitNanoseconds = nil
            queueLimitBytes = nil
        }
        switch configuration.rate {
        case .bitsPerSecond(let rate):
            bitsPerSecond = rate
            traceOffsets = []
            tracePeriodNanoseconds = 0
            traceBytesPerOpportunity = 0
        case .trace(let trace, let bytes):
            bitsPerSecond = 0
            traceOffsets = trace.opportunityMilliseconds.map { UInt64($0) * 1_000_000 }
            tracePeriodNanoseconds = UInt64(trace.periodMilliseconds) * 1_000_000
            traceBytesPerOpportunity = bytes
        }
        let filler = ScheduledPacket(handle: PacketHandle(slot: -1), size: 0, arrival: .zero, departure: .zero)
        backlog = FixedRing(capacity: capacity, filler: BacklogEntry(serviceEnd: 0, size: 0))
        if configuration.allowsReordering && configuration.jitter > .zero {
            inOrder = FixedRing(capacity: 1, filler: filler)
            reordering = DepartureHeap(capacity: capacity)
        } else {
            inOrder = FixedRing(capacity: capacity, filler: filler)
            reordering = DepartureHeap(capacity: 1)
        }
        var seeds = SplitMix64(seed: seed)
        loss = LossProcess(model: configuration.loss, seed: seeds.next())
        jitterRandom = Xoshiro256StarStar(seed: seeds.next())
    }

    private var isReordering: Bool {
        configuration.allowsReordering && jitterNanoseconds > 0
    }

    /// Packets the engine holds (queued, being serialised or propagating).
    public var packetsInFlight: Int {
        isReordering ? reordering.count : inOrder.count
    }

    /// Offers an arriving packet to the link.
    /// - Parameters:
    ///   - handle: The shell's pool slot holding the packet.
    ///   - size: The packet's size in bytes (1 ... 65535).
    ///   - now: The arrival instant.
    /// - Returns: The decision; on anything but `.scheduled` the shell frees the slot at once.
    public mutating func enqueue(_ handle: PacketHandle, size: Int, at now: LinkInstant) -> EnqueueDecision {
        precondition(size > 0 && size <= 65_535, "packet size \(size) outside 1...65535")
        let arrival = max(now.nanoseconds, lastArrival)
        lastArrival = arrival
        counters.arrivedPackets += 1
        counters.arrivedBytes += UInt64(size)

        if loss.shouldDrop() {
            counters.droppedByLossPackets += 1
            counters.droppedByLossBytes += UInt64(size)
            return .droppedByLoss
        }
        while let oldest = backlog.first, oldest.serviceEnd <= arrival {
            backlogBytes -= Int(backlog.removeFirst().size)
        }
        if isReordering ? reordering.isFull : inOrder.isFull {
            counters.droppedByCapacityPackets += 1
            return .droppedByCapacity
        }
        if let queueLimitBytes, backlogBytes + size > queueLimitBytes {
            return dropByQueue(size)
        }

        let serviceStart: UInt64
        let serviceEnd: UInt64
        if bitsPerSecond > 0 {
            if arrival > linkFreeAt { serialisationCarry = 0 }
            serviceStart = max(arrival, linkFreeAt)
            if let queueLimitNanoseconds, serviceStart - arrival > queueLimitNanoseconds {
                return dropByQueue(size)
            }
            let numerator = UInt64(size) * 8_000_000_000 + serialisationCarry
            serialisationCarry = numerator % bitsPerSecond
            serviceEnd = serviceStart + numerator / bitsPerSecond
            linkFreeAt = serviceEnd
        } else {
            var opportunity: Int
            var bytesLeft: Int
            if traceOpportunity >= 0, traceBytesLeft > 0, traceTime(of: traceOpportunity) >= arrival {
                opportunity = traceOpportunity
                bytesLeft = traceBytesLeft
            } else {
                opportunity = max(traceOpportunity + 1, firstOpportunity(atOrAfter: arrival))
                bytesLeft = traceBytesPerOpportunity
            }
            serviceStart = traceTime(of: opportunity)
            if let queueLimitNanoseconds, serviceStart - arrival > queueLimitNanoseconds {
                return dropByQueue(size)
            }
            var remaining = size
            while remaining > bytesLeft {
                remaining -= bytesLeft
                opportunity += 1
                bytesLeft = traceBytesPerOpportunity
            }
            traceOpportunity = opportunity
            traceBytesLeft = bytesLeft - remaining
            serviceEnd = traceTime(of: opportunity)
        }

        var departure = serviceEnd + oneWayDelayNanoseconds
        if jitterNanoseconds > 0 {
            let offset = UInt64.random(in: 0...(2 * jitterNanoseconds), using: &jitterRandom)
            departure = departure + offset >= jitterNanoseconds ? departure + offset - jitterNanoseconds : 0
            departure = max(departure, serviceEnd)
        }
        if !isReordering {
            departure = max(departure, lastDeparture)
            lastDeparture = departure
        }

        backlog.append(BacklogEntry(serviceEnd: serviceEnd, size: Int32(size)))
        backlogBytes += size
        let packet = ScheduledPacket(
            handle: handle, size: Int32(size), arrival: LinkInstant(nanoseconds: arrival),
            departure: LinkInstant(nanoseconds: departure))
        if isReordering {
            reordering.insert(packet)
        } else {
            inOrder.append(packet)
        }
        counters.queueDelay.record(nanoseconds: serviceStart - arrival)
        return .scheduled(departure: packet.departure)
    }

    private mutating func dropByQueue(_ size: Int) -> EnqueueDecision {
        counters.droppedByQueuePackets += 1
        counters.droppedByQueueBytes += UInt64(size)
        return .droppedByQueue
    }

    private func traceTime(of opportunity: Int) -> UInt64 {
        let count = traceOffsets.count
        return UInt64(opportunity / count) * tracePeriodNanoseconds + traceOffsets[opportunity % count]
    }

    /// The absolute index of the first opportunity at or after `instant`.
    private func firstOpportunity(atOrAfter instant: UInt64) -> Int {
        let loop = instant / tracePeriodNanoseconds
        let offset = instant - loop * tracePeriodNanoseconds
        var low = 0
        var high = traceOffsets.count - 1  // traceOffsets.last == period > offset
        while low < high {
            let middle = (low + high) / 2
            if traceOffsets[middle] >= offset { high = middle } else { low = middle + 1 }
        }
        return Int(loop) * traceOffsets.count + low
    }

    /// When the next held packet leaves, or nil when none is held.
    public var nextDeparture: LinkInstant? {
        isReordering ? reordering.first?.departure : inOrder.first?.departure
    }

    /// Returns the next packet due at `now`, in departure order, or nil when none is due.
    /// - Parameter now: The current instant.
    /// - Returns: A packet to transmit; call repeatedly until nil.
    public mutating func dequeue(readyAt now: LinkInstant) -> ScheduledPacket? {
        let packet: ScheduledPacket
        if isReordering {
            guard let first = reordering.first, first.departure <= now else { return nil }
            packet = reordering.removeFirst()
        } else {
            guard let first = inOrder.first, first.departure <= now else { return nil }
            packet = inOrder.removeFirst()
        }
        counters.forwardedPackets += 1
        counters.forwardedBytes += UInt64(packet.size)
        return packet
    }

    /// Reports when the shell actually transmitted a packet, so lateness can be judged.
    /// - Parameters:
    ///   - packet: A packet ``dequeue(readyAt:)`` returned.
    ///   - actual: When it was written out.
    public mutating func recordTransmission(of packet: ScheduledPacket, at actual: LinkInstant) {
        counters.transmittedPackets += 1
        let lateness = actual.nanoseconds(since: packet.departure)
        if lateness > latenessToleranceNanoseconds { counters.latePackets += 1 }
        if lateness > counters.maximumLatenessNanoseconds { counters.maximumLatenessNanoseconds = lateness }
        let (sum, overflow) = counters.totalLatenessNanoseconds.addingReportingOverflow(lateness)
        counters.totalLatenessNanoseconds = overflow ? .max : sum
    }

    /// Whether the emulator failed to keep up: too many late transmissions, or drops for lack of descriptors.
    public var isOverloaded: Bool {
        !overloadReasons.isEmpty
    }

    /// Why the run is invalid, one sentence each; empty when it is valid.
    public var overloadReasons: [String] {
        var reasons: [String] = []
        if counters.lateFraction > overloadPolicy.maximumLateFraction {
            reasons.append(
                "\(counters.latePackets) of \(counters.transmittedPackets) packets left more than "
                    + "\(overloadPolicy.latenessTolerance) late (max "
                    + "\(Double(counters.maximumLatenessNanoseconds) / 1e6) ms)")
        }
        if counters.droppedByCapacityPackets > 0 {
            reasons.append(
                "\(counters.droppedByCapacityPackets) packets dropped because \(capacity) descriptors were in use")
        }
        return reasons
    }
}
