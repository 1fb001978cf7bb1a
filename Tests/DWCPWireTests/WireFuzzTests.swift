import Foundation
import NIOCore
import Testing

@_spi(Fuzzing) @testable import DWCPWire

/// A small deterministic generator (SplitMix64) so a failing input can be replayed from its seed.
struct SplitMix64: RandomNumberGenerator {
    var state: UInt64

    mutating func next() -> UInt64 {
        state &+= 0x9E37_79B9_7F4A_7C15
        var z = state
        z = (z ^ (z >> 30)) &* 0xBF58_476D_1CE4_E5B9
        z = (z ^ (z >> 27)) &* 0x94D0_49BB_1331_11EB
        return z ^ (z >> 31)
    }
}

@Suite("Wire fuzzing (seeded mutation)")
struct WireFuzzTests {
    /// Valid frame streams the mutator starts from.
    static func corpus() throws -> [[UInt8]] {
        var seeds: [[UInt8]] = []
        for type in DWCPFrame.FrameType.allCases {
            seeds.append(
                Array(try encoded(sampleFrame(type, payloadLength: Int(type.rawValue) * 11)).readableBytesView))
        }
        var hello = ByteBuffer()
        HandshakeMessage.Hello(versions: 1...3, nodeName: "seed").encode(into: &hello)
        seeds.append(
            Array(try encoded(DWCPFrame(type: .hello, sessionID: 1, sequence: 0, payload: hello)).readableBytesView))
        var stream = ByteBuffer()
        for type in DWCPFrame.FrameType.allCases {
            try stream.writeDWCPFrame(sampleFrame(type, payloadLength: 3))
        }
        seeds.append(Array(stream.readableBytesView))
        return seeds
    }

    static func mutate(_ input: [UInt8], using random: inout SplitMix64) -> [UInt8] {
        var bytes = input
        for _ in 0..<Int.random(in: 1...4, using: &random) {
            switch Int.random(in: 0..<6, using: &random) {
            case 0 where !bytes.isEmpty:
                let index = Int.random(in: 0..<bytes.count, using: &random)
                bytes[index] ^= UInt8(1) << UInt8.random(in: 0..<8, using: &random)
            case 1 where !bytes.isEmpty:
                bytes[Int.random(in: 0..<bytes.count, using: &random)] = UInt8.random(in: 0...255, using: &random)
            case 2 where !bytes.isEmpty:
                bytes.removeLast(Int.random(in: 0...bytes.count, using: &random))
            case 3:
                let index = Int.random(in: 0...bytes.count, using: &random)
                bytes.insert(
                    contentsOf: (0..<Int.random(in: 1...8, using: &random)).map { _ in
                        UInt8.random(in: 0...255, using: &random)
                    }, at: index)
            case 4 where bytes.count > 28:
                // Announce a wild payload length.
                let length = UInt32.random(in: 0...UInt32.max, using: &random)
                withUnsafeBytes(of: length.bigEndian) { bytes.replaceSubrange(24..<28, with: $0) }
            default:
                break
            }
        }
        // The first byte selects the harness mode: odd reseals the checksums so later checks are reached.
        return [UInt8.random(in: 0...255, using: &random)] + bytes
    }

    @Test("Mutated frame streams never crash, hang or decode inconsistently")
    func mutationFuzz() throws {
        let iterations = ProcessInfo.processInfo.environment["NOVACRON_FUZZ_ITERATIONS"].flatMap(Int.init) ?? 50_000
        let seed = ProcessInfo.processInfo.environment["NOVACRON_FUZZ_SEED"].flatMap(UInt64.init) ?? 0x5EED
        var random = SplitMix64(state: seed)
        let corpus = try Self.corpus()
        for _ in 0..<iterations {
            let input = Self.mutate(corpus.randomElement(using: &random)!, using: &random)
            input.withUnsafeBytes { WireFuzzing.exercise($0) }
        }
    }

    @Test("The harness reaches frames after resealing: a corrupted-but-resealed stream decodes")
    func resealReachesDecoding() throws {
        var frame = try encoded(sampleFrame(.chunk, payloadLength: 16))
        frame.setInteger(UInt8(0xFF), at: DWCPFrame.headerLength + 3)
        frame.setInteger(UInt64(0), at: 28)
        var resealed = frame
        WireFuzzing.reseal(&resealed)
        #expect(try resealed.readDWCPFrame() != nil)
        expectWireError(.headerChecksumMismatch) { _ = try frame.readDWCPFrame() }
    }
}
