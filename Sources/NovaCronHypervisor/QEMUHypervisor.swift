import Foundation
import NIOCore
import NIOPosix

#if canImport(Glibc)
    import Glibc
#endif

/// Runs VMs as `qemu-system-x86_64` processes, driven over QMP.
///
/// Each VM gets a private runtime directory (QMP socket, console log, QEMU's stderr) that is removed
/// with it. The guest console arrives through QEMU's stdout (`-serial stdio`) and is available as a
/// ``SerialConsole``.
public struct QEMUHypervisor: Hypervisor {
    /// Where runtime directories are created. Keep it short: unix socket paths are limited to 107 bytes.
    public var runtimeRoot: String

    /// Creates a hypervisor.
    /// - Parameter runtimeRoot: Where per-VM runtime directories go (default `/tmp`).
    public init(runtimeRoot: String = "/tmp") {
        self.runtimeRoot = runtimeRoot
    }

    /// Validates `spec` and resolves the QEMU binary.
    /// - Throws: ``HypervisorError/Code/invalidSpec`` or ``HypervisorError/Code/launchFailed`` when QEMU
    ///   is not installed.
    public func define(_ spec: VMSpec) throws -> VMSpec {
        try spec.validate()
        var resolved = spec
        resolved.qemuBinary = try Self.resolve(binary: spec.qemuBinary)
        return resolved
    }

    /// Launches a VM, runs `body`, then stops QEMU (SIGTERM, then SIGKILL after 5 s), reaps it and
    /// removes the runtime directory — also when `body` throws.
    /// - Parameters:
    ///   - spec: What to launch.
    ///   - mode: Running, paused, or waiting for incoming state.
    ///   - body: What to do with the VM.
    /// - Returns: What `body` returns.
    public func withVirtualMachine<Result: Sendable>(
        _ spec: VMSpec,
        mode: LaunchMode = .running,
        _ body: (QEMUVirtualMachine) async throws -> Result
    ) async throws -> Result {
        let spec = try define(spec)
        let runtime = try makeRuntimeDirectory(for: spec.name)
        defer { try? FileManager.default.removeItem(atPath: runtime) }
        let qmpPath = runtime + "/qmp.sock"
        let stderrPath = runtime + "/qemu.stderr"
        let console = SerialConsole(logPath: runtime + "/serial.log")

        var pipeEnds: [CInt] = [-1, -1]
        guard pipe(&pipeEnds) == 0,
            fcntl(pipeEnds[0], F_SETFD, FD_CLOEXEC) == 0,
            fcntl(pipeEnds[1], F_SETFD, FD_CLOEXEC) == 0
        else {
            throw HypervisorError(.launchFailed, expected: "a console pipe", found: String(cString: strerror(errno)))
        }
        let exitMonitor = ExitMonitor()
        let nullDevice = open("/dev/null", O_RDONLY | O_CLOEXEC)
        let stderrFile = open(stderrPath, O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0o644)
        let processID: pid_t
        do {
            defer {
                close(nullDevice)
                close(stderrFile)
                close(pipeEnds[1])
            }
            processID = try ChildProcess.spawn(
                path: spec.qemuBinary,
                arguments: spec.qemuArguments(qmpSocket: qmpPath, mode: mode),
                standardInput: nullDevice,
                standardOutput: pipeEnds[1],
                standardError: stderrFile,
                exitMonitor: exitMonitor
            )
        } catch {
            close(pipeEnds[0])
            throw error
        }
        let consoleDescriptor = pipeEnds[0]

        return try await withThrowingTaskGroup(of: Void.self) { group in
            group.addTask {
                await Self.readConsole(descriptor: consoleDescriptor, into: console)
            }
            do {
                let result = try await QMPClient.withClient(
                    socketPath: qmpPath,
                    isPeerAlive: { exitMonitor.exit == nil }
                ) { qmp in
                    let machine = QEMUVirtualMachine(
                        spec: spec,
                        processID: processID,
                        runtimeDirectory: runtime,
                        qmp: qmp,
                        console: console,
                        exitMonitor: exitMonitor
                    )
                    return try await body(machine)
                }
                await Self.stop(processID: processID, exitMonitor: exitMonitor)
                try await group.waitForAll()
                return result
            } catch let error as HypervisorError where error.code == .connectFailed && exitMonitor.exit != nil {
                await Self.stop(processID: processID, exitMonitor: exitMonitor)
                try? await group.waitForAll()
                throw HypervisorError(
                    .launchFailed,
                    expected: "QEMU to start and listen for QMP",
                    found: "QEMU \(exitMonitor.exit!): \(Self.tail(of: stderrPath))"
                )
            } catch {
                await Self.stop(processID: processID, exitMonitor: exitMonitor)
                try? await group.waitForAll()
                throw error
            }
        }
    }

    static func stop(processID: Int32, exitMonitor: ExitMonitor) async {
        guard exitMonitor.exit == nil else { return }
        _ = Glibc.kill(processID, SIGTERM)
        if await exitMonitor.wait(timeout: .seconds(5)) == nil {
            _ = Glibc.kill(processID, SIGKILL)
            _ = await exitMonitor.wait(timeout: .seconds(30))
        }
    }

    private static func readConsole(descriptor: CInt, into console: SerialConsole) async {
        let (lines, sink) = AsyncStream.makeStream(of: DecodedLine.self)
        do {
            _ = try await NIOPipeBootstrap(group: MultiThreadedEventLoopGroup.singleton)
                .takingOwnershipOfDescriptor(input: descriptor) { channel in
                    channel.eventLoop.makeCompletedFuture {
                        try channel.pipeline.syncOperations.addHandler(
                            ByteToMessageHandler(LineDecoder(maximumLength: 64 * 1024))
                        )
                        try channel.pipeline.syncOperations.addHandler(LineForwarder(sink))
                        return channel
                    }
                }
        } catch {
            close(descriptor)
            sink.finish()
        }
        for await line in lines {
            switch line {
            case .line(let buffer):
                await console.append(String(decoding: buffer.readableBytesView, as: UTF8.self))
            case .overlong(let length):
                await console.append("<console line of \(length) bytes omitted>")
            }
        }
        await console.close()
    }

    private func makeRuntimeDirectory(for name: String) throws -> String {
        var template = Array("\(runtimeRoot)/novacron-\(name.prefix(24))-XXXXXX".utf8CString)
        let created = template.withUnsafeMutableBufferPointer { mkdtemp($0.baseAddress!) }
        guard created != nil else {
            throw HypervisorError(
                .launchFailed,
                expected: "a runtime directory under \(runtimeRoot)",
                found: String(cString: strerror(errno))
            )
        }
        return String(decoding: template.dropLast().map { UInt8(bitPattern: $0) }, as: UTF8.self)
    }

    static func resolve(binary: String) throws -> String {
        if binary.contains("/") {
            guard FileManager.default.isExecutableFile(atPath: binary) else {
                throw HypervisorError(.launchFailed, expected: "an executable at \(binary)", found: "none")
            }
            return binary
        }
        let path = ProcessInfo.processInfo.environment["PATH"] ?? "/usr/local/bin:/usr/bin:/bin"
        for directory in path.split(separator: ":") {
            let candidate = "\(directory)/\(binary)"
            if FileManager.default.isExecutableFile(atPath: candidate) {
                return candidate
            }
        }
        throw HypervisorError(
            .launchFailed,
            expected: "\(binary) in PATH",
            found: "no such executable",
            advice: "install it: scripts/install-deps.sh (Debian package qemu-system-x86)"
        )
    }

    static func tail(of path: String, lines: Int = 8) -> String {
        guard let data = FileManager.default.contents(atPath: path), !data.isEmpty else { return "(no stderr)" }
        return String(decoding: data, as: UTF8.self).split(separator: "\n").suffix(lines).joined(separator: " | ")
    }
}
