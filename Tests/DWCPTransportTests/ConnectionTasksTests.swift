import Synchronization
import Testing

@testable import DWCPTransport

@Suite("Connection tasks")
struct ConnectionTasksTests {
    /// Opens once; its waiters ignore cancellation, as a TLS close waits for the peer's goodbye.
    final class Gate: Sendable {
        private let state = Mutex<(isOpen: Bool, waiters: [CheckedContinuation<Void, Never>])>((false, []))

        func wait() async {
            await withCheckedContinuation { continuation in
                let isOpen = state.withLock { state in
                    if !state.isOpen { state.waiters.append(continuation) }
                    return state.isOpen
                }
                if isOpen { continuation.resume() }
            }
        }

        var isOpen: Bool { state.withLock { $0.isOpen } }

        func open() {
            let waiters = state.withLock { state in
                state.isOpen = true
                defer { state.waiters = [] }
                return state.waiters
            }
            for waiter in waiters { waiter.resume() }
        }
    }

    /// A connection task that ends only once `goodbye` opens.
    static func connection(in tasks: ConnectionTasks, goodbye: Gate, ended: Gate) {
        tasks.add {
            await goodbye.wait()
            ended.open()
        }
    }

    @Test("After a success the caller goes on without waiting for the goodbyes", .timeLimit(.minutes(1)))
    func cancelAllDoesNotWait() async {
        let tasks = ConnectionTasks()
        let (goodbye, ended) = (Gate(), Gate())
        Self.connection(in: tasks, goodbye: goodbye, ended: ended)
        tasks.cancelAll()  // returns although the connection has not ended
        goodbye.open()
        await ended.wait()
    }

    @Test("After a failure the caller waits until every connection has ended")
    func cancelAndWaitWaits() async {
        let tasks = ConnectionTasks()
        let (goodbye, ended) = (Gate(), Gate())
        Self.connection(in: tasks, goodbye: goodbye, ended: ended)
        let finished = Gate()
        let waiter = Task {
            await tasks.cancelAndWait()
            finished.open()
        }
        try? await Task.sleep(for: .milliseconds(50))
        #expect(!finished.isOpen)
        goodbye.open()
        await waiter.value
        #expect(ended.isOpen)
    }
}
