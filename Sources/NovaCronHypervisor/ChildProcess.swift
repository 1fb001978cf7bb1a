import CNovaCronSystem
import Foundation

#if canImport(Glibc)
    import Glibc
#endif

/// Starts child processes with a clean signal state and reaps them on a dedicated thread.
///
/// Foundation's `Process` starts children from whatever thread calls it; a Dispatch worker thread
/// blocks most signals, the child inherits that mask, and QEMU — which handles SIGTERM with a plain
/// handler — then never sees SIGTERM. `novacron_spawn` resets the mask and dispositions.
enum ChildProcess {
    /// Starts `path` with `arguments`; its exit is recorded in `exitMonitor`.
    /// - Returns: The child's pid.
    /// - Throws: ``HypervisorError/Code/launchFailed``.
    static func spawn(
        path: String,
        arguments: [String],
        standardInput: CInt,
        standardOutput: CInt,
        standardError: CInt,
        exitMonitor: ExitMonitor
    ) throws -> pid_t {
        var argv: [UnsafeMutablePointer<CChar>?] = ([path] + arguments).map { strdup($0) } + [nil]
        defer {
            for pointer in argv {
                free(pointer)
            }
        }
        var pid: pid_t = 0
        let result = novacron_spawn(path, &argv, standardInput, standardOutput, standardError, &pid)
        guard result == 0 else {
            throw HypervisorError(
                .launchFailed,
                expected: "to start \(path)",
                found: "posix_spawn failed: \(String(cString: strerror(result)))"
            )
        }
        let child = pid
        let reaper = Thread {
            var status: Int32 = 0
            while waitpid(child, &status, 0) < 0 {
                guard errno == EINTR else {
                    exitMonitor.record(ExitMonitor.Exit(status: -1, wasSignaled: false))
                    return
                }
            }
            // WIFSIGNALED / WTERMSIG / WEXITSTATUS, which Swift cannot call (they are macros).
            let signal = status & 0x7F
            exitMonitor.record(
                signal == 0
                    ? ExitMonitor.Exit(status: (status >> 8) & 0xFF, wasSignaled: false)
                    : ExitMonitor.Exit(status: signal, wasSignaled: true)
            )
        }
        reaper.name = "novacron-reaper-\(child)"
        reaper.start()
        return pid
    }
}
