/// A fixed-bucket log-linear histogram of nanosecond durations (about 1.6 % relative precision, exact below 128 ns).
///
/// Its buckets are allocated once; recording never allocates. Percentiles are the midpoint of the bucket holding the
/// requested rank, clamped to the recorded minimum and maximum.
public struct DelayHistogram: Sendable, Hashable {
    private static let subBucketBits = 6
    private static let subBucketCount = 1 << subBucketBits  // 64
    private static let exactLimit: UInt64 = 2 << UInt64(subBucketBits)  // 128
    private static let bucketCount = Int(exactLimit) + (64 - (subBucketBits + 1)) * subBucketCount

    private var buckets: [UInt64]
    /// Number of recorded values.
    public private(set) var count: UInt64 = 0
    /// Sum of recorded values in nanoseconds (saturating).
    public private(set) var sumNanoseconds: UInt64 = 0
    /// Largest recorded value in nanoseconds (0 when empty).
    public private(set) var maximumNanoseconds: UInt64 = 0
    /// Smallest recorded value in nanoseconds (0 when empty).
    public private(set) var minimumNanoseconds: UInt64 = 0

    /// Creates an empty histogram.
    public init() {
        buckets = Array(repeating: 0, count: Self.bucketCount)
    }

    private static func bucketIndex(_ value: UInt64) -> Int {
        if value < exactLimit { return Int(value) }
        let exponent = 63 - value.leadingZeroBitCount  // >= 7
        let shift = exponent - subBucketBits
        let sub = Int(value >> UInt64(shift)) - subBucketCount
        return Int(exactLimit) + (exponent - (subBucketBits + 1)) * subBucketCount + sub
    }

    private static func bucketRange(_ index: Int) -> (lower: UInt64, width: UInt64) {
        if index < Int(exactLimit) { return (UInt64(index), 1) }
        let offset = index - Int(exactLimit)
        let exponent = offset / subBucketCount + subBucketBits + 1
        let sub = UInt64(offset % subBucketCount + subBucketCount)
        let shift = UInt64(exponent - subBucketBits)
        return (sub << shift, 1 << shift)
    }

    /// Records one value.
    /// - Parameter nanoseconds: The duration in nanoseconds.
    public mutating func record(nanoseconds: UInt64) {
        buckets[Self.bucketIndex(nanoseconds)] &+= 1
        if count == 0 || nanoseconds < minimumNanoseconds { minimumNanoseconds = nanoseconds }
        if nanoseconds > maximumNanoseconds { maximumNanoseconds = nanoseconds }
        count += 1
        let (sum, overflow) = sumNanoseconds.addingReportingOverflow(nanoseconds)
        sumNanoseconds = overflow ? .max : sum
    }

    /// The value below which a fraction of the recorded values lie.
    /// - Parameter quantile: A fraction in 0...1 (0.5 for the median, 0.99 for p99).
    /// - Returns: Nanoseconds, or 0 when nothing was recorded.
    public func percentileNanoseconds(_ quantile: Double) -> UInt64 {
        guard count > 0 else { return 0 }
        if quantile >= 1 { return maximumNanoseconds }
        let rank = max(1, UInt64((Double(count) * max(quantile, 0)).rounded(.up)))
        var seen: UInt64 = 0
        for index in buckets.indices where buckets[index] > 0 {
            seen += buckets[index]
            if seen >= rank {
                let (lower, width) = Self.bucketRange(index)
                let middle = lower + (width - 1) / 2
                return min(max(middle, minimumNanoseconds), maximumNanoseconds)
            }
        }
        return maximumNanoseconds
    }

    /// The mean in nanoseconds, or 0 when empty.
    public var meanNanoseconds: Double {
        count == 0 ? 0 : Double(sumNanoseconds) / Double(count)
    }
}
