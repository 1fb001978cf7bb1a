/// The orchestration of one live migration, sans-IO: which step comes next, and how a failure at any
/// point ends with the VM running in exactly one place.
///
/// The source agent is its shell: it feeds events (the destination agent answered, QEMU reported a
/// migration status, a step failed, time passed) and carries out the actions (start the destination
/// QEMU with `-incoming`, start the migration with a downtime budget, verify, resume one side, stop or
/// destroy the other). The machine never reads a clock: `now` is an input.
///
/// Phases: negotiate → prepare the destination → transfer (pre-copy, QEMU's own) → cut-over (the source
/// paused, the last pages sent) → verify (the destination, still paused, holds the source's state) →
/// commit (resume the destination, then stop the source) — or roll back: cancel the transfer, destroy the
/// destination, and only once it is gone resume the source. Without a verification the resume rides on the
/// destination's confirmation that it loaded the stream. The shell carries out a step's actions in order. The
/// commit point is the destination reporting that it runs; before it
/// every failure rolls back, after it the VM stays on the destination and the source is stopped, by force
/// if need be. At no step do both copies run, and at no step does neither hold the VM.
public struct MigrationMachine: Sendable {
    /// Budgets and timeouts.
    public struct Configuration: Sendable, Hashable {
        /// The longest the VM may be paused at cut-over. QEMU's `downtime-limit` gets what the cut-over's
        /// round trips leave of it (``MigrationMachine/qemuDowntime``).
        public var maximumDowntime: Duration
        /// The least share of ``maximumDowntime`` the cut-over's round trips must leave QEMU for the budget to be
        /// attainable (see ``MigrationMachine/qemuDowntime``).
        public var minimumQEMUDowntimeShare: Double
        /// How long negotiation, preparation, verification and each commit step may take.
        public var stepTimeout: Duration
        /// How long the transfer may go without progress before it counts as failed.
        public var stallTimeout: Duration
        /// Progress reports in a row in which QEMU sent bytes and the remaining bytes did not shrink before
        /// auto-converge (QEMU throttling the guest's vCPUs) is switched on. A report in which QEMU sent
        /// nothing (the transport still opening its streams, or stalled) says nothing about convergence.
        public var nonConvergingReports: Int
        /// Whether the destination's state is verified before it runs. Without a verification the resume rides
        /// on the arrival confirmation (``Action/confirmArrival(resume:)``): one round trip less in the pause.
        public var verifyBeforeCommit: Bool
        /// How many failed rollback steps in a row end the rollback as ``Outcome/abandoned(_:)``.
        public var rollbackAttempts: Int
        /// Whether the destination runs the guest as soon as it has loaded the whole stream, on its own, instead
        /// of on the arrival confirmation (only without ``verifyBeforeCommit``): the guest's pause loses the round
        /// trip of the transport's confirmation and the request. From the source's pause on, the destination may
        /// run, so only its word that its copy is gone lets the source run again (see ``resumeRequested``).
        public var destinationRunsOnArrival: Bool
        /// How long a rollback keeps asking a destination it cannot reach, once that destination may run the guest
        /// (``resumeRequested``), before it ends ``Outcome/abandoned(_:)`` with the source paused: a cut link often
        /// comes back, and the destination's answer then settles where the guest runs.
        public var reconnectWindow: Duration
        /// The pause between two attempts to reach such a destination.
        public var reconnectInterval: Duration

        /// Creates a configuration.
        public init(
            maximumDowntime: Duration = .milliseconds(300),
            minimumQEMUDowntimeShare: Double = 0.25,
            stepTimeout: Duration = .seconds(60),
            stallTimeout: Duration = .seconds(60),
            nonConvergingReports: Int = 5,
            verifyBeforeCommit: Bool = true,
            rollbackAttempts: Int = 3,
            destinationRunsOnArrival: Bool = false,
            reconnectWindow: Duration = .seconds(120),
            reconnectInterval: Duration = .seconds(2)
        ) {
            precondition(
                !(verifyBeforeCommit && destinationRunsOnArrival), "a destination that runs on arrival is not verified")
            self.maximumDowntime = maximumDowntime
            self.minimumQEMUDowntimeShare = minimumQEMUDowntimeShare
            self.stepTimeout = stepTimeout
            self.stallTimeout = stallTimeout
            self.nonConvergingReports = nonConvergingReports
            self.verifyBeforeCommit = verifyBeforeCommit
            self.rollbackAttempts = rollbackAttempts
            self.destinationRunsOnArrival = destinationRunsOnArrival
            self.reconnectWindow = reconnectWindow
            self.reconnectInterval = reconnectInterval
        }
    }

    /// Where the migration is.
    public enum Phase: Sendable, Hashable {
        case idle, negotiating, preparingDestination, transferring, cuttingOver, verifying
        /// The destination is being resumed (the commit point is its confirmation).
        case committing
        /// The destination runs; the source is being stopped.
        case stoppingSource
        case rollingBack
        /// Finished: see ``outcome``.
        case finished
    }

    /// What a QEMU is doing, as far as the machine knows.
    public enum Copy: Sendable, Hashable {
        /// No process (destination before preparation, or destroyed).
        case absent
        /// Started with `-incoming`, receiving state; it does not run the guest.
        case incoming
        case paused
        case running
        /// Quit or killed after the VM moved away.
        case stopped
        /// Gone on its own (the source QEMU crashed or was killed): it holds nothing any more.
        case lost
    }

    /// A progress report from the source QEMU (`query-migrate`).
    public struct Progress: Sendable, Hashable {
        /// Bytes still to send at the current dirty rate's estimate.
        public var remainingBytes: UInt64
        /// Bytes transferred so far.
        public var transferredBytes: UInt64
        /// The guest's dirty rate, bytes per second.
        public var dirtyBytesPerSecond: Double
        /// The measured transfer rate, bytes per second.
        public var bytesPerSecond: Double

        /// Creates a report.
        public init(
            remainingBytes: UInt64, transferredBytes: UInt64, dirtyBytesPerSecond: Double, bytesPerSecond: Double
        ) {
            self.remainingBytes = remainingBytes
            self.transferredBytes = transferredBytes
            self.dirtyBytesPerSecond = dirtyBytesPerSecond
            self.bytesPerSecond = bytesPerSecond
        }

        /// Seconds to send what remains at the measured rate (infinite without a rate).
        public var secondsToSendRemaining: Double {
            bytesPerSecond > 0 ? Double(remainingBytes) / bytesPerSecond : .infinity
        }
    }

    /// What happened.
    public enum Event: Sendable, Hashable {
        /// The operator asked for the migration.
        case start
        /// The shell measured the round trip to the destination agent (before the transfer starts).
        case pathMeasured(roundTrip: Duration)
        /// The destination agent accepted (authenticated, has room).
        case negotiated
        /// The destination QEMU runs with `-incoming` and waits for the stream.
        case destinationReady
        /// A progress report during the transfer.
        case progress(Progress)
        /// The transport confirmed this many bytes of the stream arrived (every second or so). After the
        /// source paused, QEMU has nothing more to report while the stream's tail crosses the link: this is
        /// the progress the stall timeout watches then.
        case delivered(UInt64)
        /// The source QEMU paused the guest for the final pages (stop-and-copy).
        case sourcePaused
        /// The transport delivered the whole stream and both sides matched its SHA-256.
        case streamDelivered
        /// The destination loaded the stream and holds the state, paused.
        case transferCompleted
        /// The destination's state matches the source's.
        case verified
        /// The destination QEMU runs the guest: it resumed it, or, asked to destroy its copy, it answered that
        /// it already runs it.
        case destinationRunning
        /// The source QEMU quit.
        case sourceStopped
        /// The source QEMU runs the guest again (after a rollback).
        case sourceResumed
        /// The destination QEMU is gone (after a rollback).
        case destinationDestroyed
        /// The destination agent cannot be reached to destroy its copy (on the migration's connection, nor on a new
        /// one). Its copy runs only if it was asked to resume; otherwise it removes the copy itself when its source
        /// goes silent. One that may run is asked again (``Configuration/reconnectWindow``).
        case destinationUnreachable
        /// The source QEMU exited on its own (crashed, killed): why.
        case sourceLost(String)
        /// A step failed: what, in words for the operator.
        case failed(String)
        /// The operator cancelled.
        case cancel
        /// Time passed (for the timeouts).
        case tick
    }

    /// What the shell must do.
    public enum Action: Sendable, Hashable {
        /// Ask the destination agent to take the VM.
        case negotiate
        /// Start the destination QEMU with `-incoming`, paused.
        case prepareDestination
        /// Start the source QEMU's migration into the transport with this downtime budget (QEMU's
        /// `downtime-limit`, ``MigrationMachine/qemuDowntime``).
        case startTransfer(maximumDowntime: Duration)
        /// Pre-copy does not converge: let QEMU throttle the guest (`auto-converge`).
        case enableAutoConverge
        /// Ask the destination to confirm it loaded the stream — and, with `resume`, to run the guest at once
        /// (the commit point when nothing is verified first). Answered by ``Event/transferCompleted`` or, after a
        /// resume, ``Event/destinationRunning``.
        case confirmArrival(resume: Bool)
        /// Check the destination's state against the source's.
        case verify
        /// Resume the guest on the destination (`cont`).
        case resumeDestination
        /// Quit the source QEMU (the VM runs on the destination).
        case stopSource
        /// Kill the source QEMU (it did not quit after the commit).
        case killSource
        /// Cancel the source QEMU's migration (`migrate_cancel`).
        case cancelTransfer
        /// Destroy the destination QEMU and its files.
        case destroyDestination
        /// Resume the guest on the source (`cont`).
        case resumeSource
        /// The migration is over: see the outcome.
        case finish(Outcome)
    }

    /// How a migration ended.
    public enum Outcome: Sendable, Hashable {
        /// The VM runs on the destination; the source is stopped.
        case migrated
        /// The VM runs on the source; the destination is clean. Why it was rolled back.
        case rolledBack(String)
        /// The rollback could not confirm that the destination's copy is gone after it was asked to run: the
        /// source stays as it is (paused) rather than risk two running copies; an operator must look.
        case abandoned(String)
        /// The source QEMU died during the migration (why); the destination's copy was removed. Nothing runs.
        case sourceLost(String)
    }

    /// The budgets in force.
    public let configuration: Configuration
    /// Where the migration is.
    public private(set) var phase: Phase = .idle
    /// The source QEMU's state.
    public private(set) var source: Copy = .running
    /// The destination QEMU's state.
    public private(set) var destination: Copy = .absent
    /// How it ended, once ``phase`` is ``Phase/finished``.
    public private(set) var outcome: Outcome?
    /// Whether auto-converge was switched on.
    public private(set) var autoConverging = false
    /// The last progress report.
    public private(set) var lastProgress: Progress?
    /// The most stream bytes the transport confirmed delivered.
    public private(set) var deliveredBytes: UInt64 = 0
    /// The round trip to the destination, once measured (``Event/pathMeasured(roundTrip:)``).
    public private(set) var roundTrip: Duration?

    /// QEMU's `downtime-limit`: the pause budget less the cut-over's round trips — or the whole budget when those
    /// round trips leave less than ``Configuration/minimumQEMUDowntimeShare`` of it (``isBudgetAttainable``).
    ///
    /// QEMU stops the guest when what remains fits its limit at the rate it writes, and its downtime ends with
    /// its last write. The guest stays paused after that while the stream's tail crosses the link and the
    /// transport confirms it, and while the arrival confirmation goes to the destination and back (two round
    /// trips; a verification adds a third). Giving QEMU the whole budget made the pause 2.8× the budget on a
    /// 100 ms path (832 ms for 300 ms). Where the round trips alone take (nearly) the whole budget, no limit
    /// keeps the pause within it, and squeezing QEMU only costs pre-copy rounds: measured on a 250 ms path, a
    /// 100 ms limit shortened a ~2 s pause by about a tenth but doubled the bytes of the migration back.
    public var qemuDowntime: Duration {
        let budget = configuration.maximumDowntime
        guard let left = budgetLeftForQEMU, left >= budget * configuration.minimumQEMUDowntimeShare else {
            return budget
        }
        return left
    }

    /// Whether the pause budget can hold on this path: false once the measured round trip shows the cut-over's
    /// round trips leave QEMU less than ``Configuration/minimumQEMUDowntimeShare`` of it (nil: not measured).
    public var isBudgetAttainable: Bool? {
        budgetLeftForQEMU.map { $0 >= configuration.maximumDowntime * configuration.minimumQEMUDowntimeShare }
    }

    private var budgetLeftForQEMU: Duration? {
        let cutOverRoundTrips = configuration.verifyBeforeCommit ? 3 : 2
        return roundTrip.map { configuration.maximumDowntime - $0 * cutOverRoundTrips }
    }

    private var deadline: Duration?
    private var nonConverging = 0
    private var rollbackReason: String?
    private var transferStarted = false
    private var streamDelivered = false
    private var arrivalAsked = false
    /// Whether the destination was ever asked to run the guest: from then on only its own word that the copy
    /// is gone allows the source to run again.
    public private(set) var resumeRequested = false
    private var failedRollbackSteps = 0
    /// Since when the destination, which may run the guest, could not be reached; and when to ask it again.
    private var unreachableSince: Duration?
    private var retryAt: Duration?

    /// Creates the machine for one migration of a running VM.
    public init(configuration: Configuration = Configuration()) {
        self.configuration = configuration
    }

    /// Whether the VM is in a consistent place: never two running copies, and never neither holding it
    /// (the source is stopped only once the destination runs; a source that died on its own is exempt).
    public var isConsistent: Bool {
        !(source == .running && destination == .running) && (source != .stopped || destination == .running)
    }

    /// Feeds one event at `now` (any monotonic time) and returns what to do.
    public mutating func handle(_ event: Event, now: Duration) -> [Action] {
        if case .finished = phase { return [] }
        if case .failed(let reason) = event { return fail(reason, now: now) }
        if case .cancel = event { return fail("cancelled by the operator", now: now) }
        if case .sourceLost(let reason) = event { return sourceLost(reason, now: now) }
        if case .tick = event {
            if let retry = retryAt, now >= retry {
                retryAt = nil
                deadline = now + configuration.stepTimeout
                return [.destroyDestination]
            }
            guard let deadline, now >= deadline else { return [] }
            return fail("\(phase) took longer than its timeout", now: now)
        }
        switch (phase, event) {
        case (.idle, .pathMeasured(let measured)), (.negotiating, .pathMeasured(let measured)),
            (.preparingDestination, .pathMeasured(let measured)):
            roundTrip = measured
            return []
        case (.idle, .start):
            return enter(.negotiating, now: now, [.negotiate])
        case (.negotiating, .negotiated):
            // From here a destination QEMU may exist, so a rollback destroys it (idempotent in the shell).
            destination = .incoming
            return enter(.preparingDestination, now: now, [.prepareDestination])
        case (.preparingDestination, .destinationReady):
            transferStarted = true
            deadline = now + configuration.stallTimeout
            phase = .transferring
            return [.startTransfer(maximumDowntime: qemuDowntime)]
        case (.transferring, .progress(let progress)):
            return progressed(progress, now: now)
        case (.transferring, .delivered(let bytes)), (.cuttingOver, .delivered(let bytes)):
            if bytes > deliveredBytes {
                deliveredBytes = bytes
                deadline = max(deadline ?? now, now + configuration.stallTimeout)
            }
            return []
        case (.transferring, .sourcePaused):
            source = .paused
            // The stream can be whole from here on, and a destination that runs on arrival may then run.
            if configuration.destinationRunsOnArrival { resumeRequested = true }
            // The tail of the stream may still be in flight: waiting for it is a transfer, with its stall timeout.
            phase = .cuttingOver
            deadline = now + configuration.stallTimeout
            return confirmArrivalIfDelivered()
        case (.transferring, .streamDelivered), (.cuttingOver, .streamDelivered):
            streamDelivered = true
            return phase == .cuttingOver ? confirmArrivalIfDelivered() : []
        case (.cuttingOver, .destinationRunning) where resumeRequested:
            // The resume rode on the arrival confirmation: the commit point.
            destination = .running
            return enter(.stoppingSource, now: now, [.stopSource])
        case (.cuttingOver, .progress(let progress)):
            lastProgress = progress
            return []
        case (.cuttingOver, .transferCompleted):
            destination = .paused
            return enter(.verifying, now: now, [.verify])
        case (.verifying, .verified):
            guard source != .running else {
                return fail("the source runs the guest again before the commit", now: now)
            }
            resumeRequested = true
            return enter(.committing, now: now, [.resumeDestination])
        case (.committing, .destinationRunning):
            destination = .running
            return enter(.stoppingSource, now: now, [.stopSource])
        case (.stoppingSource, .sourceStopped):
            source = .stopped
            return finish(.migrated)
        case (.rollingBack, .destinationRunning):
            // Asked to destroy its copy, the destination answered that it already runs the guest (it ran on
            // arrival — perhaps before this source's poll saw QEMU pause — or the resume went out and only its
            // answer was lost): the commit point was passed.
            guard source != .running else {
                return finish(.abandoned("\(rollbackReason ?? "rolled back"); both copies run the guest"))
            }
            destination = .running
            rollbackReason = nil
            return enter(.stoppingSource, now: now, [.stopSource])
        case (.rollingBack, .destinationDestroyed):
            destination = .absent
            // Only now may the source run again: the destination can no longer run the guest.
            return source == .paused ? [.resumeSource] : finishRollbackIfDone()
        case (.rollingBack, .destinationUnreachable):
            guard !resumeRequested else {
                // It may run (the resume went out, its answer did not come back): the source must not, until its
                // answer comes. Ask again a while, the source paused; then leave it to an operator.
                let since = unreachableSince ?? now
                unreachableSince = since
                guard now - since < configuration.reconnectWindow else {
                    return finish(
                        .abandoned(
                            "\(rollbackReason ?? "rolled back"); the destination, which may run the guest, could not be "
                                + "reached for \(configuration.reconnectWindow)"))
                }
                retryAt = now + configuration.reconnectInterval
                deadline = nil
                return []
            }
            // Never asked to run, its copy never will, and its agent removes it when this source goes silent.
            destination = .absent
            return source == .paused ? [.resumeSource] : finishRollbackIfDone()
        case (.rollingBack, .sourceResumed), (.transferring, .sourceResumed), (.cuttingOver, .sourceResumed):
            // Also QEMU's own doing after a cancelled or failed migration; before a commit that is harmless.
            source = .running
            return phase == .rollingBack ? finishRollbackIfDone() : []
        default:
            return []  // out of order or repeated: ignored (the shell may report late)
        }
    }

    // MARK: Internals

    private mutating func enter(_ next: Phase, now: Duration, _ actions: [Action]) -> [Action] {
        phase = next
        deadline = now + configuration.stepTimeout
        return actions
    }

    private mutating func progressed(_ progress: Progress, now: Duration) -> [Action] {
        let shrinking = lastProgress.map { progress.remainingBytes < $0.remainingBytes } ?? true
        let fits = progress.secondsToSendRemaining <= qemuDowntime.seconds
        let moved = progress.transferredBytes > (lastProgress?.transferredBytes ?? 0)
        if moved { deadline = now + configuration.stallTimeout }
        lastProgress = progress
        if shrinking || fits {
            nonConverging = 0
        } else if moved {
            nonConverging += 1
        }
        guard !autoConverging, nonConverging >= configuration.nonConvergingReports else { return [] }
        autoConverging = true
        return [.enableAutoConverge]
    }

    /// Asks the destination to confirm the arrival once the source paused and the stream was delivered.
    private mutating func confirmArrivalIfDelivered() -> [Action] {
        guard streamDelivered, !arrivalAsked else { return [] }
        arrivalAsked = true
        let resume = !configuration.verifyBeforeCommit
        if resume { resumeRequested = true }
        return [.confirmArrival(resume: resume)]
    }

    /// The source QEMU died: after the commit that is the stop it was going to get; before it, the destination's
    /// copy (if any) is removed and the migration ends with nothing running.
    private mutating func sourceLost(_ reason: String, now: Duration) -> [Action] {
        switch phase {
        case .finished:
            return []
        case .stoppingSource:
            source = .stopped
            return finish(.migrated)
        case .idle:
            source = .lost
            return finish(.sourceLost(reason))
        default:
            source = .lost
            if resumeRequested && phase != .rollingBack {
                // The destination was asked to run the guest: its answer decides (running: migrated; a failure
                // rolls back its copy).
                return []
            }
            if rollbackReason == nil { rollbackReason = reason }
            phase = .rollingBack
            deadline = now + configuration.stepTimeout
            return destination == .absent ? finish(.sourceLost(rollbackReason!)) : [.destroyDestination]
        }
    }

    /// A failure: before the commit point, roll back; after it, make sure the source is stopped.
    private mutating func fail(_ reason: String, now: Duration) -> [Action] {
        switch phase {
        case .idle:
            return finish(.rolledBack(reason))
        case .stoppingSource:
            // The VM runs on the destination; the source must not come back.
            deadline = now + configuration.stepTimeout
            return [.killSource]
        case .rollingBack:
            // Between two attempts to reach the destination no step is open: a late failure (of the stream, of
            // QEMU's cancelled migration) says nothing new.
            guard retryAt == nil else { return [] }
            // A rollback step itself failed or timed out: retry what is still open, a few times.
            failedRollbackSteps += 1
            guard failedRollbackSteps < configuration.rollbackAttempts else {
                return finish(.abandoned("\(rollbackReason ?? "rolled back"); the rollback itself failed: \(reason)"))
            }
            deadline = now + configuration.stepTimeout
            return rollbackActions(cancel: false)
        case .finished:
            return []
        default:
            rollbackReason = reason
            // After the transfer completed there is nothing to cancel (and cancelling could let QEMU
            // resume the source while the destination might run).
            let cancel = transferStarted && phase != .verifying && phase != .committing
            phase = .rollingBack
            deadline = now + configuration.stepTimeout
            let actions = rollbackActions(cancel: cancel)
            return actions.isEmpty ? finishRollbackIfDone() : actions
        }
    }

    /// The destination goes first; the source is resumed only once it is gone (``Event/destinationDestroyed``).
    private func rollbackActions(cancel: Bool) -> [Action] {
        var actions: [Action] = cancel ? [.cancelTransfer] : []
        if destination != .absent {
            actions.append(.destroyDestination)
        } else if source == .paused {
            actions.append(.resumeSource)
        }
        return actions
    }

    private mutating func finishRollbackIfDone() -> [Action] {
        guard destination == .absent else { return [] }
        if source == .lost { return finish(.sourceLost(rollbackReason ?? "the source QEMU exited")) }
        guard source == .running else { return [] }
        return finish(.rolledBack(rollbackReason ?? "rolled back"))
    }

    private mutating func finish(_ result: Outcome) -> [Action] {
        phase = .finished
        outcome = result
        deadline = nil
        return [.finish(result)]
    }
}

extension Duration {
    /// The duration in seconds.
    var seconds: Double {
        Double(components.seconds) + Double(components.attoseconds) * 1e-18
    }
}
