#if canImport(Glibc)
    import Glibc
#endif

/// Where a receiver puts what arrives.
public enum ReceiveDestination: Sendable, Hashable {
    /// A file path, or an existing directory (the object keeps the sender's file name there).
    case path(String)
    /// Standard output, in order (a transfer to standard output cannot resume).
    case standardOutput
    /// An open, writable descriptor — a pipe or socket, e.g. the one a QEMU started with `-incoming`
    /// reads its migration stream from — written in order; like standard output it takes one object
    /// and cannot resume. The caller keeps it open until the receive returns.
    case descriptor(Int32)

    /// The file an object named `name` goes to: the path itself, or `path/name` when the path is an
    /// existing directory; `nil` for a stream destination.
    /// - Throws: ``TransportError/Code/invalidArgument`` for a name that cannot be a file name in a directory.
    public func target(forObjectNamed name: String) throws -> String? {
        guard case .path(let path) = self else { return nil }
        return try ReceiverSession.resolve(path, name: name)
    }

    /// The descriptor a stream destination writes, `nil` for a path.
    public var streamDescriptor: Int32? {
        switch self {
        case .path: nil
        case .standardOutput: STDOUT_FILENO
        case .descriptor(let descriptor): descriptor
        }
    }
}

/// How `TransferServer.receive` behaves.
public struct ReceiveConfiguration: Sendable {
    /// The address to listen on.
    public var host: String
    /// The port to listen on (0 picks a free one; see `onListening`).
    public var port: Int
    /// TLS with the cluster's identities, or plaintext for measurements only.
    public var security: TransportSecurity
    /// This node's name, sent in the hello.
    public var nodeName: String
    /// Where the object goes.
    public var destination: ReceiveDestination
    /// How many bytes past the first missing chunk are accepted: the reorder window, which bounds
    /// the memory held for hashing in order.
    public var windowBytes = 64 << 20
    /// How many times `windowBytes` a file destination's reorder window spans (a file holds no chunk
    /// in memory for the reordering, so the span costs nothing). An object taken by a consumer (an
    /// encoded image) spans it too, in memory: up to 4 × `windowBytes` held.
    public static let fileWindowSpread = 4
    /// Replace an existing file at the destination.
    public var overwrite = false
    /// Opens the consumers of objects whose offer carries content (an encoding); without one such
    /// offers are refused.
    public var consumers: (any TransferConsumerFactory)?
    /// After a success, return only once the sender's control connection has said goodbye: the last answer
    /// read by the sender, TLS's close exchanged (NIOSSL gives up after 5 s). A process that exits right
    /// after `receive` then takes no unsent answer with it. About one round trip more; a long-lived caller
    /// that acts on the result at once (a migration's destination, its guest paused until then) turns it off.
    public var waitsForGoodbye = true
    /// How long a new connection may take for TLS, the hello and its first message (an offer or an attach)
    /// before it is closed: a client that connects and stays silent must not hold a task of the receiver.
    /// Generous, because a sender opens its data streams while its offer is being answered and sends their
    /// hello only once the session is accepted.
    public var helloTimeout: Duration = .seconds(60)

    /// Creates a configuration.
    public init(host: String, port: Int, security: TransportSecurity, nodeName: String, destination: ReceiveDestination)
    {
        self.host = host
        self.port = port
        self.security = security
        self.nodeName = nodeName
        self.destination = destination
    }
}

/// One object a receive committed.
public struct ReceivedObject: Sendable, Codable {
    /// The name the sender gave it.
    public var name: String
    /// Where it was written (`nil` for standard output).
    public var path: String?
    /// Its size.
    public var bytes: UInt64
    /// Bytes stored in this attempt (the rest came from an earlier, interrupted attempt).
    public var receivedBytes: UInt64
    /// Bytes that were already present from an earlier attempt.
    public var resumedBytes: UInt64
    /// Seconds from its offer to its commit.
    public var seconds: Double
    /// Its SHA-256, which matched the sender's (for an object a consumer took, of the bytes that crossed
    /// the link: the encoded stream).
    public var sha256: String
    /// Whether a consumer took it (an encoded object, decoded into `path`; `bytes` is then the decoded
    /// size and `receivedBytes` what crossed the link).
    public var decoded = false
}

/// What a completed receive (one session, one or more objects) did.
public struct ReceiveReport: Sendable, Codable {
    /// Where the (first) object was written (`nil` for standard output).
    public var path: String?
    /// The objects' sizes together.
    public var bytes: UInt64
    /// Bytes stored in this attempt (the rest came from an earlier, interrupted attempt).
    public var receivedBytes: UInt64
    /// Bytes that were already present from an earlier attempt.
    public var resumedBytes: UInt64
    /// Chunks that arrived corrupted (their stream was closed and the chunk sent again).
    public var corruptChunks: Int
    /// Seconds from the first offer to the last commit.
    public var seconds: Double
    /// The (first) object's SHA-256, which matched the sender's.
    public var sha256: String
    /// The sender's node name.
    public var peer: String
    /// Every object, in the order offered.
    public var objects: [ReceivedObject]

    /// The report of a session that committed `objects` (in order, at least one).
    init(objects: [ReceivedObject], corruptChunks: Int, seconds: Double, peer: String) {
        precondition(!objects.isEmpty, "a session commits at least one object")
        path = objects[0].path
        bytes = objects.reduce(0) { $0 + $1.bytes }
        receivedBytes = objects.reduce(0) { $0 + $1.receivedBytes }
        resumedBytes = objects.reduce(0) { $0 + $1.resumedBytes }
        self.corruptChunks = corruptChunks
        self.seconds = seconds
        sha256 = objects[0].sha256
        self.peer = peer
        self.objects = objects
    }
}
