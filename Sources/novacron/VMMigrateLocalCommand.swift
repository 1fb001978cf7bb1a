import ArgumentParser
import Foundation
import NovaCronHypervisor

/// `novacron vm migrate-local`: live-migrates a busy guest between two QEMUs on this machine through
/// sockets NovaCron owns and relays, then proves the result: RAM compared byte for byte before the
/// destination runs, and the guest's heartbeat sequence continuing on the destination.
struct VMMigrateLocalCommand: AsyncParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "migrate-local",
        abstract: "Live-migrate a VM between two local QEMUs through NovaCron-owned sockets and verify it."
    )

    @OptionGroup var options: VMOptions

    @Option(help: "Where to put the two RAM images for the comparison (removed afterwards).")
    var scratch = FileManager.default.temporaryDirectory.path

    @Flag(help: "Print the report as JSON.")
    var json = false

    struct Report: Codable {
        var vm: String
        var ramBytes: Int
        var workload: String
        var totalTimeMilliseconds: Int?
        var downtimeMilliseconds: Int?
        var relayedBytes: Int
        var ramIdentical: Bool
        var lastSourceHeartbeat: Int
        var firstDestinationHeartbeat: Int
        /// The source's last plus one, or plus two when the pause cut a heartbeat line in two.
        var expectedDestinationHeartbeat: Int
        var heartbeatVerified: Bool

        var isSuccess: Bool {
            ramIdentical && heartbeatVerified && firstDestinationHeartbeat == expectedDestinationHeartbeat
        }
    }

    func run() async throws {
        var spec = try options.spec()
        spec.name = options.name == "vm" ? "migrate" : options.name
        let hypervisor = QEMUHypervisor()
        let directory = URL(fileURLWithPath: scratch).appendingPathComponent("novacron-migrate-\(UUID().uuidString)")
        try FileManager.default.createDirectory(at: directory, withIntermediateDirectories: true)
        defer { try? FileManager.default.removeItem(at: directory) }
        let log = json ? { (_: String) in } : { (line: String) in print(line) }

        let report = try await hypervisor.withVirtualMachine(spec) { source in
            try await hypervisor.withVirtualMachine(spec, mode: .incoming(paused: true)) { destination in
                log("source QEMU pid \(source.processID), destination pid \(destination.processID) (incoming, paused)")
                let (index, first) = try await Self.heartbeat(of: source, after: 0)
                _ = try await Self.heartbeat(of: source, after: index + 1)
                log("guest running: heartbeat \(first.sequence) verified=\(first.isVerified); migrating…")

                let migration = try await source.migrateLocally(to: destination)
                log(
                    "migration completed: \(migration.source.totalTimeMilliseconds ?? 0) ms, "
                        + "downtime \(migration.source.downtimeMilliseconds ?? 0) ms, \(migration.relayedBytes) bytes relayed"
                )

                let sourceImage = directory.appendingPathComponent("source.ram").path
                let destinationImage = directory.appendingPathComponent("destination.ram").path
                try await source.saveRAM(to: sourceImage)
                try await destination.saveRAM(to: destinationImage)
                let identical = try Self.filesAreIdentical(sourceImage, destinationImage)
                log("RAM images (\(spec.ramBytes) bytes each) identical: \(identical)")
                try? FileManager.default.removeItem(atPath: sourceImage)
                try? FileManager.default.removeItem(atPath: destinationImage)

                let last = await source.console.retained.compactMap(GuestHeartbeat.init(line:)).last!
                try await destination.resume()
                let (_, next) = try await Self.heartbeat(of: destination, after: 0)
                let expected = GuestHeartbeat.expectedFirst(
                    after: last.sequence, newConsoleFirstLine: await destination.console.retained.first ?? "")
                log(
                    "heartbeat \(last.sequence) on the source, \(next.sequence) on the destination, verified=\(next.isVerified)"
                )
                return Report(
                    vm: spec.name,
                    ramBytes: spec.ramBytes,
                    workload: spec.append,
                    totalTimeMilliseconds: migration.source.totalTimeMilliseconds,
                    downtimeMilliseconds: migration.source.downtimeMilliseconds,
                    relayedBytes: migration.relayedBytes,
                    ramIdentical: identical,
                    lastSourceHeartbeat: last.sequence,
                    firstDestinationHeartbeat: next.sequence,
                    expectedDestinationHeartbeat: expected,
                    heartbeatVerified: next.isVerified
                )
            }
        }
        if json {
            let encoder = JSONEncoder()
            encoder.outputFormatting = [.prettyPrinted, .sortedKeys]
            print(String(decoding: try encoder.encode(report), as: UTF8.self))
        } else {
            let ratio = Double(report.relayedBytes) / Double(report.ramBytes)
            print(
                """
                migrate-local: \(report.isSuccess ? "OK" : "FAILED") — \(report.totalTimeMilliseconds ?? 0) ms total, \
                \(report.downtimeMilliseconds ?? 0) ms downtime, \(report.relayedBytes) bytes on the stream \
                (\(String(format: "%.2f", ratio))× the VM's RAM), RAM identical: \(report.ramIdentical), \
                heartbeat \(report.lastSourceHeartbeat) → \(report.firstDestinationHeartbeat)
                """
            )
        }
        guard report.isSuccess else { throw ExitCode.failure }
    }

    static func heartbeat(of vm: QEMUVirtualMachine, after: Int) async throws -> (Int, GuestHeartbeat) {
        let (index, line) = try await vm.console.waitForLine(after: after, timeout: .seconds(120)) {
            GuestHeartbeat.matches($0)
        }
        return (index, GuestHeartbeat(line: line)!)
    }

    static func filesAreIdentical(_ first: String, _ second: String) throws -> Bool {
        let a = try FileHandle(forReadingFrom: URL(fileURLWithPath: first))
        let b = try FileHandle(forReadingFrom: URL(fileURLWithPath: second))
        defer {
            try? a.close()
            try? b.close()
        }
        while true {
            let left = try a.read(upToCount: 1 << 22) ?? Data()
            let right = try b.read(upToCount: 1 << 22) ?? Data()
            guard left == right else { return false }
            if left.isEmpty { return true }
        }
    }
}
