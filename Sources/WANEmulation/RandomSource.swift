/// SplitMix64 (Steele, Lea, Flood 2014): a tiny generator used to expand one seed into the seeds of other generators.
public struct SplitMix64: RandomNumberGenerator, Sendable, Hashable {
    private var state: UInt64

    /// Creates a generator.
    /// - Parameter seed: Any 64-bit value; equal seeds give equal sequences.
    public init(seed: UInt64) {
        state = seed
    }

    /// Returns the next 64 random bits.
    public mutating func next() -> UInt64 {
        state &+= 0x9E37_79B9_7F4A_7C15
        var z = state
        z = (z ^ (z >> 30)) &* 0xBF58_476D_1CE4_E5B9
        z = (z ^ (z >> 27)) &* 0x94D0_49BB_1331_11EB
        return z ^ (z >> 31)
    }
}

/// xoshiro256** (Blackman, Vigna 2018): the seeded generator behind every random decision of the engine.
///
/// A value type, so a link's randomness is part of its state: the same seed and the same sequence of events give the
/// same drops and the same jitter, whatever machine runs them.
public struct Xoshiro256StarStar: RandomNumberGenerator, Sendable, Hashable {
    private var s0: UInt64
    private var s1: UInt64
    private var s2: UInt64
    private var s3: UInt64

    /// Creates a generator whose 256-bit state is expanded from `seed` with SplitMix64 (never all zero).
    /// - Parameter seed: Any 64-bit value; equal seeds give equal sequences.
    public init(seed: UInt64) {
        var expander = SplitMix64(seed: seed)
        s0 = expander.next()
        s1 = expander.next()
        s2 = expander.next()
        s3 = expander.next()
    }

    /// Returns the next 64 random bits.
    public mutating func next() -> UInt64 {
        let result = rotateLeft(s1 &* 5, by: 7) &* 9
        let t = s1 << 17
        s2 ^= s0
        s3 ^= s1
        s1 ^= s2
        s0 ^= s3
        s2 ^= t
        s3 = rotateLeft(s3, by: 45)
        return result
    }

    func rotateLeft(_ value: UInt64, by amount: UInt64) -> UInt64 {
        (value << amount) | (value >> (64 - amount))
    }

    /// Returns true with the probability that `threshold` encodes (see ``probabilityThreshold(_:)``).
    /// - Parameter threshold: A threshold from ``probabilityThreshold(_:)``.
    /// - Returns: Whether the event happens.
    public mutating func nextEvent(threshold: UInt64) -> Bool {
        if threshold == .max { return true }
        return next() < threshold
    }

    /// Encodes a probability as a 64-bit threshold: `next() < threshold` happens with that probability.
    /// - Parameter probability: A probability in 0...1.
    /// - Returns: The threshold (`UInt64.max` stands for certainty).
    public static func probabilityThreshold(_ probability: Double) -> UInt64 {
        if probability <= 0 { return 0 }
        if probability >= 1 { return .max }
        let scaled = probability * 18_446_744_073_709_551_616.0
        return scaled >= 18_446_744_073_709_551_615.0 ? .max - 1 : UInt64(scaled)
    }
}
