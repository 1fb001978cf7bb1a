import Testing

@testable import DWCPEncoding

@Suite struct ImageCodecTests {
    static let page = ImageFormat.pageSize
    static let sizes = [
        0, 1, 4095, 4096, 4097, 8191, 8192, 8193, 3 * 4096 + 100, 300 * 4096 + 1,
    ]
    static let configurations: [ImageEncoder.Configuration] = [
        .init(eliminatesDuplicates: false, usesDeltas: false, compressionLevel: nil),
        .init(eliminatesDuplicates: true, usesDeltas: false, compressionLevel: nil),
        .init(eliminatesDuplicates: true, usesDeltas: true, compressionLevel: nil),
        .init(eliminatesDuplicates: true, usesDeltas: true, compressionLevel: 1, pagesPerBatch: 1),
        .init(eliminatesDuplicates: false, usesDeltas: true, compressionLevel: 3, pagesPerBatch: 7),
        .init(),
    ]

    static func roundTrip(
        _ image: [UInt8], baseline: [UInt8]? = nil, configuration: ImageEncoder.Configuration = .init(),
        store: InMemoryChunkStore? = nil
    ) throws -> (stream: [UInt8], statistics: ImageEncoder.Statistics) {
        let encoder = try ImageEncoder(configuration: configuration)
        let stream = try encoder.encode(image, baseline: baseline, known: store)
        let decoded = try ImageDecoder().decode(stream, baseline: baseline, chunks: store)
        #expect(decoded == image)
        // The same stream fed in pieces of every size from 1 byte to past a batch decodes the same.
        let streamed = try ImageDecoderStreamTests.decodeInPieces(
            stream, baseline: baseline, chunks: store, seed: UInt64(stream.count))
        #expect(streamed == image)
        #expect(encoder.statistics.encodedLength == stream.count)
        #expect(encoder.statistics.pages.values.reduce(0, +) == (image.count + page - 1) / page)
        return (stream, encoder.statistics)
    }

    @Test(arguments: sizes)
    func roundTripsEveryStageCombination(size: Int) throws {
        let images = [
            [UInt8](repeating: 0, count: size), TestData.random(size, seed: 1), TestData.mixed(size, seed: 2),
        ]
        for image in images {
            let baselines: [[UInt8]?] = [
                nil, TestData.mutated(image, everyNthPage: 2, seed: 3), TestData.random(size / 2, seed: 4), [],
            ]
            for configuration in Self.configurations {
                for baseline in baselines {
                    _ = try Self.roundTrip(image, baseline: baseline, configuration: configuration)
                }
            }
        }
    }

    @Test func emptyImageIsHeaderAndEndOnly() throws {
        let (stream, statistics) = try Self.roundTrip([])
        #expect(stream.count == ImageFormat.headerLength + ImageFormat.endLength)
        #expect(statistics.pages.isEmpty)
    }

    @Test func zeroImageIsTiny() throws {
        let (stream, statistics) = try Self.roundTrip([UInt8](repeating: 0, count: 1 << 20))
        #expect(statistics.count(of: .zero) == 256)
        #expect(stream.count < 200)
    }

    @Test func choosesEachRecordKindWhenItShould() throws {
        let text = TestData.text(Self.page, seed: 10)
        let randomA = TestData.random(Self.page, seed: 11)
        let heldByReceiver = TestData.random(Self.page, seed: 12)
        let rewritten = TestData.random(Self.page, seed: 13)
        let changedLittle = TestData.random(Self.page, seed: 14)
        var baseline = [UInt8](repeating: 0, count: Self.page)  // page 0
        baseline += randomA + text + heldByReceiver + TestData.random(Self.page, seed: 15) + changedLittle
        var changed = changedLittle
        changed[100] ^= 0xFF
        changed[3000] ^= 0x01
        // zero, duplicate-of-nothing (literal), unchanged, known, literal (fully rewritten), delta, duplicate, tail.
        var image = [UInt8](repeating: 0, count: Self.page)
        image += TestData.random(Self.page, seed: 16)
        image += text
        image += heldByReceiver
        image += rewritten
        image += changed
        image += rewritten
        image += [1, 2, 3]
        var store = InMemoryChunkStore()
        store.insert(heldByReceiver)

        // Without a baseline the receiver's chunk is still recognised.
        let (_, plain) = try Self.roundTrip(image, store: store)
        #expect(plain.count(of: .known) == 1)
        #expect(plain.count(of: .duplicate) == 1)
        #expect(plain.count(of: .zero) == 1)

        let configuration = ImageEncoder.Configuration(compressionLevel: nil)
        let (stream, statistics) = try Self.roundTrip(
            image, baseline: baseline, configuration: configuration, store: store)
        #expect(statistics.count(of: .zero) == 1)
        #expect(statistics.count(of: .unchanged) == 2)  // the text page and the held page (unchanged wins)
        #expect(statistics.count(of: .delta) == 1)
        #expect(statistics.count(of: .duplicate) == 1)
        #expect(statistics.count(of: .literal) == 3)  // new random page, rewritten page, short tail
        #expect(statistics.count(of: .known) == 0)
        // 3 literals (2 pages + 3 bytes) plus small records: a delta of two changed bytes costs a few bytes.
        let overhead = ImageFormat.headerLength + ImageFormat.batchHeaderLength + ImageFormat.endLength
        #expect(stream.count < overhead + 2 * Self.page + 3 + 8 + 40)
    }

    @Test func literalWinsWhenTheDeltaIsNotSmaller() throws {
        let baseline = TestData.random(Self.page, seed: 20)
        let image = TestData.random(Self.page, seed: 21)
        let (_, statistics) = try Self.roundTrip(image, baseline: baseline)
        #expect(statistics.count(of: .literal) == 1)
        #expect(statistics.count(of: .delta) == 0)
    }

    @Test func batchesAreCompressedTogether() throws {
        let image = TestData.text(256 * Self.page, seed: 30)
        let (batched, _) = try Self.roundTrip(image, configuration: .init(pagesPerBatch: 256))
        let (single, _) = try Self.roundTrip(image, configuration: .init(pagesPerBatch: 1))
        let (stored, _) = try Self.roundTrip(image, configuration: .init(compressionLevel: nil))
        #expect(batched.count < single.count)
        #expect(single.count < stored.count)
    }

    @Test func pageDeltaRoundTripsAndGivesUpAtTheLimit() throws {
        var generator = SeededGenerator(seed: 40)
        for trial in 0..<500 {
            let length = Int(generator.next() % UInt64(Self.page)) + 1
            let old = TestData.random(length, seed: UInt64(trial))
            var new = old
            for _ in 0..<Int(generator.next() % 40) {
                new[Int(generator.next() % UInt64(length))] = UInt8(truncatingIfNeeded: generator.next())
            }
            var encoded: [UInt8] = []
            let result = new.withUnsafeBytes { newBytes in
                old.withUnsafeBytes { PageDelta.encode(newBytes, against: $0, limit: length, appendingTo: &encoded) }
            }
            guard let result else {
                #expect(encoded.isEmpty)
                continue
            }
            #expect(result == encoded.count && result < length)
            var page = old
            try encoded.withUnsafeBytes { delta in
                try page.withUnsafeMutableBytes { try PageDelta.apply(delta, to: $0) }
            }
            #expect(page == new)
        }
    }
}

@Suite("Streamed encoding")
struct StreamedEncodingTests {
    @Test(
        "Pieces handed out one batch at a time concatenate to the whole stream",
        arguments: [0, 1, 4096, 300 * 4096 + 1])
    func piecesMakeTheStream(size: Int) throws {
        let image = TestData.mixed(size, seed: 9)
        let baseline = TestData.mutated(image, everyNthPage: 3, seed: 10)
        let configuration = ImageEncoder.Configuration(pagesPerBatch: 64)
        let whole = try ImageEncoder(configuration: configuration).encode(image, baseline: baseline)
        let encoder = try ImageEncoder(configuration: configuration)
        var pieces: [[UInt8]] = []
        try image.withUnsafeBytes { imageBytes in
            try baseline.withUnsafeBytes { baselineBytes in
                try encoder.encode(imageBytes, baseline: baselineBytes) { (piece) throws(EncodingError) in
                    pieces.append(Array(piece))
                }
            }
        }
        #expect(pieces.joined().elementsEqual(whole))
        // The header, one piece per batch, the end.
        let batches = (size + 64 * 4096 - 1) / (64 * 4096)
        #expect(pieces.count == batches + 2)
        #expect(pieces.first?.count == ImageFormat.headerLength && pieces.last?.count == 17)
        #expect(encoder.statistics.encodedLength == whole.count)
    }

    @Test("What the taker of the pieces throws ends the encoding")
    func emitFailureStops() throws {
        let image = TestData.text(10 * 4096, seed: 11)
        let encoder = try ImageEncoder(configuration: .init(pagesPerBatch: 2))
        var taken = 0
        #expect(throws: EncodingError.self) {
            try image.withUnsafeBytes { bytes in
                try encoder.encode(bytes, baseline: nil) { (_) throws(EncodingError) in
                    taken += 1
                    if taken == 3 { throw EncodingError(.ioFailed, expected: "a reader", found: "a closed pipe") }
                }
            }
        }
        #expect(taken == 3)
    }
}
