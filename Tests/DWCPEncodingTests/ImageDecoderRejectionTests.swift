import Testing

@_spi(Fuzzing) @testable import DWCPEncoding

@Suite struct ImageDecoderRejectionTests {
    static let page = ImageFormat.pageSize

    /// A small stream that uses every record kind, with its inputs.
    static func sample(compressionLevel: Int? = 3) throws -> (
        stream: [UInt8], image: [UInt8], baseline: [UInt8], store: InMemoryChunkStore
    ) {
        let held = TestData.random(page, seed: 1)
        let baseline = TestData.mixed(3 * page, seed: 2) + TestData.random(page, seed: 3)
        var image = [UInt8](repeating: 0, count: page) + Array(baseline[page..<(2 * page)]) + held
        var changed = Array(baseline[(3 * page)...])
        changed[5] ^= 0x40
        image += changed + held + TestData.text(page + 17, seed: 4)
        var store = InMemoryChunkStore()
        store.insert(held)
        let encoder = try ImageEncoder(configuration: .init(compressionLevel: compressionLevel, pagesPerBatch: 3))
        let stream = try encoder.encode(image, baseline: baseline, known: store)
        return (stream, image, baseline, store)
    }

    @Test(arguments: [nil, 3])
    func everyTruncationFailsWithATypedError(level: Int?) throws {
        let sample = try Self.sample(compressionLevel: level)
        let decoder = try ImageDecoder()
        #expect(try decoder.decode(sample.stream, baseline: sample.baseline, chunks: sample.store) == sample.image)
        for length in 0..<sample.stream.count {
            let error = #expect(throws: EncodingError.self) {
                try decoder.decode(Array(sample.stream.prefix(length)), baseline: sample.baseline, chunks: sample.store)
            }
            #expect(error?.code == .truncated || error?.code == .decompressionFailed, "cut at \(length): \(error!)")
        }
    }

    @Test(arguments: [nil, 3])
    func everyByteCorruptionIsDetected(level: Int?) throws {
        let sample = try Self.sample(compressionLevel: level)
        let decoder = try ImageDecoder()
        for offset in 0..<sample.stream.count {
            for mask: UInt8 in [0x01, 0x80, 0xFF] {
                var corrupt = sample.stream
                corrupt[offset] ^= mask
                do {
                    let image = try decoder.decode(corrupt, baseline: sample.baseline, chunks: sample.store)
                    // Only bytes no decoder reads (zstd's unused header bits) may change without an error.
                    #expect(image == sample.image, "silent corruption from byte \(offset) ^ \(mask)")
                } catch {
                    _ = error.code
                }
            }
        }
    }

    @Test func missingOrWrongBaselineAndUnknownChunksAreTypedErrors() throws {
        let sample = try Self.sample()
        let decoder = try ImageDecoder()
        var error = #expect(throws: EncodingError.self) {
            try decoder.decode(sample.stream, baseline: nil, chunks: sample.store)
        }
        #expect(error?.code == .baselineRequired)
        var wrong = sample.baseline
        wrong[0] ^= 1
        error = #expect(throws: EncodingError.self) {
            try decoder.decode(sample.stream, baseline: wrong, chunks: sample.store)
        }
        #expect(error?.code == .baselineMismatch)
        error = #expect(throws: EncodingError.self) {
            try decoder.decode(sample.stream, baseline: sample.baseline, chunks: InMemoryChunkStore())
        }
        #expect(error?.code == .unknownChunk)
        error = #expect(throws: EncodingError.self) {
            try decoder.decode(sample.stream, baseline: sample.baseline, chunks: nil)
        }
        #expect(error?.code == .unknownChunk)
    }

    @Test func headerFieldsAreValidated() throws {
        let sample = try Self.sample()
        let decoder = try ImageDecoder()
        func code(patching offset: Int, with byte: UInt8) -> EncodingError.Code? {
            var stream = sample.stream
            stream[offset] = byte
            return #expect(throws: EncodingError.self) {
                try decoder.decode(stream, baseline: sample.baseline, chunks: sample.store)
            }?.code
        }
        #expect(code(patching: 0, with: 0) == .badMagic)
        // Version 1 named `known` chunks by XXH3-128; its streams are refused, as is any other version.
        #expect(code(patching: 4, with: 1) == .unsupportedVersion)
        #expect(code(patching: 4, with: 3) == .unsupportedVersion)
        #expect(code(patching: 5, with: 3) == .malformedHeader)
        #expect(code(patching: 6, with: 13) == .malformedHeader)
        #expect(code(patching: 15, with: 1) == .limitExceeded)  // image length's top byte
        #expect(
            #expect(throws: EncodingError.self) {
                try ImageDecoder(limits: .init(maximumImageLength: 4096)).decode(
                    sample.stream, baseline: sample.baseline, chunks: sample.store)
            }?.code == .limitExceeded)
        #expect(
            #expect(throws: EncodingError.self) {
                try decoder.decode(sample.stream + [0], baseline: sample.baseline, chunks: sample.store)
            }?.code == .trailingBytes)
    }

    @Test func batchBodyBombsAreRefusedBeforeAllocation() throws {
        // One page of zeros, then a batch claiming a 4 GiB body that decompresses from a tiny frame.
        let frame = try ZstdCodec.Compressor(level: 19).compress([UInt8](repeating: 0, count: 32 << 20))
        var stream = try ImageEncoder().encode([UInt8](repeating: 0, count: 4096))
        let batch = ImageFormat.headerLength
        stream.removeSubrange(batch..<(stream.count - ImageFormat.endLength))
        var forged: [UInt8] = [ImageFormat.batchTag, 1]
        forged.appendLittleEndian(UInt16(1))
        forged.appendLittleEndian(UInt32(frame.count))
        forged.appendLittleEndian(UInt32.max)
        forged.appendLittleEndian(UInt64(0))
        stream.insert(contentsOf: forged + frame, at: batch)
        var error = #expect(throws: EncodingError.self) { try ImageDecoder().decode(stream) }
        #expect(error?.code == .limitExceeded)
        // Claiming a plausible body length does not help: the frame declares more than that.
        stream.writeLittleEndian(UInt32(4097), at: batch + 8)
        error = #expect(throws: EncodingError.self) { try ImageDecoder().decode(stream) }
        #expect(error?.code == .decompressionBomb)
    }

    /// Seeded mutation fuzzing: 20 000 mutated streams; each must decode or fail with a typed error.
    @Test func seededMutationFuzz() throws {
        var seeds: [[UInt8]] = []
        let sample = try Self.sample()
        seeds.append(sample.stream)
        seeds.append(try Self.sample(compressionLevel: nil).stream)
        seeds.append(try ImageEncoder().encode(TestData.mixed(5 * Self.page + 3, seed: 9)))
        seeds.append(try ImageEncoder(configuration: .init(compressionLevel: nil)).encode([1, 2, 3]))
        let decoder = try ImageDecoder(limits: .init(maximumImageLength: 1 << 20))
        var generator = SeededGenerator(seed: 0xF022)
        var decoded = 0
        var failures: [EncodingError.Code: Int] = [:]
        for _ in 0..<20_000 {
            var input = seeds[Int(generator.next() % UInt64(seeds.count))]
            for _ in 0...(generator.next() % 4) {
                let position = input.isEmpty ? 0 : Int(generator.next() % UInt64(input.count))
                switch generator.next() % 6 {
                case 0 where !input.isEmpty: input[position] ^= UInt8(1 << (generator.next() % 8))
                case 1 where !input.isEmpty: input[position] = UInt8(truncatingIfNeeded: generator.next())
                case 2: input.insert(UInt8(truncatingIfNeeded: generator.next()), at: position)
                case 3 where !input.isEmpty: input.remove(at: position)
                case 4: input.removeLast(input.count - position)
                default:
                    if !input.isEmpty {  // an interesting integer at a random offset
                        let values: [UInt8] = [0, 0xFF, 0x7F, 0x80, 1]
                        input[position] = values[Int(generator.next() % 5)]
                    }
                }
            }
            do {
                _ = try decoder.decode(input, baseline: sample.baseline, chunks: sample.store)
                decoded += 1
            } catch {
                failures[error.code, default: 0] += 1
            }
        }
        #expect(failures.values.reduce(0, +) + decoded == 20_000)
        #expect(failures.count >= 5, "\(failures)")
    }

    /// The fuzz targets' bodies (`make fuzz`) on their seeds and on seeded mutations of them: the seeds
    /// decode, and no mutation breaks a promise the harness checks (it traps if one does).
    @Test func fuzzHarnessesHoldOnSeedsAndMutations() throws {
        let seeds = try EncodingFuzzing.imageSeeds()
        for seed in seeds {
            #expect(
                (try? ImageDecoder().decode(seed, baseline: EncodingFuzzing.baseline, chunks: EncodingFuzzing.chunks))
                    != nil)
        }
        let summaries = EncodingFuzzing.summarySeeds()
        #expect(summaries.prefix(3).allSatisfy { (try? ChunkSummary(serialized: $0)) != nil })
        #expect((try? EncodedObjectOffer(serialized: summaries[3], maximumImageLength: 1 << 20)) != nil)
        #expect((try? EncodedObjectReply(serialized: summaries[4], baselines: 1)) != nil)
        #expect((try? EncodedObjectQuery(serialized: summaries[5])) != nil)
        #expect((try? EncodedObjectAnswer(serialized: summaries[6], expectedCount: 5)) != nil)
        #expect((try? ImageManifest(serialized: summaries[7])) != nil)
        var generator = SeededGenerator(seed: 0xF077)
        for round in 0..<2_000 {
            let pool = round % 2 == 0 ? seeds : summaries
            var input = pool[Int(generator.next() % UInt64(pool.count))]
            for _ in 0...(generator.next() % 3) where !input.isEmpty {
                let position = Int(generator.next() % UInt64(input.count))
                input[position] ^= UInt8(truncatingIfNeeded: generator.next() | 1)
            }
            input.withUnsafeBytes {
                if round % 2 == 0 {
                    EncodingFuzzing.exerciseImageDecoder($0)
                } else {
                    EncodingFuzzing.exerciseChunkSummary($0)
                }
            }
        }
    }
}
