import DWCPWire
import NIOCore
import NIOPosix
import NIOSSL

/// One request/reply connection between two nodes (a node agent and its peer or operator): the same TCP,
/// mutual TLS and DWCP hello as a transfer session, then messages — opaque byte strings of at most
/// ``ControlChannel/maximumMessageLength`` — each carried in one `control` frame.
///
/// Used by one task at a time, inside the scope that opened it.
public final class ControlConnection {
    /// The peer's node name from its hello (its certificate was checked against the cluster CA by TLS).
    public let peerName: String
    private var inbound: NIOAsyncChannelInboundStream<DWCPFrame>.AsyncIterator
    private let outbound: NIOAsyncChannelOutboundWriter<DWCPFrame>
    private let channel: any Channel
    private var sequence: UInt64 = 0

    init(
        peerName: String, channel: any Channel, inbound: NIOAsyncChannelInboundStream<DWCPFrame>.AsyncIterator,
        outbound: NIOAsyncChannelOutboundWriter<DWCPFrame>
    ) {
        self.peerName = peerName
        self.channel = channel
        self.inbound = inbound
        self.outbound = outbound
    }

    /// The kernel's smoothed round-trip time of the connection (`TCP_INFO`), or nil where it says nothing.
    public func roundTrip() async -> Duration? {
        await TCPStatistics.read(channel)?.roundTrip
    }

    /// Closes the connection from any task: a ``receive()`` waiting on it returns.
    public var closer: @Sendable () -> Void {
        let channel = self.channel
        return { channel.close(promise: nil) }
    }

    /// Sends one message.
    /// - Throws: ``TransportError/Code/invalidArgument`` for a message over the limit,
    ///   ``TransportError/Code/connectionFailed`` when the connection is gone.
    public func send(_ message: [UInt8]) async throws {
        guard message.count <= ControlChannel.maximumMessageLength else {
            throw TransportError(
                .invalidArgument, expected: "a control message of at most \(ControlChannel.maximumMessageLength) bytes",
                found: "\(message.count) bytes")
        }
        sequence += 1
        do {
            try await outbound.write(
                DWCPFrame(type: .control, sessionID: 0, sequence: sequence, payload: ByteBuffer(bytes: message)))
        } catch {
            throw TransportError(
                .connectionFailed, expected: "to send a control message to \(peerName)", found: "\(error)")
        }
    }

    /// The next message within `timeout`; after it the connection is closed (a silent peer on a cut link
    /// sends no FIN, so without a bound the wait could last as long as TCP's own timeouts).
    /// - Throws: ``TransportError/Code/stalled`` when nothing came in time, and what ``receive()`` throws.
    public func receive(timeout: Duration) async throws -> [UInt8]? {
        try await closing(
            channel, after: timeout, expecting: "a control message from \(peerName)", silent: { $0 == nil }
        ) { try await receive() }
    }

    /// The next message, or nil once the peer closed the connection.
    /// - Throws: ``TransportError/Code/protocolViolation`` for a frame that is not a control message,
    ///   ``TransportError/Code/connectionFailed`` when the connection broke.
    public func receive() async throws -> [UInt8]? {
        let frame: DWCPFrame?
        do {
            frame = try await inbound.next()
        } catch {
            throw TransportError(
                .connectionFailed, expected: "a control message from \(peerName)", found: "\(error)")
        }
        guard let frame else { return nil }
        guard frame.type == .control, frame.payload.readableBytes <= ControlChannel.maximumMessageLength else {
            throw TransportError(
                .protocolViolation,
                expected: "a control message of at most \(ControlChannel.maximumMessageLength) bytes",
                found: "a \(frame.type) frame of \(frame.payload.readableBytes) bytes")
        }
        return Array(frame.payload.readableBytesView)
    }
}

/// Opens and serves ``ControlConnection``s.
public enum ControlChannel {
    /// The longest message.
    public static let maximumMessageLength = 1 << 20
    /// How long a new connection may take for TLS and the hello once TCP connected.
    public static let helloTimeout: Duration = .seconds(10)

    /// Connects to `host:port`, completes TLS and the hello, runs `body` with the connection, then closes it.
    /// - Throws: ``TransportError`` when the peer cannot be reached or refuses this node (authentication),
    ///   or what `body` throws.
    public static func withConnection<Result>(
        host: String,
        port: Int,
        security: TransportSecurity,
        nodeName: String,
        serverName: String? = nil,
        helloTimeout: Duration = ControlChannel.helloTimeout,
        _ body: (ControlConnection) async throws -> Result
    ) async throws -> Result {
        let channel = try await TransportConnection.connect(
            host: host, port: port, security: security, serverName: serverName, nodeName: nodeName,
            congestionControl: .systemDefault, faults: nil)
        return try await channel.executeThenClose { inbound, outbound in
            var iterator = inbound.makeAsyncIterator()
            // A peer that accepts TCP and then stays silent (a process that holds a dead agent's socket, a cut
            // link) would otherwise hold the caller until its reply timeout.
            let peer = try await closing(
                channel.channel, after: helloTimeout, expecting: "TLS and the hello from \(host):\(port)"
            ) {
                try await TransportConnection.sayHello(
                    inbound: &iterator, outbound: outbound, nodeName: nodeName, peer: "\(host):\(port)")
            }
            return try await body(
                ControlConnection(peerName: peer, channel: channel.channel, inbound: iterator, outbound: outbound))
        }
    }

    /// Listens on `host:port` and runs `handler` for each connection that passes TLS and the hello, each
    /// in its own task, until the calling task is cancelled; then the listener closes and the handlers are
    /// cancelled. A connection that has not completed TLS and the hello within `helloTimeout` is closed.
    /// - Parameters:
    ///   - helloTimeout: How long a new connection may take for TLS and the hello.
    ///   - onListening: Called with the bound port once the listener is up.
    ///   - handler: Serves one connection; the connection closes when it returns.
    /// - Throws: ``TransportError`` when the listener cannot start.
    public static func serve(
        host: String,
        port: Int,
        security: TransportSecurity,
        nodeName: String,
        helloTimeout: Duration = ControlChannel.helloTimeout,
        onListening: @escaping @Sendable (Int) -> Void = { _ in },
        handler: @escaping @Sendable (ControlConnection) async -> Void
    ) async throws {
        let (listener, tlsContext) = try await TransportConnection.listen(host: host, port: port, security: security)
        onListening(listener.channel.localAddress?.port ?? port)
        let serverChannel = listener.channel
        try await withTaskCancellationHandler {
            try await listener.executeThenClose { connections in
                await withDiscardingTaskGroup { group in
                    do {
                        for try await connection in connections {
                            group.addTask {
                                guard
                                    let adopted = await TransportConnection.adoptOrClose(
                                        connection, tlsContext: tlsContext)
                                else { return }
                                try? await adopted.executeThenClose { inbound, outbound in
                                    var iterator = inbound.makeAsyncIterator()
                                    // A client that connects and stays silent would hold this task
                                    // until TCP gave up, which on an idle connection is never.
                                    guard
                                        let peer = try? await closing(
                                            adopted.channel, after: helloTimeout,
                                            expecting: "TLS and the hello from a client",
                                            {
                                                try await TransportConnection.answerHello(
                                                    inbound: &iterator, outbound: outbound, nodeName: nodeName)
                                            })
                                    else { return }
                                    await handler(
                                        ControlConnection(
                                            peerName: peer, channel: adopted.channel, inbound: iterator,
                                            outbound: outbound))
                                }
                            }
                        }
                    } catch {}
                    group.cancelAll()
                }
            }
        } onCancel: {
            serverChannel.close(promise: nil)
        }
    }
}
