import Foundation
import NIOConcurrencyHelpers
import NovaCronHypervisor

/// A QEMU an agent owns beyond one call: launched by ``launch(_:mode:hypervisor:)``, alive until
/// ``release()`` or until QEMU exits on its own; it is reaped and its runtime directory removed afterwards.
final class HostedVM: Sendable {
    let machine: QEMUVirtualMachine
    private let lifetime: Lifetime
    /// When QEMU last reported each event (its QMP timestamp: the host's wall clock, seconds since 1970).
    private let eventTimes = NIOLockedValueBox<[String: Double]>([:])

    private init(machine: QEMUVirtualMachine, lifetime: Lifetime) {
        self.machine = machine
        self.lifetime = lifetime
    }

    /// The QMP timestamp of the last `name` event (`STOP`, `RESUME`, …) QEMU sent, if any.
    func lastEvent(_ name: String) -> Double? {
        eventTimes.withLockedValue { $0[name] }
    }

    /// Waits up to `timeout` for a `name` event at or after `notBefore` (QEMU sends a command's events before its
    /// reply, but they are read on their own path).
    func event(_ name: String, notBefore: Double, timeout: Duration = .milliseconds(200)) async -> Double? {
        let deadline = ContinuousClock.now + timeout
        while true {
            if let time = lastEvent(name), time >= notBefore { return time }
            guard ContinuousClock.now < deadline else { return nil }
            try? await Task.sleep(for: .milliseconds(2))
        }
    }

    private func recordEvents() {
        let events = machine.events
        let times = eventTimes
        Task {
            for await event in events {
                guard let timestamp = event.timestamp else { continue }
                times.withLockedValue { $0[event.name] = timestamp }
            }
        }
    }

    var name: String { machine.spec.name }

    /// Launches QEMU and returns once it speaks QMP.
    /// - Throws: ``HypervisorError`` when QEMU cannot start.
    static func launch(_ spec: VMSpec, mode: LaunchMode, hypervisor: QEMUHypervisor) async throws -> HostedVM {
        let lifetime = Lifetime()
        return try await withCheckedThrowingContinuation { continuation in
            let handover = NIOLockedValueBox<CheckedContinuation<HostedVM, any Error>?>(continuation)
            // The scope of `withVirtualMachine` is the VM's life: this task keeps it open until released.
            Task {
                do {
                    try await hypervisor.withVirtualMachine(spec, mode: mode) { machine in
                        let hosted = HostedVM(machine: machine, lifetime: lifetime)
                        hosted.recordEvents()
                        handover.withLockedValue { $0.take() }?.resume(returning: hosted)
                        while !lifetime.isReleased && machine.exitDescription == nil {
                            try? await Task.sleep(for: .milliseconds(100))
                        }
                    }
                } catch {
                    handover.withLockedValue { $0.take() }?.resume(throwing: error)
                }
                lifetime.end()
            }
        }
    }

    /// Ends the VM (SIGTERM, SIGKILL after 5 s) and returns once QEMU is reaped and its directory removed.
    func release() async {
        await lifetime.release()
    }

    /// Whether the VM's scope has ended (released, or QEMU exited on its own).
    var hasEnded: Bool { lifetime.hasEnded }

    /// Release requests and the scope's end, shared between the hosting task and its callers.
    private final class Lifetime: Sendable {
        private struct State {
            var released = false
            var ended = false
            var waiters: [CheckedContinuation<Void, Never>] = []
        }
        private let state = NIOLockedValueBox(State())

        var isReleased: Bool { state.withLockedValue { $0.released } }
        var hasEnded: Bool { state.withLockedValue { $0.ended } }

        func release() async {
            await withCheckedContinuation { continuation in
                let done = state.withLockedValue { state -> Bool in
                    state.released = true
                    if state.ended { return true }
                    state.waiters.append(continuation)
                    return false
                }
                if done { continuation.resume() }
            }
        }

        func end() {
            let waiters = state.withLockedValue { state -> [CheckedContinuation<Void, Never>] in
                state.ended = true
                defer { state.waiters = [] }
                return state.waiters
            }
            for waiter in waiters { waiter.resume() }
        }
    }
}
