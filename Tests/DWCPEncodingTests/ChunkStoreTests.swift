import Testing

@_spi(Fuzzing) @testable import DWCPEncoding

#if canImport(Glibc)
    import Glibc
#elseif canImport(Darwin)
    import Darwin
#endif

/// A fresh directory under /tmp, removed (with the flat files in it) when the value is deinitialized.
final class TemporaryDirectory {
    let path: String

    init() {
        var template = Array("/tmp/novacron-chunk-store-XXXXXX".utf8CString)
        let created = template.withUnsafeMutableBufferPointer { mkdtemp($0.baseAddress!) }
        precondition(created != nil, "mkdtemp failed: errno \(errno)")
        path = String(cString: created!)
    }

    /// The store's directory inside the temporary one (the store creates it).
    var store: String { path + "/store" }

    deinit {
        for directory in [store, path] {
            if let stream = opendir(directory) {
                while let entry = readdir(stream) {
                    let name = withUnsafeBytes(of: entry.pointee.d_name) { raw in
                        String(decoding: raw.prefix { $0 != 0 }, as: UTF8.self)
                    }
                    if name != "." && name != ".." {
                        unlink(directory + "/" + name)
                    }
                }
                closedir(stream)
            }
            rmdir(directory)
        }
    }
}

enum Files {
    static func contents(of path: String) -> [UInt8] {
        let descriptor = open(path, O_RDONLY)
        precondition(descriptor >= 0, "cannot open \(path)")
        defer { close(descriptor) }
        var bytes: [UInt8] = []
        var block = [UInt8](repeating: 0, count: 1 << 16)
        while true {
            let got = block.withUnsafeMutableBytes { read(descriptor, $0.baseAddress, $0.count) }
            precondition(got >= 0, "cannot read \(path)")
            if got == 0 {
                return bytes
            }
            bytes += block[0..<got]
        }
    }

    /// Replaces the file's content (same inode, like a crash leaves it).
    static func replace(_ path: String, with bytes: some Collection<UInt8>) {
        let descriptor = open(path, O_WRONLY | O_TRUNC)
        precondition(descriptor >= 0, "cannot open \(path)")
        defer { close(descriptor) }
        let array = Array(bytes)
        let wrote = array.withUnsafeBytes { write(descriptor, $0.baseAddress, $0.count) }
        precondition(wrote == array.count, "short write to \(path)")
    }

    /// Overwrites one byte in place.
    static func poke(_ path: String, at offset: Int, _ transform: (UInt8) -> UInt8) {
        let descriptor = open(path, O_RDWR)
        precondition(descriptor >= 0, "cannot open \(path)")
        defer { close(descriptor) }
        var byte: UInt8 = 0
        precondition(pread(descriptor, &byte, 1, off_t(offset)) == 1, "cannot read \(path) at \(offset)")
        byte = transform(byte)
        precondition(pwrite(descriptor, &byte, 1, off_t(offset)) == 1, "cannot write \(path) at \(offset)")
    }

    static func length(_ path: String) -> Int {
        var status = stat()
        precondition(stat(path, &status) == 0, "cannot stat \(path)")
        return Int(status.st_size)
    }
}

@Suite struct ChunkStoreTests {
    /// Small segments and a cap of four of them, so tests roll segments and evict with little data.
    static let small = PersistentChunkStore.Configuration(segmentCapacity: 16 << 10, capacity: 64 << 10)
    /// Small segments that are never evicted in these tests.
    static let roomy = PersistentChunkStore.Configuration(segmentCapacity: 16 << 10, capacity: 16 << 20)

    static func segment(_ directory: TemporaryDirectory, _ number: UInt64 = 1) -> String {
        directory.store + "/" + ChunkSegment.fileName(number)
    }

    static func chunks(_ count: Int, length: Int, seed: UInt64) -> [[UInt8]] {
        (0..<count).map { TestData.random(length, seed: seed &+ UInt64($0)) }
    }

    // MARK: Keys

    @Test func keyIsSHA256() {
        let key = ChunkKey(of: Array("abc".utf8))
        #expect(key.description == "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad")
        #expect(ChunkKey(bytes: key.bytes) == key)
        #expect(ChunkKey(bytes: key.bytes.dropLast()) == nil)
        #expect(ChunkKey(of: []).description.hasPrefix("e3b0c442"))
    }

    // MARK: Put and get

    @Test(arguments: [0, 1, 100, 4096, 65_536, 1 << 20])
    func roundTrips(length: Int) throws {
        let directory = TemporaryDirectory()
        let store = try PersistentChunkStore(directory: directory.store)
        let chunk = TestData.random(length, seed: UInt64(length))
        let key = try store.put(chunk)
        #expect(key == ChunkKey(of: chunk))
        #expect(store.contains(key))
        #expect(try store.get(key) == chunk)
        #expect(store.contents(of: key) == chunk)
        #expect(store.statistics.size == ChunkRecord.headerLength + length)
        #expect(try store.get(ChunkKey(of: [1, 2, 3])) == nil)
    }

    @Test func duplicatePutIsIdempotent() throws {
        let directory = TemporaryDirectory()
        let store = try PersistentChunkStore(directory: directory.store)
        let chunk = TestData.random(5000, seed: 7)
        let first = try store.put(chunk)
        let size = store.statistics.size
        let second = try store.put(chunk)
        #expect(first == second)
        #expect(store.count == 1)
        #expect(store.statistics.size == size)
        try store.sync()
        #expect(Files.length(Self.segment(directory)) == size)
    }

    @Test func reopenRebuildsIndex() throws {
        let directory = TemporaryDirectory()
        let chunks = Self.chunks(60, length: 1500, seed: 100) + [[], [42]]
        var keys: [ChunkKey] = []
        do {
            let store = try PersistentChunkStore(directory: directory.store, configuration: Self.roomy)
            keys = try chunks.map { try store.put($0) }
            try store.sync()
            #expect(store.statistics.evictedSegments == 0)
        }
        let store = try PersistentChunkStore(directory: directory.store, configuration: Self.roomy)
        #expect(store.recovery.chunks == chunks.count)
        #expect(store.recovery.segments > 1)
        #expect(store.recovery.truncatedBytes == 0)
        #expect(store.recovery.corruptRecords == 0)
        for (key, chunk) in zip(keys, chunks) {
            #expect(try store.get(key) == chunk)
        }
        let later = TestData.random(900, seed: 9)
        let key = try store.put(later)
        #expect(try store.get(key) == later)
    }

    @Test func rejectsChunksLargerThanASegment() throws {
        let directory = TemporaryDirectory()
        let store = try PersistentChunkStore(directory: directory.store, configuration: Self.small)
        let error = #expect(throws: EncodingError.self) {
            try store.put([UInt8](repeating: 1, count: Self.small.maximumChunkLength + 1))
        }
        #expect(error?.code == .limitExceeded)
        try store.put([UInt8](repeating: 1, count: Self.small.maximumChunkLength))
        #expect(store.count == 1)
    }

    @Test func rejectsInvalidConfigurations() {
        let directory = TemporaryDirectory()
        for configuration in [
            PersistentChunkStore.Configuration(segmentCapacity: 100, capacity: 1 << 20),
            PersistentChunkStore.Configuration(segmentCapacity: 1 << 20, capacity: 1 << 20),
        ] {
            let error = #expect(throws: EncodingError.self) {
                try PersistentChunkStore(directory: directory.store, configuration: configuration)
            }
            #expect(error?.code == .invalidConfiguration)
        }
    }

    @Test func oneInstancePerDirectory() throws {
        let directory = TemporaryDirectory()
        do {
            let store = try PersistentChunkStore(directory: directory.store)
            let error = #expect(throws: EncodingError.self) {
                try PersistentChunkStore(directory: directory.store)
            }
            #expect(error?.code == .storeInUse)
            #expect(store.count == 0)
        }
        _ = try PersistentChunkStore(directory: directory.store)
    }

    @Test func ignoresFilesThatAreNotSegments() throws {
        let directory = TemporaryDirectory()
        let chunk = TestData.random(500, seed: 3)
        do {
            let store = try PersistentChunkStore(directory: directory.store)
            try store.put(chunk)
        }
        for name in ["notes.txt", "segment-zz.log", "segment-ffffffffffffffff.log", "segment-0000000000000001.lo"] {
            let descriptor = open(directory.store + "/" + name, O_WRONLY | O_CREAT, 0o644)
            #expect(descriptor >= 0)
            close(descriptor)
        }
        let store = try PersistentChunkStore(directory: directory.store)
        #expect(store.recovery.segments == 1)
        #expect(try store.get(ChunkKey(of: chunk)) == chunk)
    }

    // MARK: Crash safety

    /// Writes `chunks` to a fresh store and returns the segment's bytes and where the last record starts.
    static func storeWithLastRecord(
        _ directory: TemporaryDirectory, chunks: [[UInt8]]
    ) throws -> (file: [UInt8], lastRecord: Int) {
        let store = try PersistentChunkStore(directory: directory.store)
        for chunk in chunks.dropLast() {
            try store.put(chunk)
        }
        let lastRecord = store.statistics.size
        try store.put(chunks.last!)
        try store.sync()
        return (Files.contents(of: segment(directory)), lastRecord)
    }

    @Test(arguments: [0, 1, 300, 5000])
    func tornLastRecordIsNeverServedAtAnyCut(lastLength: Int) throws {
        let directory = TemporaryDirectory()
        let chunks = Self.chunks(4, length: 700, seed: 1) + [TestData.random(lastLength, seed: 99)]
        let (file, lastRecord) = try Self.storeWithLastRecord(directory, chunks: chunks)
        #expect(file.count == lastRecord + ChunkRecord.headerLength + lastLength)
        let last = ChunkKey(of: chunks.last!)
        // Every cut inside the record, header and data (sampled every 7 bytes past the header for long records).
        let cuts = (lastRecord..<file.count).filter {
            $0 - lastRecord < ChunkRecord.headerLength + 64 || ($0 - lastRecord) % 7 == 0 || $0 == file.count - 1
        }
        for cut in cuts {
            Files.replace(Self.segment(directory), with: file[0..<cut])
            let store = try PersistentChunkStore(directory: directory.store)
            #expect(store.recovery.truncatedBytes == cut - lastRecord, "cut at \(cut)")
            #expect(store.recovery.chunks == 4)
            #expect(!store.contains(last))
            #expect(try store.get(last) == nil)
            #expect(Files.length(Self.segment(directory)) == lastRecord)
            for chunk in chunks.dropLast() {
                #expect(try store.get(ChunkKey(of: chunk)) == chunk)
            }
            // The store keeps working: the chunk can be put again, and survives a reopen.
            try store.put(chunks.last!)
            #expect(try store.get(last) == chunks.last!)
        }
        let reopened = try PersistentChunkStore(directory: directory.store)
        #expect(reopened.recovery.truncatedBytes == 0)
        #expect(try reopened.get(last) == chunks.last!)
    }

    @Test func tailWithWholeHeaderButLostDataIsCutOff() throws {
        // A crash after the file grew but before the data reached the disk leaves zeros where the data was.
        let directory = TemporaryDirectory()
        let chunks = Self.chunks(3, length: 2000, seed: 5)
        let (original, lastRecord) = try Self.storeWithLastRecord(directory, chunks: chunks)
        var file = original
        for offset in (lastRecord + ChunkRecord.headerLength)..<file.count {
            file[offset] = 0
        }
        Files.replace(Self.segment(directory), with: file)
        let store = try PersistentChunkStore(directory: directory.store)
        #expect(store.recovery.corruptRecords == 1)
        #expect(store.recovery.truncatedBytes == ChunkRecord.headerLength + 2000)
        #expect(!store.contains(ChunkKey(of: chunks[2])))
        #expect(try store.get(ChunkKey(of: chunks[1])) == chunks[1])
    }

    @Test func garbageAfterTheLastRecordIsCutOff() throws {
        let directory = TemporaryDirectory()
        let chunks = Self.chunks(3, length: 2000, seed: 6)
        let (file, _) = try Self.storeWithLastRecord(directory, chunks: chunks)
        Files.replace(
            Self.segment(directory), with: file + TestData.random(333, seed: 1) + [UInt8](repeating: 0, count: 4096))
        let store = try PersistentChunkStore(directory: directory.store)
        #expect(store.recovery.truncatedBytes == 333 + 4096)
        #expect(store.count == 3)
        #expect(Files.length(Self.segment(directory)) == file.count)
    }

    // MARK: Bit rot

    @Test func flippedDataByteIsATypedErrorAndTheChunkIsDropped() throws {
        let directory = TemporaryDirectory()
        let chunks = Self.chunks(3, length: 3000, seed: 20)
        let store = try PersistentChunkStore(directory: directory.store)
        let keys = try chunks.map { try store.put($0) }
        try store.sync()
        let record = ChunkRecord.headerLength + 3000
        Files.poke(Self.segment(directory), at: record + ChunkRecord.headerLength + 1234) { $0 ^ 0x10 }
        let error = #expect(throws: EncodingError.self) {
            try store.get(keys[1])
        }
        #expect(error?.code == .checksumMismatch)
        #expect(!store.contains(keys[1]))
        #expect(store.missing(from: keys) == [keys[1]])
        #expect(try store.get(keys[1]) == nil)
        #expect(store.statistics.corruptChunks == 1)
        #expect(try store.get(keys[0]) == chunks[0])
        #expect(try store.get(keys[2]) == chunks[2])
        // The decoder's view: a corrupt chunk is not produced.
        Files.poke(Self.segment(directory), at: ChunkRecord.headerLength + 5) { $0 ^ 0x01 }
        #expect(store.contents(of: keys[0]) == nil)
        #expect(!store.contains(keys[0]))
    }

    @Test(arguments: [0, 4, 5, 8, 12, 16, 47, 48, 64, 72, 79])
    func flippedHeaderByteIsDetected(offset: Int) throws {
        let directory = TemporaryDirectory()
        let store = try PersistentChunkStore(directory: directory.store)
        let key = try store.put(TestData.random(100, seed: 1))
        try store.sync()
        Files.poke(Self.segment(directory), at: offset) { $0 ^ 0x80 }
        let error = #expect(throws: EncodingError.self) {
            try store.get(key)
        }
        #expect(error?.code == .checksumMismatch)
        #expect(!store.contains(key))
    }

    @Test func reopenSkipsARottenRecordAndKeepsTheOnesAfterIt() throws {
        let directory = TemporaryDirectory()
        let chunks = Self.chunks(4, length: 1000, seed: 30)
        do {
            let store = try PersistentChunkStore(directory: directory.store)
            for chunk in chunks {
                try store.put(chunk)
            }
        }
        Files.poke(Self.segment(directory), at: ChunkRecord.headerLength * 2 + 1000 + 10) { ~$0 }
        let store = try PersistentChunkStore(directory: directory.store)
        #expect(store.recovery.corruptRecords == 1)
        #expect(store.recovery.truncatedBytes == 0)
        #expect(store.missing(from: chunks.map { ChunkKey(of: $0) }) == [ChunkKey(of: chunks[1])])
        #expect(try store.get(ChunkKey(of: chunks[3])) == chunks[3])
    }

    // MARK: Eviction

    @Test func evictionRespectsTheCapAndKeepsRecentlyUsedChunks() throws {
        _ = try fillPastTheCap(TemporaryDirectory())
    }

    /// Fills a small store past its cap while reading one hot chunk; returns the keys held and the size.
    func fillPastTheCap(
        _ directory: TemporaryDirectory
    ) throws -> (held: Set<ChunkKey>, size: Int) {
        let store = try PersistentChunkStore(directory: directory.store, configuration: Self.small)
        let hot = TestData.random(1000, seed: 1)
        let hotKey = try store.put(hot)
        let cold = Self.chunks(300, length: 1000, seed: 1000)
        var coldKeys: [ChunkKey] = []
        for (index, chunk) in cold.enumerated() {
            coldKeys.append(try store.put(chunk))
            #expect(store.statistics.size <= Self.small.capacity)
            if index % 10 == 0 {
                #expect(try store.get(hotKey) == hot)
            }
        }
        let statistics = store.statistics
        #expect(statistics.evictedSegments > 0)
        #expect(statistics.retainedChunks > 0)
        #expect(statistics.evictedChunks > 0)
        #expect(store.contains(hotKey))
        #expect(!store.contains(coldKeys[0]))
        #expect(store.contains(coldKeys.last!))
        #expect(store.count < 70)  // 64 KiB holds about 60 records of 1080 bytes
        // Everything still indexed reads back; a reopen sees the same set within the cap.
        for (key, chunk) in zip(coldKeys, cold) where store.contains(key) {
            #expect(try store.get(key) == chunk)
        }
        let held = Set(coldKeys.filter { store.contains($0) } + [hotKey])
        try store.sync()
        return (held, store.statistics.size)
    }

    @Test func evictedStoreReopensWithTheSameChunks() throws {
        let directory = TemporaryDirectory()
        let (held, size) = try fillPastTheCap(directory)
        let reopened = try PersistentChunkStore(directory: directory.store, configuration: Self.small)
        #expect(reopened.statistics.size == size)
        #expect(reopened.count == held.count)
        #expect(held.allSatisfy { reopened.contains($0) })
    }

    @Test func evictionCarriesAtMostHalfASegment() throws {
        // Every chunk is used: eviction still frees space and keeps the cap.
        let directory = TemporaryDirectory()
        let store = try PersistentChunkStore(directory: directory.store, configuration: Self.small)
        var keys: [ChunkKey] = []
        for chunk in Self.chunks(200, length: 1000, seed: 2000) {
            keys.append(try store.put(chunk))
            for key in keys where store.contains(key) {
                _ = try store.get(key)
            }
            #expect(store.statistics.size <= Self.small.capacity)
        }
        #expect(store.statistics.evictedChunks > 0)
        #expect(store.statistics.retainedChunks > 0)
    }

    @Test func smallerCapacityEvictsOnOpen() throws {
        let directory = TemporaryDirectory()
        let large = PersistentChunkStore.Configuration(segmentCapacity: 16 << 10, capacity: 1 << 20)
        do {
            let store = try PersistentChunkStore(directory: directory.store, configuration: large)
            for chunk in Self.chunks(200, length: 1000, seed: 3000) {
                try store.put(chunk)
            }
            #expect(store.statistics.size > Self.small.capacity)
        }
        let store = try PersistentChunkStore(directory: directory.store, configuration: Self.small)
        #expect(store.statistics.size <= Self.small.capacity)
        #expect(store.statistics.evictedSegments > 0)
    }

    // MARK: Have / want

    @Test func haveAndWant() throws {
        let directory = TemporaryDirectory()
        let store = try PersistentChunkStore(directory: directory.store)
        let held = try Self.chunks(5, length: 64, seed: 40).map { try store.put($0) }
        let absent = Self.chunks(3, length: 64, seed: 50).map { ChunkKey(of: $0) }
        let offered = [held[0], absent[0], held[1], absent[1], absent[0], absent[2]]
        #expect(store.contains(offered) == [true, false, true, false, false, false])
        #expect(store.missing(from: offered) == [absent[0], absent[1], absent[2]])
        #expect(store.missing(from: held).isEmpty)
    }

    @Test func summaryHasNoFalseNegativesAndAboutTheStatedFalsePositiveRate() throws {
        let directory = TemporaryDirectory()
        let store = try PersistentChunkStore(directory: directory.store)
        let held = try (0..<2000).map { try store.put(TestData.random(16, seed: UInt64($0))) }
        let summary = store.summary(falsePositiveRate: 0.01)
        #expect(summary.count == 2000)
        #expect(held.allSatisfy { summary.mayContain($0) })
        #expect(summary.serialized().count < 2000 * 10 / 8 + 64)  // ≈ 9.6 bits per key at 1 %
        let probes = 20_000
        var falsePositives = 0
        for index in 0..<probes
        where summary.mayContain(ChunkKey(of: TestData.random(16, seed: 1_000_000 + UInt64(index)))) {
            falsePositives += 1
        }
        #expect(falsePositives < probes * 2 / 100, "\(falsePositives) false positives of \(probes)")
        #expect(abs(summary.estimatedFalsePositiveRate - 0.01) < 0.005)
        // A false positive is harmless: the receiver names it in its "want" answer.
        let wanted = ChunkKey(of: [9, 9, 9])
        #expect(store.missing(from: [held[0], wanted]) == [wanted])
    }

    @Test func summarySerializationRoundTripsAndRejectsMalformedBytes() throws {
        var summary = ChunkSummary(expectedCount: 100, falsePositiveRate: 0.001)
        for index in 0..<100 {
            summary.insert(ChunkKey(of: [UInt8(index)]))
        }
        let bytes = summary.serialized()
        #expect(try ChunkSummary(serialized: bytes) == summary)
        #expect(ChunkSummary(expectedCount: 0).serialized().count == ChunkSummary.headerLength + 8)
        var badMagic = bytes
        badMagic[0] = 0
        var badBits = bytes
        badBits[8] &+= 1
        var noHashes = bytes
        noHashes[5] = 0
        for malformed in [
            [], Array(bytes.prefix(23)), Array(bytes.dropLast()), bytes + [0], badMagic, badBits, noHashes,
        ] {
            let error = #expect(throws: EncodingError.self) {
                try ChunkSummary(serialized: malformed)
            }
            #expect(error?.code == .malformedSummary)
        }
        let error = #expect(throws: EncodingError.self) {
            try ChunkSummary(serialized: bytes, maximumBitCount: summary.bitCount - 64)
        }
        #expect(error?.code == .limitExceeded)
    }

    // MARK: Image decoder integration

    @Test func imageDecoderResolvesKnownPagesFromTheStore() throws {
        let directory = TemporaryDirectory()
        let store = try PersistentChunkStore(directory: directory.store)
        let page = ImageFormat.pageSize
        let image = TestData.random(20 * page, seed: 77)
        for index in stride(from: 0, to: 20, by: 2) {
            try store.put(Array(image[(index * page)..<((index + 1) * page)]))
        }
        let encoder = try ImageEncoder()
        let stream = try encoder.encode(image, known: store)
        #expect(encoder.statistics.count(of: .known) == 10)
        #expect(try ImageDecoder().decode(stream, chunks: store) == image)
    }
}

/// A real crash: `encoding-bench --chunk-store-writer` puts chunks and syncs every 16, and is killed with SIGKILL
/// at whatever point it has reached; the store must then hold every synced chunk and serve nothing torn.
@Suite struct ChunkStoreCrashTests {
    /// The `encoding-bench` executable built next to the test bundle, if there is one.
    static let writer: String? = {
        var buffer = [CChar](repeating: 0, count: 4096)
        let length = readlink("/proc/self/exe", &buffer, buffer.count - 1)
        guard length > 0 else {
            return nil
        }
        let executable = String(decoding: buffer[0..<length].map { UInt8(bitPattern: $0) }, as: UTF8.self)
        let candidate =
            executable.split(separator: "/", omittingEmptySubsequences: false).dropLast()
            .joined(separator: "/") + "/encoding-bench"
        return access(candidate, X_OK) == 0 ? candidate : nil
    }()

    /// The writer's chunk lengths (encoding-bench `writerChunkLength`).
    static func chunkLength(_ index: Int) -> Int {
        1 + (index * 7919) % 20_000
    }

    /// Starts the writer and returns its pid and the read end of its stdout.
    static func spawnWriter(_ executable: String, directory: String, seed: UInt64) -> (pid_t, Int32) {
        var pipeEnds: [Int32] = [0, 0]
        precondition(pipe(&pipeEnds) == 0, "pipe failed: errno \(errno)")
        var actions = posix_spawn_file_actions_t()
        posix_spawn_file_actions_init(&actions)
        defer { posix_spawn_file_actions_destroy(&actions) }
        posix_spawn_file_actions_adddup2(&actions, pipeEnds[1], 1)
        posix_spawn_file_actions_addclose(&actions, pipeEnds[0])
        let arguments = [executable, "--chunk-store-writer", directory, "\(seed)"]
        var argv: [UnsafeMutablePointer<CChar>?] = arguments.map { strdup($0) } + [nil]
        defer { argv.forEach { free($0) } }
        var pid: pid_t = 0
        let status = posix_spawn(&pid, executable, &actions, nil, &argv, environ)
        precondition(status == 0, "posix_spawn failed: \(status)")
        close(pipeEnds[1])
        return (pid, pipeEnds[0])
    }

    /// Reads the writer's output until it reports at least `target` synced chunks; returns the last count seen.
    static func awaitSynced(_ descriptor: Int32, atLeast target: Int) -> Int {
        var text = ""
        var synced = 0
        var buffer = [UInt8](repeating: 0, count: 4096)
        while synced < target {
            let got = buffer.withUnsafeMutableBytes { read(descriptor, $0.baseAddress, $0.count) }
            guard got > 0 else {
                return synced  // the writer ended early; the caller's expectations will say so
            }
            text += String(decoding: buffer[0..<got], as: UTF8.self)
            let lines = text.split(separator: "\n", omittingEmptySubsequences: false)
            for line in lines.dropLast() where line.hasPrefix("synced ") {
                synced = Int(line.dropFirst(7)) ?? synced
            }
            text = String(lines.last ?? "")
        }
        return synced
    }

    @Test(.enabled(if: writer != nil, "needs the encoding-bench executable next to the test bundle"))
    func killedWriterLeavesEverySyncedChunkAndNothingTorn() throws {
        let directory = TemporaryDirectory()
        let seed: UInt64 = 4242
        var synced = 0
        for target in [100, 300, 500] {
            let (pid, output) = Self.spawnWriter(Self.writer!, directory: directory.store, seed: seed)
            synced = Self.awaitSynced(output, atLeast: target)
            kill(pid, SIGKILL)
            var status: Int32 = 0
            waitpid(pid, &status, 0)
            close(output)
            #expect(synced >= target)
        }
        let store = try PersistentChunkStore(
            directory: directory.store, configuration: .init(segmentCapacity: 64 << 10, capacity: 1 << 30))
        // The writer puts chunks in order, so what survived must be a prefix 0..<held of them, every one intact.
        var held = 0
        while true {
            let chunk = TestData.random(Self.chunkLength(held), seed: seed &+ UInt64(held))
            let key = ChunkKey(of: chunk)
            guard store.contains(key) else {
                break
            }
            #expect(try store.get(key) == chunk, "chunk \(held) differs")
            held += 1
        }
        #expect(held >= synced, "synced chunks lost: \(held) held, \(synced) synced")
        let found = held
        #expect(found == store.count, "the store holds chunks the writer never wrote")
    }

    @Test(.enabled(if: writer != nil, "needs the encoding-bench executable next to the test bundle"))
    func anotherProcessCannotOpenAnOpenStore() throws {
        let directory = TemporaryDirectory()
        let store = try PersistentChunkStore(directory: directory.store)
        let (pid, output) = Self.spawnWriter(Self.writer!, directory: directory.store, seed: 1)
        #expect(Self.awaitSynced(output, atLeast: 1) == 0)  // it fails before writing anything
        var status: Int32 = 0
        waitpid(pid, &status, 0)
        close(output)
        #expect(status & 0x7f == 0 && (status >> 8) & 0xff == 2, "wait status \(status)")
        #expect(store.count == 0)
    }
}

/// Seeded random sequences of puts, gets, syncs, reopens and crashes (the newest segment cut at a random offset
/// past its last `fsync`) against a small store that evicts: whatever the sequence, the store stays within its
/// cap, every chunk it holds reads back as exactly the bytes that were put, and a crash loses nothing that was
/// synced and not evicted.
@Suite struct ChunkStoreSequenceTests {
    static let configuration = PersistentChunkStore.Configuration(segmentCapacity: 8 << 10, capacity: 32 << 10)

    @Test(arguments: 1...4 as ClosedRange<UInt64>)
    func randomOperationsKeepTheInvariants(seed: UInt64) throws {
        let directory = TemporaryDirectory()
        var generator = SeededGenerator(seed: seed)
        let pool = (0..<60).map {
            TestData.random(Int.random(in: 0...3000, using: &generator), seed: seed * 1000 + UInt64($0))
        }
        let contents = Dictionary(pool.map { (ChunkKey(of: $0), $0) }, uniquingKeysWith: { first, _ in first })
        var store: PersistentChunkStore? = try PersistentChunkStore(
            directory: directory.store, configuration: Self.configuration)
        var crashes = 0
        for step in 0..<500 {
            switch Int.random(in: 0..<100, using: &generator) {
            case 0..<55:
                try store!.put(pool.randomElement(using: &generator)!)
            case 55..<85:
                let key = ChunkKey(of: pool.randomElement(using: &generator)!)
                if let bytes = try store!.get(key) {
                    #expect(bytes == contents[key], "step \(step)")
                }
            case 85..<90:
                try store!.sync()
            case 90..<94:
                store = nil
                store = try PersistentChunkStore(directory: directory.store, configuration: Self.configuration)
            default:
                // A crash: what was synced stays; the newest segment keeps a random prefix of what followed its
                // last fsync (older segments were fsynced when sealed).
                try store!.sync()
                for chunk in pool.shuffled(using: &generator).prefix(3) {
                    try store!.put(chunk)
                }
                try store!.flush()
                let mustSurvive = contents.keys.filter { store!.contains($0) && isDurable($0, in: store!) }
                let newest = ChunkStoreTests.segment(directory, store!.order.last!)
                let durableLength = store!.activeSegment.syncedLength
                store = nil
                let file = Files.contents(of: newest)
                let cut = Int.random(in: durableLength...file.count, using: &generator)
                Files.replace(newest, with: file[0..<cut])
                let reopened = try PersistentChunkStore(directory: directory.store, configuration: Self.configuration)
                for key in mustSurvive {
                    #expect(reopened.contains(key), "step \(step): a synced chunk was lost")
                }
                store = reopened
                crashes += 1
            }
            let now = store!
            #expect(now.statistics.size <= Self.configuration.capacity, "step \(step)")
            for (key, bytes) in contents where now.contains(key) {
                #expect(try now.get(key) == bytes, "step \(step)")
            }
        }
        #expect(crashes > 0)
    }

    /// Whether the chunk's record lies in a sealed segment or before the newest segment's last fsync.
    func isDurable(_ key: ChunkKey, in store: PersistentChunkStore) -> Bool {
        guard let location = store.index[key] else {
            return false
        }
        let newest = store.activeSegment
        return location.segment != newest.number
            || location.offset + ChunkRecord.headerLength + location.length <= newest.syncedLength
    }
}

@Suite("Chunk store: the segment-recovery fuzz harness")
struct SegmentRecoveryHarnessTests {
    /// The fuzz target's body (`make fuzz`) on its seeds and on seeded mutations of them: the seeds
    /// recover their chunks, and no mutation breaks a promise the harness checks (it traps if one does).
    @Test func holdsOnSeedsAndMutations() throws {
        let directory = TemporaryDirectory()
        let seeds = try EncodingFuzzing.segmentSeeds(scratch: directory.path)
        #expect(seeds.count == 2 && seeds.allSatisfy { $0.count > ChunkRecord.headerLength })
        var generator = SeededGenerator(seed: 0x5E6)
        for round in 0..<300 {
            var input = seeds[round % seeds.count]
            if round >= seeds.count {
                for _ in 0...(generator.next() % 3) {
                    let position = Int(generator.next() % UInt64(input.count))
                    switch generator.next() % 3 {
                    case 0: input[position] ^= UInt8(truncatingIfNeeded: generator.next() | 1)
                    case 1: input.removeLast(input.count - position)
                    default: input.insert(UInt8(truncatingIfNeeded: generator.next()), at: position)
                    }
                    if input.isEmpty { break }
                }
            }
            input.withUnsafeBytes { EncodingFuzzing.exerciseSegmentRecovery($0, directory: directory.path) }
        }
        // The seeds themselves recover every chunk they hold.
        let store = try seeds[1].withUnsafeBytes { (raw) throws -> Int in
            let path = directory.path + "/" + ChunkSegment.fileName(1)
            let descriptor = open(path, O_WRONLY | O_CREAT | O_TRUNC, 0o644)
            _ = write(descriptor, raw.baseAddress, raw.count)
            close(descriptor)
            return try PersistentChunkStore(directory: directory.path).statistics.chunks
        }
        #expect(store == 3)
    }
}
