/// The loss models a user can name on the command line.
public enum LossModelKind: String, Sendable, Hashable, CaseIterable, Codable {
    /// Independent losses.
    case bernoulli
    /// Bursty losses (``LossModel/gilbertElliott(averageLoss:meanBurstLength:)``).
    case gilbertElliott = "gilbert-elliott"
}

/// Per-direction values that replace the symmetric ones, for asymmetric links.
public struct DirectionOverrides: Sendable, Hashable, Codable {
    /// One-way delay in milliseconds instead of half the round-trip time.
    public var oneWayDelayMilliseconds: Double?
    /// Rate in Mbit/s.
    public var rateMegabitsPerSecond: Double?
    /// Loss probability.
    public var loss: Double?
    /// Jitter in milliseconds.
    public var jitterMilliseconds: Double?

    /// Creates overrides; `nil` keeps the symmetric value.
    /// - Parameters:
    ///   - oneWayDelayMilliseconds: One-way delay in milliseconds.
    ///   - rateMegabitsPerSecond: Rate in Mbit/s.
    ///   - loss: Loss probability.
    ///   - jitterMilliseconds: Jitter in milliseconds.
    public init(
        oneWayDelayMilliseconds: Double? = nil,
        rateMegabitsPerSecond: Double? = nil,
        loss: Double? = nil,
        jitterMilliseconds: Double? = nil
    ) {
        self.oneWayDelayMilliseconds = oneWayDelayMilliseconds
        self.rateMegabitsPerSecond = rateMegabitsPerSecond
        self.loss = loss
        self.jitterMilliseconds = jitterMilliseconds
    }
}

/// A link described the way an operator types it (`--rtt-ms 100 --rate-mbit 1000 --loss 0.001 …`).
///
/// ``configuration()`` checks the values and turns them into a ``WANLinkConfiguration``: the round-trip time is split
/// evenly between the directions unless an override says otherwise; loss is per direction.
public struct LinkParameters: Sendable, Hashable {
    /// Round-trip propagation delay in milliseconds.
    public var roundTripMilliseconds: Double
    /// Rate of each direction in Mbit/s (IP bytes).
    public var rateMegabitsPerSecond: Double
    /// Loss probability of each direction.
    public var loss: Double
    /// Jitter (± milliseconds) of each direction's delay.
    public var jitterMilliseconds: Double
    /// Whether jitter may reorder packets.
    public var allowsReordering: Bool
    /// Droptail bound as queueing time in milliseconds (the default bound is 100 ms when neither is set).
    public var queueMilliseconds: Double?
    /// Droptail bound in bytes.
    public var queueBytes: Int?
    /// Loss model.
    public var lossModel: LossModelKind
    /// Mean run of consecutive losses for Gilbert–Elliott, in packets.
    public var meanBurstLength: Double
    /// Side a → side b overrides.
    public var uplink: DirectionOverrides
    /// Side b → side a overrides.
    public var downlink: DirectionOverrides
    /// Capacity trace of the uplink (replaces its rate).
    public var uplinkTrace: DeliveryTrace?
    /// Capacity trace of the downlink (replaces its rate).
    public var downlinkTrace: DeliveryTrace?
    /// Bytes per trace opportunity (1500 in Mahimahi; larger values scale a trace up).
    public var traceBytesPerOpportunity: Int
    /// Seed of every random decision.
    public var seed: UInt64

    /// The droptail bound used when neither `queueMilliseconds` nor `queueBytes` is set.
    public static let defaultQueueMilliseconds: Double = 100

    /// Creates parameters.
    /// - Parameters:
    ///   - roundTripMilliseconds: Round-trip propagation delay in milliseconds.
    ///   - rateMegabitsPerSecond: Rate of each direction in Mbit/s.
    ///   - loss: Loss probability of each direction.
    ///   - jitterMilliseconds: Jitter in milliseconds.
    ///   - allowsReordering: Whether jitter may reorder.
    ///   - queueMilliseconds: Droptail bound in milliseconds.
    ///   - queueBytes: Droptail bound in bytes.
    ///   - lossModel: Loss model.
    ///   - meanBurstLength: Gilbert–Elliott mean burst length in packets.
    ///   - uplink: Side a → side b overrides.
    ///   - downlink: Side b → side a overrides.
    ///   - uplinkTrace: Capacity trace of the uplink.
    ///   - downlinkTrace: Capacity trace of the downlink.
    ///   - traceBytesPerOpportunity: Bytes per trace opportunity.
    ///   - seed: Seed of every random decision.
    public init(
        roundTripMilliseconds: Double,
        rateMegabitsPerSecond: Double,
        loss: Double = 0,
        jitterMilliseconds: Double = 0,
        allowsReordering: Bool = false,
        queueMilliseconds: Double? = nil,
        queueBytes: Int? = nil,
        lossModel: LossModelKind = .bernoulli,
        meanBurstLength: Double = 3,
        uplink: DirectionOverrides = DirectionOverrides(),
        downlink: DirectionOverrides = DirectionOverrides(),
        uplinkTrace: DeliveryTrace? = nil,
        downlinkTrace: DeliveryTrace? = nil,
        traceBytesPerOpportunity: Int = DeliveryTrace.mahimahiOpportunityBytes,
        seed: UInt64 = 1
    ) {
        self.roundTripMilliseconds = roundTripMilliseconds
        self.rateMegabitsPerSecond = rateMegabitsPerSecond
        self.loss = loss
        self.jitterMilliseconds = jitterMilliseconds
        self.allowsReordering = allowsReordering
        self.queueMilliseconds = queueMilliseconds
        self.queueBytes = queueBytes
        self.lossModel = lossModel
        self.meanBurstLength = meanBurstLength
        self.uplink = uplink
        self.downlink = downlink
        self.uplinkTrace = uplinkTrace
        self.downlinkTrace = downlinkTrace
        self.traceBytesPerOpportunity = traceBytesPerOpportunity
        self.seed = seed
    }

    /// Checks the values and builds the engine's configuration.
    /// - Returns: A validated configuration.
    /// - Throws: ``WANEmulationError`` with `.invalidParameter` naming the flag, the range and the value.
    public func configuration() throws(WANEmulationError) -> WANLinkConfiguration {
        try checkFinite("--rtt-ms", roundTripMilliseconds, range: 0...3_600_000)
        try checkFinite("--rate-mbit", rateMegabitsPerSecond, range: 0.001...1_000_000)
        try checkFinite("--loss", loss, range: 0...1)
        try checkFinite("--jitter-ms", jitterMilliseconds, range: 0...3_600_000)
        try checkFinite("--burst-length", meanBurstLength, range: 1...1_000_000)
        if queueMilliseconds != nil, queueBytes != nil {
            throw WANEmulationError(
                .invalidParameter, subject: "--queue-ms / --queue-bytes", expected: "at most one of them",
                found: "both")
        }
        if let queueMilliseconds { try checkFinite("--queue-ms", queueMilliseconds, range: 0.001...3_600_000) }
        let configuration = WANLinkConfiguration(
            uplink: try direction(uplink, trace: uplinkTrace, flag: "--uplink"),
            downlink: try direction(downlink, trace: downlinkTrace, flag: "--downlink"),
            seed: seed)
        try configuration.validate()
        return configuration
    }

    private func direction(
        _ overrides: DirectionOverrides,
        trace: DeliveryTrace?,
        flag: String
    ) throws(WANEmulationError) -> LinkConfiguration {
        let delay = overrides.oneWayDelayMilliseconds ?? roundTripMilliseconds / 2
        let rate = overrides.rateMegabitsPerSecond ?? rateMegabitsPerSecond
        let loss = overrides.loss ?? loss
        let jitter = overrides.jitterMilliseconds ?? jitterMilliseconds
        try checkFinite("\(flag)-delay-ms", delay, range: 0...3_600_000)
        try checkFinite("\(flag)-rate-mbit", rate, range: 0.001...1_000_000)
        try checkFinite("\(flag)-loss", loss, range: 0...1)
        try checkFinite("\(flag)-jitter-ms", jitter, range: 0...3_600_000)
        let linkRate: LinkRate =
            if let trace {
                .trace(trace, bytesPerOpportunity: traceBytesPerOpportunity)
            } else {
                .bitsPerSecond(UInt64((rate * 1_000_000).rounded()))
            }
        let queue: QueueLimit =
            if let queueBytes {
                .bytes(queueBytes)
            } else {
                .duration(Self.duration(milliseconds: queueMilliseconds ?? Self.defaultQueueMilliseconds))
            }
        let lossModel: LossModel =
            if loss == 0 {
                .none
            } else {
                switch lossModel {
                case .bernoulli: .bernoulli(probability: loss)
                case .gilbertElliott: .gilbertElliott(averageLoss: loss, meanBurstLength: meanBurstLength)
                }
            }
        return LinkConfiguration(
            rate: linkRate,
            oneWayDelay: Self.duration(milliseconds: delay),
            jitter: Self.duration(milliseconds: jitter),
            allowsReordering: allowsReordering,
            queueLimit: queue,
            loss: lossModel)
    }

    private func checkFinite(
        _ flag: String,
        _ value: Double,
        range: ClosedRange<Double>
    ) throws(WANEmulationError) {
        guard value.isFinite, range.contains(value) else {
            throw WANEmulationError(
                .invalidParameter, subject: flag, expected: "a number in \(range.lowerBound) ... \(range.upperBound)",
                found: "\(value)")
        }
    }

    /// Converts fractional milliseconds to a duration with nanosecond resolution.
    static func duration(milliseconds: Double) -> Duration {
        .nanoseconds(Int64((milliseconds * 1_000_000).rounded()))
    }
}
