import Testing

@testable import DWCPEncoding

@Suite("Adaptive compression level")
struct CompressionLevelControllerTests {
    /// A synthetic CPU and data set: image bytes per second and ratio per zstd level.
    struct Model {
        var speed: [Int: Double]
        var ratio: [Int: Double]

        /// Guest text pages on this machine (docs/encoding.md: HDE +zstd-1/3/9 on the text image).
        static let text = Model(
            speed: [1: 660e6, 3: 390e6, 6: 200e6, 9: 119e6], ratio: [1: 6.8, 3: 7.4, 6: 7.6, 9: 7.7])
        /// Random pages: every level expands them a little.
        static let random = Model(
            speed: [1: 1300e6, 3: 1100e6, 6: 500e6, 9: 270e6], ratio: [1: 0.999, 3: 0.999, 6: 0.999, 9: 0.999])

        func sample(_ level: Int?) -> CompressionLevelController.Sample {
            let input = 1 << 20
            guard let level else { return .init(level: nil, inputBytes: input, outputBytes: input, seconds: 0) }
            return .init(
                level: level, inputBytes: input, outputBytes: Int(Double(input) / ratio[level]!),
                seconds: Double(input) / speed[level]!)
        }
    }

    /// Runs `batches` batches and returns the levels chosen in the last `tail` of them.
    static func run(
        _ controller: inout CompressionLevelController, _ model: Model, link: Double, batches: Int, tail: Int
    ) -> [Int?] {
        var chosen: [Int?] = []
        for _ in 0..<batches {
            let level = controller.nextLevel(linkBytesPerSecond: link)
            controller.record(model.sample(level))
            chosen.append(level)
        }
        return Array(chosen.suffix(tail))
    }

    /// How often `level` appears.
    static func share(_ level: Int?, in chosen: [Int?]) -> Double {
        Double(chosen.filter { $0 == level }.count) / Double(chosen.count)
    }

    @Test(
        "It settles on the level that delivers the most image bytes per second for the link",
        arguments: [(125e6, 1), (25e6, 6), (5e6, 9)])
    func settlesOnTheBestLevel(link: Double, best: Int) {
        var controller = CompressionLevelController()
        let chosen = Self.run(&controller, .text, link: link, batches: 300, tail: 100)
        // Probes take one batch in 16; every other batch uses the best level.
        #expect(Self.share(best, in: chosen) >= 0.9, "link \(link): \(chosen)")
        let rate = controller.delivered(by: best, linkBytesPerSecond: link)!
        #expect(rate > link, "compressing must beat storing raw on text")
    }

    @Test("Incompressible data is stored raw (never below sending it uncompressed), and probed now and then")
    func backsOffOnRandomData() {
        var controller = CompressionLevelController()
        let chosen = Self.run(&controller, .random, link: 25e6, batches: 200, tail: 100)
        #expect(Self.share(nil, in: chosen) >= 0.9, "\(chosen)")
        #expect(chosen.contains { $0 != nil }, "it keeps probing so it notices compressible data again")
    }

    @Test("When the data turns compressible again, it follows")
    func followsTheData() {
        var controller = CompressionLevelController()
        _ = Self.run(&controller, .random, link: 25e6, batches: 100, tail: 1)
        let chosen = Self.run(&controller, .text, link: 25e6, batches: 200, tail: 50)
        #expect(Self.share(6, in: chosen) >= 0.9, "\(chosen)")
    }

    @Test("Before any measurement it uses the configured level; samples without output are ignored")
    func startsAtTheConfiguredLevel() {
        var controller = CompressionLevelController(initial: 9)
        #expect(controller.nextLevel(linkBytesPerSecond: 1e6) == 9)
        controller.record(.init(level: 3, inputBytes: 0, outputBytes: 0, seconds: 0))
        #expect(controller.estimates.isEmpty)
    }
}
