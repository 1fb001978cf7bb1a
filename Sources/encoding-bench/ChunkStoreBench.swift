// `encoding-bench --chunk-store DIR [--runs N] [--chunks N]`: chunk identity hashes on 4 KiB pages, and the
// persistent chunk store's put/get speed on 4 KiB and 1 MiB chunks and its open (index rebuild) time, in DIR
// (deleted and recreated for every run). Data is seeded pseudo-random, so every chunk is distinct.
import DWCPEncoding

#if canImport(Glibc)
    import Glibc
#elseif canImport(Darwin)
    import Darwin
#endif

func pseudoRandomBytes(_ count: Int, seed: UInt64) -> [UInt8] {
    var state = seed
    return [UInt8](unsafeUninitializedCapacity: count) { buffer, initialized in
        var index = 0
        while index < count {
            state &+= 0x9E37_79B9_7F4A_7C15
            var z = state
            z = (z ^ (z >> 30)) &* 0xBF58_476D_1CE4_E5B9
            z = (z ^ (z >> 27)) &* 0x94D0_49BB_1331_11EB
            z ^= z >> 31
            for _ in 0..<8 where index < count {
                buffer[index] = UInt8(truncatingIfNeeded: z)
                z >>= 8
                index += 1
            }
        }
        initialized = count
    }
}

func removeStore(_ directory: String) {
    guard let stream = opendir(directory) else { return }
    while let entry = readdir(stream) {
        let name = withUnsafeBytes(of: entry.pointee.d_name) { raw in
            String(decoding: raw.prefix { $0 != 0 }, as: UTF8.self)
        }
        if name != "." && name != ".." {
            unlink(directory + "/" + name)
        }
    }
    closedir(stream)
    rmdir(directory)
}

func measureHashes(runs: Int) {
    let data = pseudoRandomBytes(256 << 20, seed: 1)
    let page = 4096
    let clock = ContinuousClock()
    var xxh3: [Double] = []
    var sha: [Double] = []
    var fold: UInt64 = 0
    for _ in 0..<runs {
        data.withUnsafeBytes { raw in
            var start = clock.now
            for offset in stride(from: 0, to: raw.count, by: page) {
                fold ^= ChunkIdentity(of: UnsafeRawBufferPointer(rebasing: raw[offset..<(offset + page)])).low
            }
            xxh3.append(seconds(clock.now - start))
            start = clock.now
            for offset in stride(from: 0, to: raw.count, by: page) {
                fold ^=
                    ChunkKey(of: UnsafeRawBufferPointer(rebasing: raw[offset..<(offset + page)])).hashValue == 0
                    ? 1 : 0
            }
            sha.append(seconds(clock.now - start))
        }
    }
    let mb = Double(data.count) / 1e6
    print("| hash on 4 KiB pages (256 MiB, in process) | MB/s (median of \(runs)) |")
    print("|---|---|")
    print("| XXH3-128 (`ChunkIdentity`, libxxhash) | \(format(mb / median(xxh3))) |")
    print("| SHA-256 (`ChunkKey`, swift-crypto) | \(format(mb / median(sha))) |")
    print("<!-- fold \(fold) -->")
}

func measureStore(directory: String, chunkLength: Int, count: Int, runs: Int) throws {
    let data = pseudoRandomBytes(chunkLength * count, seed: UInt64(chunkLength))
    var order = Array(0..<count)
    var generator = SystemRandomNumberGenerator()
    order.shuffle(using: &generator)
    let clock = ContinuousClock()
    var puts: [Double] = []
    var hashes: [Double] = []
    var syncs: [Double] = []
    var gets: [Double] = []
    var opens: [Double] = []
    for _ in 0..<runs {
        removeStore(directory)
        var keys: [ChunkKey] = []
        keys.reserveCapacity(count)
        do {
            // SHA-256 alone over the same chunks, just before the puts: the part of a put no store design avoids.
            var start = clock.now
            var fold = 0
            data.withUnsafeBytes { raw in
                for offset in stride(from: 0, to: raw.count, by: chunkLength) {
                    let chunk = UnsafeRawBufferPointer(rebasing: raw[offset..<(offset + chunkLength)])
                    fold ^= ChunkKey(of: chunk).hashValue
                }
            }
            hashes.append(seconds(clock.now - start))
            guard fold != 1 else { fail("unlikely fold") }
            let store = try PersistentChunkStore(directory: directory)
            start = clock.now
            for offset in stride(from: 0, to: data.count, by: chunkLength) {
                let key = try data.withUnsafeBytes { raw in
                    try store.put(UnsafeRawBufferPointer(rebasing: raw[offset..<(offset + chunkLength)]))
                }
                keys.append(key)
            }
            puts.append(seconds(clock.now - start))
            start = clock.now
            try store.sync()
            syncs.append(seconds(clock.now - start))
            start = clock.now
            var total = 0
            for index in order {
                guard let chunk = try store.get(keys[index]) else { fail("chunk \(index) missing") }
                total += chunk.count
            }
            gets.append(seconds(clock.now - start))
            guard total == data.count else { fail("read \(total) bytes, expected \(data.count)") }
        }
        let start = clock.now
        let reopened = try PersistentChunkStore(directory: directory)
        opens.append(seconds(clock.now - start))
        guard reopened.count == count, reopened.recovery.truncatedBytes == 0 else {
            fail("reopen found \(reopened.count) chunks, cut \(reopened.recovery.truncatedBytes) bytes")
        }
    }
    removeStore(directory)
    let mb = Double(data.count) / 1e6
    let size = chunkLength >= 1 << 20 ? "\(chunkLength >> 20) MiB" : "\(chunkLength >> 10) KiB"
    print(
        "| \(size) × \(count) | \(format(mb / median(hashes))) | \(format(mb / median(puts))) | "
            + "\(format(mb / (median(puts) + median(syncs)))) | \(format(mb / median(gets))) | "
            + "\(format(median(opens) * 1000)) |")
}

func runChunkStoreBench(directory: String, runs: Int, chunks: Int) -> Never {
    measureHashes(runs: runs)
    print("")
    print(
        "| chunks | SHA-256 alone MB/s | put MB/s | put + fsync MB/s | get MB/s (random order) "
            + "| open (rebuild index) ms |")
    print("|---|---|---|---|---|---|")
    do {
        try measureStore(directory: directory, chunkLength: 4096, count: chunks, runs: runs)
        try measureStore(directory: directory, chunkLength: 1 << 20, count: max(1, (chunks * 4096) >> 20), runs: runs)
    } catch {
        fail("\(error)")
    }
    exit(0)
}

/// The length of chunk `index` written by ``runChunkStoreWriter(directory:seed:)``; ChunkStoreTests repeats it.
func writerChunkLength(_ index: Int) -> Int {
    1 + (index * 7919) % 20_000
}

/// `encoding-bench --chunk-store-writer DIR SEED`: a crash-test helper. Puts chunk i = `pseudoRandomBytes(
/// writerChunkLength(i), seed: SEED + i)` for i = 0, 1, … into a store with 64 KiB segments and prints
/// `synced N` after every 16th put's `sync()`, until killed (or after 100 000 chunks).
func runChunkStoreWriter(directory: String, seed: UInt64) -> Never {
    do {
        let store = try PersistentChunkStore(
            directory: directory, configuration: .init(segmentCapacity: 64 << 10, capacity: 1 << 30))
        for index in 0..<100_000 {
            try store.put(pseudoRandomBytes(writerChunkLength(index), seed: seed &+ UInt64(index)))
            if index % 16 == 15 {
                try store.sync()
                let line = "synced \(index + 1)\n"
                line.utf8CString.withUnsafeBytes { _ = write(1, $0.baseAddress, $0.count - 1) }
            }
        }
    } catch {
        fail("\(error)")
    }
    exit(0)
}
