import Foundation
import NovaCronHypervisor
import Testing

/// The test guest built by scripts/build-guest.sh, and QEMU's availability.
enum TestGuest {
    static let repository = URL(fileURLWithPath: #filePath)
        .deletingLastPathComponent().deletingLastPathComponent().deletingLastPathComponent()

    static var isQEMUInstalled: Bool {
        (try? QEMUHypervisor().define(placeholderSpec)) != nil || qemuPath != nil
    }

    private static var qemuPath: String? {
        let path = ProcessInfo.processInfo.environment["PATH"] ?? "/usr/bin:/bin"
        return path.split(separator: ":").map { "\($0)/qemu-system-x86_64" }
            .first { FileManager.default.isExecutableFile(atPath: $0) }
    }

    private static var placeholderSpec: VMSpec {
        VMSpec(name: "probe", memoryMiB: 64, kernel: "/dev/null")
    }

    /// A spec booting the test guest with a workload (`nc_*` kernel words). Test VMs are named
    /// `nctest-…`, so scripts/test.sh can kill any that a crashed test run left behind.
    static func spec(_ name: String, memoryMiB: Int = 256, workload: String = "nc_wss_mib=32 nc_rate_mib=4") throws
        -> VMSpec
    {
        let kernel = repository.appendingPathComponent("guest/out/vmlinuz").path
        let initrd = repository.appendingPathComponent("guest/out/initramfs.cpio.gz").path
        try #require(
            FileManager.default.fileExists(atPath: kernel) && FileManager.default.fileExists(atPath: initrd),
            "the test guest is not built: run scripts/build-guest.sh (make test does)"
        )
        return VMSpec(
            name: "nctest-\(name)",
            memoryMiB: memoryMiB,
            kernel: kernel,
            initrd: initrd,
            append: "console=ttyS0 panic=-1 quiet \(workload)"
        )
    }

    /// Waits for the next heartbeat at or after console line `after`.
    static func heartbeat(
        of machine: QEMUVirtualMachine,
        after: Int = 0,
        timeout: Duration = .seconds(90)
    ) async throws -> (index: Int, heartbeat: GuestHeartbeat) {
        let (index, line) = try await machine.console.waitForLine(after: after, timeout: timeout) {
            GuestHeartbeat.matches($0)
        }
        return (index, GuestHeartbeat(line: line)!)
    }
}
