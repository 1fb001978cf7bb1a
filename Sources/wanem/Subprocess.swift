import Foundation
import Glibc

/// The result of a finished command.
struct CommandResult: Sendable {
    /// The exit status (128 + signal number when killed by a signal).
    var status: Int32
    /// Everything the command wrote to standard output.
    var output: String
    /// Everything the command wrote to standard error.
    var errorOutput: String

    var succeeded: Bool { status == 0 }
}

/// An error from the shell: which step failed and why, with what to do about it.
struct ShellError: Error, CustomStringConvertible {
    var step: String
    var reason: String

    var description: String { "\(step): \(reason)" }
}

/// Starts processes with posix_spawn and a clean signal state (the forwarder blocks SIGINT/SIGTERM, and children
/// must not inherit that).
enum Subprocess {
    /// Spawns `arguments[0]` (looked up in PATH) with its standard streams redirected to the given descriptors.
    /// - Returns: The child's pid.
    static func spawn(
        _ arguments: [String],
        standardInput: Int32? = nil,
        standardOutput: Int32? = nil,
        standardError: Int32? = nil,
        newProcessGroup: Bool = false
    ) throws -> pid_t {
        precondition(!arguments.isEmpty, "spawn needs a program")
        var attributes = posix_spawnattr_t()
        posix_spawnattr_init(&attributes)
        defer { posix_spawnattr_destroy(&attributes) }
        var emptySet = sigset_t()
        sigemptyset(&emptySet)
        var defaultSet = sigset_t()
        sigemptyset(&defaultSet)
        for signal in [SIGINT, SIGTERM, SIGHUP, SIGPIPE, SIGCHLD] { sigaddset(&defaultSet, signal) }
        posix_spawnattr_setsigmask(&attributes, &emptySet)
        posix_spawnattr_setsigdefault(&attributes, &defaultSet)
        // Children run under the ordinary scheduler even when the forwarder runs SCHED_FIFO.
        var schedule = sched_param()
        schedule.sched_priority = 0
        posix_spawnattr_setschedpolicy(&attributes, SCHED_OTHER)
        posix_spawnattr_setschedparam(&attributes, &schedule)
        var flags = Int32(POSIX_SPAWN_SETSIGMASK | POSIX_SPAWN_SETSIGDEF | POSIX_SPAWN_SETSCHEDULER)
        if newProcessGroup {
            flags |= Int32(POSIX_SPAWN_SETPGROUP)
            posix_spawnattr_setpgroup(&attributes, 0)
        }
        posix_spawnattr_setflags(&attributes, Int16(flags))

        var actions = posix_spawn_file_actions_t()
        posix_spawn_file_actions_init(&actions)
        defer { posix_spawn_file_actions_destroy(&actions) }
        let devNull = "/dev/null"
        if let standardInput {
            posix_spawn_file_actions_adddup2(&actions, standardInput, 0)
        } else {
            posix_spawn_file_actions_addopen(&actions, 0, devNull, O_RDONLY, 0)
        }
        if let standardOutput { posix_spawn_file_actions_adddup2(&actions, standardOutput, 1) }
        if let standardError { posix_spawn_file_actions_adddup2(&actions, standardError, 2) }

        var cArguments: [UnsafeMutablePointer<CChar>?] = arguments.map { strdup($0) }
        cArguments.append(nil)
        defer { for pointer in cArguments { free(pointer) } }
        var pid: pid_t = 0
        let status = posix_spawnp(&pid, arguments[0], &actions, &attributes, cArguments, environ)
        guard status == 0 else {
            throw ShellError(step: "start \(arguments[0])", reason: String(cString: strerror(status)))
        }
        return pid
    }

    /// Runs a command to completion, capturing its output.
    static func run(_ arguments: [String]) throws -> CommandResult {
        let outputPath = temporaryPath("out")
        let errorPath = temporaryPath("err")
        defer {
            unlink(outputPath)
            unlink(errorPath)
        }
        let outputFD = open(outputPath, O_CREAT | O_TRUNC | O_WRONLY | O_CLOEXEC, 0o600)
        let errorFD = open(errorPath, O_CREAT | O_TRUNC | O_WRONLY | O_CLOEXEC, 0o600)
        guard outputFD >= 0, errorFD >= 0 else {
            throw ShellError(step: "run \(arguments[0])", reason: "cannot create temporary files in /tmp")
        }
        let pid: pid_t
        do {
            pid = try spawn(arguments, standardOutput: outputFD, standardError: errorFD)
        } catch {
            close(outputFD)
            close(errorFD)
            throw error
        }
        close(outputFD)
        close(errorFD)
        let status = wait(for: pid)
        let output = (try? String(contentsOfFile: outputPath, encoding: .utf8)) ?? ""
        let errorOutput = (try? String(contentsOfFile: errorPath, encoding: .utf8)) ?? ""
        return CommandResult(status: status, output: output, errorOutput: errorOutput)
    }

    /// Runs a command to completion or until `timeoutSeconds` pass (then it is killed and the status is 137).
    static func run(_ arguments: [String], timeoutSeconds: Double) throws -> CommandResult {
        let outputPath = temporaryPath("out")
        let errorPath = temporaryPath("err")
        defer {
            unlink(outputPath)
            unlink(errorPath)
        }
        let outputFD = open(outputPath, O_CREAT | O_TRUNC | O_WRONLY | O_CLOEXEC, 0o600)
        let errorFD = open(errorPath, O_CREAT | O_TRUNC | O_WRONLY | O_CLOEXEC, 0o600)
        defer {
            close(outputFD)
            close(errorFD)
        }
        let pid = try spawn(arguments, standardOutput: outputFD, standardError: errorFD, newProcessGroup: true)
        let deadline = monotonicNanoseconds() + UInt64(timeoutSeconds * 1e9)
        var status: Int32? = nil
        while status == nil {
            status = poll(pid)
            if status == nil {
                if monotonicNanoseconds() > deadline {
                    kill(-pid, SIGKILL)
                    status = wait(for: pid)
                } else {
                    sleepMilliseconds(10)
                }
            }
        }
        let output = (try? String(contentsOfFile: outputPath, encoding: .utf8)) ?? ""
        let errorOutput = (try? String(contentsOfFile: errorPath, encoding: .utf8)) ?? ""
        return CommandResult(status: status ?? -1, output: output, errorOutput: errorOutput)
    }

    /// Runs a command and throws when it fails.
    @discardableResult
    static func check(_ arguments: [String], step: String? = nil) throws -> String {
        let result = try run(arguments)
        guard result.succeeded else {
            throw ShellError(
                step: step ?? arguments.joined(separator: " "),
                reason: "exit \(result.status): \(result.errorOutput.trimmingCharacters(in: .whitespacesAndNewlines))")
        }
        return result.output
    }

    /// Waits for a child and returns its exit status (128 + signal when killed).
    static func wait(for pid: pid_t) -> Int32 {
        var status: Int32 = 0
        while waitpid(pid, &status, 0) < 0 {
            if errno != EINTR { return -1 }
        }
        return exitStatus(status)
    }

    /// Returns the child's exit status if it has exited, without blocking.
    static func poll(_ pid: pid_t) -> Int32? {
        var status: Int32 = 0
        let result = waitpid(pid, &status, WNOHANG)
        return result == pid ? exitStatus(status) : nil
    }

    private static func exitStatus(_ status: Int32) -> Int32 {
        let signal = status & 0x7f
        return signal == 0 ? (status >> 8) & 0xff : 128 + signal
    }

    static func temporaryPath(_ suffix: String) -> String {
        let random = UInt64.random(in: 0...UInt64.max)
        return "/tmp/wanem-\(getpid())-\(String(random, radix: 16)).\(suffix)"
    }
}

/// Monotonic time in nanoseconds.
func monotonicNanoseconds() -> UInt64 {
    var now = timespec()
    clock_gettime(CLOCK_MONOTONIC, &now)
    return UInt64(now.tv_sec) * 1_000_000_000 + UInt64(now.tv_nsec)
}

/// Sleeps without involving the forwarder's logic (used only by command-line helpers, never by the engine).
func sleepMilliseconds(_ milliseconds: Int) {
    var request = timespec(tv_sec: milliseconds / 1000, tv_nsec: (milliseconds % 1000) * 1_000_000)
    var remaining = timespec()
    while nanosleep(&request, &remaining) != 0 && errno == EINTR { request = remaining }
}
