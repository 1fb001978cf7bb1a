import DWCPSecurity
import Foundation
import Synchronization
import Testing

@testable import DWCPTransport

/// Real transfers over TLS on 127.0.0.1, in this process.
@Suite("Transfers over loopback TLS", .serialized, .timeLimit(.minutes(2)))
struct LoopbackTransferTests {
    static let authority = try! ClusterAuthority.create(name: "transport-test")
    static let receiverIdentity = try! authority.issue(node: "receiver", ipAddresses: ["127.0.0.1"])
    static let senderIdentity = try! authority.issue(node: "sender")

    /// A scratch directory with a random source file of `size` bytes.
    struct Scratch {
        let directory: String
        let source: String
        let bytes: Data

        init(size: Int) throws {
            directory =
                FileManager.default.temporaryDirectory
                .appendingPathComponent("nctransport-\(UUID().uuidString)").path
            try FileManager.default.createDirectory(atPath: directory + "/out", withIntermediateDirectories: true)
            bytes = FileHandle(forReadingAtPath: "/dev/urandom")!.readData(ofLength: size)
            source = directory + "/source.bin"
            try bytes.write(to: URL(fileURLWithPath: source))
        }

        var destination: String { directory + "/out/source.bin" }
        func remove() { try? FileManager.default.removeItem(atPath: directory) }
    }

    /// Starts a receiver for `scratch` and returns its task and port.
    static func startReceiver(
        _ scratch: Scratch,
        security: TransportSecurity = .mutualTLS(receiverIdentity),
        helloTimeout: Duration = .seconds(60)
    ) async -> (Task<ReceiveReport, any Error>, Int) {
        let (ports, portSink) = AsyncStream.makeStream(of: Int.self)
        var configuration = ReceiveConfiguration(
            host: "127.0.0.1", port: 0, security: security, nodeName: "receiver",
            destination: .path(scratch.directory + "/out"))
        configuration.windowBytes = 8 << 20
        configuration.helloTimeout = helloTimeout
        let task = Task {
            try await TransferServer.receive(configuration: configuration, onListening: { portSink.yield($0) })
        }
        var iterator = ports.makeAsyncIterator()
        return (task, await iterator.next()!)
    }

    /// Four streams and an 8 MiB window; with `adaptive`, chunks follow the path (and a 64 MiB window
    /// leaves room for chunks of several blocks), else fixed chunks of 256 KiB.
    static func sendConfiguration(
        port: Int,
        identity: NodeIdentity = senderIdentity,
        adaptive: Bool = false
    ) -> SendConfiguration {
        var configuration = SendConfiguration(
            host: "127.0.0.1", port: port, security: .mutualTLS(identity), nodeName: "sender")
        configuration.chunkSize = adaptive ? nil : 256 << 10
        configuration.windowBytes = adaptive ? 64 << 20 : 8 << 20
        configuration.initialStreams = 4
        configuration.minimumStreams = 4
        configuration.maximumStreams = 4
        return configuration
    }

    @Test(
        "A file arrives whole, byte for byte, with matching SHA-256 on both sides, in fixed or adaptive chunks",
        arguments: [0, 1, 20_000_037], [false, true])
    func sendReceive(size: Int, adaptive: Bool) async throws {
        let scratch = try Scratch(size: size)
        defer { scratch.remove() }
        let (receiver, port) = await Self.startReceiver(scratch)
        let sent = try await TransferClient.send(
            .file(path: scratch.source), configuration: Self.sendConfiguration(port: port, adaptive: adaptive))
        if adaptive && size > 1 << 20 {
            // 64 MiB over 4 streams: chunks of several 256 KiB blocks.
            #expect(sent.blockSize == ChunkSizer.adaptiveBlockSize && sent.chunkSize > sent.blockSize)
            #expect(sent.sentBytes / UInt64(sent.chunksAcknowledged) > UInt64(sent.blockSize))
        }
        let received = try await receiver.value
        #expect(try Data(contentsOf: URL(fileURLWithPath: scratch.destination)) == scratch.bytes)
        #expect(sent.sha256 == received.sha256)
        #expect(sent.bytes == UInt64(size) && received.bytes == UInt64(size))
        #expect(!FileManager.default.fileExists(atPath: scratch.destination + ".novacron-partial"))
        #expect(!FileManager.default.fileExists(atPath: scratch.destination + ".novacron-journal"))
    }

    @Test("A sender with a certificate from another CA is refused before any payload")
    func foreignAuthorityRefused() async throws {
        let scratch = try Scratch(size: 1 << 20)
        defer { scratch.remove() }
        let (receiver, port) = await Self.startReceiver(scratch)
        defer { receiver.cancel() }
        let stranger = try ClusterAuthority.create(name: "elsewhere").issue(node: "sender")
        let error = await #expect(throws: TransportError.self) {
            try await TransferClient.send(
                .file(path: scratch.source), configuration: Self.sendConfiguration(port: port, identity: stranger))
        }
        #expect(error?.code == .authenticationFailed, "\(error.map { "\($0)" } ?? "no error")")
        let leftovers = try FileManager.default.contentsOfDirectory(atPath: scratch.directory + "/out")
        #expect(leftovers.isEmpty, "no session was opened, so nothing was written: \(leftovers)")
    }

    @Test("A client that connects and never speaks is closed after the hello timeout; the transfer still runs")
    func silentClient() async throws {
        let scratch = try Scratch(size: 1 << 20)
        defer { scratch.remove() }
        // 5 s: the real sender after it sends its data streams' hellos only once its offer is accepted.
        let (receiver, port) = await Self.startReceiver(scratch, helloTimeout: .seconds(5))
        defer { receiver.cancel() }
        let silent = try #require(SilentClient(port: port))
        // Without the bound the receiver would hold the connection (and a task) as long as the client does.
        #expect(await silent.closedByPeer(within: .seconds(20)))
        let sent = try await TransferClient.send(
            .file(path: scratch.source), configuration: Self.sendConfiguration(port: port))
        #expect(try await receiver.value.sha256 == sent.sha256)
    }

    @Test("A data stream that dies mid-transfer is replaced and the file still verifies")
    func streamKilled() async throws {
        let scratch = try Scratch(size: 12 << 20)
        defer { scratch.remove() }
        let (receiver, port) = await Self.startReceiver(scratch)
        var configuration = Self.sendConfiguration(port: port)
        configuration.rateLimit = 40e6
        configuration.faults[0] = FaultInjection(closeAfterBytes: 1 << 20)
        let sent = try await TransferClient.send(.file(path: scratch.source), configuration: configuration)
        _ = try await receiver.value
        #expect(sent.streamFailures >= 1)
        #expect(try Data(contentsOf: URL(fileURLWithPath: scratch.destination)) == scratch.bytes)
    }

    @Test("A corrupted chunk is detected by its checksum, sent again, and the file verifies")
    func corruptChunk() async throws {
        let scratch = try Scratch(size: 12 << 20)
        defer { scratch.remove() }
        let (receiver, port) = await Self.startReceiver(scratch)
        var configuration = Self.sendConfiguration(port: port)
        configuration.rateLimit = 40e6
        // Inside the payload of stream 0's first chunk frame (the hello and attach frames come first).
        configuration.faults[0] = FaultInjection(corruptByteAt: 5000)
        let sent = try await TransferClient.send(.file(path: scratch.source), configuration: configuration)
        let received = try await receiver.value
        #expect(received.corruptChunks == 1)
        #expect(sent.streamFailures >= 1)
        #expect(try Data(contentsOf: URL(fileURLWithPath: scratch.destination)) == scratch.bytes)
    }

    @Test(
        "After the receiver dies, --resume sends less than 10 % of what had already arrived, in fixed or adaptive chunks",
        arguments: [false, true])
    func resumeAfterReceiverDies(adaptive: Bool) async throws {
        let chunkSize = 256 << 10
        let scratch = try Scratch(size: 40 << 20)
        defer { scratch.remove() }
        let (firstReceiver, port) = await Self.startReceiver(scratch)
        var configuration = Self.sendConfiguration(port: port, adaptive: adaptive)
        configuration.rateLimit = 16e6
        configuration.maximumConsecutiveFailures = 0
        configuration.reconnectAttempts = 0
        let firstAttempt = Task {
            try await TransferClient.send(.file(path: scratch.source), configuration: configuration)
        }
        // Let about a third arrive (the journal has a 32-byte header and 8 bytes per block), then kill the receiver.
        let journal = scratch.destination + ".novacron-journal"
        while ((try? FileManager.default.attributesOfItem(atPath: journal)[.size] as? Int) ?? 0) < 32 + 8 * 50 {
            try await Task.sleep(for: .milliseconds(20))
        }
        firstReceiver.cancel()
        _ = await firstReceiver.result
        await #expect(throws: (any Error).self) { try await firstAttempt.value }

        // What really arrived: chunks of the partial file equal to the source's.
        let partial = try Data(contentsOf: URL(fileURLWithPath: scratch.destination + ".novacron-partial"))
        var arrived = 0
        for start in stride(from: 0, to: min(partial.count, scratch.bytes.count), by: chunkSize) {
            let end = min(start + chunkSize, scratch.bytes.count)
            if end <= partial.count && partial[start..<end] == scratch.bytes[start..<end] { arrived += end - start }
        }
        #expect(arrived > 8 << 20)

        let (secondReceiver, secondPort) = await Self.startReceiver(scratch)
        var resumed = Self.sendConfiguration(port: secondPort, adaptive: adaptive)
        resumed.resume = true
        let sent = try await TransferClient.send(.file(path: scratch.source), configuration: resumed)
        let received = try await secondReceiver.value
        let sentAgain = arrived - Int(sent.skippedBytes)
        #expect(sentAgain < arrived / 10, "re-sent \(sentAgain) of \(arrived) bytes that had arrived")
        #expect(received.resumedBytes == sent.skippedBytes)
        #expect(try Data(contentsOf: URL(fileURLWithPath: scratch.destination)) == scratch.bytes)
    }

    @Test("A session whose connection breaks is re-established by itself and resumes where it stopped")
    func reconnectsAfterTheLinkBreaks() async throws {
        let scratch = try Scratch(size: 20 << 20)
        defer { scratch.remove() }
        let (receiver, port) = await Self.startReceiver(scratch)
        var configuration = Self.sendConfiguration(port: port)
        configuration.rateLimit = 16e6
        configuration.reconnectDelay = .milliseconds(50)
        configuration.controlFault = FaultInjection(closeAfter: .milliseconds(500))
        let notices = NoticeLog()
        let sent = try await TransferClient.send(
            .file(path: scratch.source), configuration: configuration, reconnecting: { notices.append($0) })
        let received = try await receiver.value
        #expect(sent.reconnects == 1 && notices.all.map(\.attempt) == [1])
        #expect(notices.all.first?.reason.contains("connection failed") == true, "\(notices.all)")
        // The second session resumed: the first one's chunks were not sent again.
        #expect(sent.skippedBytes > 2 << 20 && received.resumedBytes == sent.skippedBytes)
        #expect(try Data(contentsOf: URL(fileURLWithPath: scratch.destination)) == scratch.bytes)
    }

    @Test("A broken session of two objects re-offers only the one not yet committed, and resumes it")
    func reconnectSkipsCommittedObjects() async throws {
        let scratch = try Scratch(size: 20 << 20)
        defer { scratch.remove() }
        let small = try Self.secondFile(scratch, name: "small.bin", size: 1 << 20)
        let (receiver, port) = await Self.startReceiver(scratch)
        var configuration = Self.sendConfiguration(port: port)
        configuration.rateLimit = 16e6
        configuration.reconnectDelay = .milliseconds(50)
        configuration.controlFault = FaultInjection(closeAfter: .milliseconds(500))
        let sent = try await TransferClient.send(
            objects: [
                TransferObject(.file(path: small.path), weight: 16), TransferObject(.file(path: scratch.source)),
            ],
            configuration: configuration)
        let received = try await receiver.value
        // The small file was committed by the first session; the second carried only the large one.
        #expect(sent.reconnects == 1 && sent.objects.map(\.name) == ["small.bin", "source.bin"])
        #expect(received.objects.map(\.name) == ["source.bin"] && sent.objects[1].skippedBytes > 2 << 20)
        #expect(sent.bytes == 21 << 20 && sent.objects[1].sha256 == received.sha256)
        #expect(try Data(contentsOf: URL(fileURLWithPath: scratch.directory + "/out/small.bin")) == small.bytes)
        #expect(try Data(contentsOf: URL(fileURLWithPath: scratch.destination)) == scratch.bytes)
    }

    @Test("A receiver that never answered is not retried: the error comes at once")
    func noReconnectWithoutASession() async throws {
        let scratch = try Scratch(size: 1024)
        defer { scratch.remove() }
        let notices = NoticeLog()
        let started = ContinuousClock.now
        await #expect(throws: TransportError.self) {
            _ = try await TransferClient.send(
                .file(path: scratch.source), configuration: Self.sendConfiguration(port: 9),
                reconnecting: { notices.append($0) })
        }
        #expect(notices.all.isEmpty && ContinuousClock.now - started < .seconds(1))
    }

    @Test("Standard input is not re-sent after a broken session: the error says so")
    func noReconnectForStandardInput() async throws {
        var configuration = Self.sendConfiguration(port: 9)  // discard: nothing listens
        configuration.reconnectDelay = .milliseconds(10)
        let notices = NoticeLog()
        await #expect(throws: TransportError.self) {
            _ = try await TransferClient.send(
                .standardInput, configuration: configuration, reconnecting: { notices.append($0) })
        }
        #expect(notices.all.isEmpty)
    }

    @Test(
        "A full disk at the receiver fails the transfer with a clear error on both sides",
        .enabled(if: getuid() == 0, "mounting a small tmpfs needs root")
    )
    func diskFull() async throws {
        let scratch = try Scratch(size: 6 << 20)
        defer { scratch.remove() }
        let mountPoint = scratch.directory + "/out"
        let mount = Process()
        mount.executableURL = URL(fileURLWithPath: "/bin/mount")
        mount.arguments = ["-t", "tmpfs", "-o", "size=2m", "tmpfs", mountPoint]
        try mount.run()
        mount.waitUntilExit()
        try #require(mount.terminationStatus == 0)
        defer {
            let unmount = Process()
            unmount.executableURL = URL(fileURLWithPath: "/bin/umount")
            unmount.arguments = [mountPoint]
            try? unmount.run()
            unmount.waitUntilExit()
        }
        let (receiver, port) = await Self.startReceiver(scratch)
        let sendError = await #expect(throws: TransportError.self) {
            try await TransferClient.send(
                .file(path: scratch.source), configuration: Self.sendConfiguration(port: port))
        }
        #expect(sendError?.code == .destinationFailed)
        #expect("\(sendError.map { "\($0)" } ?? "")".contains("No space left on device"))
        let receiveError = await #expect(throws: TransportError.self) { try await receiver.value }
        #expect(receiveError?.code == .destinationFailed)
        #expect(!FileManager.default.fileExists(atPath: scratch.destination))
    }

    /// A second random file of `size` bytes beside the scratch's source.
    static func secondFile(_ scratch: Scratch, name: String, size: Int) throws -> (path: String, bytes: Data) {
        let bytes = FileHandle(forReadingAtPath: "/dev/urandom")!.readData(ofLength: size)
        let path = scratch.directory + "/" + name
        try bytes.write(to: URL(fileURLWithPath: path))
        return (path, bytes)
    }

    @Test(
        "Two files share one session by weight: the heavier one, offered second, is committed well before the other",
        arguments: [(1, 4), (1, 1)])
    func weightedObjects(weights: (first: Int, second: Int)) async throws {
        let scratch = try Scratch(size: 8 << 20)
        defer { scratch.remove() }
        let second = try Self.secondFile(scratch, name: "second.bin", size: 8 << 20)
        let (receiver, port) = await Self.startReceiver(scratch)
        var configuration = Self.sendConfiguration(port: port)
        configuration.rateLimit = 20e6
        // Weights decide what enters the window; a window far smaller than the files lets them show.
        configuration.windowBytes = 2 << 20
        let sent = try await TransferClient.send(
            objects: [
                TransferObject(.file(path: scratch.source), weight: weights.first),
                TransferObject(.file(path: second.path), weight: weights.second),
            ],
            configuration: configuration)
        let received = try await receiver.value
        #expect(try Data(contentsOf: URL(fileURLWithPath: scratch.destination)) == scratch.bytes)
        #expect(try Data(contentsOf: URL(fileURLWithPath: scratch.directory + "/out/second.bin")) == second.bytes)
        #expect(received.objects.map(\.sha256) == sent.objects.map(\.sha256) && sent.objects.count == 2)
        #expect(received.bytes == 16 << 20 && sent.bytes == 16 << 20)
        let (first, heavier) = (sent.objects[0].seconds, sent.objects[1].seconds)
        if weights.second > weights.first {
            // At 20 MB/s the 4/5 share sends the second file in ~0.5 s, the first takes the whole ~0.85 s.
            #expect(heavier < 0.8 * first, "second (weight 4) at \(heavier) s, first at \(first) s")
        } else {
            // Equal weights: they progress together and finish close to each other.
            #expect(abs(heavier - first) < 0.25 * max(heavier, first), "\(heavier) s vs \(first) s")
        }
    }

    @Test("A session's objects are refused when two would land on one file, or when the receiver writes to stdout")
    func multipleObjectsRefused() async throws {
        let scratch = try Scratch(size: 1 << 20)
        defer { scratch.remove() }
        try FileManager.default.createDirectory(atPath: scratch.directory + "/other", withIntermediateDirectories: true)
        let twin = try Self.secondFile(scratch, name: "other/source.bin", size: 1 << 20)
        // A partial copy from an earlier transfer of that name, kept for a resume.
        let partial = scratch.destination + ".novacron-partial"
        try Data(repeating: 9, count: 4096).write(to: URL(fileURLWithPath: partial))
        let (receiver, port) = await Self.startReceiver(scratch)
        defer { receiver.cancel() }
        let error = await #expect(throws: TransportError.self) {
            try await TransferClient.send(
                objects: [TransferObject(.file(path: scratch.source)), TransferObject(.file(path: twin.path))],
                configuration: Self.sendConfiguration(port: port))
        }
        #expect(error?.code == .refused && "\(error!)".contains("distinct names"), "\(error.map { "\($0)" } ?? "")")
        // The offers were checked before any file was opened: the earlier partial copy is untouched and
        // nothing else was created.
        try await Task.sleep(for: .milliseconds(200))
        let leftovers = try FileManager.default.contentsOfDirectory(atPath: scratch.directory + "/out")
        #expect(leftovers == ["source.bin.novacron-partial"], "\(leftovers)")
        #expect(try Data(contentsOf: URL(fileURLWithPath: partial)) == Data(repeating: 9, count: 4096))
        let invalid = await #expect(throws: TransportError.self) {
            try await TransferClient.send(
                objects: [TransferObject(.standardInput), TransferObject(.standardInput)],
                configuration: Self.sendConfiguration(port: port))
        }
        #expect(invalid?.code == .invalidArgument)
        let pipe = Pipe()
        let twice = await #expect(throws: TransportError.self) {
            let stream = TransferSource.descriptor(pipe.fileHandleForReading.fileDescriptor, name: "s")
            _ = try await TransferClient.send(
                objects: [TransferObject(stream), TransferObject(stream)],
                configuration: Self.sendConfiguration(port: port))
        }
        #expect(twice?.code == .invalidArgument)
    }

    @Test("A stream read from a pipe arrives whole and in order in another pipe (QEMU's migration streams)")
    func pipeToPipe() async throws {
        let bytes = [UInt8](FileHandle(forReadingAtPath: "/dev/urandom")!.readData(ofLength: 5_000_003))
        let input = Pipe()
        let output = Pipe()
        let (ports, portSink) = AsyncStream.makeStream(of: Int.self)
        var receive = ReceiveConfiguration(
            host: "127.0.0.1", port: 0, security: .mutualTLS(Self.receiverIdentity), nodeName: "receiver",
            destination: .descriptor(output.fileHandleForWriting.fileDescriptor))
        receive.windowBytes = 2 << 20
        let receiver = Task {
            try await TransferServer.receive(configuration: receive, onListening: { portSink.yield($0) })
        }
        var iterator = ports.makeAsyncIterator()
        let port = await iterator.next()!
        // The other ends, as QEMU would hold them: one writes the stream, one reads it back.
        let writer = Thread {
            input.fileHandleForWriting.write(Data(bytes))
            try? input.fileHandleForWriting.close()
        }
        writer.start()
        let collected = Task.detached { output.fileHandleForReading.readDataToEndOfFile() }
        var configuration = Self.sendConfiguration(port: port)
        configuration.chunkSize = 64 << 10
        let sent = try await TransferClient.send(
            .descriptor(input.fileHandleForReading.fileDescriptor, name: "migration"), configuration: configuration)
        let received = try await receiver.value
        try output.fileHandleForWriting.close()
        #expect([UInt8](await collected.value) == bytes)
        #expect(sent.bytes == UInt64(bytes.count) && sent.sha256 == received.sha256)
        #expect(sent.objects.map(\.name) == ["migration"] && received.path == nil)
        // The end game's timeline: read to the end, then the last chunk acknowledged, then committed.
        let object = try #require(sent.objects.first)
        let read = try #require(object.readSeconds)
        let acknowledged = try #require(object.acknowledgedSeconds)
        #expect(read > 0 && read <= acknowledged && acknowledged <= object.seconds)
    }

    @Test("A chosen congestion control is set on the data sockets and the transfer verifies")
    func congestionControl() async throws {
        let scratch = try Scratch(size: 3 << 20)
        defer { scratch.remove() }
        let (receiver, port) = await Self.startReceiver(scratch)
        var configuration = Self.sendConfiguration(port: port)
        configuration.congestionControl = "cubic"
        let sent = try await TransferClient.send(.file(path: scratch.source), configuration: configuration)
        _ = try await receiver.value
        #expect(sent.streamFailures == 0, "every data socket accepted TCP_CONGESTION cubic")
        #expect(try Data(contentsOf: URL(fileURLWithPath: scratch.destination)) == scratch.bytes)
    }

    @Test("Plaintext transfers work when both sides ask for it")
    func plaintext() async throws {
        let scratch = try Scratch(size: 3 << 20)
        defer { scratch.remove() }
        let (receiver, port) = await Self.startReceiver(scratch, security: .insecurePlaintext)
        var configuration = Self.sendConfiguration(port: port)
        configuration.security = .insecurePlaintext
        _ = try await TransferClient.send(.file(path: scratch.source), configuration: configuration)
        _ = try await receiver.value
        #expect(try Data(contentsOf: URL(fileURLWithPath: scratch.destination)) == scratch.bytes)
    }
}

/// Collects reconnect notices from the sender's callback.
final class NoticeLog: Sendable {
    private let notices = Mutex<[ReconnectNotice]>([])

    func append(_ notice: ReconnectNotice) { notices.withLock { $0.append(notice) } }
    var all: [ReconnectNotice] { notices.withLock { $0 } }
}
