/// Decides whether a failed session is re-established, and after how long (sans-IO).
///
/// Only a connection failure of a session the receiver had accepted — in this attempt or an earlier
/// one — is retried, and only for a source that can be read again (a file): a wrong address or a
/// receiver that was never started fails at once, and refusals, authentication, checksum and disk
/// errors are final. The wait doubles with every attempt, up to 32 times the first.
public struct ReconnectPolicy: Sendable {
    /// How many re-establishments are allowed.
    public let attempts: Int
    /// The wait before the first one.
    public let firstDelay: Duration
    /// Whether the source can be read again.
    public let resumable: Bool
    /// Re-establishments granted so far.
    public private(set) var reconnects = 0
    private var established = false

    /// Creates a policy.
    public init(attempts: Int, firstDelay: Duration, resumable: Bool) {
        self.attempts = attempts
        self.firstDelay = firstDelay
        self.resumable = resumable
    }

    /// An attempt failed with `error`; `accepted` says whether the receiver had accepted its offer.
    /// - Returns: How long to wait before the next attempt, or `nil` when the error is final.
    public mutating func attemptFailed(_ error: TransportError, accepted: Bool) -> Duration? {
        established = established || accepted
        guard error.code == .connectionFailed, resumable, established, reconnects < attempts else { return nil }
        reconnects += 1
        return firstDelay * (1 << min(reconnects - 1, 5))
    }
}
