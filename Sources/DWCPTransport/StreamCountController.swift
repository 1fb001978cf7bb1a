/// Chooses how many parallel data streams a session uses (AMST's stream-count controller, sans-IO).
///
/// It starts from the bandwidth-delay product divided by what one TCP stream can keep in flight (bounded
/// by the kernel's send- and receive-buffer ceilings) or by what the streams can grow to within a few
/// round trips of slow start, whichever needs more streams, then hill-climbs on measured goodput: it adds streams while goodput rises
/// by more than a threshold, and tries removing them while goodput holds within half the threshold of
/// the best sample of the probe, so it converges up when the path can take more and down when extra
/// streams buy nothing, and successive steps down cannot each give away a little (a ratchet: measured on
/// continental, two accepted steps took 7 streams to 5 while goodput fell from ~910 to ~730 Mbit/s). When the kernel reports that the streams
/// are held back by their socket buffers rather than by the path, it adds streams without waiting for a
/// goodput sample to prove it (those are noisy on long lossy paths). It is driven by one goodput sample per
/// interval and never reads a clock.
public struct StreamCountController: Sendable {
    /// Bounds and sensitivity.
    public struct Configuration: Hashable, Sendable {
        /// The fewest streams.
        public var minimumStreams: Int
        /// The most streams.
        public var maximumStreams: Int
        /// How much better (fraction) goodput must get for an added stream to stay; a removed stream
        /// stays removed while goodput is at most half of this below the best sample of the probe.
        public var threshold: Double
        /// Intervals to wait after a probe failed before probing again.
        public var holdIntervals: Int

        /// Creates a configuration.
        public init(minimumStreams: Int = 1, maximumStreams: Int = 32, threshold: Double = 0.05, holdIntervals: Int = 4)
        {
            precondition(minimumStreams >= 1 && maximumStreams >= minimumStreams, "invalid stream bounds")
            self.minimumStreams = minimumStreams
            self.maximumStreams = maximumStreams
            self.threshold = threshold
            self.holdIntervals = holdIntervals
        }
    }

    private enum Phase: Sendable {
        /// Measuring the current count to get a baseline.
        case measuring
        /// Trying `count` after `previous`, whose goodput was `baseline`.
        case probing(previous: Int, baseline: Double)
        /// Waiting before the next probe; the next probe goes `upward` or not.
        case holding(remaining: Int, baseline: Double, upward: Bool)
    }

    /// The bounds and sensitivity in force.
    public let configuration: Configuration
    /// The stream count the session should use now.
    public private(set) var streamCount: Int
    private var phase: Phase = .measuring

    /// Creates a controller starting at `initialStreams`, clamped to the bounds.
    public init(initialStreams: Int, configuration: Configuration = Configuration()) {
        self.configuration = configuration
        self.streamCount = min(max(initialStreams, configuration.minimumStreams), configuration.maximumStreams)
    }

    /// A new TCP stream's first window: Linux's initial congestion window of 10 segments (RFC 6928) of
    /// 1448 bytes.
    public static let initialWindowBytes = 10 * 1448

    /// Round trips the streams get to grow from their first windows to the bandwidth-delay product.
    /// A stream's window at most doubles per round trip from ``initialWindowBytes`` (slow start, bbr's
    /// startup alike), so N streams reach a product P after log2(P ÷ (N × first window)) round trips.
    /// Measured over wanem's global profile (250 ms, 64 MiB socket buffers, so one stream could hold the
    /// whole product): a migration starting on 2 streams (11 round trips to grow) moved 55 MB in its
    /// first 4 s, and its tail after QEMU's last write took 0.8–1.1 s; starting on 8 or 16, 0.2–0.7 s
    /// (this bound gives 9 there).
    public static let rampUpRoundTrips = 8

    /// The stream count a path needs so that its bandwidth-delay product fits in the streams' windows,
    /// and so that the streams grow to it within ``rampUpRoundTrips`` round trips.
    /// - Parameters:
    ///   - bitsPerSecond: The path's expected rate.
    ///   - roundTripSeconds: Its round-trip time.
    ///   - streamInFlightLimit: The most one stream can keep in flight (see ``streamInFlightLimit(receiveBufferMaximum:sendBufferMaximum:)``).
    /// - Returns: ⌈BDP ÷ limit⌉ or ⌈BDP ÷ (first window × 2^ramp-up round trips)⌉, whichever is more, at
    ///   least 1.
    public static func initialStreamCount(bitsPerSecond: Double, roundTripSeconds: Double, streamInFlightLimit: Int)
        -> Int
    {
        let bandwidthDelayProduct = bitsPerSecond / 8 * roundTripSeconds
        let held = bandwidthDelayProduct / Double(max(streamInFlightLimit, 1))
        let grown = bandwidthDelayProduct / (Double(initialWindowBytes) * Double(1 << rampUpRoundTrips))
        return max(1, Int(max(held, grown).rounded(.up)))
    }

    /// What one TCP stream can keep in flight given the kernel's buffer ceilings (`tcp_rmem` and
    /// `tcp_wmem` maxima): half the smaller one. Autotuning spends the rest on overhead and on data
    /// waiting for retransmission; measured here, one bbr stream over a 100 ms path with a 4 MiB
    /// `tcp_wmem` ceiling carried 144 Mbit/s, 1.8 MB in flight.
    public static func streamInFlightLimit(receiveBufferMaximum: Int, sendBufferMaximum: Int) -> Int {
        max(1, min(receiveBufferMaximum, sendBufferMaximum) / 2)
    }

    /// Feeds the goodput measured over the last interval at the current stream count.
    /// - Parameters:
    ///   - goodput: Delivered bytes per second (any unit, used consistently).
    ///   - bufferLimited: The fraction of their busy time the streams spent with everything they had
    ///     in flight and a full send buffer (`TCP_INFO` `tcpi_sndbuf_limited` ÷ `tcpi_busy_time`), when
    ///     known. Above one half the streams' buffers, not the path, set the pace, whatever a noisy
    ///     goodput sample says: the controller keeps adding streams and does not remove any. (The
    ///     receive-window-limited time is not used: a receiver short of CPU shows it too, and more
    ///     streams do not help that.)
    /// - Returns: The stream count to use for the next interval.
    public mutating func intervalElapsed(goodput: Double, bufferLimited: Double? = nil) -> Int {
        let bounds = configuration.minimumStreams...configuration.maximumStreams
        let bufferBound = (bufferLimited ?? 0) > 0.5
        switch phase {
        case .measuring:
            startProbe(upward: true, baseline: goodput, bounds: bounds)
        case .probing(let previous, let baseline):
            let upward = streamCount > previous
            let improved = goodput > baseline * (1 + configuration.threshold)
            let held = goodput >= baseline * (1 - configuration.threshold / 2)
            if upward && (improved || bufferBound) {
                startProbe(upward: true, baseline: max(goodput, baseline), bounds: bounds)
            } else if !upward && held && !bufferBound {
                startProbe(upward: false, baseline: max(goodput, baseline), bounds: bounds)
            } else {
                streamCount = previous
                phase = .holding(remaining: configuration.holdIntervals, baseline: baseline, upward: !upward)
            }
        case .holding(let remaining, let baseline, let upward):
            if bufferBound {
                startProbe(upward: true, baseline: max(baseline, goodput), bounds: bounds)
            } else if remaining > 1 {
                phase = .holding(remaining: remaining - 1, baseline: max(baseline, goodput), upward: upward)
            } else {
                // Conditions may have changed while holding: measure afresh, then probe.
                startProbe(upward: upward, baseline: goodput, bounds: bounds)
            }
        }
        return streamCount
    }

    private mutating func startProbe(upward: Bool, baseline: Double, bounds: ClosedRange<Int>) {
        let next = streamCount + (upward ? 1 : -1)
        if bounds.contains(next) {
            phase = .probing(previous: streamCount, baseline: baseline)
            streamCount = next
        } else {
            phase = .holding(remaining: configuration.holdIntervals, baseline: baseline, upward: !upward)
        }
    }
}
