import Testing

@testable import NovaCronMigration

@Suite("The destination's rules: when its copy runs, when it goes")
struct IncomingMigrationRulesTests {
    typealias Rules = IncomingMigrationRules

    @Test("Run on arrival: the whole stream starts the resume once; the source's resume request then adds none")
    func runsOnArrival() {
        var rules = Rules(runsOnArrival: true)
        let r1 = rules.resumeRequested()
        #expect(!r1, "no resume before the stream arrived")
        let r2 = rules.streamArrived()
        #expect(r2)
        #expect(rules.state == .committing && rules.isCommitted)
        let r3 = rules.streamArrived()
        #expect(!r3, "the arrival is heard once")
        let r4 = rules.resumeRequested()
        #expect(!r4, "the resume already started: the source waits for it instead")
        rules.commitSucceeded()
        #expect(rules.state == .running)
    }

    @Test("Without run on arrival the copy waits for the source's word")
    func waitsForTheSource() {
        var rules = Rules(runsOnArrival: false)
        let r5 = rules.streamArrived()
        #expect(!r5)
        #expect(rules.state == .arrived && !rules.isCommitted)
        let r6 = rules.resumeRequested()
        #expect(r6)
        let r7 = rules.resumeRequested()
        #expect(!r7, "started once")
    }

    @Test("Removal: before the commit it goes; once the resume started it is refused; gone stays gone")
    func removal() {
        var receiving = Rules(runsOnArrival: true)
        let r8 = receiving.removalRequested()
        #expect(r8 == .remove)
        let r9 = receiving.removalRequested()
        #expect(r9 == .alreadyGone)
        let r10 = receiving.streamArrived()
        #expect(!r10, "a removed copy never runs, even if the stream completes")
        let r11 = receiving.resumeRequested()
        #expect(!r11)

        var committing = Rules(runsOnArrival: true)
        _ = committing.streamArrived()
        let r12 = committing.removalRequested()
        #expect(r12 == .refuseCommitted, "the `cont` may already have run the guest")
        committing.commitSucceeded()
        let r13 = committing.removalRequested()
        #expect(r13 == .refuseCommitted)
        #expect(committing.state == .running)
    }

    @Test("A failed `cont` leaves the copy paused and removable, and a later resume may try again")
    func failedResume() {
        var rules = Rules(runsOnArrival: false)
        _ = rules.streamArrived()
        let r14 = rules.resumeRequested()
        #expect(r14)
        rules.commitFailed()
        #expect(rules.state == .arrived && !rules.isCommitted)
        let r15 = rules.resumeRequested()
        #expect(r15, "tried again")
        rules.commitFailed()
        let r16 = rules.removalRequested()
        #expect(r16 == .remove)
    }

    @Test("Seeded random sequences: a committed copy is never removed and a removed one never resumed")
    func randomSequences() {
        var state: UInt64 = 0x2545_F491_4F6C_DD1D
        for _ in 0..<2_000 {
            state = state &* 6_364_136_223_846_793_005 &+ 1_442_695_040_888_963_407
            var rules = Rules(runsOnArrival: state >> 63 == 1)
            var committed = false
            var removed = false
            for _ in 0..<20 {
                state = state &* 6_364_136_223_846_793_005 &+ 1_442_695_040_888_963_407
                switch Int(state >> 33) % 5 {
                case 0: if rules.streamArrived() { committed = true }
                case 1: if rules.resumeRequested() { committed = true }
                case 2:
                    // A failed `cont` un-commits only a resume in progress; a running guest stays committed.
                    if rules.state == .committing { committed = false }
                    rules.commitFailed()
                case 3: rules.commitSucceeded()
                default:
                    let answer = rules.removalRequested()
                    #expect(answer != .remove || !committed, "removed while committed")
                    if answer == .remove { removed = true }
                }
                #expect(!(removed && rules.isCommitted), "resumed after removal")
                #expect(committed == rules.isCommitted)
            }
        }
    }
}
