import Foundation
import Glibc

/// Everything a link named N creates, derived from its name, so a leftover can be found and removed by name alone.
struct LinkNames: Sendable {
    /// Address of side a inside namespace N-a.
    static let addressA = "10.77.0.1"
    /// Address of side b inside namespace N-b.
    static let addressB = "10.77.0.2"
    /// Prefix length of the link's subnet.
    static let prefixLength = 24
    /// Root of every link's state directory.
    static let stateRoot = "/run/wanem"

    let name: String

    init(_ name: String) throws {
        let allowed = Set("abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789-")
        guard !name.isEmpty, name.count <= 12, name.allSatisfy(allowed.contains), name.first != "-" else {
            throw ShellError(
                step: "--name", reason: "expected 1-12 letters, digits or '-' (not first), found \"\(name)\"")
        }
        self.name = name
    }

    var namespaceA: String { "\(name)-a" }
    var namespaceB: String { "\(name)-b" }
    var tunA: String { "\(name)-ta" }
    var tunB: String { "\(name)-tb" }
    var stateDirectory: String { "\(Self.stateRoot)/\(name)" }
    var pidFile: String { "\(stateDirectory)/pid" }
    var statusFile: String { "\(stateDirectory)/status.json" }
    var readyFile: String { "\(stateDirectory)/ready" }

    func namespace(side: Side) -> String { side == .a ? namespaceA : namespaceB }
    static func address(side: Side) -> String { side == .a ? addressA : addressB }
}

/// A side of the link.
enum Side: String, Sendable, CaseIterable {
    case a
    case b

    var peer: Side { self == .a ? .b : .a }
}

/// Creating, inspecting and removing a link's namespaces with `ip`.
enum Topology {
    /// Names of the network namespaces `ip netns list` shows.
    static func namespaces() throws -> Set<String> {
        let output = try Subprocess.check(["ip", "netns", "list"])
        return Set(output.split(separator: "\n").compactMap { $0.split(separator: " ").first.map(String.init) })
    }

    /// The pid recorded by a live `wanem up` for this name, if that process still runs.
    static func livePID(of names: LinkNames) -> pid_t? {
        guard let text = try? String(contentsOfFile: names.pidFile, encoding: .utf8),
            let pid = pid_t(text.trimmingCharacters(in: .whitespacesAndNewlines)), pid > 0, pid != getpid()
        else { return nil }
        guard kill(pid, 0) == 0 else { return nil }
        // A recycled pid would belong to something else: check it is a wanem.
        let commandLine = (try? String(contentsOfFile: "/proc/\(pid)/cmdline", encoding: .utf8)) ?? ""
        return commandLine.contains("wanem") ? pid : nil
    }

    /// Whether anything of this link exists (namespaces, state directory, TUN devices left in the root namespace).
    static func leftovers(of names: LinkNames) throws -> [String] {
        var found: [String] = []
        let existing = try namespaces()
        for namespace in [names.namespaceA, names.namespaceB] where existing.contains(namespace) {
            found.append("netns \(namespace)")
        }
        for device in [names.tunA, names.tunB] where FileManager.default.fileExists(atPath: "/sys/class/net/\(device)")
        {
            found.append("link \(device)")
        }
        if FileManager.default.fileExists(atPath: names.stateDirectory) { found.append(names.stateDirectory) }
        return found
    }

    /// Creates both namespaces, moves the TUN devices into them and configures addresses and routes.
    static func create(_ names: LinkNames, mtu: Int) throws {
        for side in Side.allCases {
            let namespace = names.namespace(side: side)
            let device = side == .a ? names.tunA : names.tunB
            try Subprocess.check(["ip", "link", "set", "dev", device, "netns", namespace])
            let inNamespace = ["ip", "-n", namespace]
            try Subprocess.check(inNamespace + ["link", "set", "dev", "lo", "up"])
            try Subprocess.check(inNamespace + ["link", "set", "dev", device, "mtu", "\(mtu)", "txqueuelen", "10000"])
            try Subprocess.check(
                inNamespace + [
                    "addr", "add", "\(LinkNames.address(side: side))/\(LinkNames.prefixLength)", "dev", device,
                ])
            try Subprocess.check(inNamespace + ["link", "set", "dev", device, "up"])
            try Subprocess.check(inNamespace + ["route", "add", "default", "dev", device])
            // No IPv6 chatter (router solicitations) on the emulated link.
            _ = try? Subprocess.run(
                ["ip", "netns", "exec", namespace, "sysctl", "-qw", "net.ipv6.conf.all.disable_ipv6=1"])
        }
    }

    /// Creates both namespaces (before the TUN devices are opened).
    static func addNamespaces(_ names: LinkNames) throws {
        for namespace in [names.namespaceA, names.namespaceB] {
            try Subprocess.check(["ip", "netns", "add", namespace])
        }
    }

    /// Removes everything of the link: processes inside its namespaces, the namespaces, stray TUN devices and the
    /// state directory. Never touches a live `wanem up` other than by `exceptPID`'s owner.
    /// - Returns: What was removed, one entry each.
    @discardableResult
    static func remove(_ names: LinkNames) -> [String] {
        var removed: [String] = []
        let existing = (try? namespaces()) ?? []
        for namespace in [names.namespaceA, names.namespaceB] where existing.contains(namespace) {
            let pids = ((try? Subprocess.run(["ip", "netns", "pids", namespace]))?.output ?? "")
                .split(separator: "\n").compactMap { pid_t($0.trimmingCharacters(in: .whitespaces)) }
            for pid in pids where pid != getpid() {
                kill(pid, SIGKILL)
                removed.append("process \(pid) in \(namespace)")
            }
            if (try? Subprocess.run(["ip", "netns", "delete", namespace]))?.succeeded == true {
                removed.append("netns \(namespace)")
            }
        }
        for device in [names.tunA, names.tunB] where FileManager.default.fileExists(atPath: "/sys/class/net/\(device)")
        {
            if (try? Subprocess.run(["ip", "link", "delete", "dev", device]))?.succeeded == true {
                removed.append("link \(device)")
            }
        }
        if FileManager.default.fileExists(atPath: names.stateDirectory) {
            try? FileManager.default.removeItem(atPath: names.stateDirectory)
            removed.append(names.stateDirectory)
        }
        return removed
    }
}
