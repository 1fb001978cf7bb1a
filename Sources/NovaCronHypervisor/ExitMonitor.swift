import NIOConcurrencyHelpers

/// Records how a child process ended and lets any number of tasks await it; waits are cancellable.
final class ExitMonitor: Sendable {
    /// How a process ended.
    struct Exit: Hashable, Sendable, CustomStringConvertible {
        /// The exit status, or the signal number when `wasSignaled`.
        var status: Int32
        /// Whether a signal ended it.
        var wasSignaled: Bool

        var description: String { wasSignaled ? "killed by signal \(status)" : "exited with status \(status)" }
    }

    private struct State {
        var exit: Exit?
        var waiters: [UInt64: CheckedContinuation<Exit?, Never>] = [:]
        var cancelledBeforeWaiting: Set<UInt64> = []
        var nextID: UInt64 = 0
    }

    private let state = NIOLockedValueBox(State())

    /// The exit, once it happened.
    var exit: Exit? { state.withLockedValue { $0.exit } }

    func record(_ exit: Exit) {
        let waiters = state.withLockedValue { state in
            state.exit = exit
            defer { state.waiters.removeAll() }
            return Array(state.waiters.values)
        }
        for waiter in waiters {
            waiter.resume(returning: exit)
        }
    }

    /// Waits for the exit, for at most `timeout` when given.
    /// - Returns: The exit, or `nil` on timeout or cancellation.
    func wait(timeout: Duration? = nil) async -> Exit? {
        if let exit { return exit }
        let id = state.withLockedValue { state -> UInt64 in
            state.nextID += 1
            return state.nextID
        }
        return await withTaskGroup(of: Exit?.self) { group in
            group.addTask {
                await withTaskCancellationHandler {
                    await withCheckedContinuation { continuation in
                        let ready = self.state.withLockedValue { state -> Exit?? in
                            if let exit = state.exit { return .some(exit) }
                            if state.cancelledBeforeWaiting.remove(id) != nil { return .some(nil) }
                            state.waiters[id] = continuation
                            return .none
                        }
                        if case .some(let result) = ready {
                            continuation.resume(returning: result)
                        }
                    }
                } onCancel: {
                    let waiter = self.state.withLockedValue { state in
                        let waiter = state.waiters.removeValue(forKey: id)
                        if waiter == nil { state.cancelledBeforeWaiting.insert(id) }
                        return waiter
                    }
                    waiter?.resume(returning: nil)
                }
            }
            if let timeout {
                group.addTask {
                    try? await Task.sleep(for: timeout)
                    return nil
                }
            }
            defer { group.cancelAll() }
            return await group.next()!
        }
    }
}
