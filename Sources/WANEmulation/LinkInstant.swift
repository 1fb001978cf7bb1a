/// An instant on the emulator's clock: nanoseconds since an origin the shell chooses (usually when the link came up).
///
/// The engine never reads a clock. The shell passes the current instant into every call, and unit tests pass virtual
/// instants, so a whole run can be replayed exactly.
public struct LinkInstant: Sendable, Hashable, Comparable, CustomStringConvertible {
    /// Nanoseconds since the origin.
    public var nanoseconds: UInt64

    /// Creates an instant.
    /// - Parameter nanoseconds: Nanoseconds since the origin.
    @inlinable
    public init(nanoseconds: UInt64) {
        self.nanoseconds = nanoseconds
    }

    /// The origin.
    public static let zero = LinkInstant(nanoseconds: 0)

    /// Creates an instant a number of milliseconds after the origin.
    /// - Parameter milliseconds: Milliseconds since the origin.
    /// - Returns: The instant.
    @inlinable
    public static func milliseconds(_ milliseconds: UInt64) -> LinkInstant {
        LinkInstant(nanoseconds: milliseconds * 1_000_000)
    }

    /// Creates an instant a number of microseconds after the origin.
    /// - Parameter microseconds: Microseconds since the origin.
    /// - Returns: The instant.
    @inlinable
    public static func microseconds(_ microseconds: UInt64) -> LinkInstant {
        LinkInstant(nanoseconds: microseconds * 1_000)
    }

    /// Returns this instant moved later by a number of nanoseconds.
    /// - Parameter nanoseconds: How far to move.
    /// - Returns: The later instant.
    @inlinable
    public func advanced(byNanoseconds nanoseconds: UInt64) -> LinkInstant {
        LinkInstant(nanoseconds: self.nanoseconds &+ nanoseconds)
    }

    /// Nanoseconds from `earlier` to this instant, or zero when `earlier` is not earlier.
    /// - Parameter earlier: The instant to measure from.
    /// - Returns: The non-negative distance in nanoseconds.
    @inlinable
    public func nanoseconds(since earlier: LinkInstant) -> UInt64 {
        nanoseconds > earlier.nanoseconds ? nanoseconds - earlier.nanoseconds : 0
    }

    /// Orders instants by time.
    @inlinable
    public static func < (lhs: LinkInstant, rhs: LinkInstant) -> Bool {
        lhs.nanoseconds < rhs.nanoseconds
    }

    /// The instant in milliseconds, for logs.
    public var description: String {
        "\(Double(nanoseconds) / 1e6) ms"
    }
}

extension Duration {
    /// This duration in whole nanoseconds, rounded toward zero; negative durations give a negative value.
    @inlinable
    var wholeNanoseconds: Int64 {
        let parts = components
        return parts.seconds &* 1_000_000_000 &+ parts.attoseconds / 1_000_000_000
    }
}
