#if canImport(Glibc)
    import Glibc
#endif

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

    /// Parses `input` as each of the small formats a peer (or a file) hands the encoding layer — a
    /// ``ChunkSummary`` (at most 2^20 bits), an ``EncodedObjectOffer``, ``EncodedObjectReply``,
    /// ``EncodedObjectQuery``, ``EncodedObjectAnswer`` and an ``ImageManifest`` (images up to 16 MiB) — and
    /// traps when a promise breaks: each parse either throws an ``EncodingError`` or yields a value that
    /// serializes to exactly `input`.
    /// - Parameter input: Arbitrary bytes.
    public static func exerciseChunkSummary(_ input: UnsafeRawBufferPointer) {
        let bytes = Array(input)
        if let summary = try? ChunkSummary(serialized: bytes, maximumBitCount: 1 << 20) {
            precondition(summary.serialized() == bytes, "a parsed summary serialized to other bytes")
            precondition(summary.bitCount <= 1 << 20, "a parsed summary exceeds its bit limit")
            _ = summary.mayContain(ChunkKey(of: bytes))
            _ = summary.estimatedFalsePositiveRate
        }
        if let offer = try? EncodedObjectOffer(serialized: bytes, maximumImageLength: 1 << 40) {
            precondition(offer.serialized() == bytes, "a parsed offer serialized to other bytes")
        }
        if let reply = try? EncodedObjectReply(serialized: bytes, baselines: EncodedObjectOffer.maximumBaselines) {
            precondition(reply.serialized() == bytes, "a parsed reply serialized to other bytes")
        }
        if let query = try? EncodedObjectQuery(serialized: bytes) {
            precondition(query.serialized() == bytes, "a parsed query serialized to other bytes")
        }
        if bytes.count >= 12 {
            let count = bytes[8..<12].enumerated().reduce(0) { $0 | Int($1.element) << (8 * $1.offset) }
            if let answer = try? EncodedObjectAnswer(serialized: bytes, expectedCount: count) {
                precondition(answer.serialized() == bytes, "a parsed answer serialized to other bytes")
            }
        }
        if let manifest = try? ImageManifest(serialized: bytes, maximumImageLength: 16 << 20) {
            precondition(manifest.serialized() == bytes, "a parsed manifest serialized to other bytes")
            precondition(manifest.similarity(to: manifest.pages) == manifest.pages.compactMap { $0 }.count)
        }
    }

    /// Valid summaries of 0, 1 and 100 keys, and one of each negotiation message and a manifest: the
    /// summary fuzzer's seed corpus.
    public static func summarySeeds() -> [[UInt8]] {
        let summaries = [0, 1, 100].map { count in
            var summary = ChunkSummary(expectedCount: max(count, 1))
            for index in 0..<count { summary.insert(ChunkKey(of: pattern(16, seed: UInt64(index) + 11))) }
            return summary.serialized()
        }
        let keys = (0..<5).map { ChunkKey(of: pattern(16, seed: UInt64($0) + 40)) }
        return summaries + [
            EncodedObjectOffer(imageLength: 1 << 20, baselines: [ChunkIdentity(low: 3, high: 4)]).serialized(),
            EncodedObjectReply(hasStore: true, wantsQuery: true, baseline: 0).serialized(),
            EncodedObjectQuery(prefixes: keys.map(\.prefix)).serialized(),
            EncodedObjectAnswer(held: [true, false, true, true, false]).serialized(),
            ImageManifest(
                identity: ChunkIdentity(low: 1, high: 2), imageLength: 5 * ImageFormat.pageSize - 9,
                pages: [keys[0], nil, keys[1], keys[0], nil]
            ).serialized(),
        ]
    }

    /// Writes `input` as the only segment of a fresh chunk store in `directory` (which must exist and
    /// be empty), opens the store and traps when a promise breaks: opening either throws an
    /// ``EncodingError`` or recovers a store in which every chunk it indexed reads back with exactly
    /// its SHA-256 or fails with a typed error (and is then no longer held), and which still takes and
    /// returns a new chunk. The directory is emptied again before returning.
    /// - Parameters:
    ///   - input: Arbitrary bytes, taken as the content of `segment-0000000000000001.log`.
    ///   - directory: A scratch directory of the caller's.
    public static func exerciseSegmentRecovery(_ input: UnsafeRawBufferPointer, directory: String) {
        let path = directory + "/" + ChunkSegment.fileName(1)
        defer { removeContents(of: directory) }
        let descriptor = open(path, O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0o644)
        precondition(descriptor >= 0, "cannot create \(path)")
        let written = input.isEmpty ? 0 : write(descriptor, input.baseAddress, input.count)
        close(descriptor)
        precondition(written == input.count, "cannot write \(path)")
        checkRecovery(directory: directory, seed: UInt64(input.count))
    }

    /// Opens the store in `directory` and checks what it recovered; the store is closed on return.
    private static func checkRecovery(directory: String, seed: UInt64) {
        let store: PersistentChunkStore
        do {
            store = try PersistentChunkStore(directory: directory, configuration: .init(segmentCapacity: 1 << 20))
        } catch {
            precondition(error.code != .storeInUse, "a store of an earlier input is still open")
            return  // a typed error: the promise holds
        }
        for key in Array(store.index.keys) {
            do {
                if let bytes = try store.get(key) {
                    precondition(ChunkKey(of: bytes) == key, "a recovered chunk read back with another SHA-256")
                }
            } catch {
                precondition(!store.contains(key), "a chunk that failed to read is still held")
            }
        }
        do {
            let fresh = pattern(100, seed: seed)
            let key = try store.put(fresh)
            let back = try store.get(key)
            precondition(back == fresh, "a recovered store returned a new chunk wrongly")
        } catch {
            preconditionFailure("a recovered store failed to take a new chunk: \(error)")
        }
    }

    /// Valid segments (one record; three records of 0, 1 and 300 bytes): the recovery fuzzer's seeds.
    public static func segmentSeeds(scratch directory: String) throws(EncodingError) -> [[UInt8]] {
        var seeds: [[UInt8]] = []
        for lengths in [[5], [0, 1, 300]] {
            try writeSegment(lengths: lengths, directory: directory)
            let path = directory + "/" + ChunkSegment.fileName(1)
            let descriptor = open(path, O_RDONLY | O_CLOEXEC)
            var bytes: [UInt8] = []
            var buffer = [UInt8](repeating: 0, count: 4096)
            while descriptor >= 0, case let count = read(descriptor, &buffer, buffer.count), count > 0 {
                bytes += buffer[0..<count]
            }
            if descriptor >= 0 { close(descriptor) }
            removeContents(of: directory)
            seeds.append(bytes)
        }
        return seeds
    }

    /// Puts chunks of `lengths` into a fresh store in `directory` and closes it.
    private static func writeSegment(lengths: [Int], directory: String) throws(EncodingError) {
        let store = try PersistentChunkStore(directory: directory)
        for (index, length) in lengths.enumerated() { _ = try store.put(pattern(length, seed: UInt64(index))) }
        try store.sync()
    }

    /// Deletes the files in `directory` (a flat scratch directory).
    private static func removeContents(of directory: String) {
        guard let stream = opendir(directory) else { return }
        defer { closedir(stream) }
        while let entry = readdir(stream) {
            let name = withUnsafeBytes(of: entry.pointee.d_name) {
                String(decoding: $0.prefix { $0 != 0 }, as: UTF8.self)
            }
            if name != "." && name != ".." { unlink(directory + "/" + name) }
        }
    }

    // MARK: Opaque streams

    /// The chunker the stream fixtures use (small, so short inputs hold several chunks).
    private static let streamChunker = try! Chunker.FastCDC(minimumSize: 64, averageSize: 256, maximumSize: 1024)

    /// The chunk a stream decoder's receiver holds.
    public static let heldStreamChunk: [UInt8] = pattern(300, seed: 11)

    /// Two QEMU page records of one page, the second changed in a byte, and a section's end: what the page
    /// framing cuts and sends as a delta when these bytes are encoded again.
    static func qemuPageRecords() -> [UInt8] {
        func word(_ value: UInt64) -> [UInt8] { withUnsafeBytes(of: value.bigEndian) { Array($0) } }
        let page = pattern(4096, seed: 14)
        var changed = page
        changed[2000] ^= 1
        return word(0x1000 | 0x08) + [6] + Array("pc.ram".utf8) + page + word(0x1000 | 0x28) + changed + word(0x10)
    }

    /// Valid opaque streams: raw and compressed batches, a reference to ``heldStreamChunk`` and a delta against
    /// it, empty, QEMU page records.
    public static func streamSeeds() throws(EncodingError) -> [[UInt8]] {
        let held = ChunkKey(of: heldStreamChunk)
        var seeds: [[UInt8]] = []
        var nearlyHeld = heldStreamChunk
        nearlyHeld[100] ^= 1
        let inputs = [
            pattern(3000, seed: 12), [UInt8](repeating: 65, count: 2000) + heldStreamChunk + pattern(500, seed: 13), [],
            nearlyHeld, qemuPageRecords(),
        ]
        for (index, input) in inputs.enumerated() {
            var encoder = try StreamEncoder(
                chunker: streamChunker, level: index == 0 ? nil : 3, batchBytes: 1024,
                hooks: .init(
                    receiverHolds: { $0 == held }, similar: { _ in [held] },
                    content: { $0 == held ? heldStreamChunk : nil }))
            try withBytes(of: input) { (raw) throws(EncodingError) in try encoder.append(raw) }
            try encoder.finish()
            seeds.append(encoder.takeOutput())
        }
        return seeds
    }

    /// Decodes `input` as an opaque HDE stream, in two pieces, against a store holding ``heldStreamChunk``,
    /// and traps when a promise breaks: decoding either throws an ``EncodingError`` or yields bytes whose
    /// count is what the decoder reports, that encode (with QEMU page framing: arbitrary bytes must cut and
    /// round-trip whatever records they seem to hold) and decode back to themselves.
    /// - Parameter input: Arbitrary bytes.
    public static func exerciseStreamDecoder(_ input: UnsafeRawBufferPointer) {
        let held = ChunkKey(of: heldStreamChunk)
        var output: [UInt8] = []
        do {
            var decoder = try StreamDecoder()
            let split = input.isEmpty ? 0 : Int(input[0]) % (input.count + 1)
            for piece in [input[..<split], input[split...]] {
                try decoder.append(
                    UnsafeRawBufferPointer(rebasing: piece), lookup: { $0 == held ? heldStreamChunk : nil },
                    storing: { _, _ in }, output: { output += $0 })
            }
            try decoder.finish()
            precondition(decoder.decodedBytes == UInt64(output.count), "the decoder miscounted its output")
        } catch {
            return  // a typed error: the promise holds
        }
        do {
            var sent: [ChunkKey: [UInt8]] = [:]
            var versions: [PageSlot: ChunkKey] = [:]
            var encoder = try StreamEncoder(
                chunker: streamChunker, level: 1, batchBytes: 1024, pageSlots: PageSlotTracker(stream: "fuzz"),
                hooks: .init(
                    previousVersion: { versions[$0] }, content: { sent[$0] },
                    cut: { bytes, key, _, slot in
                        sent[key] = Array(bytes)
                        if let slot { versions[slot] = key }
                    }))
            try output.withUnsafeBytes { raw in try encoder.append(raw) }
            try encoder.finish()
            var again: [UInt8] = []
            var kept: [ChunkKey: [UInt8]] = [:]  // the receiver keeps what arrives: a repeat refers back to it
            var decoder = try StreamDecoder()
            try encoder.takeOutput().withUnsafeBytes { raw in
                try decoder.append(
                    raw, lookup: { kept[$0] }, storing: { chunk, _ in kept[ChunkKey(of: chunk)] = Array(chunk) },
                    output: { again += $0 })
            }
            try decoder.finish()
            precondition(again == output, "decoded bytes did not survive encoding and decoding again")
        } catch {
            preconditionFailure("decoded bytes failed to encode and decode again: \(error)")
        }
    }
}
