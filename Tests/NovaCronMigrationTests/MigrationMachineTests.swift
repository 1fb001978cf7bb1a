import Testing

@testable import NovaCronMigration

@Suite("Migration orchestration machine")
struct MigrationMachineTests {
    typealias Machine = MigrationMachine

    static func progress(remaining: UInt64, sent: UInt64, rate: Double = 100e6) -> Machine.Event {
        .progress(
            .init(remainingBytes: remaining, transferredBytes: sent, dirtyBytesPerSecond: 16e6, bytesPerSecond: rate))
    }

    /// Drives `events` at one second apart, checking consistency after every step; returns all actions.
    static func drive(_ machine: inout Machine, _ events: [Machine.Event], from start: Int = 0) -> [Machine.Action] {
        var actions: [Machine.Action] = []
        for (offset, event) in events.enumerated() {
            actions += machine.handle(event, now: .seconds(start + offset))
            #expect(
                machine.isConsistent, "after \(event): source \(machine.source), destination \(machine.destination)")
        }
        return actions
    }

    /// The events of a migration that succeeds.
    static let happyPath: [Machine.Event] = [
        .start, .negotiated, .destinationReady, progress(remaining: 400 << 20, sent: 100 << 20),
        progress(remaining: 20 << 20, sent: 500 << 20), .sourcePaused, .transferCompleted, .verified,
        .destinationRunning, .sourceStopped,
    ]

    @Test("A migration that succeeds: every step in order, the VM ends on the destination, the source stopped")
    func happyPath() {
        var machine = Machine(configuration: .init(maximumDowntime: .milliseconds(300)))
        let actions = Self.drive(&machine, Self.happyPath)
        #expect(
            actions == [
                .negotiate, .prepareDestination, .startTransfer(maximumDowntime: .milliseconds(300)), .verify,
                .resumeDestination, .stopSource, .finish(.migrated),
            ])
        #expect(machine.phase == .finished && machine.outcome == .migrated)
        #expect(machine.source == .stopped && machine.destination == .running && !machine.autoConverging)
        #expect(machine.handle(.failed("late"), now: .seconds(99)).isEmpty, "a finished migration ignores events")
    }

    @Test(
        "A failure before the commit point rolls back: destination destroyed first, then the source resumed",
        arguments: 1...8)
    func failureBeforeCommitRollsBack(after steps: Int) {
        var machine = Machine()
        var actions = Self.drive(&machine, Array(Self.happyPath.prefix(steps)))
        actions = machine.handle(.failed("link cut"), now: .seconds(steps))
        #expect(machine.phase == .rollingBack || machine.phase == .finished, "\(machine.phase)")
        let transferRunning = steps >= 3 && steps < 7
        #expect(actions.contains(.cancelTransfer) == transferRunning, "\(actions)")
        #expect(!actions.contains(.resumeSource) || !actions.contains(.destroyDestination))
        if actions.contains(.destroyDestination) {
            #expect(!actions.contains(.resumeSource), "the source waits until the destination is gone")
            actions = machine.handle(.destinationDestroyed, now: .seconds(steps + 1))
            #expect(machine.isConsistent)
        }
        if actions.contains(.resumeSource) {
            actions = machine.handle(.sourceResumed, now: .seconds(steps + 2))
        }
        #expect(actions.last == .finish(.rolledBack("link cut")), "\(actions)")
        #expect(machine.source == .running && machine.destination == .absent)
    }

    @Test("A failure while the destination is being resumed rolls back without cancelling; the source waits")
    func failureAtCommitRollsBack() {
        var machine = Machine()
        _ = Self.drive(&machine, Array(Self.happyPath.prefix(8)))
        #expect(machine.phase == .committing && machine.source == .paused)
        let actions = machine.handle(.failed("cont failed on the destination"), now: .seconds(9))
        #expect(actions == [.destroyDestination])
        #expect(machine.handle(.destinationDestroyed, now: .seconds(10)) == [.resumeSource])
        #expect(
            machine.handle(.sourceResumed, now: .seconds(11)).last
                == .finish(.rolledBack("cont failed on the destination")))
    }

    @Test("After the commit point the VM stays on the destination: a source that does not quit is killed")
    func failureAfterCommitKillsTheSource() {
        var machine = Machine()
        _ = Self.drive(&machine, Array(Self.happyPath.prefix(9)))
        #expect(machine.phase == .stoppingSource && machine.destination == .running)
        #expect(machine.handle(.failed("quit timed out"), now: .seconds(20)) == [.killSource])
        #expect(machine.handle(.sourceStopped, now: .seconds(21)) == [.finish(.migrated)])
        #expect(machine.isConsistent)
    }

    @Test("A step that takes longer than its timeout fails it; a transfer fails only when it stalls")
    func timeouts() {
        var machine = Machine(configuration: .init(stepTimeout: .seconds(10), stallTimeout: .seconds(30)))
        _ = machine.handle(.start, now: .zero)
        _ = machine.handle(.negotiated, now: .seconds(1))
        #expect(machine.handle(.tick, now: .seconds(5)).isEmpty)
        let actions = machine.handle(.tick, now: .seconds(11))
        #expect(actions == [.destroyDestination] && machine.phase == .rollingBack)

        var transferring = Machine(configuration: .init(stepTimeout: .seconds(10), stallTimeout: .seconds(30)))
        _ = Self.drive(&transferring, Array(Self.happyPath.prefix(3)))
        // Progress keeps the transfer alive well past the step timeout.
        for second in stride(from: 10, through: 100, by: 10) {
            _ = transferring.handle(
                Self.progress(remaining: 1 << 30, sent: UInt64(second) << 20), now: .seconds(second))
            #expect(transferring.handle(.tick, now: .seconds(second + 5)).isEmpty)
        }
        // Then it stalls: no new bytes for longer than the stall timeout.
        _ = transferring.handle(Self.progress(remaining: 1 << 30, sent: 100 << 20), now: .seconds(120))
        #expect(transferring.handle(.tick, now: .seconds(131)).first == .cancelTransfer)
    }

    @Test(
        "QEMU's downtime limit is the pause budget less the cut-over's round trips; all of it if they leave < 1/4",
        arguments: [
            // (round trip ms, verify first, QEMU's limit ms) for a 300 ms budget
            (nil, false, 300), (1, false, 298), (100, false, 100), (112, false, 76), (113, false, 300),
            (250, false, 300), (50, true, 150), (100, true, 300),
        ] as [(Int?, Bool, Int)])
    func qemuDowntimeShare(roundTrip: Int?, verify: Bool, expected: Int) {
        var machine = Machine(configuration: .init(maximumDowntime: .milliseconds(300), verifyBeforeCommit: verify))
        var events: [Machine.Event] = [.start]
        if let roundTrip { events.append(.pathMeasured(roundTrip: .milliseconds(roundTrip))) }
        let actions = Self.drive(&machine, events + [.negotiated, .destinationReady])
        #expect(actions.contains(.startTransfer(maximumDowntime: .milliseconds(expected))), "\(actions)")
        #expect(machine.qemuDowntime == .milliseconds(expected))
        #expect(machine.isBudgetAttainable == roundTrip.map { _ in expected < 300 })
        // A round trip measured once the transfer runs changes nothing QEMU was told.
        _ = machine.handle(.pathMeasured(roundTrip: .seconds(2)), now: .seconds(9))
        #expect(machine.qemuDowntime == .milliseconds(expected))
    }

    @Test("Convergence is judged against QEMU's limit, not the whole pause budget")
    func convergenceAgainstQEMULimit() {
        var machine = Machine(
            configuration: .init(
                maximumDowntime: .milliseconds(300), nonConvergingReports: 3, verifyBeforeCommit: false))
        _ = Self.drive(
            &machine, [.start, .pathMeasured(roundTrip: .milliseconds(100)), .negotiated, .destinationReady])
        // 20 MB at 100 MB/s: 200 ms, within the 300 ms budget but not within QEMU's 100 ms, and not shrinking.
        var actions: [Machine.Action] = []
        for round in 0..<4 {
            actions += machine.handle(
                Self.progress(remaining: 20_000_000, sent: UInt64(round + 1) << 28), now: .seconds(10 + round))
        }
        #expect(actions == [.enableAutoConverge])
    }

    @Test("Pre-copy that does not converge switches auto-converge on, once")
    func autoConverge() {
        var machine = Machine(configuration: .init(maximumDowntime: .milliseconds(300), nonConvergingReports: 3))
        _ = Self.drive(&machine, Array(Self.happyPath.prefix(3)))
        var actions: [Machine.Action] = []
        // 200 MiB remain at 100 MB/s (2 s, far above the budget) and the amount does not shrink.
        for round in 0..<6 {
            actions += machine.handle(
                Self.progress(remaining: 200 << 20, sent: UInt64(round + 1) << 28), now: .seconds(10 + round))
        }
        #expect(actions == [.enableAutoConverge] && machine.autoConverging)
        // Shrinking remaining bytes never trigger it.
        var converging = Machine(configuration: .init(nonConvergingReports: 3))
        _ = Self.drive(&converging, Array(Self.happyPath.prefix(3)))
        for round in 0..<6 {
            #expect(
                converging.handle(
                    Self.progress(remaining: UInt64(600 - round * 100) << 20, sent: UInt64(round + 1) << 28),
                    now: .seconds(10 + round)
                ).isEmpty)
        }
    }

    @Test("A transfer that has not started moving (streams still opening) does not count as not converging")
    func noAutoConvergeWhileNothingMoves() {
        var machine = Machine(configuration: .init(maximumDowntime: .milliseconds(300), nonConvergingReports: 3))
        _ = Self.drive(&machine, Array(Self.happyPath.prefix(3)))
        // QEMU wrote 38 MB into the agent's buffers and waits: ten reports with nothing sent.
        for round in 0..<10 {
            let actions = machine.handle(
                Self.progress(remaining: 480 << 20, sent: 38 << 20), now: .seconds(10) + .milliseconds(100 * round))
            #expect(actions.isEmpty)
        }
        #expect(!machine.autoConverging)
        // Once bytes move and the remainder still does not shrink, it counts.
        var actions: [Machine.Action] = []
        for round in 0..<3 {
            actions += machine.handle(
                Self.progress(remaining: 480 << 20, sent: UInt64(39 + round) << 20), now: .seconds(12 + round))
        }
        #expect(actions == [.enableAutoConverge])
    }

    @Test("The source running again before the commit (QEMU's own recovery) blocks the commit")
    func sourceRunningBlocksCommit() {
        var machine = Machine()
        _ = Self.drive(&machine, Array(Self.happyPath.prefix(7)))
        _ = machine.handle(.sourceResumed, now: .seconds(8))  // ignored in verifying: not a transfer phase
        #expect(machine.source == .paused)
        var early = Machine()
        _ = Self.drive(&early, Array(Self.happyPath.prefix(6)))
        _ = early.handle(.sourceResumed, now: .seconds(7))
        #expect(early.source == .running)
        _ = early.handle(.transferCompleted, now: .seconds(8))
        let actions = early.handle(.verified, now: .seconds(9))
        #expect(actions == [.destroyDestination], "never resume the destination while the source runs: \(actions)")
        #expect(early.isConsistent)
    }

    @Test("Random event sequences never leave two running copies or none, and finish at most once")
    func randomSequences() {
        let events: [Machine.Event] = [
            .start, .negotiated, .destinationReady, Self.progress(remaining: 1 << 20, sent: 1 << 20), .sourcePaused,
            .transferCompleted, .verified, .destinationRunning, .sourceStopped, .sourceResumed, .destinationDestroyed,
            .failed("x"), .cancel, .tick, .streamDelivered, .destinationUnreachable, .sourceLost("crash"),
        ]
        var state: UInt64 = 0x9E37_79B9_7F4A_7C15
        for _ in 0..<2_000 {
            // Three modes: verified first; resumed on the arrival confirmation; running on arrival by itself.
            let mode = Int(state >> 40) % 3
            var machine = Machine(
                configuration: .init(
                    stepTimeout: .seconds(3), stallTimeout: .seconds(3), verifyBeforeCommit: mode == 0,
                    destinationRunsOnArrival: mode == 2))
            var finishes = 0
            for step in 0..<40 {
                state = state &* 6_364_136_223_846_793_005 &+ 1_442_695_040_888_963_407
                let event = events[Int(state >> 33) % events.count]
                for action in machine.handle(event, now: .seconds(step)) {
                    if case .finish = action { finishes += 1 }
                }
                #expect(machine.isConsistent, "after \(event)")
            }
            #expect(finishes <= 1)
        }
    }

    @Test("A destination that runs on arrival: after the source paused, only its word lets the source run again")
    func destinationRunsOnArrival() {
        let configuration = Machine.Configuration(verifyBeforeCommit: false, destinationRunsOnArrival: true)
        let beforePause: [Machine.Event] = [
            .start, .negotiated, .destinationReady, Self.progress(remaining: 20 << 20, sent: 500 << 20),
        ]
        // Before the pause the stream cannot be whole: an unreachable destination never ran, the source resumes.
        var early = Machine(configuration: configuration)
        _ = Self.drive(&early, beforePause)
        #expect(early.handle(.failed("link cut"), now: .seconds(10)) == [.cancelTransfer, .destroyDestination])
        #expect(early.handle(.destinationUnreachable, now: .seconds(11)) == [.finish(.rolledBack("link cut"))])
        #expect(early.source == .running)
        // After the pause it may have run: unreachable means asked again, the source paused (see
        // unreachableDestination).
        var cut = Machine(configuration: configuration)
        _ = Self.drive(&cut, beforePause + [.sourcePaused])
        #expect(cut.resumeRequested)
        _ = cut.handle(.failed("link cut"), now: .seconds(10))
        #expect(cut.handle(.destinationUnreachable, now: .seconds(11)).isEmpty)
        #expect(cut.source == .paused && cut.phase == .rollingBack)
        // Asked to destroy its copy, it says it runs: the migration went through, the source is stopped.
        var ran = Machine(configuration: configuration)
        _ = Self.drive(&ran, beforePause + [.sourcePaused])
        #expect(
            ran.handle(.failed("the transport's confirmation never came"), now: .seconds(10)).last
                == .destroyDestination)
        #expect(ran.handle(.destinationRunning, now: .seconds(11)) == [.stopSource])
        #expect(ran.destination == .running && ran.isConsistent)
        #expect(ran.handle(.sourceStopped, now: .seconds(12)) == [.finish(.migrated)])
        // Said to have destroyed it: the source runs again.
        var destroyed = Machine(configuration: configuration)
        _ = Self.drive(&destroyed, beforePause + [.sourcePaused])
        _ = destroyed.handle(.failed("stall"), now: .seconds(10))
        #expect(destroyed.handle(.destinationDestroyed, now: .seconds(11)) == [.resumeSource])
        // A destination that says it runs while the source runs too (it cannot have had the whole stream):
        // nothing is stopped or resumed, the migration ends abandoned and says why.
        var both = Machine(configuration: configuration)
        _ = Self.drive(&both, beforePause)
        _ = both.handle(.failed("stall"), now: .seconds(10))
        #expect(
            both.handle(.destinationRunning, now: .seconds(11))
                == [.finish(.abandoned("stall; both copies run the guest"))])
    }

    @Test("After the source paused, the stream's tail keeps the migration alive only while the transport delivers it")
    func cutOverWaitsOnDelivery() {
        let configuration = Machine.Configuration(stepTimeout: .seconds(120), stallTimeout: .seconds(10))
        // Delivery goes on: no timeout although cut-over lasts 30 s; then the transfer completes.
        var machine = Machine(configuration: configuration)
        _ = Self.drive(&machine, Array(Self.happyPath.prefix(6)))  // … sourcePaused at t = 5
        for second in stride(from: 6, through: 35, by: 3) {
            #expect(machine.handle(.delivered(UInt64(second) << 20), now: .seconds(second)).isEmpty)
            #expect(machine.handle(.tick, now: .seconds(second + 1)).isEmpty)
        }
        #expect(machine.phase == .cuttingOver)
        #expect(machine.handle(.transferCompleted, now: .seconds(36)) == [.verify])
        // The link goes silent: the stall timeout, not the 120 s step timeout, ends it.
        machine = Machine(configuration: configuration)
        _ = Self.drive(&machine, Array(Self.happyPath.prefix(6)))
        _ = machine.handle(.delivered(1 << 20), now: .seconds(6))
        _ = machine.handle(.delivered(1 << 20), now: .seconds(12))  // nothing new
        #expect(machine.handle(.tick, now: .seconds(15)).isEmpty)
        let actions = machine.handle(.tick, now: .seconds(17))
        #expect(machine.phase == .rollingBack, "\(machine.phase)")
        #expect(actions.contains(.destroyDestination))
    }

    /// The events up to the source's pause, then the transport's delivery of the whole stream.
    static let untilDelivered: [Machine.Event] = Array(happyPath.prefix(6)) + [.streamDelivered]

    @Test("Without verification the resume rides on the arrival confirmation, which is then the commit point")
    func resumeOnArrival() {
        var machine = Machine(configuration: .init(verifyBeforeCommit: false))
        let actions = Self.drive(&machine, Self.untilDelivered)
        #expect(actions.last == .confirmArrival(resume: true) && machine.resumeRequested)
        #expect(machine.handle(.destinationRunning, now: .seconds(10)) == [.stopSource])
        #expect(machine.destination == .running && machine.phase == .stoppingSource)
        #expect(machine.handle(.sourceStopped, now: .seconds(11)) == [.finish(.migrated)])
        // Delivery reported before QEMU's pause: the confirmation waits for the pause.
        var early = Machine(configuration: .init(verifyBeforeCommit: false))
        #expect(
            !Self.drive(&early, Array(Self.happyPath.prefix(5)) + [.streamDelivered]).contains(
                .confirmArrival(resume: true)))
        #expect(early.handle(.sourcePaused, now: .seconds(9)) == [.confirmArrival(resume: true)])
        // With verification the arrival is only confirmed; the resume comes after `verified`.
        var verifying = Machine()
        #expect(Self.drive(&verifying, Self.untilDelivered).last == .confirmArrival(resume: false))
        #expect(!verifying.resumeRequested)
        #expect(verifying.handle(.transferCompleted, now: .seconds(10)) == [.verify])
    }

    @Test(
        "An unreachable destination never asked to run counts as gone; one asked to run is asked again, the source paused, until it answers or the reconnect window ends"
    )
    func unreachableDestination() {
        var never = Machine()
        _ = Self.drive(&never, Array(Self.happyPath.prefix(6)))  // cutting over: the source is paused
        #expect(never.handle(.failed("link cut"), now: .seconds(9)) == [.cancelTransfer, .destroyDestination])
        #expect(never.handle(.destinationUnreachable, now: .seconds(10)) == [.resumeSource])
        #expect(never.handle(.sourceResumed, now: .seconds(11)) == [.finish(.rolledBack("link cut"))])

        // Asked to run, then unreachable: asked again every reconnect interval while the window lasts; no step
        // timeout, no rollback attempt is spent on the silence.
        let configuration = Machine.Configuration(
            stepTimeout: .seconds(5), verifyBeforeCommit: false, rollbackAttempts: 2, reconnectWindow: .seconds(30),
            reconnectInterval: .seconds(2))
        func unreachableAfterAsking() -> Machine {
            var machine = Machine(configuration: configuration)
            _ = Self.drive(&machine, Self.untilDelivered)
            #expect(machine.handle(.failed("no answer to the arrival"), now: .seconds(9)).contains(.destroyDestination))
            #expect(machine.handle(.destinationUnreachable, now: .seconds(10)).isEmpty, "the destination may run")
            #expect(machine.handle(.tick, now: .seconds(11)).isEmpty)
            #expect(machine.handle(.tick, now: .seconds(12)) == [.destroyDestination])
            return machine
        }
        var asked = unreachableAfterAsking()
        #expect(asked.handle(.destinationUnreachable, now: .seconds(13)).isEmpty)
        #expect(asked.handle(.failed("the stream: stalled"), now: .seconds(14)).isEmpty, "no step was open")
        #expect(asked.handle(.tick, now: .seconds(15)) == [.destroyDestination])
        for second in stride(from: 15, to: 50, by: 2) {
            let actions = asked.handle(.destinationUnreachable, now: .seconds(second))
            #expect(!actions.contains(.resumeSource), "the destination may run: the source must not")
            #expect(asked.source == .paused && asked.isConsistent)
            if asked.phase == .finished { break }
            #expect(asked.handle(.tick, now: .seconds(second + 2)) == [.destroyDestination], "at \(second + 2) s")
        }
        guard case .abandoned(let why) = asked.outcome else {
            Issue.record("expected an abandoned rollback, got \(String(describing: asked.outcome))")
            return
        }
        #expect(why.contains("could not be reached for 30"), "\(why)")
        #expect(asked.source == .paused)
        // The link comes back and it answers: gone (the source runs again) or running (the migration went through).
        var gone = unreachableAfterAsking()
        #expect(gone.handle(.destinationDestroyed, now: .seconds(13)) == [.resumeSource])
        #expect(gone.handle(.sourceResumed, now: .seconds(14)) == [.finish(.rolledBack("no answer to the arrival"))])
        var ran = unreachableAfterAsking()
        #expect(ran.handle(.destinationRunning, now: .seconds(13)) == [.stopSource])
        #expect(ran.handle(.sourceStopped, now: .seconds(14)) == [.finish(.migrated)])
    }

    @Test("A rollback whose steps keep failing ends as abandoned after the configured attempts")
    func rollbackAttempts() {
        var machine = Machine(configuration: .init(rollbackAttempts: 3))
        _ = Self.drive(&machine, Array(Self.happyPath.prefix(6)))
        _ = machine.handle(.failed("link cut"), now: .seconds(9))
        #expect(machine.handle(.failed("destroy refused"), now: .seconds(10)) == [.destroyDestination])
        #expect(machine.handle(.failed("destroy refused"), now: .seconds(11)) == [.destroyDestination])
        guard case .finish(.abandoned) = machine.handle(.failed("destroy refused"), now: .seconds(12)).last else {
            Issue.record("expected an abandoned rollback after three failed attempts")
            return
        }
        #expect(machine.source == .paused)
    }

    @Test("A source QEMU that dies: before the commit the destination's copy goes; after it, the VM is migrated")
    func sourceLost() {
        var transferring = Machine()
        _ = Self.drive(&transferring, Array(Self.happyPath.prefix(4)))
        #expect(transferring.handle(.sourceLost("killed"), now: .seconds(5)) == [.destroyDestination])
        #expect(transferring.handle(.destinationDestroyed, now: .seconds(6)) == [.finish(.sourceLost("killed"))])
        #expect(transferring.isConsistent)

        var committed = Machine()
        _ = Self.drive(&committed, Array(Self.happyPath.prefix(9)))
        #expect(committed.handle(.sourceLost("quit"), now: .seconds(10)) == [.finish(.migrated)])

        // Asked to run already: its answer decides.
        var asked = Machine(configuration: .init(verifyBeforeCommit: false))
        _ = Self.drive(&asked, Self.untilDelivered)
        #expect(asked.handle(.sourceLost("killed"), now: .seconds(9)).isEmpty)
        #expect(asked.handle(.destinationRunning, now: .seconds(10)) == [.stopSource])
        #expect(asked.handle(.sourceStopped, now: .seconds(11)) == [.finish(.migrated)])
    }
}
