import Foundation
import NovaCronHypervisor
import Testing

#if canImport(Glibc)
    import Glibc
#endif

/// Real QEMU (TCG) running the test guest. Serialized: two cores are shared by every guest.
@Suite(
    "QEMU driver with a real guest",
    .serialized,
    .timeLimit(.minutes(4)),
    .enabled(if: TestGuest.isQEMUInstalled, "qemu-system-x86_64 is not installed (scripts/install-deps.sh installs it)")
)
struct QEMUIntegrationTests {
    let hypervisor = QEMUHypervisor()

    @Test("Boot shows verified heartbeats; pause stops them; resume continues the sequence; shutdown quits")
    func bootPauseResume() async throws {
        try await hypervisor.withVirtualMachine(try TestGuest.spec("boot")) { vm in
            let (_, first) = try await TestGuest.heartbeat(of: vm)
            #expect(first.isVerified)
            #expect(try await vm.status() == VMStatus(isRunning: true, state: "running"))

            try await vm.pause()
            #expect(try await vm.status() == VMStatus(isRunning: false, state: "paused"))
            let pausedAt = await vm.console.lineCount
            // A negative check needs time to pass: the guest beats every second, so 2.5 s paused
            // without a heartbeat shows the vCPU is stopped.
            try await Task.sleep(for: .milliseconds(2500))
            let whilePaused = await vm.console.retained.dropFirst(pausedAt).filter(GuestHeartbeat.matches)
            #expect(whilePaused.isEmpty, "heartbeats while paused: \(whilePaused)")
            let last = await vm.console.retained.compactMap(GuestHeartbeat.init(line:)).last!

            try await vm.resume()
            let (_, next) = try await TestGuest.heartbeat(of: vm, after: pausedAt, timeout: .seconds(30))
            #expect(next.sequence == last.sequence + 1)
            #expect(next.isVerified)

            try await vm.shutdown(timeout: .seconds(10))
            #expect(vm.exitDescription == "exited with status 0")
            await #expect(throws: HypervisorError.self) { try await vm.status() }
        }
    }

    @Test("State saved to a stream restores in a new QEMU that continues the heartbeat sequence")
    func saveAndRestore() async throws {
        let directory = FileManager.default.temporaryDirectory.appendingPathComponent("novacron-state-\(UUID())")
        try FileManager.default.createDirectory(at: directory, withIntermediateDirectories: true)
        defer { try? FileManager.default.removeItem(at: directory) }
        let statePath = directory.appendingPathComponent("vm.state").path

        let spec = try TestGuest.spec("save")
        let savedConsole = try await hypervisor.withVirtualMachine(spec) { vm in
            let (index, _) = try await TestGuest.heartbeat(of: vm)
            _ = try await TestGuest.heartbeat(of: vm, after: index + 1)
            let info = try await vm.saveState(to: statePath)
            #expect(info.status == "completed")
            #expect(try await vm.status().isRunning == false)
            return vm.console
        }
        // Read once QEMU has exited: its console is drained then.
        let lastBeforeSave = try #require(await savedConsole.retained.compactMap(GuestHeartbeat.init(line:)).last)
        let size = try FileManager.default.attributesOfItem(atPath: statePath)[.size] as? Int ?? 0
        #expect(size > 1_000_000, "state stream of \(size) bytes")
        #expect(!FileManager.default.fileExists(atPath: statePath + ".partial"))

        try await hypervisor.withVirtualMachine(spec, mode: .incoming(paused: false)) { vm in
            let info = try await vm.restoreState(from: statePath)
            #expect(info.status == "completed")
            let (_, beat) = try await TestGuest.heartbeat(of: vm, timeout: .seconds(30))
            let expected = GuestHeartbeat.expectedFirst(
                after: lastBeforeSave.sequence, newConsoleFirstLine: await vm.console.retained.first ?? "")
            #expect(beat.sequence == expected, "resumed at \(beat.sequence) after \(lastBeforeSave.sequence)")
            #expect(beat.isVerified)
            #expect(beat.uptimeMilliseconds > lastBeforeSave.uptimeMilliseconds)
        }
    }

    @Test("QEMU inherits none of this process's descriptors (a file opened without close-on-exec stays ours)")
    func noDescriptorsInherited() async throws {
        let path = FileManager.default.temporaryDirectory.appendingPathComponent("nc-inherit-\(UUID())").path
        let leaky = open(path, O_CREAT | O_RDWR, 0o600)  // no O_CLOEXEC, on purpose
        try #require(leaky >= 0)
        defer {
            close(leaky)
            unlink(path)
        }
        try await hypervisor.withVirtualMachine(try TestGuest.spec("fds"), mode: .paused) { vm in
            let directory = "/proc/\(vm.processID)/fd"
            let targets = try FileManager.default.contentsOfDirectory(atPath: directory).compactMap {
                try? FileManager.default.destinationOfSymbolicLink(atPath: directory + "/" + $0)
            }
            #expect(!targets.isEmpty, "QEMU's descriptors were not readable")
            #expect(!targets.contains(path), "QEMU holds \(path): \(targets)")
        }
    }

    @Test("QEMU killed from outside is reported with how it ended")
    func externalKillIsReported() async throws {
        try await hypervisor.withVirtualMachine(try TestGuest.spec("kill")) { vm in
            _ = try await TestGuest.heartbeat(of: vm)
            #expect(Glibc.kill(vm.processID, SIGKILL) == 0)
            let exit = try await vm.waitForExit()
            #expect(exit == "killed by signal 9")
            do {
                _ = try await vm.status()
                Issue.record("status() answered after QEMU was killed")
            } catch let error as HypervisorError {
                #expect(error.code == .processExited)
                #expect(error.found.contains("killed by signal 9"))
            }
        }
    }

    @Test("Live migration between two local QEMUs through NovaCron-owned sockets leaves identical RAM")
    func localMigrationIsByteIdentical() async throws {
        let directory = FileManager.default.temporaryDirectory.appendingPathComponent("novacron-ram-\(UUID())")
        try FileManager.default.createDirectory(at: directory, withIntermediateDirectories: true)
        defer { try? FileManager.default.removeItem(at: directory) }
        let spec = try TestGuest.spec("migrate", workload: "nc_wss_mib=64 nc_rate_mib=8 nc_pattern=sparse nc_fill=text")

        try await hypervisor.withVirtualMachine(spec) { source in
            try await hypervisor.withVirtualMachine(spec, mode: .incoming(paused: true)) { destination in
                let (index, _) = try await TestGuest.heartbeat(of: source)
                _ = try await TestGuest.heartbeat(of: source, after: index + 1)

                let report = try await source.migrateLocally(to: destination)
                #expect(report.source.status == "completed")
                #expect(report.destination.status == "completed")
                #expect(report.relayedBytes > 1_000_000)
                #expect(try await source.status().state == "postmigrate")
                #expect(try await destination.status() == VMStatus(isRunning: false, state: "paused"))

                let sourceImage = directory.appendingPathComponent("source.ram").path
                let destinationImage = directory.appendingPathComponent("destination.ram").path
                try await source.saveRAM(to: sourceImage)
                try await destination.saveRAM(to: destinationImage)
                let mismatch = try firstDifference(sourceImage, destinationImage)
                #expect(mismatch == nil, "RAM differs at byte \(mismatch ?? -1)")
                let size = try FileManager.default.attributesOfItem(atPath: sourceImage)[.size] as? Int
                #expect(size == spec.ramBytes)

                let last = await source.console.retained.compactMap(GuestHeartbeat.init(line:)).last!
                try await destination.resume()
                let (_, beat) = try await TestGuest.heartbeat(of: destination, timeout: .seconds(30))
                let expected = GuestHeartbeat.expectedFirst(
                    after: last.sequence, newConsoleFirstLine: await destination.console.retained.first ?? "")
                #expect(
                    beat.sequence == expected, "destination at \(beat.sequence), source ended at \(last.sequence)")
                #expect(beat.isVerified)
            }
        }
    }

    @Test("A QEMU that cannot start is reported with its stderr; a bad spec is refused before launch")
    func launchFailures() async throws {
        var spec = try TestGuest.spec("bad")
        spec.machineType = "no-such-machine"
        do {
            _ = try await hypervisor.withVirtualMachine(spec) { _ in Issue.record("a VM with a bogus machine type ran")
            }
        } catch let error as HypervisorError {
            #expect(error.code == .launchFailed)
            #expect(error.found.contains("unsupported machine type"), "\(error)")
        }

        var missing = try TestGuest.spec("missing")
        missing.kernel = "/nonexistent/vmlinuz"
        #expect(throws: HypervisorError.self) { try hypervisor.define(missing) }
    }
}

/// The offset of the first byte where two files differ, or `nil` if they are identical.
func firstDifference(_ first: String, _ second: String) throws -> Int? {
    let a = try FileHandle(forReadingFrom: URL(fileURLWithPath: first))
    let b = try FileHandle(forReadingFrom: URL(fileURLWithPath: second))
    defer {
        try? a.close()
        try? b.close()
    }
    var offset = 0
    while true {
        let left = try a.read(upToCount: 1 << 22) ?? Data()
        let right = try b.read(upToCount: 1 << 22) ?? Data()
        if left != right {
            let index = zip(left, right).enumerated().first { $0.element.0 != $0.element.1 }?.offset
            return offset + (index ?? min(left.count, right.count))
        }
        if left.isEmpty { return nil }
        offset += left.count
    }
}
