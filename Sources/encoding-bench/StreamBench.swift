// `encoding-bench --stream FILE [FILE2]`: HDE's opaque-stream codec on a QEMU migration-stream capture (what
// `novacron vm migrate` encodes), one core: each stage switched on in turn, then FILE2 (a later capture of
// the same guest) against the chunks the first left, as a migration back would go.
import DWCPEncoding

#if canImport(Glibc)
    import Glibc
#endif

/// A node's chunks and resemblance index in memory (the agents keep them in their chunk stores).
final class StreamBenchNode {
    var chunks: [ChunkKey: [UInt8]] = [:]
    var index = SimilarityIndex()
    var pages: [PageSlot: ChunkKey] = [:]
}

/// Encodes `stream` in 1 MiB reads and returns (encoded bytes, seconds, statistics).
func encodeStream(
    _ stream: [UInt8], level: Int?, deltas: Bool, pages: Bool, keep: Bool, receiverHolds: Set<ChunkKey>,
    node: StreamBenchNode
)
    -> ([UInt8], Double, StreamEncoder.Statistics)
{
    let chunker = try! Chunker.FastCDC(minimumSize: 4096, averageSize: 16384, maximumSize: 65536)
    var encoder = try! StreamEncoder(
        chunker: chunker, level: level, pageSlots: pages ? PageSlotTracker(stream: "bench") : nil,
        hooks: .init(
            receiverHolds: { receiverHolds.contains($0) },
            similar: deltas ? { node.index.candidates(for: $0) } : nil,
            previousVersion: { node.pages[$0] },
            content: { node.chunks[$0] },
            cut: { bytes, key, features, slot in
                if let slot { node.pages[slot] = key }  // this stream's own pages: kept as the receiver keeps them
                guard keep else { return }
                node.chunks[key] = Array(bytes)
                if let features { node.index.insert(features, key: key) }
            }))
    var output: [UInt8] = []
    let clock = ContinuousClock()
    let started = clock.now
    stream.withUnsafeBytes { raw in
        var offset = 0
        while offset < raw.count {
            let end = min(raw.count, offset + (1 << 20))
            try! encoder.append(UnsafeRawBufferPointer(rebasing: raw[offset..<end]))
            output += encoder.takeOutput()
            offset = end
        }
    }
    try! encoder.finish()
    output += encoder.takeOutput()
    return (output, seconds(clock.now - started), encoder.statistics)
}

/// Decodes `encoded` against `chunks`, keeping what arrives as a receiver's store does (references later in the
/// stream point at it), and returns (decoded bytes, seconds).
func decodeStream(_ encoded: [UInt8], chunks: [ChunkKey: [UInt8]]) -> ([UInt8], Double) {
    var chunks = chunks
    var decoder = try! StreamDecoder()
    var output: [UInt8] = []
    output.reserveCapacity(encoded.count * 4)
    let clock = ContinuousClock()
    let started = clock.now
    encoded.withUnsafeBytes { raw in
        try! decoder.append(
            raw, lookup: { chunks[$0] }, storing: { chunk, _ in chunks[ChunkKey(of: chunk)] = Array(chunk) },
            output: { output += $0 })
    }
    try! decoder.finish()
    return (output, seconds(clock.now - started))
}

func runStreamBench(paths: [String], runs: Int) -> Never {
    let first = readFile(paths[0])
    let megabytes = Double(first.count) / 1e6
    print("| stages | ratio | encode MB/s (one core) | decode MB/s |")
    print("|---|---:|---:|---:|")
    for (name, level, deltas, pages) in [
        ("chunks + SHA-256 + references", nil, false, false), ("+ zstd 1", 1, false, false),
        ("+ resemblance features", 1, true, false), ("+ page records (what migrations run)", 1, true, true),
        ("zstd 3 instead of 1", 3, true, true),
    ] as [(String, Int?, Bool, Bool)] {
        var times: [Double] = []
        var decodeTimes: [Double] = []
        var encodedCount = 0
        for _ in 0..<runs {
            let (encoded, time, _) = encodeStream(
                first, level: level, deltas: deltas, pages: pages, keep: deltas, receiverHolds: [],
                node: StreamBenchNode())
            let (decoded, decodeTime) = decodeStream(encoded, chunks: [:])
            guard decoded == first else { fail("\(name): the stream did not decode to itself") }
            times.append(time)
            decodeTimes.append(decodeTime)
            encodedCount = encoded.count
        }
        print(
            "| \(name) | \(format(Double(first.count) / Double(encodedCount), 2)) | \(format(megabytes / median(times))) "
                + "| \(format(megabytes / median(decodeTimes))) |")
    }
    for (name, compress, decompress) in [
        ("`zstd -3 -T1` (whole stream)", "zstd -q -T1 -3 -c", "zstd -q -d -c"),
        ("`zstd -1 -T1` (whole stream)", "zstd -q -T1 -1 -c", "zstd -q -d -c"),
        ("`lz4`", "lz4 -q -c", "lz4 -q -d -c"),
    ] {
        let row = measureCLI(path: paths[0], name: name, compress: compress, decompress: decompress, runs: runs)
        let ratio = Double(row.originalBytes) / Double(max(row.encodedBytes, 1))
        print(
            "| \(name) | \(format(ratio, 2)) | \(format(megabytes / row.compressSeconds)) "
                + "| \(format(megabytes / row.decompressSeconds)) |")
    }
    if paths.count == 2 {
        // A migration back: the receiver holds the chunks of the first stream (it sent them); the sender holds
        // them too (it received them) and finds resembling ones by feature.
        let second = readFile(paths[1])
        let node = StreamBenchNode()
        let (firstEncoded, _, _) = encodeStream(
            first, level: 1, deltas: true, pages: true, keep: true, receiverHolds: [], node: node)
        let held = Set(node.chunks.keys)
        let (encoded, time, statistics) = encodeStream(
            second, level: 1, deltas: true, pages: true, keep: true, receiverHolds: held, node: node)
        let (decoded, decodeTime) = decodeStream(encoded, chunks: node.chunks)
        guard decoded == second else { fail("the second stream did not decode to itself") }
        print(
            "\nsecond capture against the first's chunks: \(second.count) bytes → \(encoded.count) "
                + "(\(format(Double(encoded.count) / Double(firstEncoded.count) * 100, 1)) % of the first's "
                + "\(firstEncoded.count)); references \(statistics.referencedBytes), deltas \(statistics.deltaBytes) "
                + "bytes (\(statistics.pageDeltaChunks) page deltas); encode \(format(Double(second.count) / 1e6 / time)) "
                + "MB/s, decode \(format(Double(second.count) / 1e6 / decodeTime)) MB/s")
    }
    exit(0)
}
