/// What one direction of a link did: packets and bytes forwarded and dropped, queueing delay, and lateness.
public struct LinkCounters: Sendable, Hashable {
    /// Packets offered to the link.
    public var arrivedPackets: UInt64 = 0
    /// Bytes offered to the link.
    public var arrivedBytes: UInt64 = 0
    /// Packets handed back to the shell for transmission.
    public var forwardedPackets: UInt64 = 0
    /// Bytes handed back to the shell for transmission.
    public var forwardedBytes: UInt64 = 0
    /// Packets dropped by the random loss model.
    public var droppedByLossPackets: UInt64 = 0
    /// Bytes dropped by the random loss model.
    public var droppedByLossBytes: UInt64 = 0
    /// Packets dropped because the droptail queue was full.
    public var droppedByQueuePackets: UInt64 = 0
    /// Bytes dropped because the droptail queue was full.
    public var droppedByQueueBytes: UInt64 = 0
    /// Packets dropped because the engine ran out of descriptors (the shell's pool was full): an overload.
    public var droppedByCapacityPackets: UInt64 = 0
    /// Packets whose actual transmission the shell reported.
    public var transmittedPackets: UInt64 = 0
    /// Reported packets that left later than scheduled by more than the tolerance.
    public var latePackets: UInt64 = 0
    /// The largest lateness reported, in nanoseconds.
    public var maximumLatenessNanoseconds: UInt64 = 0
    /// Sum of reported lateness, in nanoseconds (saturating).
    public var totalLatenessNanoseconds: UInt64 = 0
    /// Time from arrival to the start of serialisation of every accepted packet.
    public var queueDelay = DelayHistogram()

    /// Creates zeroed counters.
    public init() {}

    /// The fraction of reported transmissions that were late (0 when none was reported).
    public var lateFraction: Double {
        transmittedPackets == 0 ? 0 : Double(latePackets) / Double(transmittedPackets)
    }

    /// The fraction of arrived packets dropped by the loss model.
    public var lossFraction: Double {
        arrivedPackets == 0 ? 0 : Double(droppedByLossPackets) / Double(arrivedPackets)
    }
}

/// When a run counts as distorted by the emulator itself (it could not keep up).
public struct OverloadPolicy: Sendable, Hashable {
    /// A packet that leaves later than scheduled by more than this is late.
    public var latenessTolerance: Duration
    /// A run with more late packets than this fraction of its transmissions is invalid.
    public var maximumLateFraction: Double

    /// Creates a policy.
    /// - Parameters:
    ///   - latenessTolerance: Lateness that still counts as on time (default 1 ms).
    ///   - maximumLateFraction: Largest acceptable fraction of late packets (default 1 %).
    public init(latenessTolerance: Duration = .milliseconds(1), maximumLateFraction: Double = 0.01) {
        self.latenessTolerance = latenessTolerance
        self.maximumLateFraction = maximumLateFraction
    }
}
