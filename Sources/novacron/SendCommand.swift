import ArgumentParser
import DWCPTransport
import Foundation
import NovaCronNode

/// `novacron send FILE|-… --to HOST:PORT`: one or more objects to a `novacron receive`, over one AMST
/// session.
struct SendCommand: AsyncParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "send",
        abstract: "Send files (or standard input) to a node running `novacron receive`.",
        discussion: """
            The objects cross one DWCP session: a control stream plus an adaptive number of TLS 1.3 \
            data streams that they share by weight (--weight). Chunks carry checksums, each object a \
            SHA-256 both sides compare; the receiver commits a file only when they match. Exit status 0 \
            means every object is there, verified.
            """
    )

    @Argument(help: "The files to send (- for standard input, at most once).")
    var sources: [String]

    @Option(
        help: """
            Each file's share of the streams while the files are sent together, in order (1…255, one per \
            file; default 1 each): with --weight 4 --weight 1 the first file gets 4/5 of the bytes until \
            it is done.
            """)
    var weight: [Int] = []

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

    @Option(
        help: """
            A fixed chunk size (4K...16M, e.g. 1M). Without it chunks follow the path: a quarter of one \
            stream's share of --window, 256K to 1M.
            """)
    var chunkSize: ByteCount?

    @Option(help: "Bytes read but unacknowledged at most: bounds memory on both sides (e.g. 64M).")
    var window = ByteCount(bytes: 64 << 20)

    @Option(help: "The link rate assumed for the initial stream count, in Mbit/s.")
    var linkRate: Double = 1000

    @Flag(help: "Continue an interrupted transfer of the same file from what the receiver already holds.")
    var resume = false

    @Option(
        help: """
            Encode files with HDE before sending: auto (zero, duplicate and store-held pages elided, zstd \
            level chosen per batch for the most bytes delivered per second), raw (no zstd), a zstd level \
            1…19, or none (plain bytes; the only mode that can --resume or send standard input). The \
            receiver decodes into a file; with --store it sends references to the pages it holds.
            """)
    var encode = EncodingMode.none

    @Option(
        help: """
            This node's chunk store (with --encode): the images it sends are kept there, and the next \
            transfer of a similar image to a receiver that holds one too is sent as deltas against it.
            """)
    var store: String?

    @Option(help: "The most bytes the chunk store keeps before evicting its oldest chunks (e.g. 16G).")
    var storeCapacity = ByteCount(bytes: 16 << 30)

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
        if let chunkSize, !(4096...(16 << 20)).contains(chunkSize.bytes) {
            throw ValidationError("--chunk-size must be 4K...16M, not \(chunkSize.bytes) bytes")
        }
        let smallestChunk = chunkSize?.bytes ?? ChunkSizer.adaptiveBlockSize
        guard window.bytes >= 2 * smallestChunk else {
            throw ValidationError("--window must hold at least two chunks of \(smallestChunk) bytes")
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
        if store != nil && encode == .none {
            throw ValidationError("--store needs --encode (auto, raw or a level)")
        }
        if let store { try requireParentDirectory(of: store, option: "--store") }
        if encode != .none {
            guard !sources.contains("-") else {
                throw ValidationError("--encode \(encode) needs files; send standard input with --encode none")
            }
            guard !resume else {
                throw ValidationError("an encoded transfer cannot resume; send again without --resume")
            }
        }
        guard reconnect >= 0 else {
            throw ValidationError("--reconnect must be 0 or more, not \(reconnect)")
        }
        guard !sources.isEmpty, sources.count < 65536 else {
            throw ValidationError("give 1 to 65535 files to send, not \(sources.count)")
        }
        guard sources.filter({ $0 == "-" }).count <= 1 else {
            throw ValidationError("standard input (-) can be sent only once")
        }
        for source in sources where source != "-" {
            guard FileManager.default.isReadableFile(atPath: source) else {
                throw ValidationError("cannot read \(source)")
            }
        }
        guard weight.isEmpty || weight.count == sources.count else {
            throw ValidationError("give one --weight per file (\(sources.count)), or none; got \(weight.count)")
        }
        if let bad = weight.first(where: { !(1...TransferObject.maximumWeight).contains($0) }) {
            throw ValidationError("--weight must be 1...\(TransferObject.maximumWeight), not \(bad)")
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
        configuration.chunkSize = chunkSize?.bytes
        configuration.windowBytes = window.bytes
        configuration.linkRateHint = linkRate * 1e6
        configuration.resume = resume
        configuration.reconnectAttempts = reconnect
        let printer = ProgressPrinter(json: options.json)
        let weights = weight.isEmpty ? Array(repeating: 1, count: sources.count) : weight
        let chunks = try store.map { try SharedChunkStore(directory: $0, capacity: storeCapacity.bytes) }
        defer {
            // The store holds its last writes in memory until it is synced or freed, and nothing guarantees it
            // is freed before this process exits (a task still closing a connection may hold it).
            do {
                try chunks?.sync()
            } catch {
                FileHandle.standardError.write(
                    Data("warning: the chunk store in \(store ?? "") could not be synced: \(error)\n".utf8))
            }
        }
        var producers: [ImageFileProducer] = []
        var objects: [TransferObject] = []
        for (source, weight) in zip(sources, weights) {
            if source == "-" {
                objects.append(TransferObject(.standardInput, weight: weight))
            } else if encode == .none {
                objects.append(TransferObject(.file(path: source), weight: weight))
            } else {
                let producer = try ImageFileProducer(
                    path: source, mode: encode, linkBytesPerSecond: linkRate * 1e6 / 8, store: chunks)
                producers.append(producer)
                objects.append(TransferObject(.producer(producer), weight: weight))
            }
        }
        let report = try await TransferClient.send(
            objects: objects,
            configuration: configuration,
            progress: { printer.show($0) },
            reconnecting: { printer.reconnecting($0) }
        )
        printer.done()
        let encoding = producers.map(\.currentReport)
        if options.json {
            printJSON(event: "done", report, extra: encoding.isEmpty ? [:] : ["encoding": encoding])
        } else {
            let seconds = max(report.seconds, 1e-9)
            FileHandle.standardError.write(
                Data(
                    """
                    sent \(ProgressPrinter.formatBytes(report.bytes)) in \(String(format: "%.2f", report.seconds)) s \
                    (\(String(format: "%.1f", Double(report.bytes - report.skippedBytes) * 8 / seconds / 1e6)) Mbit/s), \
                    up to \(report.maximumStreams) streams, \(report.streamFailures) stream failures, \
                    \(ProgressPrinter.formatBytes(report.skippedBytes)) resumed, \(report.reconnects) reconnects; \
                    \(report.objects.count == 1 ? "sha256 \(report.sha256)\(producers.isEmpty ? "" : " (of the encoded stream)")" : "\(report.objects.count) objects") \
                    verified by the receiver

                    """.utf8))
            for object in report.objects where report.objects.count > 1 {
                FileHandle.standardError.write(
                    Data(
                        """
                          \(object.name): \(ProgressPrinter.formatBytes(object.bytes)), weight \(object.weight), \
                        committed at \(String(format: "%.2f", object.seconds)) s, sha256 \(object.sha256)

                        """.utf8))
            }
            for (producer, encoded) in zip(producers, encoding) {
                let pages = encoded.pages.sorted { $0.key < $1.key }.map { "\($0.key) \($0.value)" }
                let levels = encoded.batchesByLevel.sorted { $0.key < $1.key }.map { "\($0.key) \($0.value)" }
                FileHandle.standardError.write(
                    Data(
                        """
                        \(producer.name): \(ProgressPrinter.formatBytes(encoded.imageBytes)) encoded into \
                        \(ProgressPrinter.formatBytes(encoded.encodedBytes)) \
                        (\(String(format: "%.2f", Double(encoded.imageBytes) / Double(max(encoded.encodedBytes, 1))))x, \
                        \(String(format: "%.2f", encoded.encodeSeconds)) s encoding, \
                        \(String(format: "%.2f", encoded.hashingSeconds)) s hashing); pages: \(pages.joined(separator: ", ")); \
                        batches by zstd level: \(levels.joined(separator: ", ")); the receiver \
                        \(encoded.receiverHasStore ? "held \(encoded.heldPages) of the \(encoded.queriedPages) distinct pages asked about" : "keeps no store")\
                        \(encoded.baseline.map { "; encoded against the image \($0) both nodes hold" } ?? "")

                        """.utf8))
            }
        }
    }
}
