/// A level-1 hypervisor on one node: it defines and launches VMs.
///
/// Implementations MUST reap every process they start by the time `withVirtualMachine` returns,
/// whether the body returned or threw, and MUST report a VM that exits on its own as
/// ``HypervisorError/Code/processExited`` on the next operation.
public protocol Hypervisor: Sendable {
    /// The VMs this hypervisor runs.
    associatedtype Machine: VirtualMachine

    /// Checks a spec against this hypervisor: fields, files, binaries.
    /// - Returns: The spec as it will be launched.
    /// - Throws: ``HypervisorError/Code/invalidSpec``.
    func define(_ spec: VMSpec) throws -> VMSpec

    /// Launches a VM, runs `body` with it, then stops it and removes what it created.
    func withVirtualMachine<Result: Sendable>(
        _ spec: VMSpec,
        mode: LaunchMode,
        _ body: (Machine) async throws -> Result
    ) async throws -> Result
}

/// A running VM and the operations NovaCron needs on it.
public protocol VirtualMachine: Sendable {
    /// What was launched.
    var spec: VMSpec { get }
    /// The guest's serial console.
    var console: SerialConsole { get }
    /// The run state as the hypervisor reports it.
    func status() async throws -> VMStatus
    /// Pauses the vCPUs.
    func pause() async throws
    /// Resumes the vCPUs.
    func resume() async throws
    /// Asks the hypervisor to exit cleanly and waits for it.
    func shutdown(timeout: Duration) async throws
    /// Kills the hypervisor process and waits for it.
    func kill() async
    /// Writes guest RAM (all of it, from physical address 0) to `path`, pausing the guest meanwhile.
    func saveRAM(to path: String) async throws
    /// Writes the device and RAM state to `path` as a migration stream.
    func saveState(to path: String, timeout: Duration) async throws -> MigrationInfo
    /// Loads state written by ``saveState(to:timeout:)``; the VM must have been launched `.incoming`.
    func restoreState(from path: String, timeout: Duration) async throws -> MigrationInfo
}

/// A VM's run state.
public struct VMStatus: Hashable, Sendable {
    /// Whether the vCPUs run.
    public var isRunning: Bool
    /// QEMU's state name: `running`, `paused`, `inmigrate`, `postmigrate`, `shutdown`, …
    public var state: String

    /// Creates a status.
    public init(isRunning: Bool, state: String) {
        self.isRunning = isRunning
        self.state = state
    }
}
