import Synchronization

/// Tasks that each serve one of a listener's connections, outside any task group, so that the receiver can
/// stop them without waiting for their goodbyes. Closing a TLS connection waits for the peer's `close_notify`,
/// up to NIOSSL's 5 s: after a success nobody needs those connections any more, so it cancels them and goes on
/// (``cancelAll()``); after a failure it waits until each has ended (``cancelAndWait()``), so that nothing
/// writes while it cleans up.
final class ConnectionTasks: Sendable {
    private let tasks = Mutex<[Task<Void, Never>]>([])

    /// Runs `body` in a task of its own.
    func add(_ body: @escaping @Sendable () async -> Void) {
        let task = Task { await body() }
        tasks.withLock { $0.append(task) }
    }

    /// Cancels every task without waiting for it.
    func cancelAll() {
        for task in tasks.withLock({ $0 }) { task.cancel() }
    }

    /// Cancels every task and waits until each has ended.
    func cancelAndWait() async {
        let running = tasks.withLock { $0 }
        for task in running { task.cancel() }
        for task in running { await task.value }
    }
}
