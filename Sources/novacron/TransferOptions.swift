import ArgumentParser
import DWCPSecurity
import DWCPTransport
import Foundation
import NovaCronNode

/// Options `send` and `receive` share: identity, plaintext, output format.
struct TransferOptions: ParsableArguments {
    @Option(help: "Directory holding ca.pem and this node's NODE.pem / NODE-key.pem (`novacron certs`).")
    var certs = "var/certs"

    @Option(help: "This node's name: selects NODE.pem in --certs. Default: the host name.")
    var node: String?

    @Flag(
        help: """
            Turn TLS off. ONLY for measuring what TLS costs: anyone on the path can read and alter \
            the data. Both sides must say it.
            """
    )
    var insecurePlaintext = false

    @Flag(help: "Print progress and the result as JSON lines on standard output.")
    var json = false

    var nodeName: String { node ?? ProcessInfo.processInfo.hostName }

    func security() throws -> TransportSecurity {
        if insecurePlaintext {
            FileHandle.standardError.write(
                Data(
                    "WARNING: --insecure-plaintext: no TLS, no authentication; for measurements only.\n".utf8))
            return .insecurePlaintext
        }
        return .mutualTLS(
            try NodeIdentity(
                certificate: "\(certs)/\(nodeName).pem",
                key: "\(certs)/\(nodeName)-key.pem",
                authority: "\(certs)/ca.pem"
            ))
    }
}

/// `HOST:PORT`, with `[v6]:PORT` for IPv6.
struct Endpoint: ExpressibleByArgument, CustomStringConvertible {
    var host: String
    var port: Int

    init?(argument: String) {
        guard let colon = argument.lastIndex(of: ":"), let port = Int(argument[argument.index(after: colon)...]),
            (0...65535).contains(port)
        else { return nil }
        var host = String(argument[..<colon])
        if host.hasPrefix("[") && host.hasSuffix("]") { host = String(host.dropFirst().dropLast()) }
        guard !host.isEmpty else { return nil }
        self.host = host
        self.port = port
    }

    var description: String { "\(host):\(port)" }
    static var defaultCompletionKind: CompletionKind { .default }
}

/// A byte count with an optional K/M/G suffix (powers of 1024).
struct ByteCount: ExpressibleByArgument {
    var bytes: Int

    init(bytes: Int) {
        self.bytes = bytes
    }

    init?(argument: String) {
        let units: [Character: Int] = ["K": 1 << 10, "M": 1 << 20, "G": 1 << 30]
        var text = argument.uppercased()
        if text.hasSuffix("IB") { text.removeLast(2) } else if text.hasSuffix("B") { text.removeLast() }
        var multiplier = 1
        if let last = text.last, let unit = units[last] {
            multiplier = unit
            text.removeLast()
        }
        guard let value = Int(text), value >= 0 else { return nil }
        bytes = value * multiplier
    }

    /// The largest unit that divides it, as `--help` shows defaults: `64M`, `256K`, `1000`.
    var defaultValueDescription: String {
        for (suffix, shift) in [("G", 30), ("M", 20), ("K", 10)] where bytes > 0 && bytes % (1 << shift) == 0 {
            return "\(bytes >> shift)\(suffix)"
        }
        return "\(bytes)"
    }
}

/// Renders progress: a single rewritten line on a terminal, JSON lines with --json, nothing otherwise.
struct ProgressPrinter: Sendable {
    let json: Bool
    let isTerminal = isatty(STDERR_FILENO) == 1

    func show(_ progress: TransferProgress) {
        if json {
            printJSON(event: "progress", progress)
        } else if isTerminal {
            FileHandle.standardError.write(Data(("\r\u{1B}[K" + Self.line(progress)).utf8))
        }
    }

    func done() {
        if isTerminal && !json { FileHandle.standardError.write(Data("\n".utf8)) }
    }

    /// A broken session is about to be re-established: always said, on standard error (and as a JSON line).
    func reconnecting(_ notice: ReconnectNotice) {
        if json { printJSON(event: "reconnect", notice) }
        FileHandle.standardError.write(
            Data(
                """
                \(isTerminal && !json ? "\r\u{1B}[K" : "")session broke: \(notice.reason)
                reconnecting in \(String(format: "%.0f", notice.delaySeconds)) s (attempt \(notice.attempt) of \(notice.attempts)), \
                resuming from what the receiver holds

                """.utf8))
    }

    static func line(_ progress: TransferProgress) -> String {
        var parts = [formatBytes(progress.bytesDone)]
        if let total = progress.totalBytes, total > 0 {
            parts[0] += " / " + formatBytes(total)
            parts.append(String(format: "%3.0f%%", Double(progress.bytesDone) / Double(total) * 100))
            if progress.bytesPerSecond > 0 {
                parts.append(String(format: "ETA %.0fs", Double(total - progress.bytesDone) / progress.bytesPerSecond))
            }
        }
        parts.append(String(format: "%.1f Mbit/s", progress.bytesPerSecond * 8 / 1e6))
        parts.append("streams \(progress.streams)")
        if let rtt = progress.roundTripMilliseconds { parts.append(String(format: "rtt %.0f ms", rtt)) }
        if let retransmits = progress.retransmits { parts.append("retrans \(retransmits)") }
        return parts.joined(separator: "  ")
    }

    static func formatBytes(_ bytes: UInt64) -> String {
        let value = Double(bytes)
        if value >= Double(1 << 30) { return String(format: "%.2f GiB", value / Double(1 << 30)) }
        if value >= Double(1 << 20) { return String(format: "%.1f MiB", value / Double(1 << 20)) }
        return String(format: "%.0f KiB", value / 1024)
    }
}

/// Fails validation unless the directory `path` would be created in exists.
/// - Parameters:
///   - path: A file or directory to be created.
///   - option: The option that named it, for the message.
func requireParentDirectory(of path: String, option: String) throws {
    let parent = (path as NSString).deletingLastPathComponent
    var isDirectory: ObjCBool = false
    guard
        parent.isEmpty
            || (FileManager.default.fileExists(atPath: parent, isDirectory: &isDirectory) && isDirectory.boolValue)
    else {
        throw ValidationError("\(option) \(path): the directory \(parent) does not exist")
    }
}

/// Prints `{"event": EVENT, ...fields of value}` as one line;
/// `extra` adds fields (each an Encodable value) beside them.
func printJSON(event: String, _ value: some Encodable, extra: [String: any Encodable] = [:]) {
    let encoder = JSONEncoder()
    encoder.outputFormatting = [.sortedKeys]
    guard let data = try? encoder.encode(value),
        var object = (try? JSONSerialization.jsonObject(with: data)) as? [String: Any]
    else { return }
    for (key, field) in extra {
        if let data = try? encoder.encode(field), let decoded = try? JSONSerialization.jsonObject(with: data) {
            object[key] = decoded
        }
    }
    object["event"] = event
    guard let line = try? JSONSerialization.data(withJSONObject: object, options: [.sortedKeys]) else { return }
    FileHandle.standardOutput.write(line + Data("\n".utf8))
}

extension EncodingMode: ExpressibleByArgument {
    /// Parses `--encode`'s argument (see ``EncodingMode/init(_:)``).
    public init?(argument: String) {
        self.init(argument)
    }

    /// The values `--help` lists.
    public static var allValueStrings: [String] { ["auto", "none", "raw", "1", "3", "9", "19"] }
}
