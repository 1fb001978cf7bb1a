@testable import DWCPEncoding

/// SplitMix64: a tiny seeded generator, so every test input replays exactly.
struct SeededGenerator: RandomNumberGenerator {
    var state: UInt64

    init(seed: UInt64) {
        state = seed
    }

    mutating func next() -> UInt64 {
        state &+= 0x9E37_79B9_7F4A_7C15
        var z = state
        z = (z ^ (z >> 30)) &* 0xBF58_476D_1CE4_E5B9
        z = (z ^ (z >> 27)) &* 0x94D0_49BB_1331_11EB
        return z ^ (z >> 31)
    }
}

enum TestData {
    static let page = ImageFormat.pageSize

    static func random(_ count: Int, seed: UInt64) -> [UInt8] {
        var generator = SeededGenerator(seed: seed)
        var bytes = [UInt8](repeating: 0, count: count)
        var index = 0
        while index < count {
            var word = generator.next()
            for _ in 0..<8 where index < count {
                bytes[index] = UInt8(truncatingIfNeeded: word)
                word >>= 8
                index += 1
            }
        }
        return bytes
    }

    /// Compressible text-like bytes: words from a small vocabulary.
    static func text(_ count: Int, seed: UInt64) -> [UInt8] {
        let words = ["page", "migration", "guest", "memory", "kernel", "delta", "zstd", "NovaCron", "chunk", "\n"]
        var generator = SeededGenerator(seed: seed)
        var bytes: [UInt8] = []
        bytes.reserveCapacity(count + 16)
        while bytes.count < count {
            bytes.append(contentsOf: words[Int(generator.next() % UInt64(words.count))].utf8)
            bytes.append(UInt8(ascii: " "))
        }
        return Array(bytes.prefix(count))
    }

    /// A mix of zero, text and random pages.
    static func mixed(_ count: Int, seed: UInt64) -> [UInt8] {
        var generator = SeededGenerator(seed: seed)
        var bytes: [UInt8] = []
        bytes.reserveCapacity(count)
        var pageSeed = seed
        while bytes.count < count {
            pageSeed &+= 1
            let length = min(page, count - bytes.count)
            switch generator.next() % 3 {
            case 0: bytes.append(contentsOf: repeatElement(0, count: length))
            case 1: bytes.append(contentsOf: text(length, seed: pageSeed))
            default: bytes.append(contentsOf: random(length, seed: pageSeed))
            }
        }
        return bytes
    }

    /// `image` with a few bytes changed in every `stride`-th page.
    static func mutated(_ image: [UInt8], everyNthPage stride: Int, seed: UInt64) -> [UInt8] {
        var generator = SeededGenerator(seed: seed)
        var result = image
        var start = 0
        while start < result.count {
            for _ in 0..<4 {
                let offset = start + Int(generator.next() % UInt64(min(page, result.count - start)))
                result[offset] &+= 1
            }
            start += page * stride
        }
        return result
    }
}
