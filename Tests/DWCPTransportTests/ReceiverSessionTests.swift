import Crypto
import Foundation
import NIOCore
import Testing

@testable import DWCPTransport

@Suite("Receiver session (files)")
struct ReceiverSessionTests {
    @Test(
        "A stream of unknown length into a file: its short last chunk arrives first, is read back when the prefix reaches it, and the SHA-256 matches"
    )
    func shortLastChunkAheadOfThePrefix() async throws {
        let directory = FileManager.default.temporaryDirectory.appendingPathComponent("ncreceiver-\(UUID())").path
        try FileManager.default.createDirectory(atPath: directory, withIntermediateDirectories: true)
        defer { try? FileManager.default.removeItem(atPath: directory) }
        let blockSize = 4096
        let bytes = (0..<(5 * blockSize + 123)).map { UInt8(truncatingIfNeeded: $0 &* 7 &+ $0 >> 9) }
        let offer = SessionMessage.Offer(
            transferID: Array(repeating: 3, count: 16), name: "stream", totalBytes: nil,
            blockSize: UInt32(blockSize), resume: false)
        let session = try ReceiverSession(
            sessionID: 1, token: .random(), offer: offer, blockSize: nil, peer: "test",
            configuration: ReceiveConfiguration(
                host: "127.0.0.1", port: 0, security: .insecurePlaintext, nodeName: "b",
                destination: .path(directory + "/out.bin")))
        func chunk(_ blocks: Range<Int>) -> ByteBuffer {
            ByteBuffer(bytes: bytes[(blocks.lowerBound * blockSize)..<min(blocks.upperBound * blockSize, bytes.count)])
        }
        // Blocks 3…5 (the last one short) first, then 1…2, then 0: the prefix reaches them only at the end.
        #expect(try await session.store(3, chunk(3..<6)) == .store)
        #expect(try await session.store(1, chunk(1..<3)) == .store)
        #expect(try await session.store(0, chunk(0..<1)) == .store)
        let digest = SessionMessage.Digest(bytes: Array(SHA256.hash(data: bytes)))
        let (answer, outcome) = await session.finish(totalBlocks: 6, totalBytes: UInt64(bytes.count), digest: digest)
        guard case .complete = answer else {
            Issue.record("the receiver answered \(answer)")
            return
        }
        #expect(try outcome.get().bytes == UInt64(bytes.count))
        #expect(try Data(contentsOf: URL(fileURLWithPath: directory + "/out.bin")) == Data(bytes))
    }
}
