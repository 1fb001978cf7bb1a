// encoding-bench: measures HDE (hierarchical delta encoding) on RAM images, stage by stage, next to the zstd and
// lz4 command-line tools run on the same files in the same run.
//
//   encoding-bench [--runs N] [--levels 1,3] [--no-cli] [--zstd19] IMAGE [IMAGE2]
//   encoding-bench --chunk-store DIR [--runs N] [--chunks N]   (see ChunkStoreBench.swift)
//   encoding-bench --stream STREAM [STREAM2]   (the opaque-stream codec on a migration-stream capture)
//   encoding-bench --fuzz-seeds IMAGE_DIR SUMMARY_DIR SEGMENT_DIR STREAM_DIR   (seed corpora for `make fuzz`)
//
// --zstd19 adds `zstd -19 --long=27` for the first image (it runs at a few MB/s). With two images the second
// is also encoded against the first as its baseline (the pages the receiver already holds), next to
// `zstd -3 --patch-from=FIRST`, zstd's own delta mode. Ratios are original bytes ÷ encoded bytes; speeds are
// MB/s (10^6 bytes) of image on one core, the median of N runs; every HDE decode is checked byte for byte.
@_spi(Fuzzing) import DWCPEncoding

#if canImport(Glibc)
    import Glibc
#elseif canImport(Darwin)
    import Darwin
#endif

func fail(_ message: String) -> Never {
    var text = "encoding-bench: \(message)\n"
    text.withUTF8 { _ = write(2, $0.baseAddress, $0.count) }
    exit(2)
}

func readFile(_ path: String) -> [UInt8] {
    let descriptor = open(path, O_RDONLY)
    guard descriptor >= 0 else { fail("cannot open \(path)") }
    defer { close(descriptor) }
    var status = stat()
    guard fstat(descriptor, &status) == 0 else { fail("cannot stat \(path)") }
    let size = Int(status.st_size)
    return [UInt8](unsafeUninitializedCapacity: size) { buffer, count in
        var done = 0
        while done < size {
            let got = read(descriptor, buffer.baseAddress! + done, size - done)
            guard got > 0 else { fail("cannot read \(path)") }
            done += got
        }
        count = size
    }
}

func writeFile(_ path: String, _ bytes: [UInt8]) {
    let descriptor = open(path, O_WRONLY | O_CREAT | O_TRUNC, 0o644)
    guard descriptor >= 0 else { fail("cannot create \(path)") }
    defer { close(descriptor) }
    guard bytes.withUnsafeBytes({ write(descriptor, $0.baseAddress, $0.count) }) == bytes.count else {
        fail("cannot write \(path)")
    }
}

/// Writes the encoding fuzzers' seed corpora (valid image streams and chunk summaries) and exits.
func writeFuzzSeeds(
    imageDirectory: String, summaryDirectory: String, segmentDirectory: String, streamDirectory: String
) -> Never {
    var template = Array("/tmp/nc-segment-seeds-XXXXXX".utf8CString)
    guard let scratch = mkdtemp(&template).map({ String(cString: $0) }) else {
        fail("cannot create a scratch directory")
    }
    do {
        for (index, seed) in try EncodingFuzzing.imageSeeds().enumerated() {
            writeFile("\(imageDirectory)/seed-\(index)", seed)
        }
        for (index, seed) in try EncodingFuzzing.segmentSeeds(scratch: scratch).enumerated() {
            writeFile("\(segmentDirectory)/seed-\(index)", seed)
        }
        for (index, seed) in try EncodingFuzzing.streamSeeds().enumerated() {
            writeFile("\(streamDirectory)/seed-\(index)", seed)
        }
    } catch {
        fail("cannot build the seeds: \(error)")
    }
    for (index, seed) in EncodingFuzzing.summarySeeds().enumerated() {
        writeFile("\(summaryDirectory)/seed-\(index)", seed)
    }
    rmdir(scratch)
    exit(0)
}

func seconds(_ duration: Duration) -> Double {
    Double(duration.components.seconds) + Double(duration.components.attoseconds) * 1e-18
}

func median(_ values: [Double]) -> Double {
    let sorted = values.sorted()
    return sorted.count % 2 == 1
        ? sorted[sorted.count / 2] : (sorted[sorted.count / 2 - 1] + sorted[sorted.count / 2]) / 2
}

func format(_ value: Double, _ digits: Int = 1) -> String {
    var scale = 1.0
    for _ in 0..<digits { scale *= 10 }
    let rounded = (value * scale).rounded() / scale
    return "\(rounded)"
}

struct Row {
    let image: String
    let method: String
    let encodedBytes: Int
    let originalBytes: Int
    let compressSeconds: Double
    let decompressSeconds: Double

    var line: String {
        let ratio = Double(originalBytes) / Double(max(encodedBytes, 1))
        let mb = Double(originalBytes) / 1e6
        return "| \(image) | \(method) | \(encodedBytes) | \(format(ratio, 2)) | \(format(mb / compressSeconds)) | "
            + "\(format(mb / decompressSeconds)) |"
    }
}

func measureHDE(
    image: [UInt8], baseline: [UInt8]?, configuration: ImageEncoder.Configuration, runs: Int
) throws -> (bytes: Int, compress: Double, decompress: Double, statistics: ImageEncoder.Statistics) {
    let encoder = try ImageEncoder(configuration: configuration)
    let decoder = try ImageDecoder()
    var compressTimes: [Double] = []
    var decompressTimes: [Double] = []
    var stream: [UInt8] = []
    let clock = ContinuousClock()
    for _ in 0..<runs {
        let start = clock.now
        stream = try encoder.encode(image, baseline: baseline)
        compressTimes.append(seconds(clock.now - start))
        let decodeStart = clock.now
        let decoded = try decoder.decode(stream, baseline: baseline)
        decompressTimes.append(seconds(clock.now - decodeStart))
        guard decoded == image else { fail("HDE round trip mismatch") }
    }
    return (stream.count, median(compressTimes), median(decompressTimes), encoder.statistics)
}

func shell(_ command: String) -> Double {
    let clock = ContinuousClock()
    let start = clock.now
    guard system(command) == 0 else { fail("command failed: \(command)") }
    return seconds(clock.now - start)
}

func measureCLI(path: String, name: String, compress: String, decompress: String, runs: Int) -> Row {
    let output = "/tmp/encoding-bench-\(getpid()).out"
    defer { unlink(output) }
    var compressTimes: [Double] = []
    var decompressTimes: [Double] = []
    for _ in 0..<runs {
        compressTimes.append(shell("\(compress) '\(path)' > \(output)"))
        decompressTimes.append(shell("\(decompress) \(output) > /dev/null"))
    }
    var status = stat()
    stat(output, &status)
    var original = stat()
    stat(path, &original)
    return Row(
        image: "", method: name, encodedBytes: Int(status.st_size), originalBytes: Int(original.st_size),
        compressSeconds: median(compressTimes), decompressSeconds: median(decompressTimes))
}

func number(_ text: String) -> Int {
    guard let value = Int(text) else { fail("expected a number, found \(text)") }
    return value
}

var arguments = Array(CommandLine.arguments.dropFirst())
var runs = 3
var levels = [1, 3]
var runsCLI = true
var zstd19 = false
var hashOnly = false
var chunkStoreDirectory: String?
var storeChunks = 100_000
var paths: [String] = []
var streamMode = false
while !arguments.isEmpty {
    let argument = arguments.removeFirst()
    switch argument {
    case "--runs": runs = number(arguments.removeFirst())
    case "--levels": levels = arguments.removeFirst().split(separator: ",").map { number(String($0)) }
    case "--no-cli": runsCLI = false
    case "--zstd19": zstd19 = true
    case "--hash": hashOnly = true
    case "--chunk-store": chunkStoreDirectory = arguments.removeFirst()
    case "--stream": streamMode = true
    case "--chunks": storeChunks = number(arguments.removeFirst())
    case "--chunk-store-writer":
        runChunkStoreWriter(directory: arguments.removeFirst(), seed: UInt64(number(arguments.removeFirst())))
    case "--fuzz-seeds":
        writeFuzzSeeds(
            imageDirectory: arguments.removeFirst(), summaryDirectory: arguments.removeFirst(),
            segmentDirectory: arguments.removeFirst(), streamDirectory: arguments.removeFirst())
    default: paths.append(argument)
    }
}
if let chunkStoreDirectory {
    runChunkStoreBench(directory: chunkStoreDirectory, runs: runs, chunks: storeChunks)
}
guard (1...2).contains(paths.count) else {
    fail(
        "usage: encoding-bench [--runs N] [--levels 1,3] [--no-cli] [--zstd19] [--stream] IMAGE|STREAM [IMAGE2|STREAM2]"
    )
}
if streamMode {
    runStreamBench(paths: paths, runs: runs)
}

if hashOnly {
    // Chunk identity speed: XXH3-128 per 4 KiB page in process vs SHA-256 over the same file (sha256sum).
    let image = readFile(paths[0])
    let clock = ContinuousClock()
    var times: [Double] = []
    var fold: UInt64 = 0
    for _ in 0..<runs {
        let start = clock.now
        image.withUnsafeBytes { raw in
            var offset = 0
            while offset < raw.count {
                let end = min(offset + ImageFormat.pageSize, raw.count)
                fold ^= ChunkIdentity(of: UnsafeRawBufferPointer(rebasing: raw[offset..<end])).low
                offset = end
            }
        }
        times.append(seconds(clock.now - start))
    }
    let sha = (0..<runs).map { _ in shell("sha256sum '\(paths[0])' > /dev/null") }
    let mb = Double(image.count) / 1e6
    print("| hash | MB/s (median of \(runs)) |")
    print("|---|---|")
    print("| XXH3-128 per 4 KiB page (in process) | \(format(mb / median(times))) |")
    print("| SHA-256 (sha256sum, whole file from page cache) | \(format(mb / median(sha))) |")
    print("<!-- fold \(fold) -->")
    exit(0)
}

print("| image | method | encoded bytes | ratio | compress MB/s | decompress MB/s |")
print("|---|---|---|---|---|---|")
var images: [[UInt8]] = []
for path in paths {
    images.append(readFile(path))
}
var cases: [(name: String, path: String, image: [UInt8], baseline: [UInt8]?)] = []
for (index, path) in paths.enumerated() {
    let name = String(path.split(separator: "/").suffix(2).joined(separator: "/"))
    cases.append((name, path, images[index], nil))
}
if images.count == 2 {
    let name = String(paths[1].split(separator: "/").suffix(2).joined(separator: "/")) + " vs baseline"
    cases.append((name, paths[1], images[1], images[0]))
}
for item in cases {
    var configurations: [(String, ImageEncoder.Configuration)] = [
        ("HDE zero only", .init(eliminatesDuplicates: false, usesDeltas: false, compressionLevel: nil)),
        ("HDE +dup", .init(eliminatesDuplicates: true, usesDeltas: false, compressionLevel: nil)),
    ]
    if item.baseline != nil {
        configurations.append(("HDE +dup +delta", .init(compressionLevel: nil)))
    }
    for level in levels {
        configurations.append(
            ("HDE +\(item.baseline == nil ? "" : "delta +")zstd-\(level)", .init(compressionLevel: level)))
    }
    for (method, configuration) in configurations {
        let result = try measureHDE(
            image: item.image, baseline: item.baseline, configuration: configuration, runs: runs)
        let kinds = ImageFormat.RecordKind.allCases.filter { result.statistics.count(of: $0) > 0 }
            .map { "\($0)=\(result.statistics.count(of: $0))" }.joined(separator: " ")
        let row = Row(
            image: item.name, method: method, encodedBytes: result.bytes, originalBytes: item.image.count,
            compressSeconds: result.compress, decompressSeconds: result.decompress)
        print(row.line + " <!-- \(kinds) -->")
        fflush(nil)
    }
    if runsCLI, let baselinePath = item.baseline.map({ _ in paths[0] }) {
        // zstd's own delta mode: the first image as a dictionary for the second (long-range matching).
        let row = measureCLI(
            path: item.path, name: "zstd -3 --patch-from",
            compress: "zstd -q -T1 -3 --patch-from='\(baselinePath)' -c",
            decompress: "zstd -q -d --memory=2048MB --patch-from='\(baselinePath)' -c", runs: 1)
        print(
            Row(
                image: item.name, method: row.method, encodedBytes: row.encodedBytes, originalBytes: row.originalBytes,
                compressSeconds: row.compressSeconds, decompressSeconds: row.decompressSeconds
            ).line)
        fflush(nil)
    }
    if runsCLI && item.baseline == nil {
        var tools = [
            ("zstd -3", "zstd -q -T1 -3 -c", "zstd -q -d -c"),
            ("lz4", "lz4 -q -1 -c", "lz4 -q -d -c"),
        ]
        if zstd19 && item.path == paths[0] {  // minutes per image: the first image only
            tools.append(("zstd -19 --long=27", "zstd -q -T1 -19 --long=27 -c", "zstd -q -d --long=27 -c"))
        }
        for (name, compress, decompress) in tools {
            let row = measureCLI(
                path: item.path, name: name, compress: compress, decompress: decompress,
                runs: name.hasPrefix("zstd -19") ? 1 : runs)
            print(
                Row(
                    image: item.name, method: name, encodedBytes: row.encodedBytes, originalBytes: row.originalBytes,
                    compressSeconds: row.compressSeconds, decompressSeconds: row.decompressSeconds
                ).line)
            fflush(nil)
        }
    }
}
