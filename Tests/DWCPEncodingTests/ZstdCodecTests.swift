import CZstd
import Testing

@testable import DWCPEncoding

@Suite struct ZstdCodecTests {
    @Test(arguments: [0, 1, 4095, 4096, 65537, 1 << 20])
    func roundTripsAtSeveralLevels(length: Int) throws {
        let input = TestData.mixed(length, seed: UInt64(length))
        let decompressor = try ZstdCodec.Decompressor()
        for level in [-5, 1, 3, 9] {
            let compressor = try ZstdCodec.Compressor(level: level)
            let frame = try compressor.compress(input)
            #expect(try decompressor.decompress(frame, limit: length) == input)
            // The context is reused: a second frame from the same compressor decodes too.
            #expect(try decompressor.decompress(try compressor.compress(input), limit: length) == input)
        }
    }

    @Test func trainedDictionaryRoundTripsAndIsRequired() throws {
        let samples = (0..<400).map { TestData.text(1024, seed: UInt64($0)) }
        let dictionary = try ZstdCodec.Dictionary.train(samples: samples, capacity: 8192)
        #expect(dictionary.id != 0)
        #expect(dictionary.bytes.count <= 8192)
        let input = TestData.text(2048, seed: 9999)
        let withDictionary = try ZstdCodec.Compressor(level: 3, dictionary: dictionary).compress(input)
        let without = try ZstdCodec.Compressor(level: 3).compress(input)
        #expect(withDictionary.count < without.count)
        #expect(try ZstdCodec.Decompressor(dictionary: dictionary).decompress(withDictionary, limit: 4096) == input)
        #expect(throws: EncodingError.self) {
            try ZstdCodec.Decompressor().decompress(withDictionary, limit: 4096)
        }
        // A reloaded dictionary (as a peer receives it) decodes the same frames.
        let reloaded = try ZstdCodec.Dictionary(bytes: dictionary.bytes)
        #expect(try ZstdCodec.Decompressor(dictionary: reloaded).decompress(withDictionary, limit: 4096) == input)
    }

    @Test func trainingWithTooLittleDataFails() {
        let error = #expect(throws: EncodingError.self) {
            try ZstdCodec.Dictionary.train(samples: [[1, 2, 3]], capacity: 4096)
        }
        #expect(error?.code == .dictionaryFailed)
    }

    @Test func refusesFramesDeclaringMoreThanTheLimit() throws {
        let bomb = try ZstdCodec.Compressor(level: 19).compress([UInt8](repeating: 0, count: 64 << 20))
        #expect(bomb.count < 4096)
        let error = #expect(throws: EncodingError.self) {
            try ZstdCodec.Decompressor().decompress(bomb, limit: 1 << 20)
        }
        #expect(error?.code == .decompressionBomb)
    }

    @Test func refusesFramesOfUnknownSize() throws {
        let input = [UInt8](repeating: 7, count: 10_000)
        let context = try #require(ZSTD_createCCtx())
        defer { ZSTD_freeCCtx(context) }
        _ = ZSTD_CCtx_setParameter(context, ZSTD_c_contentSizeFlag, 0)
        var frame = [UInt8](repeating: 0, count: ZSTD_compressBound(input.count))
        let length = frame.withUnsafeMutableBytes { out in
            input.withUnsafeBytes { ZSTD_compress2(context, out.baseAddress, out.count, $0.baseAddress, $0.count) }
        }
        #expect(ZSTD_isError(length) == 0)
        frame.removeLast(frame.count - length)
        let error = #expect(throws: EncodingError.self) {
            try ZstdCodec.Decompressor().decompress(frame, limit: 1 << 30)
        }
        #expect(error?.code == .decompressionBomb)
    }

    @Test func corruptTruncatedAndConcatenatedFramesFail() throws {
        let input = TestData.text(50_000, seed: 1)
        let frame = try ZstdCodec.Compressor(level: 3).compress(input)
        let decompressor = try ZstdCodec.Decompressor()
        for cut in [0, 1, 4, 5, frame.count / 2, frame.count - 1] {
            #expect(throws: EncodingError.self) {
                try decompressor.decompress(Array(frame.prefix(cut)), limit: 1 << 20)
            }
        }
        #expect(throws: EncodingError.self) {
            try decompressor.decompress(TestData.random(1000, seed: 2), limit: 1 << 20)
        }
        let error = #expect(throws: EncodingError.self) { try decompressor.decompress(frame + frame, limit: 1 << 20) }
        #expect(error?.code == .trailingBytes)
        // Every single-byte corruption either fails with a typed error or (in bytes zstd ignores) decodes the input.
        for offset in 0..<frame.count {
            var corrupt = frame
            corrupt[offset] ^= 0x5A
            do {
                let output = try decompressor.decompress(corrupt, limit: 1 << 20)
                #expect(output.count <= 1 << 20)
            } catch {
                _ = error.code
            }
        }
        // The context is still usable after errors.
        #expect(try decompressor.decompress(frame, limit: 1 << 20) == input)
    }

    @Test func rejectsLevelsOutOfRange() {
        let error = #expect(throws: EncodingError.self) { try ZstdCodec.Compressor(level: 99) }
        #expect(error?.code == .invalidConfiguration)
    }
}
