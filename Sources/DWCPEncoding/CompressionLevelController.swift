/// Chooses the zstd level for the next batch so that the most *logical* bytes (image bytes) reach the
/// receiver per second, given the link's rate and what each level measured on this CPU (HDE stage 4's
/// adaptive controller, sans-IO; compare `zstd --adapt`).
///
/// A level delivers `min(its compression speed, link rate × its ratio)` image bytes per second; storing
/// batches raw delivers the link rate. Each batch the encoder compressed is recorded (bytes in, bytes out,
/// seconds), kept as a moving average per level, and the level with the best estimate is chosen — storing
/// raw unless a level beats it by a margin, so incompressible data (random pages, encrypted disks) is not
/// compressed for nothing. Every `probeInterval` batches the controller tries the untried or stalest
/// neighbour of its choice, so estimates follow the data as it changes. Time is an input: it never reads
/// a clock.
public struct CompressionLevelController: Sendable {
    /// What one batch cost and gave.
    public struct Sample: Sendable, Hashable {
        /// The level used, or `nil` for a batch stored raw.
        public var level: Int?
        /// Image bytes in.
        public var inputBytes: Int
        /// Bytes out (what crosses the link).
        public var outputBytes: Int
        /// Seconds the compression took on one core.
        public var seconds: Double

        /// Creates a sample.
        public init(level: Int?, inputBytes: Int, outputBytes: Int, seconds: Double) {
            self.level = level
            self.inputBytes = inputBytes
            self.outputBytes = outputBytes
            self.seconds = seconds
        }
    }

    /// What the controller believes about one level.
    public struct Estimate: Sendable, Hashable {
        /// Image bytes compressed per second on one core.
        public var bytesPerSecond: Double
        /// Image bytes per output byte.
        public var ratio: Double
        /// The batch number of the last sample.
        public var lastSampled: Int
    }

    /// The levels it chooses among, least effort first.
    public let candidates: [Int]
    /// How much better than storing raw a level must look to be used (default 3 %).
    public let margin: Double
    /// Batches between probes of a neighbouring level.
    public let probeInterval: Int
    /// The moving average's weight for a new sample.
    public let smoothing: Double
    /// The estimates so far, by level.
    public private(set) var estimates: [Int: Estimate] = [:]
    /// The level chosen last (`nil`: stored raw).
    public private(set) var current: Int?
    private var batch = 0

    /// Creates a controller.
    /// - Parameters:
    ///   - candidates: zstd levels to choose among (default 1, 3, 6, 9).
    ///   - initial: The level for the first batch.
    ///   - margin: The gain over storing raw a level must show.
    ///   - probeInterval: Batches between probes.
    ///   - smoothing: Weight of a new sample in the moving average (0…1].
    public init(
        candidates: [Int] = [1, 3, 6, 9], initial: Int? = 3, margin: Double = 0.03, probeInterval: Int = 16,
        smoothing: Double = 0.3
    ) {
        precondition(!candidates.isEmpty && probeInterval > 0 && smoothing > 0 && smoothing <= 1)
        self.candidates = candidates.sorted()
        self.current = initial
        self.margin = margin
        self.probeInterval = probeInterval
        self.smoothing = smoothing
    }

    /// Records what a batch cost and gave.
    public mutating func record(_ sample: Sample) {
        guard let level = sample.level, sample.inputBytes > 0, sample.outputBytes > 0, sample.seconds > 0 else {
            return
        }
        let speed = Double(sample.inputBytes) / sample.seconds
        let ratio = Double(sample.inputBytes) / Double(sample.outputBytes)
        if var estimate = estimates[level] {
            estimate.bytesPerSecond += smoothing * (speed - estimate.bytesPerSecond)
            estimate.ratio += smoothing * (ratio - estimate.ratio)
            estimate.lastSampled = batch
            estimates[level] = estimate
        } else {
            estimates[level] = Estimate(bytesPerSecond: speed, ratio: ratio, lastSampled: batch)
        }
    }

    /// The image bytes per second `level` would deliver over a link of `linkBytesPerSecond`, if known.
    public func delivered(by level: Int?, linkBytesPerSecond: Double) -> Double? {
        guard let level else { return linkBytesPerSecond }
        guard let estimate = estimates[level] else { return nil }
        return min(estimate.bytesPerSecond, linkBytesPerSecond * estimate.ratio)
    }

    /// The level for the next batch (`nil`: store it raw).
    /// - Parameter linkBytesPerSecond: The link's measured rate (the transport's goodput).
    public mutating func nextLevel(linkBytesPerSecond: Double) -> Int? {
        batch += 1
        var best: (level: Int?, rate: Double) = (nil, linkBytesPerSecond * (1 + margin))
        for level in candidates {
            if let rate = delivered(by: level, linkBytesPerSecond: linkBytesPerSecond), rate > best.rate {
                best = (level, rate)
            }
        }
        var choice = best.rate > linkBytesPerSecond * (1 + margin) ? best.level : nil
        if estimates.isEmpty {
            choice = current  // nothing measured yet: start where configured
        } else if batch % probeInterval == 0, let probe = probe(around: choice) {
            choice = probe
        }
        current = choice
        return choice
    }

    /// The neighbour of `level` (or the cheapest level, when storing raw) never sampled or sampled
    /// longest ago.
    private func probe(around level: Int?) -> Int? {
        let neighbours: [Int]
        if let level, let index = candidates.firstIndex(of: level) {
            neighbours = [index - 1, index + 1].filter(candidates.indices.contains).map { candidates[$0] }
        } else {
            neighbours = [candidates[0]]
        }
        return neighbours.min { (estimates[$0]?.lastSampled ?? -1) < (estimates[$1]?.lastSampled ?? -1) }
    }
}
