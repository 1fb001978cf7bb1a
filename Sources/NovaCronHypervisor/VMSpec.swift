import Foundation

/// What to launch: a VM's hardware and boot configuration.
public struct VMSpec: Hashable, Sendable, Codable {
    /// A disk attached as a virtio block device.
    public struct Disk: Hashable, Sendable, Codable {
        /// The image file.
        public var path: String
        /// The image format, e.g. `raw` or `qcow2`.
        public var format: String
        /// Whether the guest may only read it.
        public var isReadOnly: Bool

        /// Creates a disk.
        public init(path: String, format: String = "raw", isReadOnly: Bool = false) {
            self.path = path
            self.format = format
            self.isReadOnly = isReadOnly
        }
    }

    /// The VM's name, used in process titles and runtime paths.
    public var name: String
    /// Guest RAM as requested, in MiB. The VM gets 8 KiB less: see ``launchMemoryKiB``.
    public var memoryMiB: Int
    /// Virtual CPUs.
    public var vcpus: Int
    /// The kernel image to boot.
    public var kernel: String
    /// The initramfs, if any.
    public var initrd: String?
    /// The kernel command line. `console=ttyS0` is added if missing, so the console reaches NovaCron.
    public var append: String
    /// Disks, in order.
    public var disks: [Disk]
    /// QEMU's machine type. Source and destination of a migration must match.
    public var machineType: String
    /// The guest CPU model.
    public var cpuModel: String
    /// The accelerator: `tcg` on these machines (KVM hangs in firmware here).
    public var accelerator: String
    /// The QEMU binary, looked up in `PATH` when not absolute.
    public var qemuBinary: String

    /// Creates a spec with the defaults that migrate correctly on these machines.
    public init(
        name: String,
        memoryMiB: Int,
        vcpus: Int = 1,
        kernel: String,
        initrd: String? = nil,
        append: String = "",
        disks: [Disk] = [],
        machineType: String = "pc-i440fx-7.2",
        cpuModel: String = "qemu64",
        accelerator: String = "tcg",
        qemuBinary: String = "qemu-system-x86_64"
    ) {
        self.name = name
        self.memoryMiB = memoryMiB
        self.vcpus = vcpus
        self.kernel = kernel
        self.initrd = initrd
        self.append = append
        self.disks = disks
        self.machineType = machineType
        self.cpuModel = cpuModel
        self.accelerator = accelerator
        self.qemuBinary = qemuBinary
    }

    /// The RAM size QEMU is given: the request less 8 KiB.
    ///
    /// QEMU 7.2's TCG dirty tracking lost guest memory during live migration in 4 of 8 runs when RAM
    /// was a multiple of 256 KiB (`-m 512`), and in none of 15 with `524280k` (shared/QEMU-NOTES.md).
    /// A whole number of MiB less 8 KiB is 8 KiB-aligned and never a multiple of 256 KiB.
    public var launchMemoryKiB: Int { memoryMiB * 1024 - 8 }

    /// The guest RAM size in bytes, as `pmemsave` sees it.
    public var ramBytes: Int { launchMemoryKiB * 1024 }

    /// Checks the spec.
    /// - Throws: ``HypervisorError/Code/invalidSpec`` naming the first bad field.
    public func validate() throws(HypervisorError) {
        func invalid(_ expected: String, _ found: String) -> HypervisorError {
            HypervisorError(.invalidSpec, expected: expected, found: found)
        }
        guard !name.isEmpty, name.allSatisfy({ $0.isLetter || $0.isNumber || $0 == "-" || $0 == "_" || $0 == "." })
        else {
            throw invalid("a name of letters, digits, '-', '_' or '.'", "'\(name)'")
        }
        guard (16...1_048_576).contains(memoryMiB) else {
            throw invalid("memory of 16 MiB to 1 TiB", "\(memoryMiB) MiB")
        }
        guard (1...64).contains(vcpus) else {
            throw invalid("1 to 64 vCPUs", "\(vcpus)")
        }
        for (field, path) in [("kernel", kernel), ("initrd", initrd)] {
            guard let path else { continue }
            guard FileManager.default.isReadableFile(atPath: path) else {
                throw invalid("a readable \(field) file", "'\(path)' does not exist or is not readable")
            }
        }
        for disk in disks where !FileManager.default.isReadableFile(atPath: disk.path) {
            throw invalid("a readable disk image", "'\(disk.path)' does not exist or is not readable")
        }
        guard !append.contains("\n") else {
            throw invalid("a one-line kernel command line", "a newline in it")
        }
    }

    /// QEMU's arguments for this spec.
    func qemuArguments(qmpSocket: String, mode: LaunchMode) -> [String] {
        var commandLine = append
        if !commandLine.split(separator: " ").contains(where: { $0.hasPrefix("console=") }) {
            commandLine = "console=ttyS0 " + commandLine
        }
        var arguments = [
            "-name", "\(name),process=novacron-\(name)",
            "-accel", accelerator,
            "-M", machineType,
            "-cpu", cpuModel,
            "-m", "\(launchMemoryKiB)k",
            "-smp", "\(vcpus)",
            "-display", "none",
            "-nodefaults",
            "-no-user-config",
            "-no-reboot",
            "-kernel", kernel,
            "-append", commandLine.trimmingCharacters(in: .whitespaces),
            "-serial", "stdio",
            "-qmp", "unix:\(qmpSocket),server=on,wait=off",
        ]
        if let initrd {
            arguments += ["-initrd", initrd]
        }
        for disk in disks {
            var drive = "file=\(disk.path),if=virtio,format=\(disk.format)"
            if disk.isReadOnly {
                drive += ",readonly=on"
            }
            arguments += ["-drive", drive]
        }
        switch mode {
        case .running:
            break
        case .paused:
            arguments.append("-S")
        case .incoming(let paused):
            arguments += ["-incoming", "defer"]
            if paused {
                arguments.append("-S")
            }
        }
        return arguments
    }
}

/// How a VM starts.
public enum LaunchMode: Hashable, Sendable {
    /// Boots and runs.
    case running
    /// Boots paused (`-S`); `resume()` starts it.
    case paused
    /// Waits for incoming state (`-incoming defer`); with `paused`, stays paused after it arrives
    /// (`-S`), so the state can be verified before `resume()`.
    case incoming(paused: Bool)
}
