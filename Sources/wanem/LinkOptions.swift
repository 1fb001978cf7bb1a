import ArgumentParser
import Foundation
import WANEmulation

/// The link flags shared by `wanem up` and `wanem selftest`; a profile gives defaults that flags override.
struct LinkOptions: ParsableArguments {
    @Option(help: "Named profile: lan, regional, continental, global, lossy-edge (flags override its values).")
    var profile: String?

    @Option(name: .customLong("rtt-ms"), help: "Round-trip propagation delay in ms, split evenly between directions.")
    var roundTripMilliseconds: Double?

    @Option(name: .customLong("rate-mbit"), help: "Rate of each direction in Mbit/s (IP bytes).")
    var rateMegabits: Double?

    @Option(help: "Random loss probability of each direction (0.001 = 0.1 %).")
    var loss: Double?

    @Option(name: .customLong("jitter-ms"), help: "Uniform ± variation of each packet's one-way delay, in ms.")
    var jitterMilliseconds: Double?

    @Flag(name: .customLong("allow-reordering"), help: "Let jitter reorder packets (default: keep order).")
    var allowsReordering = false

    @Option(name: .customLong("queue-ms"), help: "Droptail bound as queueing time in ms (default 100).")
    var queueMilliseconds: Double?

    @Option(name: .customLong("queue-bytes"), help: "Droptail bound in bytes.")
    var queueBytes: Int?

    @Option(name: .customLong("loss-model"), help: "bernoulli or gilbert-elliott.")
    var lossModel: String = LossModelKind.bernoulli.rawValue

    @Option(name: .customLong("burst-length"), help: "Gilbert–Elliott mean burst length in packets.")
    var burstLength: Double?

    @Option(name: .customLong("uplink-rate-mbit"), help: "Side a → b rate override in Mbit/s.")
    var uplinkRate: Double?
    @Option(name: .customLong("uplink-delay-ms"), help: "Side a → b one-way delay override in ms.")
    var uplinkDelay: Double?
    @Option(name: .customLong("uplink-loss"), help: "Side a → b loss override.")
    var uplinkLoss: Double?
    @Option(name: .customLong("uplink-jitter-ms"), help: "Side a → b jitter override in ms.")
    var uplinkJitter: Double?
    @Option(name: .customLong("downlink-rate-mbit"), help: "Side b → a rate override in Mbit/s.")
    var downlinkRate: Double?
    @Option(name: .customLong("downlink-delay-ms"), help: "Side b → a one-way delay override in ms.")
    var downlinkDelay: Double?
    @Option(name: .customLong("downlink-loss"), help: "Side b → a loss override.")
    var downlinkLoss: Double?
    @Option(name: .customLong("downlink-jitter-ms"), help: "Side b → a jitter override in ms.")
    var downlinkJitter: Double?

    @Option(name: .customLong("trace-up"), help: "Mahimahi trace for side a → b (replaces its rate).")
    var traceUp: String?
    @Option(name: .customLong("trace-down"), help: "Mahimahi trace for side b → a (replaces its rate).")
    var traceDown: String?
    @Option(
        name: .customLong("trace-bytes-per-opportunity"),
        help: "Bytes one trace line delivers (Mahimahi: 1500; a multiple scales the trace up).")
    var traceBytesPerOpportunity: Int = DeliveryTrace.mahimahiOpportunityBytes

    @Option(help: "Seed of every random decision (loss, jitter).")
    var seed: UInt64 = 1

    /// The parameters these flags describe.
    func parameters() throws -> LinkParameters {
        let base = try profile.map { try LinkProfile.named($0).parameters }
        let hasBothTraces = traceUp != nil && traceDown != nil
        guard let roundTrip = roundTripMilliseconds ?? base?.roundTripMilliseconds else {
            throw ValidationError("give --rtt-ms or --profile")
        }
        guard let rate = rateMegabits ?? base?.rateMegabitsPerSecond ?? (hasBothTraces ? 1 : nil) else {
            throw ValidationError("give --rate-mbit, --profile, or both --trace-up and --trace-down")
        }
        guard let model = LossModelKind(rawValue: lossModel) else {
            throw ValidationError("--loss-model: expected bernoulli or gilbert-elliott, found \"\(lossModel)\"")
        }
        return LinkParameters(
            roundTripMilliseconds: roundTrip,
            rateMegabitsPerSecond: rate,
            loss: loss ?? base?.loss ?? 0,
            jitterMilliseconds: jitterMilliseconds ?? 0,
            allowsReordering: allowsReordering,
            queueMilliseconds: queueMilliseconds,
            queueBytes: queueBytes,
            lossModel: model,
            meanBurstLength: burstLength ?? 3,
            uplink: DirectionOverrides(
                oneWayDelayMilliseconds: uplinkDelay, rateMegabitsPerSecond: uplinkRate, loss: uplinkLoss,
                jitterMilliseconds: uplinkJitter),
            downlink: DirectionOverrides(
                oneWayDelayMilliseconds: downlinkDelay, rateMegabitsPerSecond: downlinkRate, loss: downlinkLoss,
                jitterMilliseconds: downlinkJitter),
            uplinkTrace: try traceUp.map(Self.loadTrace),
            downlinkTrace: try traceDown.map(Self.loadTrace),
            traceBytesPerOpportunity: traceBytesPerOpportunity,
            seed: seed)
    }

    private static func loadTrace(_ path: String) throws -> DeliveryTrace {
        let text: String
        do {
            text = try String(contentsOfFile: path, encoding: .utf8)
        } catch {
            throw ShellError(step: "read trace \(path)", reason: "\(error.localizedDescription)")
        }
        return try DeliveryTrace(parsing: text, source: path)
    }

    /// The flags as command-line arguments (to start `wanem up` from the API or the self-test).
    static func arguments(for parameters: LinkParameters, tracePaths: (up: String?, down: String?) = (nil, nil))
        -> [String]
    {
        var arguments = [
            "--rtt-ms", "\(parameters.roundTripMilliseconds)", "--rate-mbit", "\(parameters.rateMegabitsPerSecond)",
            "--loss", "\(parameters.loss)", "--jitter-ms", "\(parameters.jitterMilliseconds)",
            "--loss-model", parameters.lossModel.rawValue, "--burst-length", "\(parameters.meanBurstLength)",
            "--seed", "\(parameters.seed)",
        ]
        if parameters.allowsReordering { arguments.append("--allow-reordering") }
        if let queue = parameters.queueMilliseconds { arguments += ["--queue-ms", "\(queue)"] }
        if let queue = parameters.queueBytes { arguments += ["--queue-bytes", "\(queue)"] }
        for (prefix, overrides) in [("--uplink", parameters.uplink), ("--downlink", parameters.downlink)] {
            if let value = overrides.rateMegabitsPerSecond { arguments += ["\(prefix)-rate-mbit", "\(value)"] }
            if let value = overrides.oneWayDelayMilliseconds { arguments += ["\(prefix)-delay-ms", "\(value)"] }
            if let value = overrides.loss { arguments += ["\(prefix)-loss", "\(value)"] }
            if let value = overrides.jitterMilliseconds { arguments += ["\(prefix)-jitter-ms", "\(value)"] }
        }
        if let path = tracePaths.up { arguments += ["--trace-up", path] }
        if let path = tracePaths.down { arguments += ["--trace-down", path] }
        if tracePaths.up != nil || tracePaths.down != nil {
            arguments += ["--trace-bytes-per-opportunity", "\(parameters.traceBytesPerOpportunity)"]
        }
        return arguments
    }
}
