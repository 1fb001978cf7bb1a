import ArgumentParser
import Foundation
import NovaCronHypervisor

struct VMCommand: ParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "vm",
        abstract: "Run and inspect QEMU virtual machines on this node.",
        subcommands: [
            VMRunCommand.self, VMStartCommand.self, VMListCommand.self, VMStopCommand.self, VMResumeCommand.self,
            VMMigrateCommand.self,
            VMMigrationsCommand.self, VMSaveRAMCommand.self, VMMigrateLocalCommand.self,
        ]
    )
}

/// The boot options every `vm` command shares.
struct VMOptions: ParsableArguments {
    @Option(help: "VM name (letters, digits, '-', '_', '.').")
    var name = "vm"

    @Option(help: "Guest RAM, e.g. 512M or 1G. The VM gets 8 KiB less (see docs/hypervisor.md).")
    var memory = "512M"

    @Option(help: "Virtual CPUs.")
    var vcpus = 1

    @Option(help: "Kernel image (default: the test guest, guest/out/vmlinuz).")
    var kernel = "guest/out/vmlinuz"

    @Option(help: "Initramfs (default: the test guest, guest/out/initramfs.cpio.gz).")
    var initrd = "guest/out/initramfs.cpio.gz"

    @Option(help: "Kernel command line; nc_* words set the test guest's workload (guest/README.md).")
    var append = "console=ttyS0 panic=-1 quiet nc_wss_mib=64 nc_rate_mib=4"

    func spec() throws -> VMSpec {
        VMSpec(
            name: name,
            memoryMiB: try Self.parseMiB(memory),
            vcpus: vcpus,
            kernel: kernel,
            initrd: initrd.isEmpty ? nil : initrd,
            append: append
        )
    }

    static func parseMiB(_ text: String) throws -> Int {
        let upper = text.uppercased()
        let (digits, factor): (Substring, Int) =
            upper.hasSuffix("G")
            ? (upper.dropLast(), 1024) : upper.hasSuffix("M") ? (upper.dropLast(), 1) : (Substring(upper), 1)
        guard let value = Int(digits), value > 0 else {
            throw ValidationError("--memory must look like 512M or 2G, not '\(text)'")
        }
        return value * factor
    }
}

/// `novacron vm run`: boots a VM in the foreground until Ctrl-C, QEMU's exit, or `--seconds`.
struct VMRunCommand: AsyncParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "run",
        abstract: "Boot a VM in the foreground; Ctrl-C shuts it down."
    )

    @OptionGroup var options: VMOptions

    @Flag(help: "Show the guest console on stdout.")
    var console = false

    @Flag(help: "Start with the vCPUs paused.")
    var paused = false

    @Option(help: "Shut down after this many seconds.")
    var seconds: Double?

    func run() async throws {
        let spec = try options.spec()
        let signals = SignalWatch([SIGINT, SIGTERM])
        let interrupted = signals.stream
        try await QEMUHypervisor().withVirtualMachine(spec, mode: paused ? .paused : .running) { vm in
            print("novacron: VM \(spec.name) running as QEMU pid \(vm.processID) (\(spec.launchMemoryKiB) KiB RAM)")
            print("novacron: console log \(vm.console.logPath)")
            try await withThrowingTaskGroup(of: String.self) { group in
                if console {
                    group.addTask {
                        var next = 0
                        while true {
                            let (index, line) = try await vm.console.waitForLine(after: next, timeout: .seconds(86400))
                            { _ in true }
                            FileHandle.standardOutput.write(Data((line + "\n").utf8))
                            next = index + 1
                        }
                    }
                }
                group.addTask { "QEMU \(try await vm.waitForExit())" }
                group.addTask { "received \(await SignalWatch.first(of: interrupted))" }
                if let seconds {
                    group.addTask {
                        try await Task.sleep(for: .milliseconds(Int(seconds * 1000)))
                        return "ran for \(seconds) s"
                    }
                }
                let reason = try await group.next()!
                group.cancelAll()
                print("novacron: stopping: \(reason)")
            }
        }
        withExtendedLifetime(signals) {}
    }
}

/// `novacron vm save-ram`: boots the guest and writes RAM images (and optionally a migration-stream
/// capture) at intervals — the corpus for the encoding work.
struct VMSaveRAMCommand: AsyncParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "save-ram",
        abstract: "Boot a VM, then write RAM images (pmemsave) and optionally its migration stream."
    )

    @OptionGroup var options: VMOptions

    @Option(help: "Directory for ram-N.img (and state.migration).")
    var out: String

    @Option(help: "RAM images to write.")
    var images = 1

    @Option(help: "Seconds between images.")
    var interval: Double = 5

    @Option(help: "Guest heartbeats to wait for before the first image (the workload warms up).")
    var afterHeartbeats = 3

    @Flag(help: "After the images, also save the VM's migration stream to state.migration.")
    var stream = false

    func validate() throws {
        guard images >= 1 else { throw ValidationError("--images must be at least 1") }
        guard interval >= 0 else { throw ValidationError("--interval must not be negative") }
    }

    func run() async throws {
        let spec = try options.spec()
        try FileManager.default.createDirectory(atPath: out, withIntermediateDirectories: true)
        try await QEMUHypervisor().withVirtualMachine(spec) { vm in
            var next = 0
            for _ in 0..<afterHeartbeats {
                let (index, _) = try await vm.console.waitForLine(after: next, timeout: .seconds(120)) {
                    GuestHeartbeat.matches($0)
                }
                next = index + 1
            }
            for number in 0..<images {
                if number > 0 {
                    try await Task.sleep(for: .milliseconds(Int(interval * 1000)))
                }
                let path = "\(out)/ram-\(number).img"
                let clock = ContinuousClock()
                let started = clock.now
                try await vm.saveRAM(to: path)
                print("wrote \(path) (\(spec.ramBytes) bytes) in \(clock.now - started)")
            }
            if stream {
                let path = "\(out)/state.migration"
                let info = try await vm.saveState(to: path)
                let size = (try? FileManager.default.attributesOfItem(atPath: path)[.size] as? Int) ?? 0
                print("wrote \(path) (\(size) bytes) in \(info.totalTimeMilliseconds ?? 0) ms")
            }
        }
    }
}

/// Turns SIGINT/SIGTERM into an `AsyncStream` (the signals are ignored by default while it lives).
final class SignalWatch {
    let stream: AsyncStream<Int32>
    private let sources: [any DispatchSourceSignal]

    init(_ signals: [Int32]) {
        let (stream, sink) = AsyncStream.makeStream(of: Int32.self)
        self.stream = stream
        sources = signals.map { number in
            signal(number, SIG_IGN)
            let source = DispatchSource.makeSignalSource(signal: number)
            source.setEventHandler { sink.yield(number) }
            source.resume()
            return source
        }
    }

    static func first(of stream: AsyncStream<Int32>) async -> String {
        for await number in stream {
            return number == SIGINT ? "SIGINT" : "SIGTERM"
        }
        return "end of signals"
    }
}
