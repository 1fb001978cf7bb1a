/// Paces bytes to a rate (a token bucket, sans-IO): `--rate-limit` leaves headroom on a link that
/// others use too.
public struct TokenBucket: Sendable {
    /// The rate in bytes per second.
    public let bytesPerSecond: Double
    /// How many bytes may go at once after an idle period.
    public let burstBytes: Double
    private var nextFree: Duration?

    /// Creates a bucket.
    /// - Parameters:
    ///   - bytesPerSecond: The long-run rate.
    ///   - burst: The time's worth of bytes that may go at once (default 50 ms).
    public init(bytesPerSecond: Double, burst: Duration = .milliseconds(50)) {
        precondition(bytesPerSecond > 0, "a rate limit must be positive, not \(bytesPerSecond)")
        self.bytesPerSecond = bytesPerSecond
        self.burstBytes = bytesPerSecond * burst.seconds
    }

    /// Takes `bytes` from the bucket at `now`.
    /// - Returns: How long the caller must wait before sending them.
    public mutating func reserve(_ bytes: Int, now: Duration) -> Duration {
        let burst = Duration.seconds(burstBytes / bytesPerSecond)
        let start = max(nextFree ?? now - burst, now - burst)
        nextFree = start + .seconds(Double(bytes) / bytesPerSecond)
        return max(.zero, start - now)
    }
}

extension Duration {
    /// The duration in seconds as a `Double`.
    public var seconds: Double {
        let (seconds, attoseconds) = components
        return Double(seconds) + Double(attoseconds) * 1e-18
    }

    /// The duration in whole milliseconds, rounded.
    public var milliseconds: Int {
        Int((seconds * 1000).rounded())
    }
}
