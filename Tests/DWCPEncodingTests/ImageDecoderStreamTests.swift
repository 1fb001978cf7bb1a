import Testing

@testable import DWCPEncoding

@Suite struct ImageDecoderStreamTests {
    /// A sink that records how it was driven.
    final class RecordingSink: DecodedImageSink {
        var bytes: [UInt8] = []
        var reads = 0
        var announcedLength: Int?

        func willAppend(imageLength: Int) {
            #expect(announcedLength == nil, "announced once")
            announcedLength = imageLength
        }

        func append(_ more: UnsafeRawBufferPointer) {
            bytes.append(contentsOf: more)
        }

        func read(at offset: Int, into destination: UnsafeMutableRawBufferPointer) {
            reads += 1
            bytes.withUnsafeBytes {
                destination.copyMemory(
                    from: UnsafeRawBufferPointer(rebasing: $0[offset..<(offset + destination.count)]))
            }
        }
    }

    /// Decodes `stream` fed in pieces of seeded random sizes (1 byte to 1.5 batches).
    static func decodeInPieces(
        _ stream: [UInt8], baseline: [UInt8]? = nil, chunks: (any ChunkProvider)? = nil, seed: UInt64,
        sink: RecordingSink = RecordingSink()
    ) throws -> [UInt8] {
        var generator = SeededGenerator(seed: seed)
        let decoder = try ImageDecoder()
        try (baseline ?? []).withUnsafeBytes { baselineBytes in
            let decoding = ImageDecoder.Stream(
                decoder: decoder, baseline: baseline == nil ? nil : baselineBytes, chunks: chunks, sink: sink)
            try stream.withUnsafeBytes { raw in
                var offset = 0
                while offset < raw.count {
                    let size = [1, 7, 20, 41, 4096, 600_000][Int(generator.next() % 6)]
                    let end = min(raw.count, offset + Int(generator.next() % UInt64(size)) + 1)
                    try decoding.feed(UnsafeRawBufferPointer(rebasing: raw[offset..<end]))
                    offset = end
                }
            }
            let identity = try decoding.finish()
            #expect(identity == ChunkIdentity(of: sink.bytes))
            #expect(decoding.imageBytes == sink.bytes.count)
            #expect(decoding.streamBytes == stream.count)
        }
        return sink.bytes
    }

    @Test func duplicatesOfEarlierBatchesAreReadBackFromTheSink() throws {
        // Batches of 2 pages: the repeated page is in another batch than its first copy.
        let first = TestData.random(TestData.page, seed: 9)
        let image = first + TestData.random(3 * TestData.page, seed: 10) + first
        let stream = try ImageEncoder(configuration: .init(pagesPerBatch: 2)).encode(image)
        let sink = RecordingSink()
        #expect(try Self.decodeInPieces(stream, seed: 1, sink: sink) == image)
        #expect(sink.reads == 1)
        #expect(sink.announcedLength == image.count)
    }

    @Test func aStreamCutShortIsTruncatedAtFinish() throws {
        let image = TestData.mixed(40 * TestData.page, seed: 3)
        let stream = try ImageEncoder(configuration: .init(pagesPerBatch: 8)).encode(image)
        for cut in [0, 1, ImageFormat.headerLength, ImageFormat.headerLength + 5, stream.count / 2, stream.count - 1] {
            let decoding = ImageDecoder.Stream(decoder: try ImageDecoder(), sink: RecordingSink())
            try stream.withUnsafeBytes { try decoding.feed(UnsafeRawBufferPointer(rebasing: $0[0..<cut])) }
            let error = #expect(throws: EncodingError.self) { try decoding.finish() }
            #expect(error?.code == .truncated, "cut at \(cut)")
        }
    }

    @Test func aBatchLongerThanItsBodyIsRefusedBeforeItsBytesArrive() throws {
        var stream = try ImageEncoder(configuration: .init(compressionLevel: nil)).encode(
            TestData.random(TestData.page, seed: 4))
        // Claim a stored length far beyond the body: refused on the batch header alone.
        stream.writeLittleEndian(UInt32(1 << 30), at: ImageFormat.headerLength + 4)
        let decoding = ImageDecoder.Stream(decoder: try ImageDecoder(), sink: RecordingSink())
        let error = #expect(throws: EncodingError.self) {
            try stream.withUnsafeBytes {
                try decoding.feed(UnsafeRawBufferPointer(rebasing: $0[0..<(ImageFormat.headerLength + 20)]))
            }
        }
        #expect(error?.code == .malformedRecord)
    }

    @Test func bytesAfterTheEndAreRefused() throws {
        let stream = try ImageEncoder().encode(TestData.text(3 * TestData.page, seed: 5))
        let decoding = ImageDecoder.Stream(decoder: try ImageDecoder(), sink: RecordingSink())
        try stream.withUnsafeBytes { try decoding.feed($0) }
        let error = #expect(throws: EncodingError.self) { try [UInt8(0)].withUnsafeBytes { try decoding.feed($0) } }
        #expect(error?.code == .trailingBytes)
    }

    @Test func theEncoderStreamChangesLevelPerBatchAndCoversTheImage() throws {
        let image = TestData.mixed(50 * TestData.page + 7, seed: 8)
        let encoder = try ImageEncoder(configuration: .init(pagesPerBatch: 4))
        var stream: [UInt8] = []
        var covered = 0
        var pieces = 0
        try image.withUnsafeBytes { raw in
            let encoding = ImageEncoder.Stream(encoder: encoder, image: raw, baseline: nil, known: nil)
            let levels: [Int?] = [nil, 1, 3, 19, -5]
            while let bytes = try encoding.next(
                compressionLevel: levels[pieces % levels.count],
                { piece in
                    stream.append(contentsOf: piece)
                })
            {
                covered += bytes
                pieces += 1
            }
            #expect(encoding.isFinished)
        }
        #expect(covered == image.count)
        #expect(pieces == 2 + 13)  // header, 13 batches of at most 4 pages, end
        #expect(encoder.statistics.encodedLength == stream.count)
        #expect(try ImageDecoder().decode(stream) == image)
        let error = #expect(throws: EncodingError.self) {
            try image.withUnsafeBytes { raw in
                let encoding = ImageEncoder.Stream(encoder: encoder, image: raw, baseline: nil, known: nil)
                try encoding.next(compressionLevel: nil) { _ in }
                try encoding.next(compressionLevel: 99) { _ in }
            }
        }
        #expect(error?.code == .invalidConfiguration)
    }
}
