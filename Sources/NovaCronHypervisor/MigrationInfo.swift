/// A migration's progress as `query-migrate` reports it.
public struct MigrationInfo: Hashable, Sendable {
    /// `none`, `setup`, `active`, `device`, `completed`, `failed`, `cancelled`, …
    public var status: String
    /// Milliseconds since the migration started (final once completed).
    public var totalTimeMilliseconds: Int?
    /// Milliseconds the guest was stopped for the final copy.
    public var downtimeMilliseconds: Int?
    /// Bytes of RAM sent (QEMU's count; multifd compression is not reflected).
    public var transferredBytes: Int?
    /// RAM bytes still to send.
    public var remainingBytes: Int?
    /// Pages dirtied per second, as QEMU last measured.
    public var dirtyPagesRate: Int?
    /// Pre-copy passes so far.
    public var iterations: Int?
    /// QEMU's error description when the status is `failed`.
    public var errorDescription: String?
    /// The whole reply, for anything not parsed above.
    public var raw: JSONValue

    /// Whether the migration has ended one way or another.
    public var isFinished: Bool { ["completed", "failed", "cancelled"].contains(status) }

    init(_ reply: JSONValue) {
        raw = reply
        status = reply["status"]?.stringValue ?? "none"
        totalTimeMilliseconds = reply["total-time"]?.intValue.map(Int.init)
        downtimeMilliseconds = reply["downtime"]?.intValue.map(Int.init)
        transferredBytes = reply["ram"]?["transferred"]?.intValue.map(Int.init)
        remainingBytes = reply["ram"]?["remaining"]?.intValue.map(Int.init)
        dirtyPagesRate = reply["ram"]?["dirty-pages-rate"]?.intValue.map(Int.init)
        iterations = reply["ram"]?["dirty-sync-count"]?.intValue.map(Int.init)
        errorDescription = reply["error-desc"]?.stringValue
    }
}
