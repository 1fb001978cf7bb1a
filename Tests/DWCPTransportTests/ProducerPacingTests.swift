import DWCPTransport
import Foundation
import NIOConcurrencyHelpers
import NIOCore
import Testing

/// A producer that holds the sender back (``TransferProducer/holdsBack(acknowledged:)``) reads no further ahead
/// of the receiver's acknowledgements than it asks, whatever the session's window allows.
@Suite("Transport: a producer paces its reads by the receiver's acknowledgements", .timeLimit(.minutes(1)))
struct ProducerPacingTests {
    /// Makes `total` bytes; with a `limit`, holds the sender back while more than that is unacknowledged.
    final class PacedProducer: TransferProducer, @unchecked Sendable {
        let name = "paced.bin"
        let offerContent: [UInt8] = Array("paced-test".utf8)
        let total: UInt64
        let limit: UInt64?
        private let state = NIOLockedValueBox((produced: UInt64(0), acknowledged: UInt64(0), largestAhead: UInt64(0)))

        init(total: Int, limit: Int?) {
            self.total = UInt64(total)
            self.limit = limit.map { UInt64($0) }
        }

        /// The most bytes read beyond what the receiver had acknowledged, at the start of a read.
        var largestAhead: UInt64 { state.withLockedValue { $0.largestAhead } }

        func accepted(reply: [UInt8]) throws -> [UInt8]? { nil }
        func answered(_ answer: [UInt8]) throws {}
        func sessionEnded() {}

        func read(maximum: Int) throws -> ByteBuffer? {
            state.withLockedValue { state in
                guard state.produced < total else { return nil }
                state.largestAhead = max(state.largestAhead, state.produced - state.acknowledged)
                let count = Int(min(UInt64(maximum), total - state.produced))
                state.produced += UInt64(count)
                return ByteBuffer(repeating: UInt8(truncatingIfNeeded: state.produced >> 12), count: count)
            }
        }

        func holdsBack(acknowledged: UInt64) -> Bool {
            state.withLockedValue { state in
                state.acknowledged = max(state.acknowledged, acknowledged)
                guard let limit else { return false }
                return state.produced > state.acknowledged + limit
            }
        }
    }

    /// Takes the bytes slowly (20 ms a chunk), so acknowledgements lag behind what the sender could send.
    final class SlowConsumer: TransferConsumer, @unchecked Sendable {
        let reply: [UInt8] = []
        var path: String? { nil }
        private var received: UInt64 = 0

        func answer(query: [UInt8]) throws -> [UInt8] { [] }
        func consume(_ bytes: ByteBuffer) throws {
            received += UInt64(bytes.readableBytes)
            usleep(20_000)
        }
        func commit() throws -> UInt64 { received }
        func discard() {}
    }

    struct SlowConsumers: TransferConsumerFactory {
        func consumer(for offer: SessionMessage.Offer, destination: ReceiveDestination, overwrite: Bool) throws
            -> any TransferConsumer
        { SlowConsumer() }
    }

    /// Sends 12 MiB in 256 KiB chunks with an 8 MiB window; returns the most the producer read ahead.
    static func send(limit: Int?) async throws -> UInt64 {
        let directory = NSTemporaryDirectory() + "nc-pacing-\(UUID().uuidString)"
        try FileManager.default.createDirectory(atPath: directory, withIntermediateDirectories: true)
        defer { try? FileManager.default.removeItem(atPath: directory) }
        let (ports, portSink) = AsyncStream.makeStream(of: Int.self)
        var receiving = ReceiveConfiguration(
            host: "127.0.0.1", port: 0, security: .insecurePlaintext, nodeName: "b", destination: .path(directory))
        receiving.consumers = SlowConsumers()
        let receiver = Task {
            try await TransferServer.receive(configuration: receiving, onListening: { portSink.yield($0) })
        }
        defer { receiver.cancel() }
        var iterator = ports.makeAsyncIterator()
        let port = await iterator.next()!
        var sending = SendConfiguration(host: "127.0.0.1", port: port, security: .insecurePlaintext, nodeName: "a")
        sending.chunkSize = 256 << 10
        sending.windowBytes = 8 << 20
        sending.initialStreams = 2
        sending.minimumStreams = 2
        sending.maximumStreams = 2
        let producer = PacedProducer(total: 12 << 20, limit: limit)
        let report = try await TransferClient.send(.producer(producer), configuration: sending)
        #expect(report.objects[0].bytes == 12 << 20)
        #expect(try await receiver.value.objects[0].bytes == 12 << 20)
        return producer.largestAhead
    }

    @Test("Held back at 1 MiB, the producer reads at most a chunk beyond it; unheld, the window lets it run ahead")
    func pacing() async throws {
        let held = try await Self.send(limit: 1 << 20)
        #expect(held <= (1 << 20) + (256 << 10), "read \(held) bytes ahead of the acknowledgements")
        let unheld = try await Self.send(limit: nil)
        // The control: without a limit only the 8 MiB window holds it (a loaded CI machine measured 3 MiB).
        #expect(unheld > 2 << 20, "read \(unheld) bytes ahead without a limit")
    }
}
