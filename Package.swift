// swift-tools-version: 6.1
import PackageDescription

/// Settings every NovaCron Swift target uses: Swift 6 language mode (strict concurrency) and `any` spelled out.
let strictSettings: [SwiftSetting] = [
    .enableUpcomingFeature("ExistentialAny")
]

var package = Package(
    name: "NovaCron",
    platforms: [.macOS(.v14)],
    products: [
        .executable(name: "novacron", targets: ["novacron"]),
        .library(name: "DWCPWire", targets: ["DWCPWire"]),
    ],
    dependencies: [
        .package(url: "https://github.com/apple/swift-nio.git", from: "2.101.2"),
        .package(url: "https://github.com/apple/swift-argument-parser.git", from: "1.8.2"),
        .package(url: "https://github.com/apple/swift-nio-ssl.git", from: "2.37.6"),
        .package(url: "https://github.com/apple/swift-crypto.git", "3.12.3"..<"5.0.0"),
        .package(url: "https://github.com/apple/swift-certificates.git", from: "1.21.1"),
        .package(url: "https://github.com/apple/swift-asn1.git", from: "1.7.4"),
        .package(url: "https://github.com/apple/swift-log.git", from: "1.16.2"),
        .package(url: "https://github.com/swift-server/swift-service-lifecycle.git", from: "2.13.0"),
    ],
    targets: [
        // MARK: System libraries (Debian packages installed by scripts/install-deps.sh)
        .systemLibrary(
            name: "CXXHash",
            pkgConfig: "libxxhash",
            providers: [.apt(["libxxhash-dev"])]
        ),
        .systemLibrary(
            name: "CZstd",
            pkgConfig: "libzstd",
            providers: [.apt(["libzstd-dev"])]
        ),

        // MARK: Data plane
        .target(
            name: "DWCPWire",
            dependencies: [
                "CXXHash",
                .product(name: "NIOCore", package: "swift-nio"),
            ],
            swiftSettings: strictSettings
        ),

        .target(
            name: "CNovaCronSystem",
            path: "Sources/CNovaCronSystem"
        ),
        .target(
            name: "NovaCronMigration",
            swiftSettings: strictSettings
        ),
        .target(
            name: "NovaCronHypervisor",
            dependencies: [
                "CNovaCronSystem",
                .product(name: "NIOConcurrencyHelpers", package: "swift-nio"),
                .product(name: "NIOCore", package: "swift-nio"),
                .product(name: "NIOPosix", package: "swift-nio"),
            ],
            swiftSettings: strictSettings
        ),

        .target(
            name: "DWCPSecurity",
            dependencies: [
                .product(name: "Crypto", package: "swift-crypto"),
                .product(name: "X509", package: "swift-certificates"),
                .product(name: "SwiftASN1", package: "swift-asn1"),
                .product(name: "NIOSSL", package: "swift-nio-ssl"),
            ],
            swiftSettings: strictSettings
        ),
        .target(
            name: "DWCPTransport",
            dependencies: [
                "CNovaCronSystem",
                "DWCPWire",
                "DWCPSecurity",
                .product(name: "Crypto", package: "swift-crypto"),
                .product(name: "NIOConcurrencyHelpers", package: "swift-nio"),
                .product(name: "NIOCore", package: "swift-nio"),
                .product(name: "NIOPosix", package: "swift-nio"),
                .product(name: "NIOSSL", package: "swift-nio-ssl"),
            ],
            swiftSettings: strictSettings
        ),
        // BEGIN encoding targets (owned by the encoding work; keep edits inside these markers)
        .target(
            name: "DWCPEncoding",
            dependencies: [
                "CZstd",
                "CXXHash",
                .product(name: "Crypto", package: "swift-crypto"),
            ],
            swiftSettings: strictSettings
        ),
        .executableTarget(
            name: "encoding-bench",
            dependencies: ["DWCPEncoding"],
            swiftSettings: strictSettings
        ),
        // END encoding targets

        // BEGIN wanem targets (owned by the wanem work; keep edits inside these markers)
        .target(
            name: "WANEmulation",
            swiftSettings: strictSettings
        ),
        .executableTarget(
            name: "wanem",
            dependencies: [
                "WANEmulation",
                .product(name: "ArgumentParser", package: "swift-argument-parser"),
            ],
            swiftSettings: strictSettings
        ),
        // END wanem targets

        // The node: wires the data plane's modules together (HDE over AMST) and runs the agent that owns
        // this machine's VMs and migrates them (NovaCronMigration's machine, QEMU through NovaCronHypervisor).
        .target(
            name: "NovaCronNode",
            dependencies: [
                "CNovaCronSystem",
                "DWCPEncoding",
                "DWCPTransport",
                "NovaCronHypervisor",
                "NovaCronMigration",
                .product(name: "Crypto", package: "swift-crypto"),
                .product(name: "Logging", package: "swift-log"),
                .product(name: "ServiceLifecycle", package: "swift-service-lifecycle"),
                .product(name: "NIOConcurrencyHelpers", package: "swift-nio"),
                .product(name: "NIOCore", package: "swift-nio"),
            ],
            swiftSettings: strictSettings
        ),

        // MARK: Executable
        .executableTarget(
            name: "novacron",
            dependencies: [
                "DWCPWire",
                "DWCPSecurity",
                "DWCPTransport",
                "NovaCronNode",
                "NovaCronHypervisor",
                "CZstd",
                "CXXHash",
                .product(name: "ArgumentParser", package: "swift-argument-parser"),
                .product(name: "Logging", package: "swift-log"),
                .product(name: "ServiceLifecycle", package: "swift-service-lifecycle"),
                .product(name: "NIOCore", package: "swift-nio"),
                .product(name: "NIOPosix", package: "swift-nio"),
            ],
            swiftSettings: strictSettings
        ),

        // MARK: Tests
        .testTarget(
            name: "DWCPWireTests",
            dependencies: [
                "DWCPWire",
                .product(name: "NIOCore", package: "swift-nio"),
                .product(name: "NIOEmbedded", package: "swift-nio"),
                .product(name: "NIOTestUtils", package: "swift-nio"),
            ],
            swiftSettings: strictSettings
        ),
        .testTarget(
            name: "IntegrationTests",
            dependencies: [
                "DWCPWire",
                "NovaCronHypervisor",
                .product(name: "NIOCore", package: "swift-nio"),
                .product(name: "NIOPosix", package: "swift-nio"),
            ],
            swiftSettings: strictSettings
        ),
        .testTarget(
            name: "NovaCronHypervisorTests",
            dependencies: [
                "NovaCronHypervisor",
                .product(name: "NIOCore", package: "swift-nio"),
                .product(name: "NIOPosix", package: "swift-nio"),
                .product(name: "NIOEmbedded", package: "swift-nio"),
            ],
            swiftSettings: strictSettings
        ),
        .testTarget(
            name: "DWCPSecurityTests",
            dependencies: [
                "DWCPSecurity",
                "DWCPWire",
                .product(name: "NIOConcurrencyHelpers", package: "swift-nio"),
                .product(name: "NIOCore", package: "swift-nio"),
                .product(name: "NIOPosix", package: "swift-nio"),
                .product(name: "NIOSSL", package: "swift-nio-ssl"),
            ],
            swiftSettings: strictSettings
        ),
        .testTarget(
            name: "NovaCronNodeTests",
            dependencies: [
                "NovaCronNode",
                "NovaCronHypervisor",
                "DWCPEncoding",
                "DWCPTransport",
                .product(name: "Logging", package: "swift-log"),
                .product(name: "NIOCore", package: "swift-nio"),
            ],
            swiftSettings: strictSettings
        ),
        .testTarget(
            name: "DWCPTransportTests",
            dependencies: [
                "DWCPTransport",
                "DWCPSecurity",
                "DWCPWire",
                .product(name: "NIOCore", package: "swift-nio"),
                .product(name: "NIOPosix", package: "swift-nio"),
            ],
            swiftSettings: strictSettings
        ),
        // BEGIN encoding test targets
        .testTarget(
            name: "NovaCronMigrationTests",
            dependencies: ["NovaCronMigration"],
            swiftSettings: strictSettings
        ),
        .testTarget(
            name: "DWCPEncodingTests",
            dependencies: ["DWCPEncoding", "CZstd"],
            swiftSettings: strictSettings
        ),
        // END encoding test targets
        // BEGIN wanem test targets
        .testTarget(
            name: "WANEmulationTests",
            dependencies: ["WANEmulation", "wanem"],
            swiftSettings: strictSettings
        ),
        // END wanem test targets
    ]
)

// Fuzz targets need `-sanitize=fuzzer` and `-parse-as-library`, which break ordinary builds, so they
// exist only when FUZZ is set (see `make fuzz`).
if Context.environment["FUZZ"] != nil {
    package.targets.append(
        .executableTarget(
            name: "WireFrameFuzzer",
            dependencies: [
                "DWCPWire",
                .product(name: "NIOCore", package: "swift-nio"),
            ],
            path: "Fuzz/WireFrameFuzzer",
            swiftSettings: strictSettings + [.unsafeFlags(["-parse-as-library"])]
        )
    )
    for name in ["ImageDecoderFuzzer", "ChunkSummaryFuzzer", "SegmentRecoveryFuzzer", "StreamDecoderFuzzer"] {
        package.targets.append(
            .executableTarget(
                name: name,
                dependencies: ["DWCPEncoding"],
                path: "Fuzz/\(name)",
                swiftSettings: strictSettings + [.unsafeFlags(["-parse-as-library"])]
            )
        )
    }
}
