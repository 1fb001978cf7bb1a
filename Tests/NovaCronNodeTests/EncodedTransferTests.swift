import DWCPEncoding
import DWCPTransport
import Foundation
import NIOCore
import Testing

@testable import NovaCronNode

/// The HDE producer and consumer driven directly, as the transport drives them (offer content, reply,
/// bytes in order, commit), without sockets.
@Suite struct EncodedTransferTests {
    final class Scratch {
        let path: String

        init() {
            path = NSTemporaryDirectory() + "novacron-node-\(UUID().uuidString)"
            try! FileManager.default.createDirectory(atPath: path, withIntermediateDirectories: true)
        }

        deinit { try? FileManager.default.removeItem(atPath: path) }

        /// A fresh, empty directory inside the scratch directory.
        func directory(_ name: String = "out") throws -> String {
            let path = path + "/" + name
            try FileManager.default.createDirectory(atPath: path, withIntermediateDirectories: false)
            return path
        }

        func file(_ name: String, _ bytes: [UInt8]) -> String {
            let file = path + "/" + name
            _ = FileManager.default.createFile(atPath: file, contents: Data(bytes))
            return file
        }
    }

    /// A RAM-like image: zero pages, text pages, a few random pages, some repeated.
    static func image(pages: Int, tail: Int = 0, seed: UInt64) -> [UInt8] {
        var state = seed
        func next() -> UInt64 {
            state = state &* 6_364_136_223_846_793_005 &+ 1_442_695_040_888_963_407
            return state >> 11
        }
        let words = ["page ", "guest ", "kernel ", "memory ", "migration ", "\n"]
        var bytes: [UInt8] = []
        for page in 0..<pages {
            switch next() % 5 {
            case 0, 1: bytes += [UInt8](repeating: 0, count: 4096)
            case 2 where page > 0: bytes += bytes[((page / 2) * 4096)..<((page / 2) * 4096 + 4096)]
            case 3: bytes += (0..<4096).map { _ in UInt8(truncatingIfNeeded: next()) }
            default:
                var text: [UInt8] = []
                while text.count < 4096 { text += Array(words[Int(next() % 6)].utf8) }
                bytes += text.prefix(4096)
            }
        }
        return bytes + (0..<tail).map { _ in UInt8(truncatingIfNeeded: next()) }
    }

    /// Changes a few bytes in every third non-zero page.
    static func dirtied(_ image: [UInt8]) -> [UInt8] {
        var copy = image
        for page in stride(from: 0, to: image.count / 4096, by: 3)
        where copy[page * 4096..<(page + 1) * 4096].contains(where: { $0 != 0 }) {
            copy[page * 4096 + 100] &+= 1
            copy[page * 4096 + 2000] ^= 0x55
        }
        return copy
    }

    /// The transport's offer of an object named `name` carrying `content`.
    static func offer(_ content: [UInt8], name: String = "ram.img") -> SessionMessage.Offer {
        SessionMessage.Offer(
            transferID: [UInt8](repeating: 1, count: 16), name: name, totalBytes: nil, blockSize: 1 << 18,
            resume: false, content: content)
    }

    struct Outcome {
        var wireBytes: Int
        var report: ImageFileProducer.Report
    }

    static func transfer(
        _ source: String, into directory: String, sender: SharedChunkStore? = nil, receiver: SharedChunkStore? = nil,
        mode: EncodingMode = .auto, pieces: Int = 65_536
    ) throws -> Outcome {
        let producer = try ImageFileProducer(path: source, mode: mode, linkBytesPerSecond: 1e8, store: sender)
        let consumer = try ImageConsumerFactory(store: receiver).consumer(
            for: offer(producer.offerContent, name: producer.name), destination: .path(directory), overwrite: true)
        if let query = try producer.accepted(reply: consumer.reply) {
            try producer.answered(try consumer.answer(query: query))
        }
        var wire = 0
        while let piece = try producer.read(maximum: pieces) {
            #expect(piece.readableBytes >= 1 && piece.readableBytes <= pieces)
            wire += piece.readableBytes
            try consumer.consume(piece)
        }
        let bytes = try consumer.commit()
        let original = try Data(contentsOf: URL(fileURLWithPath: source))
        let copy = try Data(contentsOf: URL(fileURLWithPath: consumer.path!))
        #expect(copy == original, "byte-identical")
        #expect(bytes == UInt64(original.count))
        #expect(!FileManager.default.fileExists(atPath: consumer.path! + ".novacron-partial"))
        return Outcome(wireBytes: wire, report: producer.currentReport)
    }

    @Test(arguments: [(0, 0), (0, 1), (1, 0), (64, 0), (300, 1234)])
    func imagesOfEverySizeArriveIdentical(pages: Int, tail: Int) throws {
        let scratch = Scratch()
        let out = try scratch.directory()
        let source = scratch.file("ram.img", Self.image(pages: pages, tail: tail, seed: UInt64(pages + tail)))
        for mode in [EncodingMode.auto, .level(nil), .level(3)] {
            let outcome = try Self.transfer(source, into: out, mode: mode, pieces: 1 + pages * 17)
            #expect(outcome.report.imageBytes == UInt64(pages * 4096 + tail))
            #expect(outcome.report.encodedBytes == UInt64(outcome.wireBytes))
        }
    }

    @Test func aRepeatTransferIsSentAsDeltasAgainstTheImageBothNodesHold() throws {
        let scratch = Scratch()
        let out = try scratch.directory()
        let sender = try SharedChunkStore(directory: scratch.path + "/sender-store", capacity: 1 << 30)
        let receiver = try SharedChunkStore(directory: scratch.path + "/receiver-store", capacity: 1 << 30)
        let first = Self.image(pages: 600, seed: 7)
        let firstOutcome = try Self.transfer(
            scratch.file("ram-0.img", first), into: out, sender: sender, receiver: receiver)
        #expect(firstOutcome.report.baseline == nil)
        #expect(firstOutcome.report.queriedPages == 0, "an empty store is not asked")
        #expect(firstOutcome.report.receiverHasStore)
        let second = Self.dirtied(first)
        let secondOutcome = try Self.transfer(
            scratch.file("ram-1.img", second), into: out, sender: sender, receiver: receiver)
        #expect(secondOutcome.report.baseline != nil)
        // Only pages that changed since the baseline are asked about.
        #expect(secondOutcome.report.queriedPages > 0 && secondOutcome.report.queriedPages < 300)
        #expect(secondOutcome.report.pages["delta", default: 0] > 50)
        #expect(
            secondOutcome.wireBytes * 20 < firstOutcome.wireBytes,
            "\(secondOutcome.wireBytes) vs \(firstOutcome.wireBytes)")
    }

    @Test func withoutASenderStoreTheReceiversPagesGoAsReferences() throws {
        let scratch = Scratch()
        let out = try scratch.directory()
        let receiver = try SharedChunkStore(directory: scratch.path + "/receiver-store", capacity: 1 << 30)
        let first = Self.image(pages: 400, seed: 11)
        _ = try Self.transfer(scratch.file("a.img", first), into: out, receiver: receiver)
        let second = Self.dirtied(first)
        let outcome = try Self.transfer(scratch.file("b.img", second), into: out, receiver: receiver)
        #expect(outcome.report.heldPages > 100)
        #expect(outcome.report.heldPages <= outcome.report.queriedPages)
        #expect(outcome.report.pages["known", default: 0] > 100)
        #expect(outcome.report.baseline == nil)
    }

    @Test func theConsumerRefusesWhatItCannotDoWithTypedErrors() throws {
        let scratch = Scratch()
        let source = scratch.file("ram.img", Self.image(pages: 8, seed: 3))
        let producer = try ImageFileProducer(path: source, mode: .auto, linkBytesPerSecond: 1e8)
        let factory = ImageConsumerFactory(store: nil)
        let stream = #expect(throws: TransportError.self) {
            try factory.consumer(for: Self.offer(producer.offerContent), destination: .standardOutput, overwrite: false)
        }
        #expect(stream?.code == .invalidArgument)
        let exists = #expect(throws: TransportError.self) {
            try factory.consumer(for: Self.offer(producer.offerContent), destination: .path(source), overwrite: false)
        }
        #expect(exists?.code == .destinationFailed)
        let garbage = #expect(throws: TransportError.self) {
            try factory.consumer(
                for: Self.offer(Array("NCHOxxxx".utf8)), destination: .path(scratch.path), overwrite: true)
        }
        #expect(garbage?.code == .malformedMessage)
        let unknown = #expect(throws: TransportError.self) {
            try factory.consumer(for: Self.offer([1, 2, 3]), destination: .path(scratch.path), overwrite: true)
        }
        #expect(unknown?.code == .refused)
    }

    @Test func aConsumerLetGoWithoutACommitLeavesNothingBehind() throws {
        let scratch = Scratch()
        let out = try scratch.directory()
        let source = scratch.file("ram.img", Self.image(pages: 300, seed: 6))
        let producer = try ImageFileProducer(path: source, mode: .level(1), linkBytesPerSecond: 1e8)
        do {
            let consumer = try ImageConsumerFactory(store: nil).consumer(
                for: Self.offer(producer.offerContent), destination: .path(out), overwrite: false)
            _ = try producer.accepted(reply: consumer.reply)
            try consumer.consume(try #require(try producer.read(maximum: 100_000)))
            #expect(FileManager.default.fileExists(atPath: out + "/ram.img.novacron-partial"))
        }
        #expect(try FileManager.default.contentsOfDirectory(atPath: out).isEmpty)
    }

    @Test func aCorruptStreamFailsAndLeavesNothingBehind() throws {
        let scratch = Scratch()
        let out = try scratch.directory()
        let source = scratch.file("ram.img", Self.image(pages: 64, seed: 5))
        let producer = try ImageFileProducer(path: source, mode: .level(1), linkBytesPerSecond: 1e8)
        let consumer = try ImageConsumerFactory(store: nil).consumer(
            for: Self.offer(producer.offerContent), destination: .path(out), overwrite: false)
        #expect(try producer.accepted(reply: consumer.reply) == nil, "no store: no query")
        var stream = ByteBuffer()
        while var piece = try producer.read(maximum: 1 << 20) { stream.writeBuffer(&piece) }
        stream.setInteger(stream.getInteger(at: 200, as: UInt8.self)! ^ 0xFF, at: 200)
        #expect(throws: EncodingError.self) {
            try consumer.consume(stream)
            _ = try consumer.commit()
        }
        consumer.discard()
        #expect(try FileManager.default.contentsOfDirectory(atPath: out).isEmpty)
    }
}

@Suite struct DrainRateEstimatorTests {
    @Test func aLinkBoundWindowSetsTheRateAndAnEncoderBoundOneGrowsItUpToWhatTheLinkShowed() {
        var estimator = DrainRateEstimator(initial: 100e6)
        estimator.record(busy: 0.1, wall: 1, bytesTaken: 40_000_000)  // idle 90 %: the link took 40 MB/s
        #expect(estimator.estimate == 40e6)
        for _ in 0..<10 { estimator.record(busy: 1, wall: 1, bytesTaken: 30_000_000) }
        #expect(estimator.estimate == 100e6, "grows, but not past the hinted rate")
        estimator.record(busy: 0.2, wall: 1, bytesTaken: 300_000_000)
        #expect(estimator.ceiling == 300e6)
        estimator.record(busy: 1, wall: 1, bytesTaken: 50_000_000)
        #expect(estimator.estimate == 300e6, "a link seen at 300 MB/s may be that fast again")
    }
}

@Suite struct PieceQueueTests {
    @Test func slicesComeOutInOrderAndEmptyPiecesAreSkipped() {
        var queue = PieceQueue()
        var expected: [UInt8] = []
        for size in [5, 0, 300, 1, 70] {
            let bytes = (0..<size).map { UInt8(truncatingIfNeeded: $0 &+ expected.count) }
            expected += bytes
            queue.append(ByteBuffer(bytes: bytes))
        }
        #expect(queue.readableBytes == expected.count)
        var out: [UInt8] = []
        while var slice = queue.take(maximum: 64) {
            #expect(slice.readableBytes <= 64)
            out += slice.readBytes(length: slice.readableBytes)!
        }
        #expect(out == expected)
        #expect(queue.readableBytes == 0)
        #expect(queue.take(maximum: 1) == nil)
    }

    @Test("Chunks a migration brought in are kept at once and indexed for resemblance only afterwards")
    func migrationChunksAreIndexedAfterwards() throws {
        let scratch = EncodedTransferTests.Scratch()
        let store = try SharedChunkStore(directory: scratch.path + "/store", capacity: 1 << 30)
        var generator = SystemRandomNumberGenerator()
        let chunk = (0..<16_384).map { _ in UInt8.random(in: 0...255, using: &generator) }
        var changed = chunk
        changed[100] ^= 0xFF
        let features = changed.withUnsafeBytes { ChunkFeatures(of: $0) }
        try chunk.withUnsafeBytes { try store.keepUnindexed($0) }
        let key = chunk.withUnsafeBytes { ChunkKey(of: $0) }
        #expect(store.contents(of: key) == chunk, "kept at once: a reference later in the stream resolves")
        #expect(store.similar(to: features).isEmpty, "not indexed while the stream arrives")
        store.indexUnindexed()
        #expect(store.similar(to: features) == [key], "a later version finds it as a delta base")
        store.indexUnindexed()  // nothing left: idempotent
        #expect(store.similar(to: features) == [key])
    }
}
