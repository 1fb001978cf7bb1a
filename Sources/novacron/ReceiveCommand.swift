import ArgumentParser
import DWCPTransport
import Foundation
import NovaCronNode

/// `novacron receive --listen HOST:PORT --out DIR|FILE|-`: waits for one `novacron send`.
struct ReceiveCommand: AsyncParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "receive",
        abstract: "Receive one session from `novacron send`, verify each object's SHA-256, and commit it.",
        discussion: """
            A session carries one object, or several (they need --out DIR). \
            Until an object is complete and verified it is NAME.novacron-partial, with its chunk \
            journal NAME.novacron-journal beside it; a sender that comes back with --resume continues \
            from there. A sender that vanishes does not end the receiver: it keeps listening. \
            An object sent with --encode is decoded into its file as it arrives; with --store DIR every \
            page received is kept in a content-addressed chunk store there, and the next sender refers \
            to the pages the store holds instead of sending them.
            """
    )

    @Option(help: "The address and port to listen on, HOST:PORT.")
    var listen: Endpoint

    @Option(help: "Where to put the object: a file, an existing directory (keeps the sender's name), or -.")
    var out: String

    @OptionGroup var options: TransferOptions

    @Flag(help: "Replace an existing file.")
    var overwrite = false

    @Option(
        help: """
            Reorder window: how far ahead of the first missing chunk data is accepted (e.g. 64M). Standard \
            output holds that much in memory; a file spans 4 times it on disk; an encoded object 4 times \
            it in memory.
            """)
    var window = ByteCount(bytes: 64 << 20)

    @Option(help: "A chunk store directory (created if missing) kept across transfers of encoded objects.")
    var store: String?

    @Option(help: "The most bytes the chunk store keeps before evicting its oldest chunks (e.g. 16G).")
    var storeCapacity = ByteCount(bytes: 16 << 30)

    func validate() throws {
        guard window.bytes >= 1 << 20 else { throw ValidationError("--window must be at least 1M") }
        guard storeCapacity.bytes >= 256 << 20 else { throw ValidationError("--store-capacity must be at least 256M") }
        if let store { try requireParentDirectory(of: store, option: "--store") }
        if out != "-" { try requireParentDirectory(of: out, option: "--out") }
    }

    func run() async throws {
        var configuration = ReceiveConfiguration(
            host: listen.host,
            port: listen.port,
            security: try options.security(),
            nodeName: options.nodeName,
            destination: out == "-" ? .standardOutput : .path(out)
        )
        configuration.overwrite = overwrite
        configuration.windowBytes = window.bytes
        let chunks = try store.map { try SharedChunkStore(directory: $0, capacity: storeCapacity.bytes) }
        configuration.consumers = ImageConsumerFactory(store: chunks)
        let printer = ProgressPrinter(json: options.json && out != "-")
        let json = options.json
        let host = listen.host
        let report = try await TransferServer.receive(
            configuration: configuration,
            onListening: { port in
                FileHandle.standardError.write(Data("listening on \(host):\(port)\n".utf8))
            },
            progress: { printer.show($0) }
        )
        printer.done()
        if json && out != "-" {
            printJSON(event: "done", report)
        } else {
            FileHandle.standardError.write(
                Data(
                    """
                    received \(ProgressPrinter.formatBytes(report.bytes)) from \(report.peer) into \
                    \(report.objects.count == 1 ? report.path ?? "standard output" : "\(report.objects.count) files") \
                    in \(String(format: "%.2f", report.seconds)) s \
                    (\(ProgressPrinter.formatBytes(report.resumedBytes)) resumed, \(report.corruptChunks) corrupt chunks re-sent); \
                    \(report.objects.count == 1 ? "sha256 \(report.sha256)\(report.objects[0].decoded ? " (of the encoded stream, \(ProgressPrinter.formatBytes(report.objects[0].receivedBytes)))" : "")" : "every SHA-256") verified

                    """.utf8))
            for object in report.objects where report.objects.count > 1 {
                FileHandle.standardError.write(
                    Data(
                        "  \(object.path ?? object.name): \(ProgressPrinter.formatBytes(object.bytes)), sha256 \(object.sha256)\n"
                            .utf8))
            }
        }
    }
}
