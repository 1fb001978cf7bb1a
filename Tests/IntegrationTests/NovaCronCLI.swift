import Foundation
import Testing

/// Runs the built `novacron` executable and captures what it printed.
struct NovaCronCLI {
    struct Result {
        var status: Int32
        var standardOutput: String
        var standardError: String
    }

    /// The executable: `NOVACRON_BINARY` if set, else `novacron` beside the test bundle (SwiftPM builds it there).
    static var executable: URL {
        if let path = ProcessInfo.processInfo.environment["NOVACRON_BINARY"] {
            return URL(fileURLWithPath: path)
        }
        let bundle = URL(fileURLWithPath: CommandLine.arguments[0]).deletingLastPathComponent()
        return bundle.appendingPathComponent("novacron")
    }

    /// Runs `novacron` with `arguments` to completion. Output goes through temporary files, so a chatty
    /// child can never block on a full pipe.
    static func run(_ arguments: [String], sourceLocation: SourceLocation = #_sourceLocation) throws -> Result {
        let child = try launch(arguments, sourceLocation: sourceLocation)
        child.process.waitUntilExit()
        return try child.result()
    }

    /// Runs another program (`mount`, …) to completion.
    static func runTool(_ path: String, _ arguments: [String]) throws -> Result {
        let child = try launch(arguments, executable: URL(fileURLWithPath: path))
        child.process.waitUntilExit()
        return try child.result()
    }

    /// Runs another program to completion without blocking a concurrency-pool thread.
    static func runToolAsync(_ path: String, _ arguments: [String]) async throws -> Result {
        let child = try launch(arguments, executable: URL(fileURLWithPath: path))
        await waitForExit(child.process)
        return try child.result()
    }

    /// Like ``run(_:sourceLocation:)``, but waits without blocking a thread of the concurrency pool
    /// (tests that run servers in this process need those threads while the child runs).
    static func runAsync(
        _ arguments: [String],
        sourceLocation: SourceLocation = #_sourceLocation
    ) async throws -> Result {
        let child = try launch(arguments, sourceLocation: sourceLocation)
        await waitForExit(child.process)
        return try child.result()
    }

    /// Waits for `process` to end by polling, never blocking a concurrency-pool thread. Cancelled (a test over its
    /// time limit), it ends the process instead of polling on without pause.
    static func waitForExit(_ process: Process) async {
        while process.isRunning {
            do {
                try await Task.sleep(for: .milliseconds(20))
            } catch {
                process.terminate()
                for _ in 0..<100 where process.isRunning { usleep(50_000) }
                if process.isRunning { kill(process.processIdentifier, SIGKILL) }
                process.waitUntilExit()
                return
            }
        }
    }

    /// A started child and the files its output goes to.
    private struct Child {
        let process: Process
        let directory: TemporaryDirectory
        let outputURL: URL
        let errorURL: URL

        func result() throws -> Result {
            Result(
                status: process.terminationStatus,
                standardOutput: try String(contentsOf: outputURL, encoding: .utf8),
                standardError: try String(contentsOf: errorURL, encoding: .utf8)
            )
        }
    }

    private static func launch(_ arguments: [String], sourceLocation: SourceLocation) throws -> Child {
        let executable = Self.executable
        try #require(
            FileManager.default.isExecutableFile(atPath: executable.path),
            "novacron not found at \(executable.path); build it first or set NOVACRON_BINARY",
            sourceLocation: sourceLocation
        )
        return try launch(arguments, executable: executable)
    }

    private static func launch(_ arguments: [String], executable: URL) throws -> Child {
        let directory = try TemporaryDirectory()
        let outputURL = directory.url.appendingPathComponent("stdout")
        let errorURL = directory.url.appendingPathComponent("stderr")
        try Data().write(to: outputURL)
        try Data().write(to: errorURL)
        let process = Process()
        process.executableURL = executable
        process.arguments = arguments
        process.standardOutput = try FileHandle(forWritingTo: outputURL)
        process.standardError = try FileHandle(forWritingTo: errorURL)
        try process.run()
        return Child(process: process, directory: directory, outputURL: outputURL, errorURL: errorURL)
    }
}

/// A directory under the system's temporary folder, removed when the value is released.
final class TemporaryDirectory {
    let url: URL

    init() throws {
        url = FileManager.default.temporaryDirectory.appendingPathComponent("novacron-test-\(UUID().uuidString)")
        try FileManager.default.createDirectory(at: url, withIntermediateDirectories: true)
    }

    deinit {
        try? FileManager.default.removeItem(at: url)
    }
}
