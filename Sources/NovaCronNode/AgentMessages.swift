import DWCPTransport
import Foundation
import NovaCronHypervisor

/// What an operator (the `novacron vm` commands) or a peer agent asks a node agent. Each request is one
/// JSON message on a ``ControlConnection``; the agent answers with ``AgentReply`` messages.
public enum AgentRequest: Codable, Sendable, Equatable {
    // MARK: Operator
    /// Boot a VM on this node (it runs until stopped or migrated away). Reply: ``AgentReply/vm(_:)``.
    case run(VMSpec)
    /// The VMs this node holds. Reply: ``AgentReply/vms(_:)``.
    case list
    /// Shut a VM down. Reply: ``AgentReply/done``.
    case stop(name: String)
    /// Run a paused VM again. If a migration of it ended abandoned (the source paused, the destination's copy
    /// unaccounted for), the destination is asked first to remove its copy; the VM runs here only once it did, or
    /// with `force` when it cannot be asked. Reply: ``AgentReply/vm(_:)``; the failure ``AgentFailure/committed``
    /// when the guest runs at the destination, ``AgentFailure/unconfirmed`` when the destination could not say.
    case resume(name: String, force: Bool)
    /// Live-migrate a VM of this node to another agent. Replies: ``AgentReply/progress(_:)`` while it
    /// runs, then ``AgentReply/migration(_:)`` (migrated or rolled back).
    case migrate(MigrationRequest)
    /// The migrations this agent ran as the source, newest last. Reply: ``AgentReply/migrations(_:)``.
    case migrations

    // MARK: Peer (the source agent of a migration, on one connection for the whole migration)
    /// Whether this node takes the VM (its name is free, its kernel is here); if so it opens a DWCP receiver
    /// for the migration stream at once, so the source sets the data session up while the destination QEMU
    /// starts. Reply: ``AgentReply/incomingReady(dataPort:)``.
    case negotiate(IncomingRequest)
    /// Start the destination QEMU (`-incoming`, paused) reading from the receiver. Reply: ``AgentReply/done``.
    case prepareIncoming
    /// Wait until the whole stream was received and loaded; with `resume`, then run the destination (the
    /// commit point, when there is nothing to verify first). Reply: ``AgentReply/arrived(_:)``.
    case awaitArrival(resume: Bool)
    /// The SHA-256 of the paused destination's RAM (`pmemsave`). Reply: ``AgentReply/digest(_:)``.
    case digestRAM
    /// Run the destination: the commit point. Reply: ``AgentReply/done``.
    case resumeIncoming
    /// Remove the destination QEMU and receiver (a rollback). Reply: ``AgentReply/done``; the failure
    /// ``AgentFailure/committed`` when the guest already runs there.
    case destroyIncoming
    /// ``destroyIncoming`` for migration `id`, on a new connection: the source's rollback once the migration's own
    /// connection broke. Reply: ``AgentReply/done`` (removed, or already gone); the failure ``AgentFailure/committed``
    /// when the guest runs there, ``AgentFailure/unknownMigration`` when this agent does not know the migration.
    case removeIncoming(id: String)
}

/// An agent's answers.
public enum AgentReply: Codable, Sendable, Equatable {
    case vm(VMSummary)
    case vms([VMSummary])
    case done
    case progress(MigrationProgress)
    case migration(MigrationReport)
    case migrations([MigrationReport])
    case incomingReady(dataPort: Int)
    case arrived(IncomingArrival)
    case digest(String)
    /// The request failed; nothing was left half done.
    case failure(AgentFailure)
}

/// Why an agent refused or failed a request.
public struct AgentFailure: Error, Codable, Sendable, Equatable, CustomStringConvertible {
    /// A short class of failure: `unknownVM`, `nameInUse`, `invalidRequest`, `hypervisor`, `migration`, …
    public var code: String
    /// What happened, for a person.
    public var message: String

    /// Creates it.
    public init(_ code: String, _ message: String) {
        self.code = code
        self.message = message
    }

    /// `code: message`.
    public var description: String { "\(code): \(message)" }

    /// The code of a destination asked to destroy a copy that already runs the guest.
    public static let committed = "committed"
    /// The code of a destination asked about a migration it does not know (its agent restarted since).
    public static let unknownMigration = "unknownMigration"
    /// The code of a resume refused because the destination of an abandoned migration could not confirm that its
    /// copy is gone.
    public static let unconfirmed = "unconfirmed"
}

/// What `vm migrate` asks for.
public struct MigrationRequest: Codable, Sendable, Equatable {
    /// The VM, on the agent asked.
    public var vm: String
    /// The destination agent's `--listen` address.
    public var host: String
    /// The destination agent's `--listen` port.
    public var port: Int
    /// The longest the guest may be paused for the final copy (QEMU's `downtime-limit`).
    public var maximumDowntimeMilliseconds: Int
    /// Compare the paused destination's RAM with the source's (SHA-256 of `pmemsave` on both sides)
    /// before the destination runs. The comparison happens while the guest is paused, so it adds to the
    /// pause the guest sees (reported separately).
    public var verifyRAM: Bool
    /// A cap on the migration's data rate, bytes per second (leaves headroom for other traffic), or nil.
    public var rateLimit: Double?
    /// HDE on the migration stream (``EncodingMode``'s text): `auto` (zstd 1 and references to the
    /// destination's store), `raw` (references only), a zstd level, or `none` (QEMU's stream as it is).
    public var encoding: String

    /// Creates it.
    public init(
        vm: String, host: String, port: Int, maximumDowntimeMilliseconds: Int = 300, verifyRAM: Bool = false,
        rateLimit: Double? = nil, encoding: String = "auto"
    ) {
        self.encoding = encoding
        self.vm = vm
        self.host = host
        self.port = port
        self.maximumDowntimeMilliseconds = maximumDowntimeMilliseconds
        self.verifyRAM = verifyRAM
        self.rateLimit = rateLimit
    }
}

/// What the source agent tells the destination about a migration.
public struct IncomingRequest: Codable, Sendable, Equatable {
    /// The migration's id (the source's).
    public var id: String
    /// The VM's spec; its kernel and initrd paths must exist on the destination too.
    public var spec: VMSpec
    /// Whether the destination runs the guest as soon as it loaded the whole, verified stream, without waiting
    /// for the source's word (nil: no).
    public var runOnArrival: Bool?
}

/// What the destination reports once the stream was loaded.
public struct IncomingArrival: Codable, Sendable, Equatable {
    /// Bytes of migration stream that arrived.
    public var streamBytes: UInt64
    /// Their SHA-256, as the transport verified it end to end.
    public var streamSHA256: String
    /// Whether the destination runs (it was asked to resume on arrival, or ran on arrival by itself).
    public var resumed: Bool
    /// The destination QEMU's `RESUME` event: its QMP timestamp, seconds since 1970 on the destination's clock.
    public var resumedAtEpochSeconds: Double?
}

/// One VM an agent holds.
public struct VMSummary: Codable, Sendable, Equatable {
    /// The VM's name, unique on its node.
    public var name: String
    /// `running`, `paused`, `incoming`, `migrating`, … (QEMU's run state, or the agent's view of it).
    public var state: String
    /// Guest RAM as requested, in MiB.
    public var memoryMiB: Int
    /// The QEMU process.
    public var processID: Int32
    /// The guest console's log file.
    public var consoleLog: String
    /// The newest NovaCron test-guest heartbeat seen on the console, if the guest prints them.
    public var lastHeartbeat: Int?
}

/// A migration's progress, as the source agent streams it.
public struct MigrationProgress: Codable, Sendable, Equatable {
    /// The orchestration phase (`MigrationMachine.Phase`).
    public var phase: String
    /// Seconds since the request.
    public var seconds: Double
    /// RAM bytes QEMU sent so far.
    public var transferredBytes: UInt64
    /// RAM bytes QEMU still has to send.
    public var remainingBytes: UInt64
    /// Bytes per second the guest dirties, as QEMU last measured.
    public var dirtyBytesPerSecond: Double
    /// Bytes per second QEMU's stream moved since the previous report.
    public var bytesPerSecond: Double
    /// Seconds until pre-copy could stop at this rate (nil while unknown).
    public var etaSeconds: Double?
}

/// How a migration ended and what it measured.
public struct MigrationReport: Codable, Sendable, Equatable {
    /// The migration's id (a UUID).
    public var id: String
    /// The VM's name.
    public var vm: String
    /// The destination agent's address.
    public var destination: String
    /// `migrated`, `rolled back`, or `abandoned` (a rollback that could not confirm the destination's copy
    /// is gone: the source stays paused rather than risk two running copies).
    public var outcome: String
    /// Why it rolled back (nil when migrated).
    public var reason: String?
    /// Where the VM runs now: `source`, `destination`, `source (paused)` when abandoned, or `nowhere: …`
    /// when the source QEMU died during the migration (see docs/migration.md).
    public var runsOn: String
    /// When the request arrived, ISO 8601.
    public var startedAt: String
    /// From the request to the outcome.
    public var totalSeconds: Double
    /// QEMU's own figures on the source.
    public var qemuTotalMilliseconds: Int?
    /// QEMU's own downtime figure: the guest stopped until the source finished writing the stream.
    public var qemuDowntimeMilliseconds: Int?
    /// The `downtime-limit` QEMU was given: the pause budget less the cut-over's round trips (docs/migration.md).
    public var qemuDowntimeLimitMilliseconds: Int?
    /// The round trip to the destination agent measured at negotiation.
    public var roundTripMilliseconds: Int?
    /// False when the cut-over's round trips on this path alone take (nearly) the whole `--max-downtime`: QEMU
    /// then keeps the whole budget and the pause will be longer (docs/migration.md).
    public var pauseBudgetAttainable: Bool?
    /// The guest's pause: QEMU's downtime (stop → its last write into the agent's socket) plus the source
    /// agent's time from QEMU's completion to the destination confirming it runs (the stream's tail, loading,
    /// any RAM verification, the round trip of the confirmation).
    public var pausedMilliseconds: Int?
    /// The guest's pause, piece by piece: QEMU's final copy into the agent's socket (QEMU's downtime), then
    /// until the transport confirmed the whole stream arrived, then until the destination confirmed it runs.
    public var pauseTimeline: [String: Int]?
    /// The guest's pause as the two QEMUs saw it: the source's `STOP` event to the destination's `RESUME` event
    /// (their QMP timestamps). Two hosts' clocks: exact when both agents share one (tests, benchmarks), otherwise
    /// off by their offset.
    public var guestPauseByQEMUEventsMilliseconds: Int?
    /// The VM's RAM size.
    public var ramBytes: Int
    /// Bytes of QEMU's migration stream.
    public var streamBytes: UInt64
    /// Bytes the DWCP session put on the wire for it (after HDE, before TLS/TCP framing).
    public var wireBytes: UInt64
    /// Whether the RAM images matched (nil when not verified).
    public var ramIdentical: Bool?
    /// The last heartbeat the source console showed, if the guest prints them.
    public var lastSourceHeartbeat: Int?
    /// Whether the machine switched on auto-converge's stronger throttle.
    public var autoConverged: Bool
    /// The stream's HDE (`none` when sent as it is).
    public var encoding: String
    /// Stream bytes sent as references to chunks the destination held (before or from earlier in the stream).
    public var referencedBytes: UInt64
    /// Stream bytes sent as deltas against resembling chunks the destination held.
    public var deltaBytes: UInt64
}

/// JSON on a control connection.
enum AgentCoding {
    static func encode(_ value: some Encodable) throws -> [UInt8] {
        Array(try JSONEncoder().encode(value))
    }

    static func decode<Value: Decodable>(_ type: Value.Type, from bytes: [UInt8]) throws -> Value {
        do {
            return try JSONDecoder().decode(type, from: Data(bytes))
        } catch {
            throw AgentFailure("invalidRequest", "a malformed \(Value.self) message: \(error)")
        }
    }
}

extension ControlConnection {
    /// Sends one request or reply as JSON.
    func send(_ value: some Encodable) async throws {
        try await send(try AgentCoding.encode(value))
    }

    /// The next reply; throws ``AgentFailure`` for a `failure` reply or a closed connection.
    func reply(timeout: Duration) async throws -> AgentReply {
        guard let bytes = try await receive(timeout: timeout) else {
            throw AgentFailure("connectionClosed", "\(peerName) closed the connection before answering")
        }
        let reply = try AgentCoding.decode(AgentReply.self, from: bytes)
        if case .failure(let failure) = reply { throw failure }
        return reply
    }
}
