import Testing

@testable import DWCPEncoding

@Suite struct ChunkerTests {
    @Test(arguments: [(0, 0), (1, 1), (4095, 1), (4096, 1), (4097, 2), (8192, 2), (8193, 3)])
    func fixedPagesCoverTheObject(length: Int, pages: Int) throws {
        let ranges = try Chunker.Fixed().ranges(forLength: length)
        #expect(ranges.count == pages)
        #expect(ranges.first?.lowerBound ?? 0 == 0)
        #expect(ranges.last?.upperBound ?? 0 == length)
        #expect(ranges.allSatisfy { $0.count <= 4096 && !$0.isEmpty })
    }

    @Test func fastCDCIsDeterministicAndWithinBounds() throws {
        let chunker = try Chunker.FastCDC()
        let data = TestData.random(2 << 20, seed: 42)
        let ranges = chunker.ranges(of: data)
        #expect(ranges == chunker.ranges(of: data))
        #expect(ranges.first?.lowerBound == 0)
        #expect(ranges.last?.upperBound == data.count)
        for (left, right) in zip(ranges, ranges.dropFirst()) {
            #expect(left.upperBound == right.lowerBound)
        }
        #expect(ranges.dropLast().allSatisfy { $0.count >= 2048 && $0.count <= 65536 })
        let average = data.count / ranges.count
        #expect(average > 4096 && average < 16384, "average chunk \(average)")
    }

    @Test func fastCDCBoundariesResynchroniseAfterAnInsertion() throws {
        let chunker = try Chunker.FastCDC()
        let original = TestData.random(1 << 20, seed: 7)
        var edited = original
        edited.insert(contentsOf: TestData.random(37, seed: 8), at: 300_000)
        func identities(_ bytes: [UInt8]) -> [ChunkIdentity] {
            chunker.ranges(of: bytes).map { ChunkIdentity(of: Array(bytes[$0])) }
        }
        let before = identities(original)
        let after = Set(identities(edited))
        let shared = before.filter { after.contains($0) }.count
        // Only the chunk(s) around the insertion change.
        #expect(shared >= before.count - 3, "\(shared) of \(before.count) chunks shared")
        // Fixed-size chunking, by contrast, loses every chunk after the insertion.
        let fixed = try Chunker.Fixed(size: 8192)
        let fixedBefore = fixed.ranges(forLength: original.count).map { ChunkIdentity(of: Array(original[$0])) }
        let fixedAfter = Set(fixed.ranges(forLength: edited.count).map { ChunkIdentity(of: Array(edited[$0])) })
        #expect(fixedBefore.filter { fixedAfter.contains($0) }.count < fixedBefore.count / 2)
    }

    @Test func incrementalFeedingCutsLikeWholeObject() throws {
        let chunker = try Chunker.FastCDC(minimumSize: 256, averageSize: 1024, maximumSize: 8192)
        let data = TestData.text(200_000, seed: 3) + TestData.random(100_000, seed: 4)
        let whole = chunker.ranges(of: data)
        // Feed 1000 bytes at a time, as a stream would arrive.
        var ranges: [Range<Int>] = []
        var start = 0
        var available = 0
        while start < data.count {
            available = min(data.count, available + 1000)
            while start < available {
                let next = data.withUnsafeBytes { raw in
                    chunker.nextChunkLength(
                        in: UnsafeRawBufferPointer(rebasing: raw[start..<available]), isFinal: available == data.count)
                }
                guard let length = next else { break }
                ranges.append(start..<(start + length))
                start += length
            }
        }
        #expect(ranges == whole)
    }

    @Test(arguments: [(0, 8192, 65536), (2048, 3000, 65536), (4096, 2048, 65536), (2048, 8192, 4096)])
    func rejectsInvalidSizes(minimum: Int, average: Int, maximum: Int) {
        #expect(throws: EncodingError.self) {
            try Chunker.FastCDC(minimumSize: minimum, averageSize: average, maximumSize: maximum)
        }
    }
}
