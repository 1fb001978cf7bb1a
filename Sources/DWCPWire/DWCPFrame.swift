import NIOCore

/// One DWCP frame: the unit every DWCP connection carries.
///
/// A frame is a fixed 40-byte header followed by a payload of at most
/// ``DWCPFrame/hardMaximumPayloadLength`` bytes. The header carries its own checksum, so a corrupted
/// length is caught before the decoder waits for bytes that will never come, and the payload carries
/// an XXH3-64 checksum. All integers are big-endian. See `docs/wire.md` for the byte layout.
public struct DWCPFrame: Hashable, Sendable {
    /// What a frame carries. The raw value is the type byte on the wire.
    public enum FrameType: UInt8, CaseIterable, Hashable, Sendable {
        /// Opens a connection: the sender's protocol versions and name (``HandshakeMessage/Hello``).
        case hello = 1
        /// Accepts a ``hello`` and fixes the version (``HandshakeMessage/Accept``).
        case helloAccept = 2
        /// Refuses a ``hello`` with a reason (``HandshakeMessage/Reject``).
        case helloReject = 3
        /// A control-stream message; its payload is defined by the protocol part using it.
        case control = 4
        /// A chunk of object data.
        case chunk = 5
        /// Acknowledges frames up to and including the header's sequence number.
        case ack = 6
        /// Asks the peer to answer with a ``pong`` echoing the payload (liveness and RTT).
        case ping = 7
        /// Answers a ``ping``.
        case pong = 8
        /// Announces an orderly close; the payload is an optional UTF-8 reason.
        case close = 9
    }

    /// Per-frame flag bits.
    public struct Flags: OptionSet, Hashable, Sendable {
        /// The raw flag bits as on the wire.
        public var rawValue: UInt16

        /// Creates flags from their wire bits.
        public init(rawValue: UInt16) {
            self.rawValue = rawValue
        }

        /// This is the last frame of its stream or object.
        public static let endOfStream = Flags(rawValue: 1 << 0)

        /// Every bit version 1 defines; the others must be zero.
        public static let defined: Flags = [.endOfStream]
    }

    /// The four bytes every frame starts with: ASCII `DWCP`.
    public static let magic: UInt32 = 0x4457_4350
    /// The length of the fixed header in bytes.
    public static let headerLength = 40
    /// Where the header checksum sits; it covers every header byte before it.
    static let headerChecksumOffset = 36
    /// No decoder accepts, and no encoder writes, a payload longer than this (16 MiB).
    public static let hardMaximumPayloadLength = 16 * 1024 * 1024

    /// The protocol version that frames the handshake. Its header layout never changes, so peers of
    /// any version can read each other's `hello`.
    public static let baseVersion: UInt8 = 1
    /// The protocol versions this build speaks.
    public static let supportedVersions: ClosedRange<UInt8> = 1...1

    /// The protocol version of this frame.
    public var version: UInt8
    /// What the frame carries.
    public var type: FrameType
    /// Flag bits.
    public var flags: Flags
    /// The session this frame belongs to.
    public var sessionID: UInt64
    /// The frame's sequence number within its stream.
    public var sequence: UInt64
    /// The payload bytes (its readable bytes).
    public var payload: ByteBuffer

    /// Creates a frame.
    /// - Parameters:
    ///   - version: The protocol version; defaults to the newest this build speaks.
    ///   - type: What the frame carries.
    ///   - flags: Flag bits.
    ///   - sessionID: The session it belongs to.
    ///   - sequence: Its sequence number.
    ///   - payload: The payload bytes.
    public init(
        version: UInt8 = DWCPFrame.supportedVersions.upperBound,
        type: FrameType,
        flags: Flags = [],
        sessionID: UInt64,
        sequence: UInt64,
        payload: ByteBuffer = ByteBuffer()
    ) {
        self.version = version
        self.type = type
        self.flags = flags
        self.sessionID = sessionID
        self.sequence = sequence
        self.payload = payload
    }

    /// The number of bytes this frame occupies on the wire.
    public var encodedLength: Int { Self.headerLength + payload.readableBytes }
}
