import Foundation
import NIOConcurrencyHelpers
import NovaCronHypervisor

/// A QEMU an agent owns beyond one call: launched by ``launch(_:mode:hypervisor:)``, alive until
/// ``release()`` or until QEMU exits on its own; it is reaped and its runtime directory removed afterwards.
final class HostedVM: Sendable {
    let machine: QEMUVirtualMachine
    private let lifetime: Lifetime

    private init(machine: QEMUVirtualMachine, lifetime: Lifetime) {
        self.machine = machine
        self.lifetime = lifetime
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
                        handover.withLockedValue { $0.take() }?.resume(
                            returning: HostedVM(machine: machine, lifetime: lifetime))
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
