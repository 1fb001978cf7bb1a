import Crypto
import Foundation
import NIOCore
import Testing

@testable import DWCPTransport

@Suite("Receiver session (files)")
struct ReceiverSessionTests {
    /// A stream of unknown length (5 blocks and 123 bytes) received into a file in a directory of its own.
    struct Fixture {
        static let blockSize = 4096
        let directory: String
        let bytes = (0..<(5 * blockSize + 123)).map { UInt8(truncatingIfNeeded: $0 &* 7 &+ $0 >> 9) }
        let session: ReceiverSession

        init() throws {
            directory = FileManager.default.temporaryDirectory.appendingPathComponent("ncreceiver-\(UUID())").path
            try FileManager.default.createDirectory(atPath: directory, withIntermediateDirectories: true)
            let offer = SessionMessage.Offer(
                transferID: Array(repeating: 3, count: 16), name: "stream", totalBytes: nil,
                blockSize: UInt32(Self.blockSize), resume: false)
            session = try ReceiverSession(
                sessionID: 1, token: .random(), offer: offer, blockSize: nil, peer: "test",
                configuration: ReceiveConfiguration(
                    host: "127.0.0.1", port: 0, security: .insecurePlaintext, nodeName: "b",
                    destination: .path(directory + "/out.bin")))
        }

        var digest: SessionMessage.Digest { SessionMessage.Digest(bytes: Array(SHA256.hash(data: bytes))) }

        func chunk(_ blocks: Range<Int>) -> ByteBuffer {
            ByteBuffer(
                bytes: bytes[
                    (blocks.lowerBound * Self.blockSize)..<min(blocks.upperBound * Self.blockSize, bytes.count)])
        }

        func finish() async -> (SessionMessage, Result<ReceivedObject, TransportError>)? {
            await session.finish(totalBlocks: 6, totalBytes: UInt64(bytes.count), digest: digest)
        }

        /// The finish was answered `complete` with the stream's SHA-256, and the file holds the stream.
        func expectCommittedWhole(_ finished: (SessionMessage, Result<ReceivedObject, TransportError>)?) throws {
            let (answer, outcome) = try #require(finished)
            guard case .complete(_, let sha256) = answer else {
                Issue.record("the receiver answered \(answer)")
                return
            }
            #expect(sha256 == digest)
            #expect(try outcome.get().bytes == UInt64(bytes.count))
            #expect(try Data(contentsOf: URL(fileURLWithPath: directory + "/out.bin")) == Data(bytes))
        }

        func remove() { try? FileManager.default.removeItem(atPath: directory) }
    }

    @Test(
        "A stream of unknown length into a file: its short last chunk arrives first, is read back when the prefix reaches it, and the SHA-256 matches"
    )
    func shortLastChunkAheadOfThePrefix() async throws {
        let fixture = try Fixture()
        defer { fixture.remove() }
        // Blocks 3…5 (the last one short) first, then 1…2, then 0: the prefix reaches them only at the end.
        #expect(try await fixture.session.store(3, fixture.chunk(3..<6)) == .store)
        #expect(try await fixture.session.store(1, fixture.chunk(1..<3)) == .store)
        #expect(try await fixture.session.store(0, fixture.chunk(0..<1)) == .store)
        try fixture.expectCommittedWhole(await fixture.finish())
    }

    @Test("A finish before the last chunks is answered once they arrive, and the object is committed whole")
    func finishBeforeTheLastChunks() async throws {
        let fixture = try Fixture()
        defer { fixture.remove() }
        #expect(try await fixture.session.store(3, fixture.chunk(3..<6)) == .store)
        let finishing = Task { await fixture.finish() }
        try await Task.sleep(for: .milliseconds(50))
        #expect(!FileManager.default.fileExists(atPath: fixture.directory + "/out.bin"))  // still waiting
        #expect(try await fixture.session.store(0, fixture.chunk(0..<3)) == .store)
        try fixture.expectCommittedWhole(await finishing.value)
    }

    @Test("A finish waiting for chunks that never come ends unanswered when the session is abandoned")
    func finishWaitingThenAbandoned() async throws {
        let fixture = try Fixture()
        defer { fixture.remove() }
        #expect(try await fixture.session.store(0, fixture.chunk(0..<2)) == .store)
        let finishing = Task { await fixture.finish() }
        try await Task.sleep(for: .milliseconds(50))
        await fixture.session.abandon()
        #expect(await finishing.value == nil)
        #expect(!FileManager.default.fileExists(atPath: fixture.directory + "/out.bin"))
        // The partial copy stays for a resume.
        #expect(FileManager.default.fileExists(atPath: fixture.directory + "/out.bin.novacron-partial"))
    }
}
