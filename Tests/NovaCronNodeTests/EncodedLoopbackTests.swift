import DWCPEncoding
import DWCPTransport
import Foundation
import Testing

@testable import NovaCronNode

/// HDE over the real transport on 127.0.0.1 (plaintext: TLS is tested in DWCPTransportTests).
@Suite(.serialized, .timeLimit(.minutes(2)))
struct EncodedLoopbackTests {
    static func receive(
        into directory: String, consumers: (any TransferConsumerFactory)?
    ) async -> (Task<ReceiveReport, any Error>, Int) {
        let (ports, portSink) = AsyncStream.makeStream(of: Int.self)
        var configuration = ReceiveConfiguration(
            host: "127.0.0.1", port: 0, security: .insecurePlaintext, nodeName: "b", destination: .path(directory))
        configuration.consumers = consumers
        let task = Task {
            try await TransferServer.receive(configuration: configuration, onListening: { portSink.yield($0) })
        }
        var iterator = ports.makeAsyncIterator()
        return (task, await iterator.next()!)
    }

    static func sending(to port: Int) -> SendConfiguration {
        var configuration = SendConfiguration(
            host: "127.0.0.1", port: port, security: .insecurePlaintext, nodeName: "a")
        configuration.minimumStreams = 2
        configuration.maximumStreams = 4
        return configuration
    }

    @Test func anEncodedImageAndAPlainFileShareASessionAndBothArriveIdentical() async throws {
        let scratch = EncodedTransferTests.Scratch()
        let out = try scratch.directory()
        let store = try SharedChunkStore(directory: scratch.path + "/store", capacity: 1 << 30)
        let image = EncodedTransferTests.image(pages: 3000, tail: 5, seed: 21)
        let imagePath = scratch.file("ram.img", image)
        let plain = (0..<300_000).map { UInt8(truncatingIfNeeded: $0 &* 7) }
        let plainPath = scratch.file("plain.bin", plain)
        let (receiver, port) = await Self.receive(into: out, consumers: ImageConsumerFactory(store: store))
        let producer = try ImageFileProducer(path: imagePath, mode: .auto, linkBytesPerSecond: 1e8)
        let sent = try await TransferClient.send(
            objects: [TransferObject(.producer(producer)), TransferObject(.file(path: plainPath))],
            configuration: Self.sending(to: port))
        let received = try await receiver.value
        #expect(try Data(contentsOf: URL(fileURLWithPath: out + "/ram.img")) == Data(image))
        #expect(try Data(contentsOf: URL(fileURLWithPath: out + "/plain.bin")) == Data(plain))
        // The receiver reports the decoded image; the wire carried far fewer bytes.
        #expect(received.objects[0].bytes == UInt64(image.count))
        #expect(received.objects[0].receivedBytes == sent.objects[0].bytes)
        #expect(received.objects[0].sha256 == sent.objects[0].sha256, "both report the stream's SHA-256")
        #expect(sent.objects[0].bytes < UInt64(image.count) / 2)
        #expect(producer.currentReport.encodedBytes == sent.objects[0].bytes)
        #expect(store.count > 0, "the received pages are kept")
        #expect(try FileManager.default.contentsOfDirectory(atPath: out).sorted() == ["plain.bin", "ram.img"])
    }

    @Test func aReceiverThatCannotDecodeRefusesTheSessionAndKeepsNothing() async throws {
        let scratch = EncodedTransferTests.Scratch()
        let out = try scratch.directory()
        let imagePath = scratch.file("ram.img", EncodedTransferTests.image(pages: 50, seed: 2))
        let (receiver, port) = await Self.receive(into: out, consumers: nil)
        defer { receiver.cancel() }
        let producer = try ImageFileProducer(path: imagePath, mode: .auto, linkBytesPerSecond: 1e8)
        let error = await #expect(throws: TransportError.self) {
            try await TransferClient.send(.producer(producer), configuration: Self.sending(to: port))
        }
        #expect(error?.code == .refused, "\(error.map { "\($0)" } ?? "")")
        #expect("\(error.map { "\($0)" } ?? "")".contains("--encode none"))
        #expect(try FileManager.default.contentsOfDirectory(atPath: out).isEmpty)
    }
}
