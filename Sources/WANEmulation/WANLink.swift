/// Which way a packet travels.
public enum LinkDirection: String, Sendable, Hashable, CaseIterable, Codable {
    /// Side a → side b.
    case uplink
    /// Side b → side a.
    case downlink
}

/// Both directions of an emulated link, each an independent ``LinkEmulator`` with its own random streams.
public struct WANLink: Sendable {
    /// Side a → side b.
    public var uplink: LinkEmulator
    /// Side b → side a.
    public var downlink: LinkEmulator

    /// Creates a link with the same descriptor capacity in both directions.
    /// - Parameters:
    ///   - configuration: Both directions and the seed.
    ///   - capacityPerDirection: The most packets each direction holds at once.
    ///   - overloadPolicy: When the run counts as distorted.
    /// - Throws: ``WANEmulationError`` with `.invalidParameter`.
    public init(
        configuration: WANLinkConfiguration,
        capacityPerDirection: Int = 65_536,
        overloadPolicy: OverloadPolicy = OverloadPolicy()
    ) throws(WANEmulationError) {
        try self.init(
            configuration: configuration, uplinkCapacity: capacityPerDirection,
            downlinkCapacity: capacityPerDirection, overloadPolicy: overloadPolicy)
    }

    /// Creates a link.
    /// - Parameters:
    ///   - configuration: Both directions and the seed.
    ///   - uplinkCapacity: The most packets the uplink holds at once.
    ///   - downlinkCapacity: The most packets the downlink holds at once.
    ///   - overloadPolicy: When the run counts as distorted.
    /// - Throws: ``WANEmulationError`` with `.invalidParameter`.
    public init(
        configuration: WANLinkConfiguration,
        uplinkCapacity: Int,
        downlinkCapacity: Int,
        overloadPolicy: OverloadPolicy = OverloadPolicy()
    ) throws(WANEmulationError) {
        var seeds = SplitMix64(seed: configuration.seed)
        uplink = try LinkEmulator(
            configuration: configuration.uplink, capacity: uplinkCapacity, seed: seeds.next(),
            overloadPolicy: overloadPolicy)
        downlink = try LinkEmulator(
            configuration: configuration.downlink, capacity: downlinkCapacity, seed: seeds.next(),
            overloadPolicy: overloadPolicy)
    }

    /// The direction's engine.
    /// - Parameter direction: Which direction.
    public subscript(direction: LinkDirection) -> LinkEmulator {
        get { direction == .uplink ? uplink : downlink }
        _modify {
            if direction == .uplink { yield &uplink } else { yield &downlink }
        }
    }

    /// When the next packet in either direction leaves, or nil when the link is empty.
    public var nextDeparture: LinkInstant? {
        switch (uplink.nextDeparture, downlink.nextDeparture) {
        case (nil, nil): nil
        case (let up?, nil): up
        case (nil, let down?): down
        case (let up?, let down?): min(up, down)
        }
    }

    /// Whether either direction failed to keep up.
    public var isOverloaded: Bool {
        uplink.isOverloaded || downlink.isOverloaded
    }
}
