import Foundation
import Testing

@testable import NovaCronNode

@Suite("withTimeout")
struct WithTimeoutTests {
    /// Waits `seconds` in a way cancellation cannot cut short (like a TCP connect waiting out its own timeout).
    static func uncancellableWait(seconds: Double) async {
        await withCheckedContinuation { continuation in
            DispatchQueue.global().asyncAfter(deadline: .now() + seconds) { continuation.resume() }
        }
    }

    @Test("A body that finishes in time gives its result or its error")
    func inTime() async throws {
        #expect(try await withTimeout(.seconds(5), doing: "add") { 1 + 1 } == 2)
        await #expect(throws: CancellationError.self) {
            try await withTimeout(.seconds(5), doing: "fail") { throw CancellationError() }
        }
    }

    @Test("A body that ignores cancellation does not hold the caller past the timeout")
    func late() async throws {
        // Generous bounds: on 2 cores, the suite's other tests can keep the timer from running for seconds.
        let started = ContinuousClock.now
        await #expect(throws: TimedOut.self) {
            try await withTimeout(.milliseconds(200), doing: "wait") { await Self.uncancellableWait(seconds: 120) }
        }
        let waited = ContinuousClock.now - started
        #expect(waited < .seconds(60), "returned after \(waited), not when the body ended")
    }
}
