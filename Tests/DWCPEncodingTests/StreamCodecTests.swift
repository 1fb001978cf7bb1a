import Testing

@_spi(Fuzzing) @testable import DWCPEncoding

/// The opaque-stream codec (FastCDC + references + zstd batches): round trips over edge cases and piece
/// sizes, references to a receiver's chunks, and typed errors for every malformed input.
@Suite("HDE stream codec")
struct StreamCodecTests {
    static let chunker = try! Chunker.FastCDC(minimumSize: 2048, averageSize: 8192, maximumSize: 65536)

    /// Encodes `input` fed in pieces of `piece` bytes, flushing after `flushAfter` pieces if given.
    /// A node's chunks and their resemblance index, as an agent's store keeps them.
    final class Node {
        var chunks: [ChunkKey: [UInt8]] = [:]
        var index = SimilarityIndex()

        func keep(_ bytes: UnsafeRawBufferPointer, _ key: ChunkKey, _ features: ChunkFeatures?) {
            chunks[key] = Array(bytes)
            if let features { index.insert(features, key: key) }
        }
    }

    /// Encodes `input` fed in pieces of `piece` bytes. With `deltas`, resembling chunks of `sender` (held by
    /// the receiver when in `known`) serve as bases; every chunk cut is kept in `sender`.
    static func encode(
        _ input: [UInt8], level: Int? = 3, piece: Int = 100_000, known: Set<ChunkKey> = [], deltas: Bool = false,
        sender: Node = Node()
    ) throws -> (bytes: [UInt8], statistics: StreamEncoder.Statistics) {
        var encoder = try StreamEncoder(
            chunker: chunker, level: level,
            hooks: .init(
                receiverHolds: { known.contains($0) }, similar: deltas ? { sender.index.candidates(for: $0) } : nil,
                content: { sender.chunks[$0] },
                cut: { bytes, key, features, _ in sender.keep(bytes, key, features) }))
        return (try feed(input, to: &encoder, piece: piece), encoder.statistics)
    }

    /// Feeds `input` to `encoder` in pieces of `piece` bytes, finishes it and returns what it made.
    static func feed(_ input: [UInt8], to encoder: inout StreamEncoder, piece: Int) throws -> [UInt8] {
        var output: [UInt8] = []
        var offset = 0
        while offset < input.count {
            let end = min(input.count, offset + piece)
            try input[offset..<end].withUnsafeBytes { try encoder.append($0) }
            output += encoder.takeOutput()
            offset = end
        }
        try encoder.finish()
        return output + encoder.takeOutput()
    }

    /// Decodes `encoded` fed in pieces drawn from `pieces` (cycled), resolving references from `chunks`.
    static func decode(_ encoded: [UInt8], pieces: [Int] = [1 << 20], chunks: [ChunkKey: [UInt8]] = [:]) throws
        -> (bytes: [UInt8], stored: [[UInt8]])
    {
        var decoder = try StreamDecoder()
        var output: [UInt8] = []
        var stored: [[UInt8]] = []
        var offset = 0
        var index = 0
        while offset < encoded.count {
            let end = min(encoded.count, offset + pieces[index % pieces.count])
            try encoded[offset..<end].withUnsafeBytes { raw in
                try decoder.append(
                    raw, lookup: { chunks[$0] },
                    storing: { chunk, key in
                        #expect(key == nil || key == ChunkKey(of: chunk), "a key given with a chunk is its own")
                        stored.append(Array(chunk))
                    }, output: { output += $0 })
            }
            offset = end
            index += 1
        }
        try decoder.finish()
        return (output, stored)
    }

    @Test(
        "Round trip: empty, one byte, one minimum chunk, a maximum chunk, text and random, compressed or raw",
        arguments: [0, 1, 2048, 65536, 65537, 3 << 20], [nil, 1, 3] as [Int?])
    func roundTrip(length: Int, level: Int?) throws {
        for input in [TestData.text(length, seed: 7), TestData.random(length, seed: 8)] {
            let sender = Node()
            let (encoded, statistics) = try Self.encode(input, level: level, sender: sender)
            #expect(statistics.inputBytes == UInt64(input.count))
            for pieces in [[1 << 20], [1], [7, 4096, 13, 100_003]] where !(pieces == [1] && encoded.count > 300_000) {
                let (decoded, stored) = try Self.decode(encoded, pieces: pieces)
                #expect(decoded == input)
                // Both sides keep the same chunks (a repeat inside the stream goes as a reference).
                #expect(Set(stored.map { ChunkKey(of: $0) }) == Set(sender.chunks.keys))
            }
        }
    }

    @Test("The encoder says how much input its output so far stands for, as a paced producer asks")
    func inputCarriedByOutput() throws {
        var encoder = try StreamEncoder(chunker: Self.chunker, level: 1)
        let input = TestData.text(3 << 20, seed: 9)
        var taken: [(output: UInt64, input: UInt64)] = []
        var output: [UInt8] = []
        for start in stride(from: 0, to: input.count, by: 1 << 20) {
            try input[start..<(start + (1 << 20))].withUnsafeBytes { try encoder.append($0) }
            encoder.takeOutput(appendingTo: &output)
            taken.append((UInt64(output.count), UInt64(start + (1 << 20))))
        }
        try encoder.finish()
        encoder.takeOutput(appendingTo: &output)
        #expect(encoder.inputBytes(carriedBy: 0) == 0 || taken[0].output == 0)
        #expect(encoder.inputBytes(carriedBy: taken[0].output) == taken[0].input)
        #expect(encoder.inputBytes(carriedBy: taken[1].output - 1) == taken[0].input, "not before the mark")
        #expect(encoder.inputBytes(carriedBy: taken[2].output) == taken[2].input)
        #expect(encoder.inputBytes(carriedBy: UInt64(output.count)) == UInt64(input.count))
    }

    @Test("Text compresses; random data costs at most 1 % more than itself")
    func sizes() throws {
        let text = try Self.encode(TestData.text(4 << 20, seed: 1))
        #expect(text.bytes.count < (4 << 20) / 3)
        let random = try Self.encode(TestData.random(4 << 20, seed: 2))
        #expect(random.bytes.count <= (4 << 20) + (4 << 20) / 100)
        #expect(random.statistics.rawBatches > 0 && random.statistics.compressedBatches == 0)
    }

    @Test("A stream like one the receiver holds goes as references, and decodes from its chunks")
    func references() throws {
        let first = TestData.random(4 << 20, seed: 3)
        var second = first
        for offset in stride(from: 100_000, to: second.count, by: 1 << 20) { second[offset] ^= 0xFF }
        let receiver = Node()
        _ = try Self.encode(first, sender: receiver)
        let held = receiver.chunks
        let (encoded, statistics) = try Self.encode(second, known: Set(held.keys))
        #expect(statistics.referencedBytes > UInt64(second.count) * 8 / 10)
        #expect(encoded.count < second.count / 5)
        #expect(try Self.decode(encoded, pieces: [5000], chunks: held).bytes == second)
        // The receiver without those chunks refuses with a typed error.
        #expect(throws: EncodingError.self) { _ = try Self.decode(encoded, chunks: [:]) }
        do {
            _ = try Self.decode(encoded, chunks: [:])
        } catch let error as EncodingError {
            #expect(error.code == .unknownChunk)
        }
    }

    @Test("A stream whose pages changed by a few bytes each goes as deltas against the previous version")
    func deltas() throws {
        // Random memory (nothing for zstd to find) whose every 4 KiB page then changes in 8 bytes.
        let first = TestData.random(4 << 20, seed: 5)
        var second = first
        var generator = SeededGenerator(seed: 6)
        for page in stride(from: 0, to: second.count, by: 4096) {
            let offset = page + Int(generator.next() % 4088)
            for index in offset..<(offset + 8) { second[index] = UInt8(truncatingIfNeeded: generator.next()) }
        }
        // The first stream went a → b: both keep its chunks (b by receiving them, a by sending them).
        let a = Node()
        let (firstEncoded, _) = try Self.encode(first, deltas: true, sender: a)
        let (firstDecoded, bChunks) = try Self.decode(firstEncoded)
        #expect(firstDecoded == first)
        // The second goes b → a: a holds the first's chunks; b finds their resembling versions by feature.
        let b = Node()
        for chunk in bChunks { chunk.withUnsafeBytes { b.keep($0, ChunkKey(of: $0), ChunkFeatures(of: $0)) } }
        let (encoded, statistics) = try Self.encode(second, known: Set(a.chunks.keys), deltas: true, sender: b)
        #expect(statistics.deltaBytes > UInt64(second.count) * 9 / 10, "\(statistics)")
        #expect(encoded.count < second.count / 10, "\(encoded.count) bytes for \(second.count)")
        #expect(try Self.decode(encoded, pieces: [3000], chunks: a.chunks).bytes == second)
        // Without deltas the same stream is as large as the data.
        let (plain, _) = try Self.encode(second, known: Set(a.chunks.keys))
        #expect(plain.count > second.count * 9 / 10)
    }

    @Test("A delta whose base is missing or rebuilds other bytes is refused")
    func deltaRejections() throws {
        let first = TestData.random(256 << 10, seed: 7)
        var second = first
        second[1000] ^= 1
        let a = Node()
        _ = try Self.encode(first, deltas: true, sender: a)
        let (encoded, statistics) = try Self.encode(second, known: Set(a.chunks.keys), deltas: true, sender: a)
        #expect(statistics.deltaChunks == 1)
        do {
            _ = try Self.decode(encoded, chunks: [:])
            Issue.record("decoded a delta without its base")
        } catch let error as EncodingError {
            #expect(error.code == .unknownChunk)
        }
        // A base with the right key but other content (a corrupted store) fails the chunk's check.
        let corrupted = a.chunks.mapValues { chunk -> [UInt8] in
            var changed = chunk
            changed[0] ^= 0x80
            return changed
        }
        do {
            _ = try Self.decode(encoded, chunks: corrupted)
            Issue.record("decoded against corrupted bases")
        } catch let error as EncodingError {
            #expect(error.code == .checksumMismatch || error.code == .unknownChunk, "\(error)")
        }
    }

    @Test("A flush when the stream goes quiet emits everything read; the result still round-trips")
    func flush() throws {
        let input = TestData.text(1 << 20, seed: 4)
        var encoder = try StreamEncoder(chunker: Self.chunker, level: 3)
        try input[0..<300_000].withUnsafeBytes { try encoder.append($0) }
        try encoder.flush()
        var encoded = encoder.takeOutput()
        let partial = try Self.decodePrefix(encoded)
        #expect(partial == Array(input[0..<300_000]))
        try input[300_000...].withUnsafeBytes { try encoder.append($0) }
        try encoder.finish()
        encoded += encoder.takeOutput()
        #expect(try Self.decode(encoded).bytes == input)
    }

    static func decodePrefix(_ encoded: [UInt8]) throws -> [UInt8] {
        var decoder = try StreamDecoder()
        var output: [UInt8] = []
        try encoded.withUnsafeBytes {
            try decoder.append($0, lookup: { _ in nil }, storing: { _, _ in }, output: { output += $0 })
        }
        return output
    }

    /// A valid stream of one compressed batch and one raw batch, for corrupting.
    static func sample() throws -> [UInt8] {
        try encode(TestData.text(200_000, seed: 9) + TestData.random(50_000, seed: 10)).bytes
    }

    static func expectFailure(
        _ bytes: [UInt8], _ code: EncodingError.Code, sourceLocation: SourceLocation = #_sourceLocation
    ) {
        do {
            _ = try decode(bytes)
            Issue.record("decoded a malformed stream", sourceLocation: sourceLocation)
        } catch let error as EncodingError {
            #expect(error.code == code, "\(error)", sourceLocation: sourceLocation)
        } catch {
            Issue.record("untyped error \(error)", sourceLocation: sourceLocation)
        }
    }

    @Test("Malformed streams get typed errors: magic, version, kinds, limits, truncation, trailing bytes, totals")
    func rejections() throws {
        let valid = try Self.sample()
        #expect(try Self.decode(valid).bytes.count == 250_000)
        var bytes = valid
        bytes[0] = 0x41
        Self.expectFailure(bytes, .badMagic)
        bytes = valid
        bytes[4] = 2
        Self.expectFailure(bytes, .unsupportedVersion)
        bytes = valid
        bytes[8] = 9
        Self.expectFailure(bytes, .malformedRecord)
        Self.expectFailure(Array(valid.dropLast(3)), .truncated)
        Self.expectFailure(Array(valid.prefix(8)), .truncated)
        Self.expectFailure(valid + [0], .trailingBytes)
        bytes = valid
        bytes[bytes.count - 8] ^= 1  // the end record's total
        Self.expectFailure(bytes, .malformedRecord)
        let header = Array(valid.prefix(8))
        // A batch of 5000 chunks, a chunk of 2 MiB, a batch over 8 MiB: refused before any payload arrives.
        var record: [UInt8] = [1]
        record.appendVarint(5000)
        Self.expectFailure(header + record, .limitExceeded)
        record = [1]
        record.appendVarint(1)
        record.appendVarint(2 << 20)
        Self.expectFailure(header + record, .limitExceeded)
        record = [1]
        record.appendVarint(9)
        for _ in 0..<9 { record.appendVarint(1 << 20) }
        Self.expectFailure(header + record, .limitExceeded)
        // A raw payload whose length is not the chunks' sum; an unknown payload kind.
        record = [1]
        record.appendVarint(1)
        record.appendVarint(10)
        record += [0]
        record.appendVarint(11)
        Self.expectFailure(header + record, .malformedRecord)
        record = [1, 1, 10, 7]
        Self.expectFailure(header + record, .malformedRecord)
        // A reference of length 0.
        Self.expectFailure(header + [2, 0] + [UInt8](repeating: 0, count: 32), .limitExceeded)
    }

    @Test("A zstd payload that inflates past its declared size (a bomb) or is corrupt is refused")
    func bombs() throws {
        let compressor = try ZstdCodec.Compressor(level: 3)
        let bomb = try compressor.compress([UInt8](repeating: 0, count: 4 << 20))
        var record: [UInt8] = [1]
        record.appendVarint(1)
        record.appendVarint(1000)
        record += [1]
        record.appendVarint(bomb.count)
        record += bomb
        let header = StreamFormat.magic + [StreamFormat.version, 0, 0, 0]
        #expect(throws: EncodingError.self) { _ = try Self.decode(header + record) }
        var corrupt = try compressor.compress(TestData.text(1000, seed: 1))
        corrupt[corrupt.count / 2] ^= 0x55
        record = [1]
        record.appendVarint(1)
        record.appendVarint(1000)
        record += [1]
        record.appendVarint(corrupt.count)
        #expect(throws: EncodingError.self) { _ = try Self.decode(header + record + corrupt) }
    }

    @Test("The fuzz entry point survives its seeds and their truncations, and a batch that repeats a chunk")
    func fuzzSeeds() throws {
        // What libFuzzer found first: a raw batch holding one chunk twice decodes, and re-encoding it refers the
        // second copy back to the first, which the re-decoding side must have kept.
        let chunk = TestData.random(4096, seed: 12)  // long enough for the fuzz chunker to cut inside it
        var repeated = StreamFormat.magic + [StreamFormat.version, 0, 0, 0, 1, 2]
        repeated.appendVarint(4096)
        repeated.appendVarint(4096)
        repeated += [0]
        repeated.appendVarint(8192)
        repeated += chunk + chunk + [0]
        repeated.appendLittleEndian(UInt64(8192))
        #expect(try Self.decode(repeated).bytes == chunk + chunk)
        repeated.withUnsafeBytes { EncodingFuzzing.exerciseStreamDecoder($0) }
        for seed in try EncodingFuzzing.streamSeeds() {
            for cut in [seed.count, seed.count / 2, 9, 1] {
                seed.prefix(cut).withUnsafeBytes { EncodingFuzzing.exerciseStreamDecoder($0) }
            }
        }
    }
}
