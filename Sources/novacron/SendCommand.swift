import ArgumentParser
import DWCPTransport
import Foundation

/// `novacron send FILE|- --to HOST:PORT`: one object to a `novacron receive`, over AMST.
struct SendCommand: AsyncParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "send",
        abstract: "Send a file (or standard input) to a node running `novacron receive`.",
        discussion: """
            The object crosses a DWCP session: a control stream plus an adaptive number of TLS 1.3 \
            data streams. Chunks carry checksums, the whole object a SHA-256 both sides compare; the \
            receiver commits the file only when they match. Exit status 0 means it is there, verified.
            """
    )

    @Argument(help: "The file to send, or - for standard input.")
    var source: String

    @Option(help: "The receiver, HOST:PORT.")
    var to: Endpoint

    @OptionGroup var options: TransferOptions

    @Option(help: "The name the receiver's certificate must carry. Default: the address dialled (an IP SAN).")
    var serverName: String?

    @Option(help: "The fewest data streams.")
    var minStreams = 2

    @Option(help: "The most data streams.")
    var maxStreams = 16

    @Option(help: "Use exactly this many data streams (no adaptation).")
    var streams: Int?

    @Option(
        help: """
            TCP congestion control of the data streams: bbr, cubic, … Default: bbr where the kernel allows \
            it (on lossy long links it is many times faster than cubic), else the system's.
            """)
    var cc: String?

    @Option(help: "Cap the sending rate, in Mbit/s.")
    var rateLimit: Double?

    @Option(help: "Chunk size (e.g. 1M, 256K).")
    var chunkSize = ByteCount(bytes: 1 << 20)

    @Option(help: "Bytes read but unacknowledged at most: bounds memory on both sides (e.g. 64M).")
    var window = ByteCount(bytes: 64 << 20)

    @Option(help: "The link rate assumed for the initial stream count, in Mbit/s.")
    var linkRate: Double = 1000

    @Flag(help: "Continue an interrupted transfer of the same file from what the receiver already holds.")
    var resume = false

    @Option(
        help: """
            Re-establish a broken session this many times (1 s back-off, doubling), resuming from what the \
            receiver holds. Files only; 0 turns it off.
            """)
    var reconnect = 5

    func validate() throws {
        guard minStreams >= 1, maxStreams >= minStreams, maxStreams <= 256 else {
            throw ValidationError(
                "need 1 <= --min-streams <= --max-streams <= 256, got \(minStreams) and \(maxStreams)")
        }
        if let streams, !(1...256).contains(streams) {
            throw ValidationError("--streams must be in 1...256, not \(streams)")
        }
        if let rateLimit, rateLimit <= 0 {
            throw ValidationError("--rate-limit must be positive (Mbit/s), not \(rateLimit)")
        }
        guard (4096...(16 << 20)).contains(chunkSize.bytes) else {
            throw ValidationError("--chunk-size must be 4K...16M, not \(chunkSize.bytes) bytes")
        }
        guard window.bytes >= 2 * chunkSize.bytes else {
            throw ValidationError("--window must hold at least two chunks")
        }
        if let cc {
            let available =
                (try? String(contentsOfFile: "/proc/sys/net/ipv4/tcp_available_congestion_control", encoding: .utf8))?
                .split(whereSeparator: \.isWhitespace).map(String.init) ?? []
            guard available.isEmpty || available.contains(cc) else {
                throw ValidationError(
                    "--cc \(cc) is not available here; this kernel offers: \(available.joined(separator: ", "))")
            }
        }
        guard reconnect >= 0 else {
            throw ValidationError("--reconnect must be 0 or more, not \(reconnect)")
        }
        guard source == "-" || FileManager.default.isReadableFile(atPath: source) else {
            throw ValidationError("cannot read \(source)")
        }
    }

    func run() async throws {
        var configuration = SendConfiguration(
            host: to.host, port: to.port, security: try options.security(), nodeName: options.nodeName)
        configuration.serverName = serverName
        configuration.minimumStreams = streams ?? minStreams
        configuration.maximumStreams = streams ?? maxStreams
        configuration.initialStreams = streams
        configuration.congestionControl = cc
        configuration.rateLimit = rateLimit.map { $0 * 1e6 / 8 }
        configuration.chunkSize = chunkSize.bytes
        configuration.windowBytes = window.bytes
        configuration.linkRateHint = linkRate * 1e6
        configuration.resume = resume
        configuration.reconnectAttempts = reconnect
        let printer = ProgressPrinter(json: options.json)
        let report = try await TransferClient.send(
            source == "-" ? .standardInput : .file(path: source),
            configuration: configuration,
            progress: { printer.show($0) },
            reconnecting: { printer.reconnecting($0) }
        )
        printer.done()
        if options.json {
            printJSON(event: "done", report)
        } else {
            let seconds = max(report.seconds, 1e-9)
            FileHandle.standardError.write(
                Data(
                    """
                    sent \(ProgressPrinter.formatBytes(report.bytes)) in \(String(format: "%.2f", report.seconds)) s \
                    (\(String(format: "%.1f", Double(report.bytes - report.skippedBytes) * 8 / seconds / 1e6)) Mbit/s), \
                    up to \(report.maximumStreams) streams, \(report.streamFailures) stream failures, \
                    \(ProgressPrinter.formatBytes(report.skippedBytes)) resumed, \(report.reconnects) reconnects; sha256 \(report.sha256) verified by the receiver

                    """.utf8))
        }
    }
}
