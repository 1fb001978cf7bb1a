import Testing

@testable import DWCPEncoding

@Suite struct EncodedObjectOfferTests {
    @Test(arguments: [0, 1, 7, 8, 9, 1000])
    func offersRepliesQueriesAndAnswersRoundTrip(count: Int) throws {
        var generator = SeededGenerator(seed: UInt64(count))
        let offer = EncodedObjectOffer(
            imageLength: 12_345, baselines: (0..<(count % 9)).map { ChunkIdentity(low: UInt64($0), high: 7) })
        let bytes = offer.serialized()
        #expect(EncodedObjectOffer.isOffer(bytes))
        #expect(try EncodedObjectOffer(serialized: bytes, maximumImageLength: 1 << 20) == offer)
        let reply = EncodedObjectReply(
            hasStore: true, wantsQuery: count % 2 == 0, baseline: count % 9 == 0 ? nil : count % 9 - 1)
        #expect(try EncodedObjectReply(serialized: reply.serialized(), baselines: count % 9) == reply)
        let query = EncodedObjectQuery(prefixes: (0..<count).map { _ in generator.next() })
        #expect(try EncodedObjectQuery(serialized: query.serialized()) == query)
        let answer = EncodedObjectAnswer(held: (0..<count).map { _ in generator.next() % 3 == 0 })
        #expect(try EncodedObjectAnswer(serialized: answer.serialized(), expectedCount: count) == answer)
    }

    @Test func everyTruncationAndBadFieldIsATypedError() throws {
        let offer = EncodedObjectOffer(imageLength: 4096, baselines: [ChunkIdentity(low: 1, high: 2)]).serialized()
        let reply = EncodedObjectReply(hasStore: true, wantsQuery: true, baseline: 0).serialized()
        let query = EncodedObjectQuery(prefixes: [1, 2, 3]).serialized()
        let answer = EncodedObjectAnswer(held: [true, false, true]).serialized()
        let parsers: [([UInt8]) throws -> Void] = [
            { _ = try EncodedObjectOffer(serialized: $0, maximumImageLength: 1 << 20) },
            { _ = try EncodedObjectReply(serialized: $0, baselines: 1) },
            { _ = try EncodedObjectQuery(serialized: $0) },
            { _ = try EncodedObjectAnswer(serialized: $0, expectedCount: 3) },
        ]
        for (bytes, parse) in zip([offer, reply, query, answer], parsers) {
            try parse(bytes)
            for cut in 0..<bytes.count {
                #expect(throws: EncodingError.self) { try parse(Array(bytes[0..<cut])) }
            }
            #expect(throws: EncodingError.self) { try parse(bytes + [0]) }
            var version = bytes
            version[4] = 2
            #expect((#expect(throws: EncodingError.self) { try parse(version) })?.code == .unsupportedVersion)
        }
        #expect(
            (#expect(throws: EncodingError.self) {
                try EncodedObjectOffer(serialized: offer, maximumImageLength: 4095)
            })?.code == .limitExceeded)
        // A baseline the offer did not name.
        #expect(throws: EncodingError.self) { try EncodedObjectReply(serialized: reply, baselines: 0) }
        #expect(throws: EncodingError.self) { try EncodedObjectAnswer(serialized: answer, expectedCount: 4) }
        var stray = answer
        stray[stray.count - 1] |= 0x80  // a flag past the third prefix
        #expect(throws: EncodingError.self) { try EncodedObjectAnswer(serialized: stray, expectedCount: 3) }
    }

    @Test func theStoreAnswersWhichPrefixesItHolds() throws {
        let directory = TemporaryDirectory()
        let store = try PersistentChunkStore(directory: directory.path)
        let held = try (0..<5).map { try store.put(TestData.random(100, seed: UInt64($0))) }
        let absent = (5..<8).map { ChunkKey(of: TestData.random(100, seed: UInt64($0))) }
        let asked = [absent[0].prefix, held[3].prefix, held[0].prefix, absent[2].prefix, held[3].prefix]
        #expect(store.holdsPrefixes(asked) == [false, true, true, false, true])
        #expect(store.holdsPrefixes([]) == [])
    }

    @Test func manifestsRoundTripAndRejectDamage() throws {
        let pages: [ChunkKey?] = [nil, ChunkKey(of: [1]), ChunkKey(of: [2]), nil, ChunkKey(of: [1])]
        let manifest = ImageManifest(
            identity: ChunkIdentity(low: 5, high: 6), imageLength: 4 * TestData.page + 10, pages: pages)
        let bytes = manifest.serialized()
        #expect(try ImageManifest(serialized: bytes) == manifest)
        #expect(manifest.similarity(to: [nil, ChunkKey(of: [1]), ChunkKey(of: [3]), nil, ChunkKey(of: [1])]) == 2)
        for cut in 0..<bytes.count {
            #expect(throws: EncodingError.self) { try ImageManifest(serialized: Array(bytes[0..<cut])) }
        }
        #expect(throws: EncodingError.self) { try ImageManifest(serialized: bytes + [0]) }
        var bad = bytes
        bad[32] = 2  // the first page entry
        #expect(throws: EncodingError.self) { try ImageManifest(serialized: bad) }
        #expect(throws: EncodingError.self) { try ImageManifest(serialized: bytes, maximumImageLength: 4096) }
    }
}

@Suite struct EncodedTransferPlanTests {
    static let a = ChunkKey(of: [1])
    static let b = ChunkKey(of: [2])
    static let c = ChunkKey(of: [3])

    static func manifest(_ low: UInt64, _ pages: [ChunkKey?]) -> ImageManifest {
        ImageManifest(identity: ChunkIdentity(low: low, high: 0), imageLength: pages.count * 4096, pages: pages)
    }

    @Test func candidatesAreTheImagesSharingPagesAtTheSameAddressesMostFirst() {
        let image: [ChunkKey?] = [Self.a, nil, Self.b, Self.c]
        let none = Self.manifest(1, [Self.c, nil, Self.a, Self.b])  // same pages, other addresses
        let one = Self.manifest(2, [Self.a, nil, nil, nil])
        let three = Self.manifest(3, [Self.a, nil, Self.b, Self.c])
        let chosen = EncodedTransferPlan.baselineCandidates(for: image, among: [none, one, three])
        #expect(chosen.map(\.identity.low) == [3, 2])
        let many = (0..<20).map { Self.manifest(UInt64(10 + $0), [Self.a, nil, nil, nil]) }
        #expect(
            EncodedTransferPlan.baselineCandidates(for: image, among: many).count == EncodedObjectOffer.maximumBaselines
        )
    }

    @Test func theReceiverTakesTheFirstBaselineItCanRebuildAndAsksOnlyWithChunks() {
        let offer = EncodedObjectOffer(
            imageLength: 4096, baselines: (0..<3).map { ChunkIdentity(low: UInt64($0), high: 0) })
        var tried: [UInt64] = []
        let (reply, baseline) = EncodedTransferPlan.reply(to: offer, hasStore: true, storeIsEmpty: false) {
            identity -> String? in
            tried.append(identity.low)
            return identity.low >= 1 ? "image \(identity.low)" : nil
        }
        #expect(tried == [0, 1], "stops at the first it can rebuild")
        #expect(reply == EncodedObjectReply(hasStore: true, wantsQuery: true, baseline: 1))
        #expect(baseline == "image 1")
        let empty = EncodedTransferPlan.reply(to: offer, hasStore: true, storeIsEmpty: true) { _ -> Int? in nil }
        #expect(empty.reply == EncodedObjectReply(hasStore: true, wantsQuery: false, baseline: nil))
        let storeless = EncodedTransferPlan.reply(to: offer, hasStore: false, storeIsEmpty: true) { _ -> Int? in 1 }
        #expect(storeless.reply == EncodedObjectReply(hasStore: false, wantsQuery: false, baseline: nil))
        #expect(storeless.baseline == nil)
    }

    @Test func theQueryAsksAboutDistinctPagesThatChangedSinceTheBaseline() {
        let image: [ChunkKey?] = [Self.a, nil, Self.b, Self.b, Self.c, Self.a]
        #expect(EncodedTransferPlan.queryKeys(pageKeys: image, baseline: []) == [Self.a, Self.b, Self.c])
        let baseline: [ChunkKey?] = [Self.a, Self.a, Self.c, Self.b]
        // Page 0 and page 3 are unchanged; b is still asked for page 2, c for page 4, a for page 5.
        #expect(EncodedTransferPlan.queryKeys(pageKeys: image, baseline: baseline) == [Self.b, Self.c, Self.a])
    }
}
