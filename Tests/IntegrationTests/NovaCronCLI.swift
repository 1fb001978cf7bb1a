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
        let executable = Self.executable
        try #require(
            FileManager.default.isExecutableFile(atPath: executable.path),
            "novacron not found at \(executable.path); build it first or set NOVACRON_BINARY",
            sourceLocation: sourceLocation
        )
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
        process.waitUntilExit()
        return Result(
            status: process.terminationStatus,
            standardOutput: try String(contentsOf: outputURL, encoding: .utf8),
            standardError: try String(contentsOf: errorURL, encoding: .utf8)
        )
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
