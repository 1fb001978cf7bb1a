import DWCPSecurity
import DWCPWire
import NIOConcurrencyHelpers
import NIOCore
import NIOPosix
import NIOSSL

#if canImport(Glibc)
    import Glibc
#endif

/// How a DWCP connection is protected.
public enum TransportSecurity: Sendable {
    /// TLS 1.3 with mutual authentication against the cluster CA (the only mode for real use).
    case mutualTLS(NodeIdentity)
    /// No TLS at all. Exists only to measure what TLS costs; anyone on the path can read and change the data.
    case insecurePlaintext
}

/// Which congestion control a connection's socket gets.
enum CongestionControlChoice: Sendable {
    /// The system default.
    case systemDefault
    /// This one if the kernel allows it, else the system default.
    case preferred(String)
    /// This one, or the connection fails.
    case required(String)
}

/// A DWCP connection as an async channel of frames.
typealias FrameChannel = NIOAsyncChannel<DWCPFrame, DWCPFrame>

/// Opens and accepts DWCP connections: TCP, optionally TLS, the frame codec, and the hello exchange.
enum TransportConnection {
    /// Connects to `host:port` and completes TLS (if any) and the DWCP hello.
    static func connect(
        host: String,
        port: Int,
        security: TransportSecurity,
        serverName: String?,
        nodeName: String,
        congestionControl: CongestionControlChoice,
        faults: FaultInjection?,
        group: any EventLoopGroup = MultiThreadedEventLoopGroup.singleton
    ) async throws -> FrameChannel {
        let tlsContext: NIOSSLContext?
        switch security {
        case .mutualTLS(let identity): tlsContext = try NIOSSLContext(configuration: identity.clientTLSConfiguration())
        case .insecurePlaintext: tlsContext = nil
        }
        let channel: FrameChannel
        do {
            channel = try await ClientBootstrap(group: group)
                .channelOption(.socketOption(.tcp_nodelay), value: 1)
                .connectTimeout(.seconds(10))
                .connect(host: host, port: port) { channel in
                    setCongestionControl(congestionControl, on: channel).flatMapThrowing {
                        if let tlsContext {
                            try channel.pipeline.syncOperations.addHandler(
                                try NIOSSLClientHandler(context: tlsContext, serverHostname: serverName))
                        }
                        return try wrap(channel, faults: faults)
                    }
                }
        } catch {
            throw TransportError(
                .connectionFailed,
                expected: "a DWCP receiver listening at \(host):\(port)",
                found: "\(error)",
                advice: "check the address and that `novacron receive` is running there"
            )
        }
        return channel
    }

    /// Sends the DWCP hello on a connection opened by ``connect``, then `pipelined` without waiting
    /// (saving a round trip on long links), and waits for the answer to the hello.
    /// - Returns: The peer's node name.
    static func sayHello(
        inbound: inout NIOAsyncChannelInboundStream<DWCPFrame>.AsyncIterator,
        outbound: NIOAsyncChannelOutboundWriter<DWCPFrame>,
        nodeName: String,
        peer: String,
        pipelined: [DWCPFrame] = []
    ) async throws -> String {
        let handshake = try await sendHello(
            inbound: &inbound, outbound: outbound, nodeName: nodeName, peer: peer, pipelined: pipelined)
        return try await awaitHelloAnswer(handshake, inbound: &inbound, outbound: outbound, peer: peer)
    }

    /// The first half of ``sayHello``: sends the hello and `pipelined`, returns the handshake to finish
    /// with ``awaitHelloAnswer`` (a data stream sends its chunks in between).
    static func sendHello(
        inbound: inout NIOAsyncChannelInboundStream<DWCPFrame>.AsyncIterator,
        outbound: NIOAsyncChannelOutboundWriter<DWCPFrame>,
        nodeName: String,
        peer: String,
        pipelined: [DWCPFrame] = []
    ) async throws -> HandshakeStateMachine {
        var handshake = HandshakeStateMachine.client(nodeName: nodeName, sessionID: 0)
        do {
            try await outbound.write(contentsOf: [handshake.start()] + pipelined)
        } catch {
            // A connection closed before the hello went out (TLS refused our certificate, say) reports
            // why on its inbound side; the write itself only knows that the channel is closed.
            do {
                while try await inbound.next() != nil {}
            } catch let cause {
                throw classify(cause, peer: peer)
            }
            throw classify(error, peer: peer)
        }
        return handshake
    }

    /// The second half of ``sayHello``: reads until the hello is answered.
    /// - Returns: The peer's node name.
    static func awaitHelloAnswer(
        _ handshake: HandshakeStateMachine,
        inbound: inout NIOAsyncChannelInboundStream<DWCPFrame>.AsyncIterator,
        outbound: NIOAsyncChannelOutboundWriter<DWCPFrame>,
        peer: String
    ) async throws -> String {
        var handshake = handshake
        do {
            while let frame = try await inbound.next() {
                switch handshake.receive(frame) {
                case .establish(let outcome), .sendAndEstablish(_, let outcome):
                    return outcome.peerName
                case .fail(let error), .sendAndFail(_, let error):
                    throw error
                case .send(let reply):
                    try await outbound.write(reply)
                }
            }
        } catch {
            throw classify(error, peer: peer)
        }
        throw TransportError(
            .authenticationFailed,
            expected: "the receiver's answer to our hello",
            found: "the connection closed",
            advice: "the receiver may have refused this node's certificate: is it issued by the receiver's cluster CA?"
        )
    }

    /// Listens on `host:port`. Accepted connections arrive as bare channels that read nothing until
    /// ``adopt(_:tlsContext:)`` has installed TLS and the frame codec: a connection that is never
    /// adopted (one accepted while the listener closes) is simply closed, never half-wrapped.
    static func listen(
        host: String,
        port: Int,
        security: TransportSecurity,
        group: any EventLoopGroup = MultiThreadedEventLoopGroup.singleton
    ) async throws -> (listener: NIOAsyncChannel<any Channel, Never>, tlsContext: NIOSSLContext?) {
        let tlsContext: NIOSSLContext?
        switch security {
        case .mutualTLS(let identity): tlsContext = try NIOSSLContext(configuration: identity.serverTLSConfiguration())
        case .insecurePlaintext: tlsContext = nil
        }
        do {
            let listener = try await ServerBootstrap(group: group)
                .serverChannelOption(.socketOption(.so_reuseaddr), value: 1)
                .childChannelOption(.socketOption(.tcp_nodelay), value: 1)
                .childChannelOption(.autoRead, value: false)
                .bind(host: host, port: port) { channel in
                    channel.eventLoop.makeSucceededFuture(channel)
                }
            return (listener, tlsContext)
        } catch {
            throw TransportError(
                .connectionFailed,
                expected: "to listen on \(host):\(port)",
                found: "\(error)",
                advice: "choose a free port and an address of this machine"
            )
        }
    }

    /// Installs TLS (if any) and the frame codec on an accepted connection and starts reading.
    static func adopt(_ channel: any Channel, tlsContext: NIOSSLContext?) async throws -> FrameChannel {
        try await channel.eventLoop.submit {
            if let tlsContext {
                try channel.pipeline.syncOperations.addHandler(NIOSSLServerHandler(context: tlsContext))
            }
            let wrapped = try wrap(channel, faults: nil)
            try channel.syncOptions?.setOption(.autoRead, value: true)
            return wrapped
        }.get()
    }

    /// Closes `channel` at once, beneath TLS: no close_notify is sent or awaited. For a connection with nothing
    /// left to deliver either way, whose clean close would wait for the peer's goodbye (up to NIOSSL's 5 s)
    /// behind whatever the peer has not read yet.
    static func closeWithoutGoodbye(_ channel: any Channel) {
        channel.eventLoop.execute {
            // The TLS handler's own context passes the close on to the socket, skipping the handler.
            guard let tls = try? channel.pipeline.syncOperations.context(handlerType: NIOSSLClientHandler.self) else {
                channel.close(promise: nil)
                return
            }
            tls.close(promise: nil)
        }
    }

    /// ``adopt(_:tlsContext:)``, closing the connection instead when that fails.
    static func adoptOrClose(_ channel: any Channel, tlsContext: NIOSSLContext?) async -> FrameChannel? {
        guard let adopted = try? await adopt(channel, tlsContext: tlsContext) else {
            channel.close(promise: nil)
            return nil
        }
        return adopted
    }

    /// Answers the DWCP hello on an accepted connection.
    /// - Returns: The peer's node name.
    static func answerHello(
        inbound: inout NIOAsyncChannelInboundStream<DWCPFrame>.AsyncIterator,
        outbound: NIOAsyncChannelOutboundWriter<DWCPFrame>,
        nodeName: String
    ) async throws -> String {
        var handshake = HandshakeStateMachine.server(nodeName: nodeName)
        while let frame = try await inbound.next() {
            switch handshake.receive(frame) {
            case .sendAndEstablish(let reply, let outcome):
                try await outbound.write(reply)
                return outcome.peerName
            case .establish(let outcome):
                return outcome.peerName
            case .sendAndFail(let reply, let error):
                try await outbound.write(reply)
                throw error
            case .fail(let error):
                throw error
            case .send(let reply):
                try await outbound.write(reply)
            }
        }
        throw TransportError(.connectionFailed, expected: "a DWCP hello", found: "the connection closed")
    }

    private static func wrap(_ channel: any Channel, faults: FaultInjection?) throws -> FrameChannel {
        if let faults {
            try channel.pipeline.syncOperations.addHandler(FaultInjectingHandler(faults))
        }
        try channel.pipeline.syncOperations.addHandler(ByteToMessageHandler(DWCPFrameDecoder()))
        try channel.pipeline.syncOperations.addHandler(DWCPFrameWriter())
        return try FrameChannel(
            wrappingChannelSynchronously: channel,
            configuration: .init(
                backPressureStrategy: .init(lowWatermark: 4, highWatermark: 16),
                isOutboundHalfClosureEnabled: false
            )
        )
    }

    /// Sets the socket's congestion control (`bbr`, `cubic`, … as the kernel offers) as `choice` says.
    /// Runs on the channel's event loop, so it returns a future instead of waiting.
    private static func setCongestionControl(
        _ choice: CongestionControlChoice, on channel: any Channel
    ) -> EventLoopFuture<Void> {
        let name: String
        switch choice {
        case .systemDefault: return channel.eventLoop.makeSucceededVoidFuture()
        case .preferred(let preferred), .required(let preferred): name = preferred
        }
        guard let provider = channel as? any SocketOptionProvider else {
            return channel.eventLoop.makeSucceededVoidFuture()
        }
        var bytes = Array(name.utf8.prefix(15))
        bytes += Array(repeating: 0, count: 16 - bytes.count)
        let value = (
            bytes[0], bytes[1], bytes[2], bytes[3], bytes[4], bytes[5], bytes[6], bytes[7],
            bytes[8], bytes[9], bytes[10], bytes[11], bytes[12], bytes[13], bytes[14], bytes[15]
        )
        return provider.unsafeSetSocketOption(
            level: .tcp, name: NIOBSDSocket.Option(rawValue: TCP_CONGESTION), value: value
        ).flatMapErrorThrowing { error in
            guard case .required = choice else { return }  // preferred: the system default stays
            throw TransportError(
                .invalidArgument,
                expected: "a congestion control this kernel offers",
                found: "\(name) (\(error))",
                advice: "see /proc/sys/net/ipv4/tcp_available_congestion_control"
            )
        }
    }

    /// Turns TLS and I/O failures into transfer errors that say what happened.
    static func classify(_ error: any Error, peer: String) -> any Error {
        if error is TransportError || error is DWCPWireError { return error }
        if let tlsError = error as? NIOSSLError, case .uncleanShutdown = tlsError {
            // The connection was cut (the peer died, the link broke), not refused.
            return TransportError(
                .connectionFailed, expected: "an open connection to \(peer)",
                found: "the connection closed without a TLS close: the peer stopped or the link broke")
        }
        if let tlsError = error as? NIOSSLError {
            return TransportError(
                .authenticationFailed,
                expected: "a peer certificate issued by this cluster's CA for \(peer)",
                found: "TLS failed: \(tlsError)",
                advice:
                    "issue both nodes' certificates from one CA (`novacron certs issue`), with the address dialled as --ip"
            )
        }
        if let tlsError = error as? BoringSSLError {
            return TransportError(
                .authenticationFailed,
                expected: "a peer certificate issued by this cluster's CA for \(peer)",
                found: "TLS failed: \(tlsError)",
                advice: "issue both nodes' certificates from one CA (`novacron certs issue`)"
            )
        }
        return TransportError(.connectionFailed, expected: "an open connection to \(peer)", found: "\(error)")
    }
}

/// Runs `body`, closing `channel` if it has not finished after `timeout`: what that close makes `body` throw, or a
/// result it makes `silent`, becomes ``TransportError/Code/stalled``, naming what was `expecting`. A peer on a cut link
/// sends no FIN, so without a bound a wait could last as long as TCP's own timeouts. Both ends bound a new
/// connection's TLS and hello with it (`ControlChannel`, `TransferServer`).
func closing<Result>(
    _ channel: any Channel, after timeout: Duration, expecting what: String,
    silent: (Result) -> Bool = { _ in false }, _ body: () async throws -> Result
) async throws -> Result {
    let expired = NIOLockedValueBox(false)
    let timer = channel.eventLoop.scheduleTask(in: TimeAmount(timeout)) {
        expired.withLockedValue { $0 = true }
        channel.close(promise: nil)
    }
    defer { timer.cancel() }
    let stalled = TransportError(
        .stalled, expected: "\(what) within \(timeout)", found: "silence: the connection was closed",
        advice: "check the link and that the peer is alive")
    do {
        let result = try await body()
        if silent(result) && expired.withLockedValue({ $0 }) { throw stalled }
        return result
    } catch {
        if expired.withLockedValue({ $0 }) { throw stalled }
        throw error
    }
}
