import Foundation
import Glibc
import Testing
import WANEmulation

@testable import wanem

/// Where the integration tests can run: as root, with /dev/net/tun, `ip`, and the built `wanem` binary.
enum IntegrationEnvironment {
    /// The `wanem` executable built next to the test bundle.
    static let executable: String? = {
        guard let bundle = try? FileManager.default.destinationOfSymbolicLink(atPath: "/proc/self/exe") else {
            return nil
        }
        let candidate = URL(fileURLWithPath: bundle).deletingLastPathComponent().appendingPathComponent("wanem").path
        return FileManager.default.isExecutableFile(atPath: candidate) ? candidate : nil
    }()

    static let isAvailable: Bool =
        geteuid() == 0 && FileManager.default.fileExists(atPath: "/dev/net/tun")
        && ["/usr/sbin/ip", "/usr/bin/ping", "/usr/bin/iperf3"].allSatisfy(FileManager.default.isExecutableFile)
        && executable != nil

    static let reason: Comment =
        "integration tests need root, /dev/net/tun, ip, ping, iperf3 and the built wanem binary; skipped"

    /// A link name unique to this test process.
    static func name(_ suffix: String) -> String {
        "wt\(getpid() % 100_000)\(suffix)"
    }

    static func namespaces() -> Set<String> {
        (try? Topology.namespaces()) ?? []
    }
}

@Suite("wanem on real namespaces and TUN devices (root only)", .serialized)
struct IntegrationTests {
    @Test(
        "a link comes up, delays pings by its RTT, delivers a TCP transfer, and goes away on SIGTERM",
        .enabled(if: IntegrationEnvironment.isAvailable, IntegrationEnvironment.reason),
        .timeLimit(.minutes(2)))
    func linkDelaysAndDelivers() throws {
        let executable = try #require(IntegrationEnvironment.executable)
        let name = IntegrationEnvironment.name("r")
        let parameters = try #require(
            try? LinkOptions.parse(["--rtt-ms", "40", "--rate-mbit", "100"]).parameters())
        let link = try EmulatedLink.start(name: name, parameters: parameters, executable: executable, duration: 90)
        defer { link.tearDown() }
        #expect(IntegrationEnvironment.namespaces().isSuperset(of: ["\(name)-a", "\(name)-b"]))

        let ping = try link.run(side: .a, ["ping", "-q", "-n", "-c", "20", "-i", "0.05", link.address(of: .b)])
        #expect(ping.succeeded, "ping failed: \(ping.output) \(ping.errorOutput)")
        #expect(ping.output.contains("20 received"), "\(ping.output)")
        let average = ping.output.split(separator: "\n").first { $0.contains("min/avg/max") }
            .flatMap { $0.split(separator: "=").last?.split(separator: "/").dropFirst().first }
            .flatMap { Double($0.trimmingCharacters(in: .whitespaces)) }
        let rtt = try #require(average, "no RTT in \(ping.output)")
        // Fidelity is measured by bench-wanem; here the delay must be applied once (not 0, not twice),
        // with headroom for a CI machine busy with guests and builds.
        #expect(rtt >= 40 && rtt < 48, "mean RTT \(rtt) ms for a configured 40 ms")

        // 20 MB from a to b through the 100 Mbit/s link.
        let server = try link.spawn(side: .b, ["iperf3", "-s", "-1", "-B", link.address(of: .b)])
        defer {
            kill(-server, SIGKILL)
            _ = Subprocess.wait(for: server)
        }
        sleepMilliseconds(300)
        let transfer = try link.run(side: .a, ["iperf3", "-c", link.address(of: .b), "-n", "20M", "-J"])
        #expect(transfer.succeeded, "iperf3 failed: \(transfer.errorOutput)")
        let summary = (try? JSONSerialization.jsonObject(with: Data(transfer.output.utf8))) as? [String: Any]
        let received = ((summary?["end"] as? [String: Any])?["sum_received"] as? [String: Any])?["bytes"] as? Int ?? 0
        // iperf3 -n stops when the sender has written 20 MiB, before the last bytes arrive.
        #expect(received >= 10_000_000, "iperf3 received \(received) bytes")
        sleepMilliseconds(700)
        let live = try link.counters()
        let uplink = try #require(live["uplink"] as? [String: Any])
        #expect((uplink["forwarded_bytes"] as? Int ?? 0) > 0)
        #expect(live["running"] as? Bool == true)

        let final = try link.stop()
        #expect(final["stop_reason"] as? String == "signal")
        let finalUplink = try #require(final["uplink"] as? [String: Any])
        // The payload and its headers crossed the uplink.
        #expect((finalUplink["forwarded_bytes"] as? Int ?? 0) > received)
        #expect((finalUplink["dropped_queue_packets"] as? Int) != nil)
        // The verdict follows the lateness counters (a shared machine may make this run late; it must say so).
        let late =
            (finalUplink["late_fraction"] as? Double ?? 1) > 0.01
            || ((final["downlink"] as? [String: Any])?["late_fraction"] as? Double ?? 1) > 0.01
        #expect(final["valid"] as? Bool == !late, "\(final)")
        #expect(IntegrationEnvironment.namespaces().isDisjoint(with: ["\(name)-a", "\(name)-b"]))
        #expect(!FileManager.default.fileExists(atPath: "/run/wanem/\(name)"))
    }

    @Test(
        "after kill -9 the leftovers stay, and `wanem down` removes every one of them",
        .enabled(if: IntegrationEnvironment.isAvailable, IntegrationEnvironment.reason),
        .timeLimit(.minutes(1)))
    func downCleansAfterForcedKill() throws {
        let executable = try #require(IntegrationEnvironment.executable)
        let name = IntegrationEnvironment.name("k")
        let parameters = LinkParameters(roundTripMilliseconds: 10, rateMegabitsPerSecond: 50)
        let link = try EmulatedLink.start(name: name, parameters: parameters, executable: executable, duration: 60)
        defer { link.tearDown() }
        // A process living in a side, as a benchmark's server would.
        let sleeper = try link.spawn(side: .b, ["sleep", "60"])
        defer { _ = Subprocess.poll(sleeper) }

        link.killForcibly()
        #expect(!link.isRunning)
        let leftovers = try Topology.leftovers(of: LinkNames(name))
        #expect(leftovers.contains("netns \(name)-a") && leftovers.contains("netns \(name)-b"), "\(leftovers)")

        let down = try EmulatedLink.down(name: name, executable: executable)
        #expect(down.succeeded, "wanem down failed: \(down.output) \(down.errorOutput)")
        #expect(down.output.contains("netns \(name)-a"))
        #expect(IntegrationEnvironment.namespaces().isDisjoint(with: ["\(name)-a", "\(name)-b"]))
        #expect(try Topology.leftovers(of: LinkNames(name)).isEmpty)
        #expect(!FileManager.default.fileExists(atPath: "/sys/class/net/\(name)-ta"))
        // The process that lived in the namespace is gone too.
        let deadline = monotonicNanoseconds() + 2_000_000_000
        while Subprocess.poll(sleeper) == nil, monotonicNanoseconds() < deadline { sleepMilliseconds(10) }
        #expect(kill(sleeper, 0) != 0, "the process inside the namespace survived `wanem down`")

        let again = try EmulatedLink.down(name: name, executable: executable)
        #expect(again.output.contains("nothing of \(name) was left"))
    }

    @Test(
        "`wanem up` refuses a bad name and a live duplicate, and cleans a stale leftover by itself",
        .enabled(if: IntegrationEnvironment.isAvailable, IntegrationEnvironment.reason),
        .timeLimit(.minutes(1)))
    func upHandlesDuplicatesAndLeftovers() throws {
        let executable = try #require(IntegrationEnvironment.executable)
        let bad = try Subprocess.run([executable, "up", "--name", "bad name!", "--rtt-ms", "1", "--rate-mbit", "1"])
        #expect(!bad.succeeded)
        let name = IntegrationEnvironment.name("d")
        let parameters = LinkParameters(roundTripMilliseconds: 2, rateMegabitsPerSecond: 10)
        let first = try EmulatedLink.start(name: name, parameters: parameters, executable: executable, duration: 60)
        defer { first.tearDown() }
        let duplicate = try Subprocess.run(
            [executable, "up", "--name", name, "--rtt-ms", "2", "--rate-mbit", "10", "--duration", "5"],
            timeoutSeconds: 20)
        #expect(!duplicate.succeeded)
        #expect((duplicate.output + duplicate.errorOutput).contains("already up"))
        first.killForcibly()
        let second = try EmulatedLink.start(name: name, parameters: parameters, executable: executable, duration: 60)
        defer { second.tearDown() }
        let ping = try second.run(side: .b, ["ping", "-q", "-n", "-c", "3", "-i", "0.05", second.address(of: .a)])
        #expect(ping.output.contains("3 received"), "\(ping.output)")
        let log = (try? String(contentsOfFile: second.logPath, encoding: .utf8)) ?? ""
        #expect(log.contains("removing leftovers"), "\(log)")
        _ = try second.stop()
        #expect(IntegrationEnvironment.namespaces().isDisjoint(with: ["\(name)-a", "\(name)-b"]))
    }
}
