import ArgumentParser
import CXXHash
import CZstd
import DWCPWire

enum NovaCronVersion {
    static let string = "0.1.0"
}

struct VersionCommand: ParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "version",
        abstract: "Print NovaCron's version, the DWCP versions it speaks, and the libraries it links."
    )

    func run() {
        let zstd = String(cString: ZSTD_versionString())
        let xxhash = XXH_versionNumber()
        let xxhashString = "\(xxhash / 10000).\(xxhash / 100 % 100).\(xxhash % 100)"
        let wire = DWCPFrame.supportedVersions
        print("novacron \(NovaCronVersion.string)")
        print("DWCP wire versions \(wire.lowerBound)...\(wire.upperBound)")
        print("libzstd \(zstd), libxxhash \(xxhashString)")
    }
}
