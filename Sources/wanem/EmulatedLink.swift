import Foundation
import Glibc
import WANEmulation

/// The Swift API for tests and benchmarks: a running `wanem up` process and what can be done with it.
///
/// ```swift
/// let link = try EmulatedLink.start(name: "t1", parameters: LinkProfile.continental.parameters)
/// defer { link.tearDown() }
/// let ping = try link.run(side: .a, ["ping", "-c", "10", link.address(of: .b)])
/// let counters = try link.counters()
/// ```
/// Every call that fails leaves nothing behind once ``tearDown()`` ran (it is also safe to call twice).
final class EmulatedLink {
    /// The link's name (namespaces NAME-a and NAME-b).
    let name: String
    /// The pid of the `wanem up` process.
    let pid: pid_t
    /// The `wanem` executable that runs the link.
    let executable: String
    /// Where the final counters are written when the link goes down.
    let reportPath: String
    /// The `wanem up` process's standard output and error.
    let logPath: String
    private var exitStatus: Int32?
    private let names: LinkNames

    private init(name: String, pid: pid_t, executable: String, reportPath: String, logPath: String) throws {
        self.name = name
        self.pid = pid
        self.executable = executable
        self.reportPath = reportPath
        self.logPath = logPath
        names = try LinkNames(name)
    }

    /// This process's executable (the `wanem` binary when called from it).
    static var currentExecutable: String {
        (try? FileManager.default.destinationOfSymbolicLink(atPath: "/proc/self/exe")) ?? CommandLine.arguments[0]
    }

    /// Starts `wanem up` and waits until both namespaces are wired.
    /// - Parameters:
    ///   - name: Link name.
    ///   - parameters: The link.
    ///   - tracePaths: Trace files for the directions whose `parameters` carry a trace.
    ///   - executable: The `wanem` binary.
    ///   - duration: A bound after which the link stops by itself (seconds).
    ///   - readyTimeout: How long to wait for the link to come up.
    /// - Throws: ``ShellError`` when the process exits or does not become ready in time (everything it created is
    ///   removed first).
    static func start(
        name: String,
        parameters: LinkParameters,
        tracePaths: (up: String?, down: String?) = (nil, nil),
        executable: String = currentExecutable,
        duration: Double? = 600,
        readyTimeout: Double = 15
    ) throws -> EmulatedLink {
        let names = try LinkNames(name)
        let reportPath = Subprocess.temporaryPath("report.json")
        let logPath = Subprocess.temporaryPath("log")
        var arguments = [executable, "up", "--name", name, "--report", reportPath]
        arguments += LinkOptions.arguments(for: parameters, tracePaths: tracePaths)
        if let duration { arguments += ["--duration", "\(duration)"] }
        let logFD = open(logPath, O_CREAT | O_TRUNC | O_WRONLY | O_CLOEXEC, 0o600)
        defer { close(logFD) }
        let pid = try Subprocess.spawn(arguments, standardOutput: logFD, standardError: logFD)
        let link = try EmulatedLink(
            name: name, pid: pid, executable: executable, reportPath: reportPath, logPath: logPath)
        let deadline = monotonicNanoseconds() + UInt64(readyTimeout * 1e9)
        // The ready file names the pid that wrote it: a leftover of a killed run does not count.
        func isReady() -> Bool {
            let text = (try? String(contentsOfFile: names.readyFile, encoding: .utf8)) ?? ""
            return pid_t(text.trimmingCharacters(in: .whitespacesAndNewlines)) == pid
        }
        while !isReady() {
            if let status = Subprocess.poll(pid) {
                link.exitStatus = status
                let log = (try? String(contentsOfFile: logPath, encoding: .utf8)) ?? ""
                link.tearDown()
                throw ShellError(step: "wanem up \(name)", reason: "exited with \(status): \(log)")
            }
            if monotonicNanoseconds() > deadline {
                link.tearDown()
                throw ShellError(step: "wanem up \(name)", reason: "not ready after \(readyTimeout) s")
            }
            sleepMilliseconds(20)
        }
        return link
    }

    /// The address of a side.
    func address(of side: Side) -> String {
        LinkNames.address(side: side)
    }

    /// The network namespace of a side.
    func namespace(of side: Side) -> String {
        names.namespace(side: side)
    }

    /// Runs a command inside a side and waits for it (killed after `timeoutSeconds`).
    func run(side: Side, _ command: [String], timeoutSeconds: Double = 120) throws -> CommandResult {
        try Subprocess.run(
            ["ip", "netns", "exec", names.namespace(side: side)] + command, timeoutSeconds: timeoutSeconds)
    }

    /// Starts a command inside a side without waiting (its output goes to `logPath` or nowhere).
    func spawn(side: Side, _ command: [String], logPath: String? = nil) throws -> pid_t {
        let output = open(logPath ?? "/dev/null", O_CREAT | O_TRUNC | O_WRONLY | O_CLOEXEC, 0o600)
        guard output >= 0 else { throw ShellError(step: "spawn in \(side)", reason: "cannot open \(logPath ?? "")") }
        defer { close(output) }
        return try Subprocess.spawn(
            ["ip", "netns", "exec", names.namespace(side: side)] + command,
            standardOutput: output, standardError: output, newProcessGroup: true)
    }

    /// The live counters (the status file `wanem up` rewrites every 0.5 s).
    func counters() throws -> [String: Any] {
        let data = try Data(contentsOf: URL(fileURLWithPath: names.statusFile))
        return try JSONSerialization.jsonObject(with: data) as? [String: Any] ?? [:]
    }

    /// Whether the `wanem up` process still runs.
    var isRunning: Bool {
        if exitStatus != nil { return false }
        if let status = Subprocess.poll(pid) {
            exitStatus = status
            return false
        }
        return true
    }

    /// Stops the link with SIGTERM (as an operator would) and returns its final counters.
    func stop(timeoutSeconds: Double = 10) throws -> [String: Any] {
        if isRunning {
            kill(pid, SIGTERM)
            let deadline = monotonicNanoseconds() + UInt64(timeoutSeconds * 1e9)
            while isRunning, monotonicNanoseconds() < deadline { sleepMilliseconds(10) }
            if isRunning { kill(pid, SIGKILL) }
            _ = isRunning
        }
        tearDown()
        let data = try Data(contentsOf: URL(fileURLWithPath: reportPath))
        return try JSONSerialization.jsonObject(with: data) as? [String: Any] ?? [:]
    }

    /// Kills the `wanem up` process with SIGKILL, leaving its namespaces behind (to test recovery).
    func killForcibly() {
        if isRunning {
            kill(pid, SIGKILL)
            exitStatus = Subprocess.wait(for: pid)
        }
    }

    /// Stops the process if needed and removes everything of the link (as `wanem down` does).
    func tearDown() {
        if isRunning {
            kill(pid, SIGTERM)
            let deadline = monotonicNanoseconds() + 5_000_000_000
            while isRunning, monotonicNanoseconds() < deadline { sleepMilliseconds(10) }
            if isRunning {
                kill(pid, SIGKILL)
                exitStatus = Subprocess.wait(for: pid)
            }
        }
        Topology.remove(names)
        unlink(logPath)
    }

    /// Runs `wanem down --name NAME` with the given executable.
    static func down(name: String, executable: String = currentExecutable) throws -> CommandResult {
        try Subprocess.run([executable, "down", "--name", name], timeoutSeconds: 30)
    }
}
