import ArgumentParser
import Foundation
import Glibc
import WANEmulation

/// `wanem selftest`: brings a link up, measures it with ping and iperf3, and compares with its configuration.
struct SelfTest: ParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "selftest",
        abstract: "Measure ping RTT, loss and iperf3 throughput through an emulated link; configured vs measured.")

    @OptionGroup var link: LinkOptions

    @Option(help: "Link name used for the test.")
    var name = "wanem-st"

    @Option(help: "Write the JSON result here.")
    var json: String?

    @Option(help: "Seconds per iperf3 measurement (after the omitted ramp-up).")
    var seconds: Double = 10

    @Option(help: "Parallel TCP streams for the parallel measurement.")
    var streams = 8

    @Option(name: .customLong("ping-count"), help: "Echo requests for the RTT measurement.")
    var pingCount = 100

    @Option(name: .customLong("tcp-buffer-mib"), help: "tcp_rmem/tcp_wmem maximum inside the namespaces, in MiB.")
    var tcpBufferMebibytes = 64

    @Option(name: .customLong("congestion-control"), help: "TCP congestion control for iperf3 (bbr, cubic, reno).")
    var congestionControl = "bbr"

    mutating func run() throws {
        try requireRoot()
        if link.profile == nil && link.roundTripMilliseconds == nil { link.profile = "lan" }
        let parameters = try link.parameters()
        _ = try parameters.configuration()
        let tracePaths = (up: link.traceUp, down: link.traceDown)
        blockStopSignals()

        let started = ISO8601DateFormatter().string(from: Date())
        let configuredRate = try parameters.configuration().uplink.rate.averageBitsPerSecond / 1e6
        let configuredRTT = parameters.roundTripMilliseconds
        var measurement = Measurement()

        // 1. The link as configured: RTT, loss, TCP single and parallel.
        printFlushed("selftest: \(describe(parameters)) — RTT, loss, TCP")
        let emulated = try EmulatedLink.start(name: name, parameters: parameters, tracePaths: tracePaths)
        var asConfigured: [String: Any] = [:]
        do {
            defer { emulated.tearDown() }
            try prepare(emulated)
            measurement.ping = try ping(emulated)
            try checkSignals()
            measurement.udp = try udpLoss(emulated, rateMegabits: min(configuredRate * 0.5, 100))
            try checkSignals()
            measurement.singleStream = try tcp(emulated, streams: 1, rtt: configuredRTT).goodput
            try checkSignals()
            let parallel = try tcp(emulated, streams: streams, rtt: configuredRTT)
            measurement.parallel = parallel.goodput
            measurement.lossFreeParallelWire = parallel.wire
            asConfigured = try emulated.stop()
        }
        // 2. Without loss, the parallel-stream rate (loss caps TCP, not the emulator).
        var lossFree = asConfigured
        if parameters.loss > 0 || parameters.uplink.loss ?? 0 > 0 || parameters.downlink.loss ?? 0 > 0 {
            var withoutLoss = parameters
            withoutLoss.loss = 0
            withoutLoss.uplink.loss = nil
            withoutLoss.downlink.loss = nil
            printFlushed("selftest: same link without loss — parallel TCP rate")
            let clean = try EmulatedLink.start(name: name, parameters: withoutLoss, tracePaths: tracePaths)
            defer { clean.tearDown() }
            try prepare(clean)
            (measurement.lossFreeParallel, measurement.lossFreeParallelWire) = try tcp(
                clean, streams: streams, rtt: configuredRTT)
            lossFree = try clean.stop()
        } else {
            measurement.lossFreeParallel = measurement.parallel
        }

        let result = makeResult(
            parameters: parameters, configuredRate: configuredRate, measurement: measurement,
            asConfigured: asConfigured, lossFree: lossFree, started: started)
        printTable(result)
        if let json {
            let data = try JSONSerialization.data(withJSONObject: result, options: [.prettyPrinted, .sortedKeys])
            try data.write(to: URL(fileURLWithPath: json))
            printFlushed("selftest: wrote \(json)")
        }
    }

    // MARK: Measurements

    struct PingResult {
        var transmitted = 0
        var received = 0
        var averageMilliseconds = 0.0
        var minimumMilliseconds = 0.0
        var maximumMilliseconds = 0.0
    }

    struct UDPResult {
        var packets = 0
        var lost = 0
        var megabits = 0.0
    }

    struct Measurement {
        var ping = PingResult()
        var udp = UDPResult()
        var singleStream = 0.0
        var parallel = 0.0
        var lossFreeParallel = 0.0
        var lossFreeParallelWire = 0.0
    }

    private func checkSignals() throws {
        var pending = sigset_t()
        sigpending(&pending)
        for signal in [SIGINT, SIGTERM, SIGHUP] where sigismember(&pending, signal) == 1 {
            throw ShellError(step: "selftest", reason: "interrupted by signal \(signal)")
        }
    }

    private func prepare(_ link: EmulatedLink) throws {
        let bytes = tcpBufferMebibytes * 1_048_576
        for side in Side.allCases {
            for (key, value) in [
                ("net.ipv4.tcp_rmem", "4096 131072 \(bytes)"), ("net.ipv4.tcp_wmem", "4096 16384 \(bytes)"),
            ] {
                _ = try link.run(side: side, ["sysctl", "-qw", "\(key)=\(value)"], timeoutSeconds: 10)
            }
        }
    }

    private func ping(_ link: EmulatedLink) throws -> PingResult {
        let result = try link.run(
            side: .a, ["ping", "-q", "-n", "-c", "\(pingCount)", "-i", "0.02", "-W", "5", link.address(of: .b)],
            timeoutSeconds: Double(pingCount) * 0.05 + 30)
        var parsed = PingResult()
        for line in result.output.split(separator: "\n") {
            if line.contains("packets transmitted") {
                let numbers = line.split(separator: " ").compactMap { Int($0) }
                if numbers.count >= 2 {
                    parsed.transmitted = numbers[0]
                    parsed.received = numbers[1]
                }
            }
            if line.contains("min/avg/max"), let values = line.split(separator: "=").last {
                let parts = values.trimmingCharacters(in: .whitespaces).split(separator: "/").compactMap {
                    Double($0.split(separator: " ").first ?? "")
                }
                if parts.count >= 3 {
                    parsed.minimumMilliseconds = parts[0]
                    parsed.averageMilliseconds = parts[1]
                    parsed.maximumMilliseconds = parts[2]
                }
            }
        }
        guard parsed.received > 0 else {
            throw ShellError(step: "ping", reason: "no reply: \(result.output) \(result.errorOutput)")
        }
        return parsed
    }

    private func withServer<T>(_ link: EmulatedLink, _ body: () throws -> T) throws -> T {
        let server = try link.spawn(side: .b, ["iperf3", "-s", "-1", "-B", link.address(of: .b)])
        defer {
            kill(-server, SIGKILL)
            _ = Subprocess.wait(for: server)
        }
        sleepMilliseconds(300)
        return try body()
    }

    private func iperfJSON(_ result: CommandResult) throws -> [String: Any] {
        guard let data = result.output.data(using: .utf8),
            let object = try? JSONSerialization.jsonObject(with: data) as? [String: Any]
        else {
            throw ShellError(step: "iperf3", reason: "no JSON output: \(result.errorOutput.prefix(300))")
        }
        if let error = object["error"] as? String { throw ShellError(step: "iperf3", reason: error) }
        return object
    }

    private func udpLoss(_ link: EmulatedLink, rateMegabits: Double) throws -> UDPResult {
        try withServer(link) {
            let result = try link.run(
                side: .a,
                [
                    "iperf3", "-c", link.address(of: .b), "-u", "-b", "\(Int(rateMegabits * 1e6))", "-l", "1200", "-w",
                    "8M",
                    "-t", "\(Int(seconds))", "-J",
                ], timeoutSeconds: seconds + 60)
            let object = try iperfJSON(result)
            let sum = (object["end"] as? [String: Any])?["sum"] as? [String: Any] ?? [:]
            return UDPResult(
                packets: sum["packets"] as? Int ?? 0, lost: sum["lost_packets"] as? Int ?? 0,
                megabits: (sum["bits_per_second"] as? Double ?? 0) / 1e6)
        }
    }

    /// Receiver-side goodput in Mbit/s of `streams` TCP streams from side a to side b, measured by the iperf3 server
    /// over its 1-second intervals after the ramp-up (the client's `sum_received` counts omitted seconds' bytes).
    private func tcp(_ link: EmulatedLink, streams: Int, rtt: Double) throws -> (goodput: Double, wire: Double) {
        var wire = 0.0
        let omit = max(2, Int((rtt / 1000 * 15).rounded(.up)))
        let serverLog = Subprocess.temporaryPath("iperf3-server.json")
        defer { unlink(serverLog) }
        let server = try link.spawn(
            side: .b, ["iperf3", "-s", "-1", "-J", "-B", link.address(of: .b)], logPath: serverLog)
        var serverDone = false
        defer {
            if !serverDone {
                kill(-server, SIGKILL)
                _ = Subprocess.wait(for: server)
            }
        }
        sleepMilliseconds(300)
        let clientLog = Subprocess.temporaryPath("iperf3-client.json")
        defer { unlink(clientLog) }
        let client = try link.spawn(
            side: .a,
            [
                "iperf3", "-c", link.address(of: .b), "-t", "\(Int(seconds))", "-O", "\(omit)", "-P", "\(streams)",
                "-C", congestionControl, "-J",
            ], logPath: clientLog)
        // Side b's kernel counts the IP bytes the link delivered to it (rx_bytes of its TUN device): sampled after
        // the ramp-up and at the end, it gives the delivered rate independently of the emulator's counters.
        sleepMilliseconds(omit * 1000 + 600)
        let before = receivedBytes(link)
        let clientStatus = Subprocess.wait(for: client)
        let after = receivedBytes(link)
        if let before, let after, after.time > before.time {
            wire = Double(after.bytes - before.bytes) * 8 / (Double(after.time - before.time) / 1e9) / 1e6
        }
        let clientOutput = (try? String(contentsOfFile: clientLog, encoding: .utf8)) ?? ""
        _ = try iperfJSON(CommandResult(status: clientStatus, output: clientOutput, errorOutput: ""))
        let deadline = monotonicNanoseconds() + 10_000_000_000
        while Subprocess.poll(server) == nil {
            if monotonicNanoseconds() > deadline { break }
            sleepMilliseconds(20)
        }
        serverDone = kill(server, 0) != 0
        let log = (try? String(contentsOfFile: serverLog, encoding: .utf8)) ?? ""
        let object = try iperfJSON(CommandResult(status: 0, output: log, errorOutput: ""))
        var bytes = 0.0
        var duration = 0.0
        for interval in object["intervals"] as? [[String: Any]] ?? [] {
            guard let sum = interval["sum"] as? [String: Any], sum["omitted"] as? Bool != true,
                let seconds = sum["seconds"] as? Double, seconds > 0.5
            else { continue }
            bytes += sum["bytes"] as? Double ?? 0
            duration += seconds
        }
        guard duration > 0 else { throw ShellError(step: "iperf3 server", reason: "no receiver intervals") }
        return (bytes * 8 / duration / 1e6, wire)
    }

    /// Bytes side b's kernel received on its TUN device, with the monotonic instant of the reading.
    private func receivedBytes(_ link: EmulatedLink) -> (bytes: UInt64, time: UInt64)? {
        let path = "/sys/class/net/\(link.name)-tb/statistics/rx_bytes"
        let time = monotonicNanoseconds()
        guard let result = try? link.run(side: .b, ["cat", path], timeoutSeconds: 10), result.succeeded,
            let bytes = UInt64(result.output.trimmingCharacters(in: .whitespacesAndNewlines))
        else { return nil }
        return (bytes, (time + monotonicNanoseconds()) / 2)
    }

    // MARK: Result

    private func describe(_ parameters: LinkParameters) -> String {
        "\(link.profile ?? "custom"): RTT \(parameters.roundTripMilliseconds) ms, "
            + "\(parameters.rateMegabitsPerSecond) Mbit/s, loss \(parameters.loss) (\(parameters.lossModel.rawValue))"
    }

    private func machine() -> [String: Any] {
        let cpuInfo = (try? String(contentsOfFile: "/proc/cpuinfo", encoding: .utf8)) ?? ""
        let model =
            cpuInfo.split(separator: "\n").first { $0.hasPrefix("model name") }?
            .split(separator: ":").last?.trimmingCharacters(in: .whitespaces) ?? "unknown"
        var name = utsname()
        uname(&name)
        let release = withUnsafeBytes(of: &name.release) { String(decoding: $0.prefix { $0 != 0 }, as: UTF8.self) }
        return [
            "cores": ProcessInfo.processInfo.activeProcessorCount, "cpu": model, "kernel": release, "swift": "6.3.1",
        ]
    }

    private func makeResult(
        parameters: LinkParameters,
        configuredRate: Double,
        measurement: Measurement,
        asConfigured: [String: Any],
        lossFree: [String: Any],
        started: String
    ) -> [String: Any] {
        let rtt = parameters.roundTripMilliseconds
        let loss = parameters.loss
        let udp = measurement.udp
        let measuredLoss = udp.packets > 0 ? Double(udp.lost) / Double(udp.packets) : 0
        let sigma = udp.packets > 0 ? (loss * (1 - loss) / Double(udp.packets)).squareRoot() : 0
        let lossBounds = (max(0, loss - 4 * sigma), loss + 4 * sigma)
        let lossWithinBounds = measuredLoss >= lossBounds.0 && measuredLoss <= lossBounds.1
        let valid = (asConfigured["valid"] as? Bool ?? false) && (lossFree["valid"] as? Bool ?? false)
        var ratios: [String: Any] = [
            "rtt_measured_vs_configured": rtt > 0 ? measurement.ping.averageMilliseconds / rtt : NSNull(),
            "rate_measured_vs_configured": measurement.lossFreeParallelWire / configuredRate,
            "goodput_vs_configured": measurement.lossFreeParallel / configuredRate,
            "single_stream_vs_configured": measurement.singleStream / configuredRate,
            "parallel_with_loss_vs_configured": measurement.parallel / configuredRate,
        ]
        ratios["loss_measured_vs_configured"] = loss > 0 ? measuredLoss / loss : NSNull()
        return [
            "benchmark": "wanem-selftest",
            "started": started,
            "machine": machine(),
            "link": [
                "profile": link.profile ?? "custom", "rtt_ms": rtt, "rate_mbit": configuredRate, "loss": loss,
                "loss_model": parameters.lossModel.rawValue, "jitter_ms": parameters.jitterMilliseconds,
                "seed": Int(parameters.seed),
            ],
            "results": [
                [
                    "measure": "ping", "tool": "ping -i 0.02 -c \(pingCount)",
                    "transmitted": measurement.ping.transmitted,
                    "received": measurement.ping.received, "rtt_avg_ms": measurement.ping.averageMilliseconds,
                    "rtt_min_ms": measurement.ping.minimumMilliseconds,
                    "rtt_max_ms": measurement.ping.maximumMilliseconds, "configured_rtt_ms": rtt,
                    "rtt_error_ms": measurement.ping.averageMilliseconds - rtt,
                ],
                [
                    "measure": "loss", "tool": "iperf3 -u -l 1200 a→b", "packets": udp.packets, "lost": udp.lost,
                    "measured_loss": measuredLoss, "configured_loss": loss,
                    "bounds_4_sigma": [lossBounds.0, lossBounds.1],
                    "within_bounds": lossWithinBounds, "udp_mbit": udp.megabits,
                    "engine_uplink_loss_fraction": engineLossFraction(asConfigured),
                ],
                [
                    "measure": "tcp", "streams": 1, "with_loss": loss > 0, "goodput_mbit": measurement.singleStream,
                    "congestion_control": congestionControl,
                ],
                [
                    "measure": "tcp", "streams": streams, "with_loss": loss > 0, "goodput_mbit": measurement.parallel,
                    "congestion_control": congestionControl,
                ],
                [
                    "measure": "tcp", "streams": streams, "with_loss": false,
                    "goodput_mbit": measurement.lossFreeParallel, "congestion_control": congestionControl,
                    "delivered_ip_mbit": measurement.lossFreeParallelWire,
                    "delivered_ip_source": "rx_bytes of side b's TUN device (kernel counter) over the window",
                ],
            ],
            "ratios": ratios,
            "valid": valid,
            "emulator": ["as_configured": asConfigured, "loss_free": lossFree],
            "notes": "Rates count IP bytes; TCP goodput over 1500-byte MTU is at most ~96.5 % of the IP rate "
                + "(1448 payload bytes per 1500). Loss is per direction; measured one way with UDP.",
        ]
    }

    /// The fraction of uplink packets the engine itself dropped by its loss model (for comparison).
    private func engineLossFraction(_ report: [String: Any]) -> Double {
        let uplink = report["uplink"] as? [String: Any] ?? [:]
        let arrived = uplink["arrived_packets"] as? Double ?? 0
        return arrived > 0 ? (uplink["dropped_loss_packets"] as? Double ?? 0) / arrived : 0
    }

    private func printTable(_ result: [String: Any]) {
        let ratios = result["ratios"] as? [String: Any] ?? [:]
        let results = result["results"] as? [[String: Any]] ?? []
        func format(_ value: Any?) -> String {
            if let double = value as? Double { return String(format: "%.4f", double) }
            return "\(value ?? "-")"
        }
        printFlushed("measure                      configured     measured")
        if let ping = results.first {
            printFlushed(
                "ping RTT (ms)                \(format(ping["configured_rtt_ms"]))     \(format(ping["rtt_avg_ms"]))")
        }
        if results.count > 1 {
            printFlushed(
                "loss (one way)               \(format(results[1]["configured_loss"]))     "
                    + "\(format(results[1]["measured_loss"]))  within 4σ: \(results[1]["within_bounds"] ?? "-")")
        }
        for entry in results.dropFirst(2) {
            printFlushed(
                "tcp \(entry["streams"] ?? "?") stream(s)\((entry["with_loss"] as? Bool ?? false) ? " w/ loss" : "")"
                    + "        goodput \(format(entry["goodput_mbit"])) Mbit/s")
        }
        for key in ratios.keys.sorted() { printFlushed("\(key): \(format(ratios[key]))") }
        printFlushed("valid (emulator kept up): \(result["valid"] ?? false)")
    }
}
