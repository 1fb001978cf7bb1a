/// A named link: a shorthand for round-trip time, rate and random loss (WAN-EMULATION-NOTES.md).
public struct LinkProfile: Sendable, Hashable, CustomStringConvertible {
    /// The name used on the command line.
    public let name: String
    /// Round-trip propagation delay in milliseconds.
    public let roundTripMilliseconds: Double
    /// Rate of each direction in Mbit/s.
    public let rateMegabitsPerSecond: Double
    /// Random loss probability of each direction.
    public let loss: Double

    /// LAN: 1 ms, 1 Gbit/s, no loss.
    public static let lan = LinkProfile(name: "lan", roundTripMilliseconds: 1, rateMegabitsPerSecond: 1000, loss: 0)
    /// Regional: 30 ms, 500 Mbit/s, 0.01 % loss.
    public static let regional = LinkProfile(
        name: "regional", roundTripMilliseconds: 30, rateMegabitsPerSecond: 500, loss: 0.0001)
    /// Continental: 100 ms, 1 Gbit/s, 0.1 % loss.
    public static let continental = LinkProfile(
        name: "continental", roundTripMilliseconds: 100, rateMegabitsPerSecond: 1000, loss: 0.001)
    /// Global: 250 ms, 1 Gbit/s, 0.5 % loss.
    public static let global = LinkProfile(
        name: "global", roundTripMilliseconds: 250, rateMegabitsPerSecond: 1000, loss: 0.005)
    /// Lossy edge: 300 ms, 100 Mbit/s, 2 % loss.
    public static let lossyEdge = LinkProfile(
        name: "lossy-edge", roundTripMilliseconds: 300, rateMegabitsPerSecond: 100, loss: 0.02)

    /// Every named profile, fastest round trip first.
    public static let all: [LinkProfile] = [.lan, .regional, .continental, .global, .lossyEdge]

    /// Finds a profile by name.
    /// - Parameter name: A profile name (`lan`, `regional`, `continental`, `global`, `lossy-edge`).
    /// - Returns: The profile.
    /// - Throws: ``WANEmulationError`` with `.unknownProfile`, listing the valid names.
    public static func named(_ name: String) throws(WANEmulationError) -> LinkProfile {
        guard let profile = all.first(where: { $0.name == name }) else {
            throw WANEmulationError(
                .unknownProfile, subject: "--profile", expected: "one of \(all.map(\.name).joined(separator: ", "))",
                found: "\"\(name)\"")
        }
        return profile
    }

    /// The profile as link parameters, to adjust further before ``LinkParameters/configuration()``.
    public var parameters: LinkParameters {
        LinkParameters(
            roundTripMilliseconds: roundTripMilliseconds, rateMegabitsPerSecond: rateMegabitsPerSecond, loss: loss)
    }

    /// "name (RTT ms, rate Mbit/s, loss %)".
    public var description: String {
        "\(name) (\(roundTripMilliseconds) ms RTT, \(rateMegabitsPerSecond) Mbit/s, \(loss * 100) % loss)"
    }
}
