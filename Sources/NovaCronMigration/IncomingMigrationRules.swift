/// The destination side's rules for one incoming migration, sans-IO: when its copy may run, when it must be
/// removed, and what it answers a source that asks it to go. The destination agent (`IncomingMigration`) is
/// the shell: it reports what happened and does what these answers say.
///
/// Running the guest is the commit point. Once the `cont` has started, the copy is never removed at anyone's
/// request — not the source's rollback, not a silent or vanished source — because from then on it may be the
/// only copy that runs. Before it, a rollback request or a source that went away removes it.
public struct IncomingMigrationRules: Sendable, Hashable {
    /// Where the destination copy is.
    public enum State: Sendable, Hashable {
        /// Started with `-incoming`, paused, the stream not yet whole.
        case receiving
        /// The whole stream arrived (the transport verified it) and QEMU loaded it; still paused.
        case arrived
        /// The resume was started: committed, whatever the `cont` still has to say.
        case committing
        /// The guest runs here.
        case running
        /// Removed.
        case destroyed
    }

    /// What to answer a request to remove the copy.
    public enum RemovalAnswer: Sendable, Hashable {
        /// Remove it (and answer that it is gone).
        case remove
        /// It is gone already.
        case alreadyGone
        /// Refuse: the guest runs (or is being resumed) here.
        case refuseCommitted
    }

    /// Whether the source allowed this copy to run as soon as the whole stream arrived.
    public let runsOnArrival: Bool
    /// Where the copy is now.
    public private(set) var state: State = .receiving

    /// Creates the rules for one migration.
    public init(runsOnArrival: Bool) {
        self.runsOnArrival = runsOnArrival
    }

    /// The stream arrived whole and QEMU loaded it.
    /// - Returns: Whether to run the guest now (``runsOnArrival``, and nothing removed or started it already).
    public mutating func streamArrived() -> Bool {
        guard state == .receiving else { return false }
        state = .arrived
        return runsOnArrival && startCommit()
    }

    /// The source asked for the resume (after the stream arrived).
    /// - Returns: Whether to start the `cont` now (false: not arrived, removed, or already started).
    public mutating func resumeRequested() -> Bool {
        startCommit()
    }

    /// The `cont` failed: the guest did not run, so the copy may be removed again.
    public mutating func commitFailed() {
        if state == .committing { state = .arrived }
    }

    /// The `cont` returned: the guest runs here.
    public mutating func commitSucceeded() {
        if state == .committing { state = .running }
    }

    /// The source asked to remove the copy (its rollback), or went away (its connection closed, or it stayed silent
    /// for the peer timeout).
    public mutating func removalRequested() -> RemovalAnswer {
        switch state {
        case .committing, .running: return .refuseCommitted
        case .destroyed: return .alreadyGone
        case .receiving, .arrived:
            state = .destroyed
            return .remove
        }
    }

    /// Whether the copy is committed (being resumed or running): nothing removes it any more.
    public var isCommitted: Bool { state == .committing || state == .running }

    private mutating func startCommit() -> Bool {
        guard state == .arrived else { return false }
        state = .committing
        return true
    }
}
