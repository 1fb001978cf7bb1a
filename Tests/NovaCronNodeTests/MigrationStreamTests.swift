import DWCPEncoding
import Foundation
import NIOCore
import NovaCronHypervisor
import Testing

@testable import NovaCronNode

/// The migration stream's producer driven directly, reading a socket pair as it reads QEMU's.
@Suite struct MigrationStreamTests {
    @Test("The producer holds the sender back by stream bytes read beyond those decoded, not by encoded bytes")
    func holdsBackByStreamBytes() throws {
        let (ours, qemu) = try StreamCopy.socketPair()
        defer { close(ours) }
        // 4 MiB of zeros, written as QEMU writes into the socket, encode to a few kilobytes.
        let writer = Thread {
            let zeros = [UInt8](repeating: 0, count: 1 << 20)
            for _ in 0..<4 {
                var done = 0
                while done < zeros.count {
                    let count = zeros.withUnsafeBytes { write(qemu, $0.baseAddress! + done, zeros.count - done) }
                    guard count > 0 else { break }
                    done += count
                }
            }
            close(qemu)
        }
        writer.start()
        let producer = MigrationStreamProducer(
            name: "vm.migration", descriptor: ours, store: nil, level: 1, streamWindow: 1 << 20)
        _ = try producer.accepted(reply: [])
        var encoded: [UInt64] = []  // the encoded total after each read
        var total: UInt64 = 0
        while let piece = try producer.read(maximum: 16 << 10) {
            total += UInt64(piece.readableBytes)
            encoded.append(total)
        }
        #expect(total < 64 << 10, "4 MiB of zeros took \(total) encoded bytes")
        // Everything read and nothing acknowledged: 4 MiB wait beyond the 1 MiB window.
        #expect(producer.holdsBack(acknowledged: 0))
        #expect(producer.holdsBack(acknowledged: encoded[0]), "the first read's bytes stand for at most 1 MiB")
        #expect(!producer.holdsBack(acknowledged: total))
        // Without a stream window the producer never holds the sender back.
        let unbounded = MigrationStreamProducer(name: "vm.migration", descriptor: ours, store: nil, level: 1)
        #expect(!unbounded.holdsBack(acknowledged: 0))
    }
}
