import Testing

@testable import DWCPEncoding

/// The stream codec's QEMU page framing: page records cut one per chunk, pages sent again as deltas against
/// their slot's previous version (later in the stream, or in the next migration of the VM), and bytes that
/// only look like records still round-tripping.
@Suite("HDE stream codec: QEMU page records")
struct QEMUPageFramingTests {
    static let chunker = try! Chunker.FastCDC(minimumSize: 2048, averageSize: 8192, maximumSize: 65536)

    /// Writes a stream in QEMU 7.2's layout: RAM records (big-endian offset | flags, the block's name unless
    /// continued, a page or a zero byte), section headers and device state in between.
    struct QEMUStream {
        var bytes: [UInt8] = Array("QEVM".utf8) + [0, 0, 0, 3]
        var pages = 0
        private var lastBlock: String?

        mutating func word(_ value: UInt64) {
            withUnsafeBytes(of: value.bigEndian) { bytes += $0 }
        }

        mutating func header(_ block: String, _ offset: UInt64, flags: UInt64) {
            if block == lastBlock {
                word(offset | flags | 0x20)
            } else {
                word(offset | flags)
                bytes += [UInt8(block.utf8.count)] + Array(block.utf8)
                lastBlock = block
            }
        }

        mutating func page(_ block: String, _ offset: UInt64, _ content: [UInt8]) {
            precondition(content.count == 4096)
            header(block, offset, flags: 0x08)
            bytes += content
            pages += 1
        }

        mutating func zero(_ block: String, _ offset: UInt64) {
            header(block, offset, flags: 0x02)
            bytes.append(0)
        }

        /// The end of a RAM section part, its footer, the next part's header.
        mutating func nextPart() {
            word(0x10)
            bytes += [0x7E, 0, 0, 0, 2, 0x02, 0, 0, 0, 2]
        }

        mutating func deviceState(_ content: [UInt8]) {
            bytes += [0x04, 0, 0, 0, 9, 6] + Array("serial".utf8) + [0, 0, 0, 0, 0, 0, 0, 1] + content
        }
    }

    /// Memory of `count` pages: random content (nothing for zstd to find), every fourth page zero.
    static func memory(count: Int, seed: UInt64) -> [[UInt8]?] {
        (0..<count).map { index in index % 4 == 3 ? nil : TestData.random(4096, seed: seed &+ UInt64(index)) }
    }

    /// One pre-copy pass over `memory` in block "pc.ram", then "vga.vram"'s first page, then a part break.
    static func pass(_ memory: [[UInt8]?], only: Set<Int>? = nil, into stream: inout QEMUStream) {
        for (index, page) in memory.enumerated() where only?.contains(index) ?? true {
            if let page {
                stream.page("pc.ram", UInt64(index) << 12, page)
            } else {
                stream.zero("pc.ram", UInt64(index) << 12)
            }
        }
        stream.page("vga.vram", 0, TestData.random(4096, seed: 99))
        stream.nextPart()
    }

    /// Changes 16 bytes of each of `pages` (as the benchmark guest's sparse writer does).
    static func stamp(_ memory: inout [[UInt8]?], pages: [Int], seed: UInt64) {
        var generator = SeededGenerator(seed: seed)
        for index in pages {
            guard var page = memory[index] else { continue }
            let offset = Int(generator.next() % 4080)
            for byte in offset..<(offset + 16) { page[byte] = UInt8(truncatingIfNeeded: generator.next()) }
            memory[index] = page
        }
    }

    /// A node's chunks and its pages' latest versions, as an agent's store keeps them.
    final class Node {
        var chunks: [ChunkKey: [UInt8]] = [:]
        var pages: [PageSlot: ChunkKey] = [:]
    }

    /// Encodes `input` (pieces of `piece` bytes) with page framing for stream "vm.migration"; every chunk cut is
    /// kept in `sender`, pages by slot.
    static func encode(
        _ input: [UInt8], piece: Int = 100_000, known: Set<ChunkKey> = [], sender: Node = Node()
    ) throws -> (bytes: [UInt8], statistics: StreamEncoder.Statistics) {
        var encoder = try StreamEncoder(
            chunker: chunker, level: 1, pageSlots: PageSlotTracker(stream: "vm.migration"),
            hooks: .init(
                receiverHolds: { known.contains($0) }, previousVersion: { sender.pages[$0] },
                content: { sender.chunks[$0] },
                cut: { bytes, key, _, slot in
                    sender.chunks[key] = Array(bytes)
                    if let slot { sender.pages[slot] = key }
                }))
        return (try StreamCodecTests.feed(input, to: &encoder, piece: piece), encoder.statistics)
    }

    /// Decodes `encoded` against `receiver`'s chunks, keeping what arrives and naming every chunk's page slot
    /// as a destination agent does.
    static func decode(_ encoded: [UInt8], receiver: Node, pieces: Int = 1 << 20) throws -> [UInt8] {
        var decoder = try StreamDecoder()
        var slots = PageSlotTracker(stream: "vm.migration")
        var output: [UInt8] = []
        var offset = 0
        while offset < encoded.count {
            let end = min(encoded.count, offset + pieces)
            try encoded[offset..<end].withUnsafeBytes { raw in
                try decoder.append(
                    raw, lookup: { receiver.chunks[$0] },
                    storing: { chunk, _ in
                        let key = ChunkKey(of: chunk)
                        receiver.chunks[key] = Array(chunk)
                        if let slot = slots.slot(of: chunk) { receiver.pages[slot] = key }
                    },
                    referenced: { chunk, key in
                        if let slot = slots.slot(of: chunk) { receiver.pages[slot] = key }
                    },
                    output: { output += $0 })
            }
            offset = end
        }
        try decoder.finish()
        return output
    }

    @Test(
        "Each page record is a chunk of its own, whatever the pieces the stream arrives in",
        arguments: [1, 4099, 100_000])
    func cutsPages(piece: Int) throws {
        var stream = QEMUStream()
        stream.deviceState(TestData.random(300, seed: 1))
        Self.pass(Self.memory(count: piece == 1 ? 24 : 200, seed: 2), into: &stream)
        stream.deviceState(TestData.text(piece == 1 ? 500 : 20_000, seed: 3))
        let (encoded, statistics) = try Self.encode(stream.bytes, piece: piece)
        #expect(statistics.pageChunks == stream.pages, "\(statistics)")
        #expect(try Self.decode(encoded, receiver: Node(), pieces: max(piece, 7)) == stream.bytes)
    }

    @Test("A page QEMU sends again later in the stream goes as a delta against the version sent before")
    func laterPass() throws {
        var memory = Self.memory(count: 400, seed: 10)
        var stream = QEMUStream()
        Self.pass(memory, into: &stream)
        let firstPass = try Self.encode(stream.bytes).bytes.count
        let dirty = Array(stride(from: 0, to: 400, by: 3))
        Self.stamp(&memory, pages: dirty, seed: 11)
        Self.pass(memory, only: Set(dirty), into: &stream)
        let (encoded, statistics) = try Self.encode(stream.bytes)
        let sentAgain = dirty.filter { memory[$0] != nil }.count
        #expect(statistics.pageDeltaChunks == sentAgain, "\(statistics)")
        // Each page sent again costs its header and a small delta, not its 4 KiB of random bytes.
        #expect(
            encoded.count - firstPass < sentAgain * 200, "\(encoded.count - firstPass) bytes for \(sentAgain) pages")
        #expect(try Self.decode(encoded, receiver: Node(), pieces: 5000) == stream.bytes)
    }

    @Test("The next migration of the VM refers to unchanged pages and sends changed ones as deltas, both ways")
    func nextMigration() throws {
        var memory = Self.memory(count: 400, seed: 20)
        var first = QEMUStream()
        Self.pass(memory, into: &first)
        // a → b: a keeps what it sent, b what it received, both by page slot.
        let a = Node()
        let b = Node()
        let (firstEncoded, _) = try Self.encode(first.bytes, sender: a)
        #expect(try Self.decode(firstEncoded, receiver: b) == first.bytes)
        // b → a, after the guest changed a quarter of its pages by 16 bytes.
        Self.stamp(&memory, pages: Array(stride(from: 0, to: 400, by: 4)), seed: 21)
        var back = QEMUStream()
        Self.pass(memory, into: &back)
        let (backEncoded, statistics) = try Self.encode(back.bytes, known: Set(a.chunks.keys), sender: b)
        #expect(statistics.pageDeltaChunks > 0 && statistics.referencedChunks > 0, "\(statistics)")
        #expect(
            statistics.pageDeltaChunks + statistics.referencedChunks >= back.pages,
            "every page refers or is a delta: \(statistics)")
        #expect(backEncoded.count * 20 < firstEncoded.count, "\(backEncoded.count) against \(firstEncoded.count)")
        #expect(try Self.decode(backEncoded, receiver: a) == back.bytes)
        // a → b again: a learnt the pages' versions from what it received, references included.
        Self.stamp(&memory, pages: Array(stride(from: 1, to: 400, by: 4)), seed: 22)
        var again = QEMUStream()
        Self.pass(memory, into: &again)
        let (againEncoded, againStatistics) = try Self.encode(again.bytes, known: Set(b.chunks.keys), sender: a)
        #expect(againStatistics.pageDeltaChunks > 0, "\(againStatistics)")
        #expect(againEncoded.count * 20 < firstEncoded.count)
        #expect(try Self.decode(againEncoded, receiver: b) == again.bytes)
    }

    @Test("Slots: one offset in two blocks is two slots; a continued record belongs to the last named block")
    func slots() {
        var stream = QEMUStream()
        let page = TestData.random(4096, seed: 30)
        stream.page("pc.ram", 0x5000, page)
        let ramNamed = stream.bytes.count
        stream.page("pc.ram", 0x6000, page)
        let ramContinued = stream.bytes.count
        stream.page("vga.vram", 0x5000, page)
        let vgaNamed = stream.bytes.count
        stream.page("vga.vram", 0x6000, page)
        var tracker = PageSlotTracker(stream: "vm.migration")
        let bytes = stream.bytes
        let slots = bytes.withUnsafeBytes { raw in
            [8..<ramNamed, ramNamed..<ramContinued, ramContinued..<vgaNamed, vgaNamed..<raw.count].map {
                tracker.slot(of: UnsafeRawBufferPointer(rebasing: raw[$0]))
            }
        }
        #expect(slots.allSatisfy { $0 != nil })
        #expect(Set(slots.compactMap { $0 }).count == 4)
        #expect(slots[0]?.offset == 0x5000 && slots[1]?.offset == 0x6000 && slots[3]?.offset == 0x6000)
        #expect(slots[0]?.block == slots[1]?.block && slots[2]?.block == slots[3]?.block)
        // The same page in another VM's stream is another slot.
        var other = PageSlotTracker(stream: "other.migration")
        #expect(
            bytes.withUnsafeBytes { other.slot(of: UnsafeRawBufferPointer(rebasing: $0[8..<ramNamed])) } != slots[0])
        // A chunk shorter than a page record, or one that does not start with a page header, has no slot.
        #expect(bytes.withUnsafeBytes { tracker.slot(of: UnsafeRawBufferPointer(rebasing: $0[8..<4000])) } == nil)
        #expect(
            bytes.withUnsafeBytes { tracker.slot(of: UnsafeRawBufferPointer(rebasing: $0[9..<ramContinued])) } == nil)
    }

    @Test("Bytes that only look like page records are cut as other bytes; a convincing fake still round-trips")
    func falseMatches() throws {
        // Fake headers (page | continue, a small offset) with no record after them.
        var input = TestData.random(300_000, seed: 40)
        for position in stride(from: 1000, to: 290_000, by: 7919) {
            withUnsafeBytes(of: (UInt64(0x1000) | 0x28).bigEndian) {
                input.replaceSubrange(position..<(position + 8), with: $0)
            }
        }
        let (plain, plainStatistics) = try Self.encode(input)
        #expect(plainStatistics.pageChunks == 0)
        #expect(try Self.decode(plain, receiver: Node()) == input)
        // A header, 4 KiB and something like a zero record after it: taken for a page; the bytes are intact.
        var fake = QEMUStream()
        fake.page("pc.ram", 0x3000, TestData.random(4096, seed: 41))
        fake.zero("pc.ram", 0x4000)
        input.replaceSubrange(150_000..<(150_000 + fake.bytes.count - 8), with: fake.bytes[8...])
        let (encoded, statistics) = try Self.encode(input, piece: 4096)
        #expect(statistics.pageChunks == 1)
        #expect(try Self.decode(encoded, receiver: Node(), pieces: 333) == input)
    }

    @Test("Round trip at the edges: empty, one byte, a lone page record cut off at every length")
    func edges() throws {
        for input in [[], [0x28], Array(repeating: 0, count: 8)] as [[UInt8]] {
            #expect(try Self.decode(try Self.encode(input).bytes, receiver: Node()) == input)
        }
        var stream = QEMUStream()
        stream.page("pc.ram", 0, TestData.random(4096, seed: 50))
        stream.zero("pc.ram", 0x1000)
        let record = Array(stream.bytes[8...])
        for length in [1, 7, 8, 9, 16, 4103, 4104, 4111, 4112, 4113, record.count] {
            let input = Array(record[..<min(length, record.count)])
            let (encoded, statistics) = try Self.encode(input, piece: 3)
            #expect(try Self.decode(encoded, receiver: Node()) == input, "\(length) bytes")
            #expect(statistics.pageChunks == (length >= 4096 + 15 ? 1 : 0), "\(length) bytes: \(statistics)")
        }
    }
}
