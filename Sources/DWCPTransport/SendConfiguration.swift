/// How `TransferClient.send` behaves; the defaults suit a WAN path between two nodes.
public struct SendConfiguration: Sendable {
    /// The receiver's host (name or address).
    public var host: String
    /// The receiver's port.
    public var port: Int
    /// TLS with the cluster's identities, or plaintext for measurements only.
    public var security: TransportSecurity
    /// This node's name, sent in the hello.
    public var nodeName: String
    /// The name the receiver's certificate must carry; `nil` checks the dialled address (an IP SAN).
    public var serverName: String?
    /// The fewest data streams.
    public var minimumStreams = 2
    /// The most data streams.
    public var maximumStreams = 16
    /// Streams to start with; `nil` derives it from the round-trip time, `linkRateHint` and the
    /// kernel's receive-buffer limit, never below `minimumStreams`.
    public var initialStreams: Int?
    /// The path rate assumed for the initial stream count, in bits per second.
    public var linkRateHint: Double = 1e9
    /// Bytes per chunk, fixed; `nil` adapts the chunks to the path (``ChunkSizer``: blocks of 256 KiB,
    /// chunks of 256 KiB to 1 MiB, a quarter of one stream's share of the window).
    public var chunkSize: Int?
    /// The block size offered to the receiver: the fixed chunk size, or ``ChunkSizer/adaptiveBlockSize``.
    public var blockSize: Int { chunkSize ?? ChunkSizer.adaptiveBlockSize }
    /// The largest chunk: the fixed chunk size, or ``ChunkSizer/adaptiveMaximumChunkSize``.
    public var maximumChunkSize: Int { chunkSize ?? ChunkSizer.adaptiveMaximumChunkSize }
    /// The most bytes read but not yet acknowledged: bounds memory on both sides.
    public var windowBytes = 64 << 20
    /// A cap on the sending rate in bytes per second (`--rate-limit`), or `nil` for none.
    public var rateLimit: Double?
    /// The congestion control of every data socket (`bbr`, `cubic`, …); a socket that cannot have it
    /// fails. `nil`: ``preferredCongestionControl`` where the kernel allows it, else the system default.
    public var congestionControl: String?
    /// What `nil` congestion control tries first: bbr. Measured through wanem (docs/transport.md),
    /// novacron with bbr vs cubic: 673 vs 28 Mbit/s on continental, 243 vs 16.5 on global, 68 vs 6 on
    /// lossy-edge.
    public static let preferredCongestionControl = "bbr"
    /// Continue a previous attempt from the chunks the receiver already holds.
    public var resume = false
    /// How long a stream may hold chunks without an acknowledgement before it is replaced.
    public var stallTimeout: Duration = .seconds(20)
    /// How often the stream count is reconsidered and progress reported.
    public var interval: Duration = .seconds(1)
    /// How many times in a row data streams may fail to open before the transfer gives up.
    public var maximumConsecutiveFailures = 6
    /// How many times a broken session — one the receiver had accepted — is re-established (a new
    /// session resuming from the receiver's chunk bitmap) before the transfer fails; files only, a stream
    /// from standard input cannot be re-read.
    public var reconnectAttempts = 5
    /// The wait before the first re-establishment; it doubles with every further attempt (at most 32×).
    public var reconnectDelay: Duration = .seconds(1)
    /// Faults injected into the first attempt's connections of the given data streams (tests only).
    public var faults: [Int: FaultInjection] = [:]
    /// A fault injected into the first attempt's control connection (tests only).
    public var controlFault: FaultInjection?

    /// Creates a configuration for a receiver at `host:port`.
    public init(host: String, port: Int, security: TransportSecurity, nodeName: String) {
        self.host = host
        self.port = port
        self.security = security
        self.nodeName = nodeName
    }
}

/// A snapshot of a running transfer, reported once per interval.
public struct TransferProgress: Sendable, Codable {
    /// Bytes delivered and acknowledged (including what the receiver already held).
    public var bytesDone: UInt64
    /// The object's size, when known.
    public var totalBytes: UInt64?
    /// Seconds since the transfer started.
    public var seconds: Double
    /// Goodput over the last interval, bytes per second.
    public var bytesPerSecond: Double
    /// Data streams open.
    public var streams: Int
    /// The smoothed TCP round-trip time over the streams, milliseconds (from `TCP_INFO`).
    public var roundTripMilliseconds: Double?
    /// TCP retransmissions over the streams so far (from `TCP_INFO`).
    public var retransmits: UInt64?
    /// The share of the streams' busy time over the last interval spent with a full send buffer and
    /// nothing left to send (`TCP_INFO`): near 1, the kernel's `tcp_wmem` ceiling, not the path, sets
    /// the pace (the sender adds streams; raising the ceiling would help too).
    public var sendBufferLimited: Double?
}

/// What a completed send did.
public struct SendReport: Sendable, Codable {
    /// One object of the session.
    public struct Object: Sendable, Codable {
        /// Its name (the file's name, or `stdin`).
        public var name: String
        /// Its size.
        public var bytes: UInt64
        /// Bytes the receiver already held (resume) and that were not sent.
        public var skippedBytes: UInt64
        /// Its SHA-256, as both sides computed it.
        public var sha256: String
        /// Seconds from connecting to the receiver's confirmation of this object.
        public var seconds: Double
        /// Its share of the streams relative to the other objects'.
        public var weight: Int
        /// Seconds from connecting until its source was read to the end (nil if it never was).
        public var readSeconds: Double?
        /// Seconds from connecting until its last chunk was acknowledged (nil if none was). With
        /// ``readSeconds`` and ``seconds``, where an object's end game went: the chunks in flight when
        /// the source ended, then the receiver's verification and commit.
        public var acknowledgedSeconds: Double?
    }

    /// The objects' sizes together.
    public private(set) var bytes: UInt64
    /// Bytes the receiver already held (resume) and that were not sent, over all objects.
    public private(set) var skippedBytes: UInt64
    /// Chunk payload bytes written to data streams, re-sends included.
    public var sentBytes: UInt64
    /// Seconds from connecting to the receiver's confirmation.
    public var seconds: Double
    /// The SHA-256 of the (first) object, as both sides computed it.
    public private(set) var sha256: String
    /// The most data streams open at once.
    public var maximumStreams: Int
    /// Data streams that failed or stalled and were replaced.
    public var streamFailures: Int
    /// The block size the receiver counts in.
    public var blockSize: Int
    /// Chunks acknowledged (each a run of blocks), over all objects; with the bytes sent, the mean chunk.
    public var chunksAcknowledged: Int
    /// The chunk length in force when the transfer ended, in bytes (``ChunkSizer``).
    public var chunkSize: Int
    /// Chunks sent again because the stream carrying them failed.
    public var chunksResent: Int
    /// Chunks copied onto idle streams at the end so the last ones do not wait for a slow stream.
    public var chunksDuplicated: Int
    /// Of those, copies of chunks whose acknowledgement was overdue (``ChunkLatency``).
    public var chunksOverdue = 0
    /// The round-trip time measured on the control stream before the transfer, milliseconds.
    public var roundTripMilliseconds: Double
    /// Each object, in the order offered.
    public var objects: [Object] {
        didSet {
            bytes = objects.reduce(0) { $0 + $1.bytes }
            skippedBytes = objects.reduce(0) { $0 + $1.skippedBytes }
            sha256 = objects.first?.sha256 ?? ""
        }
    }
    /// How many times the session broke and was re-established.
    public var reconnects = 0

    /// A report for `objects` (at least one); the totals are theirs.
    init(
        objects: [Object],
        sentBytes: UInt64,
        seconds: Double,
        maximumStreams: Int,
        streamFailures: Int,
        blockSize: Int,
        chunksAcknowledged: Int,
        chunkSize: Int,
        chunksResent: Int,
        chunksDuplicated: Int,
        roundTripMilliseconds: Double
    ) {
        bytes = objects.reduce(0) { $0 + $1.bytes }
        skippedBytes = objects.reduce(0) { $0 + $1.skippedBytes }
        sha256 = objects.first?.sha256 ?? ""
        self.objects = objects
        self.sentBytes = sentBytes
        self.seconds = seconds
        self.maximumStreams = maximumStreams
        self.streamFailures = streamFailures
        self.blockSize = blockSize
        self.chunksAcknowledged = chunksAcknowledged
        self.chunkSize = chunkSize
        self.chunksResent = chunksResent
        self.chunksDuplicated = chunksDuplicated
        self.roundTripMilliseconds = roundTripMilliseconds
    }
}

/// A broken session about to be re-established.
public struct ReconnectNotice: Sendable, Codable {
    /// Which re-establishment this is (1 for the first).
    public var attempt: Int
    /// How many are allowed.
    public var attempts: Int
    /// Seconds until it starts.
    public var delaySeconds: Double
    /// What broke the session.
    public var reason: String
}
