import DWCPTransport

/// Talks to a node agent: one request per connection, authenticated like any DWCP connection.
public struct AgentClient: Sendable {
    /// The agent's control address.
    public var host: String
    /// The agent's control port.
    public var port: Int
    /// TLS with this side's identity (plaintext only for measurements).
    public var security: TransportSecurity
    /// This side's node name (its certificate's).
    public var nodeName: String

    /// Creates a client for the agent at `host:port`.
    public init(host: String, port: Int, security: TransportSecurity, nodeName: String) {
        self.host = host
        self.port = port
        self.security = security
        self.nodeName = nodeName
    }

    /// Sends `request` and returns the agent's final reply; ``AgentReply/progress(_:)`` replies go to
    /// `progress` on the way.
    /// - Throws: ``AgentFailure`` when the agent refused or failed the request, ``TransportError`` when it
    ///   cannot be reached or does not accept this node's certificate.
    public func send(
        _ request: AgentRequest, progress: (MigrationProgress) -> Void = { _ in }
    ) async throws -> AgentReply {
        try await ControlChannel.withConnection(host: host, port: port, security: security, nodeName: nodeName) {
            connection in
            try await connection.send(request)
            while true {
                // A migration reports progress at least once a second; other requests take seconds.
                let reply = try await connection.reply(timeout: .seconds(300))
                guard case .progress(let report) = reply else { return reply }
                progress(report)
            }
        }
    }
}

extension AgentClient {
    /// Asks this agent, the destination of migration `id`, to remove its copy unless the guest runs there — on a
    /// connection of its own (the migration's broke, or the migration ended long ago), within `timeout`.
    /// - Throws: ``AgentFailure`` ``AgentFailure/committed`` when the guest runs there,
    ///   ``AgentFailure/unknownMigration`` when the agent does not know the migration; ``TransportError`` or
    ///   ``TimedOut`` when it cannot be reached.
    func removeIncoming(id: String, within timeout: Duration) async throws {
        let client = self
        _ = try await withTimeout(timeout, doing: "ask \(host):\(port) about migration \(id)") {
            try await client.send(.removeIncoming(id: id))
        }
    }
}
