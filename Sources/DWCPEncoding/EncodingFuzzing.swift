/// The bodies of the encoding fuzz targets: the libFuzzer executables (`make fuzz`) and the tests in
/// `make test` both call these, so the promises they check are the same in both.
@_spi(Fuzzing)
public enum EncodingFuzzing {
    /// The page size, for the fixtures.
    private static let page = ImageFormat.pageSize

    /// A deterministic byte pattern (xorshift64*): `count` bytes from `seed`.
    private static func pattern(_ count: Int, seed: UInt64) -> [UInt8] {
        var state = seed | 1
        return (0..<count).map { _ in
            state ^= state >> 12
            state ^= state << 25
            state ^= state >> 27
            return UInt8(truncatingIfNeeded: (state &* 0x2545_F491_4F6C_DD1D) >> 56)
        }
    }

    /// The baseline every image-decoder input is decoded against (a stream naming another baseline is
    /// refused by its identity check, itself a path worth reaching).
    public static let baseline: [UInt8] = pattern(3 * page, seed: 2) + [UInt8](repeating: 7, count: page)

    /// The chunk the receiver holds for `known` records.
    public static let heldChunk: [UInt8] = pattern(page, seed: 1)

    /// The receiver's chunks as the decoder sees them.
    public static var chunks: InMemoryChunkStore {
        var store = InMemoryChunkStore()
        store.insert(heldChunk)
        return store
    }

    /// Valid streams that between them use every record kind, stored and compressed bodies, one page
    /// and partial pages: the fuzzers' seed corpus.
    public static func imageSeeds() throws(EncodingError) -> [[UInt8]] {
        var image = [UInt8](repeating: 0, count: page) + Array(baseline[page..<(2 * page)]) + heldChunk
        var changed = Array(baseline[(3 * page)...])
        changed[5] ^= 0x40
        image += changed + heldChunk + pattern(page + 17, seed: 4)
        var seeds: [[UInt8]] = []
        for level in [nil, 3] as [Int?] {
            let encoder = try ImageEncoder(configuration: .init(compressionLevel: level, pagesPerBatch: 3))
            seeds.append(try encoder.encode(image, baseline: baseline, known: chunks))
        }
        seeds.append(try ImageEncoder().encode(pattern(page, seed: 9)))
        seeds.append(try ImageEncoder(configuration: .init(compressionLevel: nil)).encode([1, 2, 3]))
        return seeds
    }

    /// Decodes `input` as an HDE image stream against ``baseline`` and ``chunks`` (images up to 1 MiB)
    /// and traps when a promise breaks: decoding either throws an ``EncodingError`` or returns an image
    /// of at most the limit, and an image it returns encodes and decodes back to itself.
    /// - Parameter input: Arbitrary bytes.
    public static func exerciseImageDecoder(_ input: UnsafeRawBufferPointer) {
        let limit = 1 << 20
        let image: [UInt8]
        do {
            let decoder = try ImageDecoder(limits: .init(maximumImageLength: limit))
            image = try baseline.withUnsafeBytes { (baselineBytes) throws(EncodingError) in
                try decoder.decode(input, baseline: baselineBytes, chunks: chunks)
            }
        } catch {
            return  // a typed error: the promise holds
        }
        precondition(image.count <= limit, "the decoder returned \(image.count) bytes, above its limit")
        do {
            let stream = try ImageEncoder().encode(image, baseline: baseline, known: chunks)
            let again = try ImageDecoder(limits: .init(maximumImageLength: limit)).decode(
                stream, baseline: baseline, chunks: chunks)
            precondition(again == image, "a decoded image did not survive encoding and decoding again")
        } catch {
            preconditionFailure("a decoded image failed to encode and decode again: \(error)")
        }
    }

    /// Parses `input` as a serialized ``ChunkSummary`` (at most 2^20 bits) and traps when a promise
    /// breaks: parsing either throws an ``EncodingError`` or yields a summary that serializes to exactly
    /// `input` and answers queries.
    /// - Parameter input: Arbitrary bytes.
    public static func exerciseChunkSummary(_ input: UnsafeRawBufferPointer) {
        let bytes = Array(input)
        guard let summary = try? ChunkSummary(serialized: bytes, maximumBitCount: 1 << 20) else { return }
        precondition(summary.serialized() == bytes, "a parsed summary serialized to other bytes")
        precondition(summary.bitCount <= 1 << 20, "a parsed summary exceeds its bit limit")
        _ = summary.mayContain(ChunkKey(of: bytes))
        _ = summary.estimatedFalsePositiveRate
    }

    /// Valid summaries of 0, 1 and 100 keys: the summary fuzzer's seed corpus.
    public static func summarySeeds() -> [[UInt8]] {
        [0, 1, 100].map { count in
            var summary = ChunkSummary(expectedCount: max(count, 1))
            for index in 0..<count { summary.insert(ChunkKey(of: pattern(16, seed: UInt64(index) + 11))) }
            return summary.serialized()
        }
    }
}
