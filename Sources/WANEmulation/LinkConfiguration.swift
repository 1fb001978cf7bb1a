/// How fast one direction of a link serialises packets.
public enum LinkRate: Sendable, Hashable {
    /// A constant rate in bits per second, counted on IP packets (the bytes read from the TUN device).
    case bitsPerSecond(UInt64)
    /// Time-varying capacity from a Mahimahi trace; each opportunity carries `bytesPerOpportunity` bytes
    /// (1500 in Mahimahi; a multiple of it scales a slow trace up to a faster link).
    case trace(DeliveryTrace, bytesPerOpportunity: Int = DeliveryTrace.mahimahiOpportunityBytes)

    /// The average rate in bits per second (a trace's average over one period).
    public var averageBitsPerSecond: Double {
        switch self {
        case .bitsPerSecond(let rate): Double(rate)
        case .trace(let trace, let bytes): trace.averageBitsPerSecond(bytesPerOpportunity: bytes)
        }
    }
}

/// The bound of a direction's droptail queue: a packet that would exceed it on arrival is dropped.
public enum QueueLimit: Sendable, Hashable {
    /// At most this long a wait before a packet's serialisation starts.
    case duration(Duration)
    /// At most this many bytes waiting or being serialised (the arriving packet included).
    case bytes(Int)
    /// No bound but the engine's descriptor capacity.
    case unlimited
}

/// How packets are lost, independently of queue overflow.
public enum LossModel: Sendable, Hashable {
    /// No random loss.
    case none
    /// Each packet is lost independently with this probability.
    case bernoulli(probability: Double)
    /// Gilbert–Elliott bursts: a two-state chain, every packet lost in the bad state and none in the good state,
    /// whose long-run loss is `averageLoss` and whose mean run of consecutive losses is `meanBurstLength` packets.
    case gilbertElliott(averageLoss: Double, meanBurstLength: Double)

    /// The long-run fraction of packets lost.
    public var averageLoss: Double {
        switch self {
        case .none: 0
        case .bernoulli(let probability): probability
        case .gilbertElliott(let averageLoss, _): averageLoss
        }
    }
}

/// Everything that shapes one direction of an emulated link.
///
/// A packet that arrives is first subject to random loss, then to the droptail queue; it then waits its turn,
/// is serialised at the rate (or by the trace's delivery opportunities), and leaves after the one-way delay plus
/// jitter. Without `allowsReordering`, a packet never leaves before the one ahead of it.
public struct LinkConfiguration: Sendable, Hashable {
    /// Serialisation rate or capacity trace.
    public var rate: LinkRate
    /// One-way propagation delay (half the round-trip time of a symmetric link).
    public var oneWayDelay: Duration
    /// Each packet's delay varies uniformly within ±`jitter` around `oneWayDelay` (never below zero).
    public var jitter: Duration
    /// Whether jitter may reorder packets (as netem does); otherwise a packet waits for the one before it.
    public var allowsReordering: Bool
    /// Droptail bound.
    public var queueLimit: QueueLimit
    /// Random loss applied on arrival.
    public var loss: LossModel

    /// Creates a direction's configuration; call ``validate(direction:)`` (or build a ``LinkEmulator``) to check it.
    /// - Parameters:
    ///   - rate: Serialisation rate or capacity trace.
    ///   - oneWayDelay: Propagation delay.
    ///   - jitter: Uniform ± variation of the delay.
    ///   - allowsReordering: Whether jitter may reorder packets.
    ///   - queueLimit: Droptail bound.
    ///   - loss: Random loss model.
    public init(
        rate: LinkRate,
        oneWayDelay: Duration,
        jitter: Duration = .zero,
        allowsReordering: Bool = false,
        queueLimit: QueueLimit = .duration(.milliseconds(100)),
        loss: LossModel = .none
    ) {
        self.rate = rate
        self.oneWayDelay = oneWayDelay
        self.jitter = jitter
        self.allowsReordering = allowsReordering
        self.queueLimit = queueLimit
        self.loss = loss
    }

    /// Checks every value against its range.
    /// - Parameter direction: A name for errors ("uplink", "downlink").
    /// - Throws: ``WANEmulationError`` with `.invalidParameter` naming the parameter, the range and the value.
    public func validate(direction: String = "link") throws(WANEmulationError) {
        func invalid(_ name: String, _ expected: String, _ found: String) -> WANEmulationError {
            WANEmulationError(.invalidParameter, subject: "\(direction) \(name)", expected: expected, found: found)
        }
        let hour = Duration.seconds(3600)
        switch rate {
        case .bitsPerSecond(let bits):
            guard bits >= 1000, bits <= 1_000_000_000_000 else {
                throw invalid("rate", "1 kbit/s ... 1 Tbit/s", "\(bits) bit/s")
            }
        case .trace(_, let bytes):
            guard bytes >= 1, bytes <= 1 << 24 else {
                throw invalid("trace bytes per opportunity", "1 ... 16777216", "\(bytes)")
            }
        }
        guard oneWayDelay >= .zero, oneWayDelay <= hour else {
            throw invalid("one-way delay", "0 ... 3600 s", "\(oneWayDelay)")
        }
        guard jitter >= .zero, jitter <= hour else {
            throw invalid("jitter", "0 ... 3600 s", "\(jitter)")
        }
        switch queueLimit {
        case .duration(let limit):
            guard limit > .zero, limit <= hour else { throw invalid("queue limit", "0 < limit <= 3600 s", "\(limit)") }
        case .bytes(let bytes):
            guard bytes >= 1500 else { throw invalid("queue limit", ">= 1500 bytes (one MTU)", "\(bytes) bytes") }
        case .unlimited:
            break
        }
        switch loss {
        case .none:
            break
        case .bernoulli(let probability):
            guard probability >= 0, probability <= 1 else {
                throw invalid("loss", "a probability in 0 ... 1", "\(probability)")
            }
        case .gilbertElliott(let averageLoss, let burst):
            guard averageLoss >= 0, averageLoss < 1 else {
                throw invalid("loss", "an average loss in 0 ..< 1", "\(averageLoss)")
            }
            guard burst >= 1, burst.isFinite else {
                throw invalid("mean burst length", "at least 1 packet", "\(burst)")
            }
            // P(good -> bad) = p / (b (1 - p)) must be a probability.
            let goodToBad = averageLoss / (burst * (1 - averageLoss))
            guard goodToBad <= 1 else {
                throw invalid(
                    "loss", "average loss <= b / (b + 1) = \(burst / (burst + 1)) for mean burst \(burst)",
                    "\(averageLoss)")
            }
        }
    }
}

/// Both directions of a link: uplink carries side a → side b, downlink side b → side a.
public struct WANLinkConfiguration: Sendable, Hashable {
    /// Side a → side b.
    public var uplink: LinkConfiguration
    /// Side b → side a.
    public var downlink: LinkConfiguration
    /// Seed of every random decision; each direction derives its own independent streams from it.
    public var seed: UInt64

    /// Creates a link configuration.
    /// - Parameters:
    ///   - uplink: Side a → side b.
    ///   - downlink: Side b → side a.
    ///   - seed: Seed of every random decision.
    public init(uplink: LinkConfiguration, downlink: LinkConfiguration, seed: UInt64 = 1) {
        self.uplink = uplink
        self.downlink = downlink
        self.seed = seed
    }

    /// Creates a symmetric link.
    /// - Parameters:
    ///   - both: The configuration of each direction.
    ///   - seed: Seed of every random decision.
    public init(symmetric both: LinkConfiguration, seed: UInt64 = 1) {
        self.init(uplink: both, downlink: both, seed: seed)
    }

    /// Checks both directions.
    /// - Throws: ``WANEmulationError`` with `.invalidParameter`.
    public func validate() throws(WANEmulationError) {
        try uplink.validate(direction: "uplink")
        try downlink.validate(direction: "downlink")
    }

    /// The configured round-trip propagation delay (both one-way delays).
    public var roundTripDelay: Duration {
        uplink.oneWayDelay + downlink.oneWayDelay
    }
}
