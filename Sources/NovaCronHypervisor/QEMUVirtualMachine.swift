import Foundation
import NIOConcurrencyHelpers

#if canImport(Glibc)
    import Glibc
#endif

/// A running QEMU process and its QMP connection. Obtain one from
/// ``QEMUHypervisor/withVirtualMachine(_:mode:_:)``; it is valid inside that call.
public final class QEMUVirtualMachine: VirtualMachine {
    /// What was launched.
    public let spec: VMSpec
    /// QEMU's process id.
    public let processID: Int32
    /// The VM's private directory: QMP socket, console log, QEMU's stderr.
    public let runtimeDirectory: String
    /// The guest's serial console.
    public let console: SerialConsole
    /// The QMP connection, for commands this type does not wrap.
    public let qmp: QMPClient
    private let exitMonitor: ExitMonitor
    private let descriptorNames = NIOLockedValueBox(0)

    init(
        spec: VMSpec,
        processID: Int32,
        runtimeDirectory: String,
        qmp: QMPClient,
        console: SerialConsole,
        exitMonitor: ExitMonitor
    ) {
        self.spec = spec
        self.processID = processID
        self.runtimeDirectory = runtimeDirectory
        self.qmp = qmp
        self.console = console
        self.exitMonitor = exitMonitor
    }

    /// QMP events: STOP, RESUME, SHUTDOWN, MIGRATION, …
    public var events: AsyncStream<QMPProtocol.Event> { qmp.events }

    /// How QEMU ended, if it has: e.g. "killed by signal 9".
    public var exitDescription: String? { exitMonitor.exit?.description }

    /// Waits until QEMU exits, whoever ends it.
    /// - Returns: How it ended, e.g. "killed by signal 9".
    /// - Throws: `CancellationError` if the waiting task is cancelled first.
    public func waitForExit() async throws -> String {
        guard let exit = await exitMonitor.wait() else { throw CancellationError() }
        return exit.description
    }

    /// The last lines QEMU wrote to stderr.
    public func standardErrorTail(lines: Int = 8) -> String {
        QEMUHypervisor.tail(of: runtimeDirectory + "/qemu.stderr", lines: lines)
    }

    /// Runs a QMP command; a connection lost because QEMU died becomes ``HypervisorError/Code/processExited``
    /// with QEMU's exit and stderr.
    @discardableResult
    public func execute(_ command: String, _ arguments: JSONValue? = nil) async throws -> JSONValue {
        if exitMonitor.exit != nil {
            throw exitedError(doing: command)
        }
        do {
            return try await qmp.execute(command, arguments)
        } catch let error as HypervisorError where error.code == .connectionClosed {
            _ = await exitMonitor.wait(timeout: .seconds(5))
            throw exitMonitor.exit == nil ? error : exitedError(doing: command)
        }
    }

    private func exitedError(doing command: String) -> HypervisorError {
        HypervisorError(
            .processExited,
            expected: "QEMU (pid \(processID)) to answer \(command)",
            found: "QEMU \(exitMonitor.exit?.description ?? "is gone"); stderr: \(standardErrorTail())",
            advice: "the VM is no longer running"
        )
    }

    // MARK: - Lifecycle

    /// The run state.
    public func status() async throws -> VMStatus {
        let reply = try await execute("query-status")
        return VMStatus(
            isRunning: reply["running"]?.boolValue ?? false, state: reply["status"]?.stringValue ?? "unknown")
    }

    /// Pauses the vCPUs (`stop`).
    public func pause() async throws {
        try await execute("stop")
    }

    /// Resumes the vCPUs (`cont`).
    public func resume() async throws {
        try await execute("cont")
    }

    /// Asks QEMU to exit (`quit`) and waits; kills it if it has not exited within `timeout`.
    public func shutdown(timeout: Duration = .seconds(10)) async throws {
        do {
            try await qmp.execute("quit")
        } catch let error as HypervisorError where error.code == .connectionClosed {
            // QEMU may close the socket before its reply gets out.
        }
        if await exitMonitor.wait(timeout: timeout) == nil {
            await kill()
            throw HypervisorError(.timedOut, expected: "QEMU to quit within \(timeout)", found: "it did not; killed it")
        }
    }

    /// Kills QEMU (SIGKILL) and waits for it.
    public func kill() async {
        if exitMonitor.exit == nil {
            _ = Glibc.kill(processID, SIGKILL)
        }
        _ = await exitMonitor.wait(timeout: .seconds(30))
    }

    /// Writes all guest RAM to `path` (`pmemsave` from address 0, ``VMSpec/ramBytes`` bytes), pausing
    /// the guest meanwhile so the image is consistent, and resuming it if it was running.
    public func saveRAM(to path: String) async throws {
        let wasRunning = try await status().isRunning
        if wasRunning {
            try await pause()
        }
        try await execute(
            "pmemsave",
            ["val": 0, "size": .int(Int64(spec.ramBytes)), "filename": .string(path)]
        )
        if wasRunning {
            try await resume()
        }
    }

    // MARK: - Migration primitives

    /// Sets migration capabilities (`migrate-set-capabilities`), e.g. `["multifd": true]`.
    public func setMigrationCapabilities(_ capabilities: [String: Bool]) async throws {
        let list = capabilities.sorted { $0.key < $1.key }.map { name, state -> JSONValue in
            ["capability": .string(name), "state": .bool(state)]
        }
        try await execute("migrate-set-capabilities", ["capabilities": .array(list)])
    }

    /// Sets migration parameters (`migrate-set-parameters`), e.g. `["downtime-limit": 300]`.
    public func setMigrationParameters(_ parameters: [String: JSONValue]) async throws {
        try await execute("migrate-set-parameters", .object(parameters))
    }

    /// Starts an outgoing migration to a URI QEMU opens itself (`tcp:…`, `unix:…`, `exec:…`).
    public func migrate(to uri: String) async throws {
        try await execute("migrate", ["uri": .string(uri)])
    }

    /// Starts an outgoing migration into `descriptor`, which NovaCron owns; QEMU gets a duplicate.
    public func migrate(toDescriptor descriptor: CInt) async throws {
        let name = nextDescriptorName("migrate-out")
        try await qmp.passDescriptor(descriptor, named: name)
        try await execute("migrate", ["uri": .string("fd:\(name)")])
    }

    /// Accepts an incoming migration from a URI; the VM must have been launched `.incoming`.
    public func acceptIncoming(uri: String) async throws {
        try await execute("migrate-incoming", ["uri": .string(uri)])
    }

    /// Accepts an incoming migration from `descriptor`; the VM must have been launched `.incoming`.
    public func acceptIncoming(fromDescriptor descriptor: CInt) async throws {
        let name = nextDescriptorName("migrate-in")
        try await qmp.passDescriptor(descriptor, named: name)
        try await execute("migrate-incoming", ["uri": .string("fd:\(name)")])
    }

    /// The migration's progress (`query-migrate`).
    public func migrationInfo() async throws -> MigrationInfo {
        MigrationInfo(try await execute("query-migrate"))
    }

    /// Cancels an outgoing migration (`migrate_cancel`); the VM keeps running on this side.
    public func cancelMigration() async throws {
        try await execute("migrate_cancel")
    }

    /// Polls `query-migrate` every 100 ms until the migration completes.
    ///
    /// On completion it asks once more 300 ms later, because QEMU can report total time and downtime
    /// as 0 right at completion.
    /// - Parameters:
    ///   - timeout: How long to wait.
    ///   - progress: Called with every poll's result.
    /// - Returns: The final status.
    /// - Throws: ``HypervisorError/Code/migrationFailed`` when it fails or is cancelled,
    ///   ``HypervisorError/Code/timedOut``.
    public func waitForMigration(
        timeout: Duration,
        progress: (@Sendable (MigrationInfo) -> Void)? = nil
    ) async throws -> MigrationInfo {
        let deadline = ContinuousClock.now + timeout
        while true {
            let info = try await migrationInfo()
            progress?(info)
            switch info.status {
            case "completed":
                try await Task.sleep(for: .milliseconds(300))
                return try await migrationInfo()
            case "failed", "cancelled":
                throw HypervisorError(
                    .migrationFailed,
                    expected: "the migration of \(spec.name) to complete",
                    found: "status \(info.status): \(info.errorDescription ?? "no description")"
                )
            default:
                guard ContinuousClock.now < deadline else {
                    throw HypervisorError(
                        .timedOut,
                        expected: "the migration of \(spec.name) to complete within \(timeout)",
                        found: "status \(info.status), \(info.remainingBytes ?? -1) bytes remaining"
                    )
                }
                try await Task.sleep(for: .milliseconds(100))
            }
        }
    }

    // MARK: - State streams

    /// Writes the VM's device and RAM state to `path` as a QEMU migration stream, through a socket
    /// NovaCron owns. The file appears under its name only when complete (`path.partial` meanwhile).
    /// The VM is left paused (`postmigrate`), as after any completed migration.
    /// - Returns: The migration's final status.
    public func saveState(to path: String, timeout: Duration = .seconds(600)) async throws -> MigrationInfo {
        let partial = path + ".partial"
        let file = open(partial, O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0o644)
        guard file >= 0 else {
            throw HypervisorError(
                .streamFailed, expected: "to create \(partial)", found: String(cString: strerror(errno)))
        }
        defer { close(file) }
        let (ours, theirs) = try StreamCopy.socketPair()
        defer { close(ours) }
        do {
            defer { close(theirs) }
            try await migrate(toDescriptor: theirs)
        } catch {
            unlink(partial)
            throw error
        }
        do {
            let (info, _) = try await Self.whileCopying(from: ours, to: file, what: "the state stream", abort: ours) {
                try await self.waitForMigration(timeout: timeout)
            }
            guard fsync(file) == 0, rename(partial, path) == 0 else {
                throw HypervisorError(
                    .streamFailed, expected: "to finish \(path)", found: String(cString: strerror(errno)))
            }
            return info
        } catch {
            unlink(partial)
            throw error
        }
    }

    /// Loads state from a file written by ``saveState(to:timeout:)``; the VM must have been launched
    /// `.incoming`. It runs afterwards unless it was launched `.incoming(paused: true)`.
    /// - Returns: The incoming migration's final status.
    public func restoreState(from path: String, timeout: Duration = .seconds(600)) async throws -> MigrationInfo {
        let file = open(path, O_RDONLY | O_CLOEXEC)
        guard file >= 0 else {
            throw HypervisorError(.streamFailed, expected: "to open \(path)", found: String(cString: strerror(errno)))
        }
        defer { close(file) }
        let (ours, theirs) = try StreamCopy.socketPair()
        defer { close(ours) }
        do {
            defer { close(theirs) }
            try await acceptIncoming(fromDescriptor: theirs)
        }
        let (info, _) = try await Self.whileCopying(from: file, to: ours, what: "the saved state", abort: ours) {
            try await self.waitForMigration(timeout: timeout)
        }
        return info
    }

    /// What a local migration measured.
    public struct LocalMigrationReport: Sendable {
        /// The source's final migration status (total time, downtime, RAM bytes).
        public var source: MigrationInfo
        /// The destination's final status.
        public var destination: MigrationInfo
        /// Bytes NovaCron relayed from source to destination.
        public var relayedBytes: Int
    }

    /// Live-migrates this VM into `destination` (launched `.incoming`) on the same machine, through two
    /// socket pairs whose inner ends NovaCron relays — the path a WAN transport later replaces.
    public func migrateLocally(
        to destination: QEMUVirtualMachine,
        timeout: Duration = .seconds(600),
        progress: (@Sendable (MigrationInfo) -> Void)? = nil
    ) async throws -> LocalMigrationReport {
        let (sourceOurs, sourceTheirs) = try StreamCopy.socketPair()
        defer { close(sourceOurs) }
        let (destinationOurs, destinationTheirs) = try StreamCopy.socketPair()
        defer { close(destinationOurs) }
        do {
            defer { close(destinationTheirs) }
            try await destination.acceptIncoming(fromDescriptor: destinationTheirs)
        }
        do {
            defer { close(sourceTheirs) }
            try await migrate(toDescriptor: sourceTheirs)
        }
        let (source, relayed) = try await Self.whileCopying(
            from: sourceOurs,
            to: destinationOurs,
            what: "the migration stream",
            abort: sourceOurs
        ) {
            try await self.waitForMigration(timeout: timeout, progress: progress)
        }
        let arrived = try await destination.waitForMigration(timeout: .seconds(60))
        return LocalMigrationReport(source: source, destination: arrived, relayedBytes: relayed)
    }

    /// Runs `body` while copying `source` to `destination`; if either fails, `abort` is shut down so
    /// the other side sees the failure instead of blocking. Returns both results once both finished.
    static func whileCopying<Result: Sendable>(
        from source: CInt,
        to destination: CInt,
        what: String,
        abort: CInt,
        _ body: @escaping @Sendable () async throws -> Result
    ) async throws -> (Result, Int) {
        try await withThrowingTaskGroup(of: CopyOutcome<Result>.self) { group in
            group.addTask { .copied(try await StreamCopy.copy(from: source, to: destination, what: what)) }
            group.addTask { .finished(try await body()) }
            var copied: Int?
            var result: Result?
            do {
                while let outcome = try await group.next() {
                    switch outcome {
                    case .copied(let count): copied = count
                    case .finished(let value): result = value
                    }
                }
            } catch {
                _ = Glibc.shutdown(abort, Int32(SHUT_RDWR))
                group.cancelAll()
                throw error
            }
            return (result!, copied!)
        }
    }

    private enum CopyOutcome<Value: Sendable>: Sendable {
        case copied(Int)
        case finished(Value)
    }

    private func nextDescriptorName(_ prefix: String) -> String {
        let number = descriptorNames.withLockedValue { counter -> Int in
            counter += 1
            return counter
        }
        return "\(prefix)-\(number)"
    }
}
