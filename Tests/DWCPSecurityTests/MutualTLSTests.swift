import DWCPSecurity
import DWCPWire
import Foundation
import NIOConcurrencyHelpers
import NIOCore
import NIOPosix
import NIOSSL
import Testing

/// Answers a DWCP hello over TLS and counts every frame that reached it.
private final class HelloResponder: ChannelInboundHandler, @unchecked Sendable {
    typealias InboundIn = DWCPFrame
    typealias OutboundOut = DWCPFrame

    let received: NIOLockedValueBox<Int>
    private var handshake = HandshakeStateMachine.server(nodeName: "node-b")

    init(received: NIOLockedValueBox<Int>) {
        self.received = received
    }

    func channelRead(context: ChannelHandlerContext, data: NIOAny) {
        received.withLockedValue { $0 += 1 }
        switch handshake.receive(unwrapInboundIn(data)) {
        case .sendAndEstablish(let reply, _), .sendAndFail(let reply, _):
            context.writeAndFlush(wrapOutboundOut(reply), promise: nil)
        case .send, .establish, .fail:
            break
        }
    }

    func errorCaught(context: ChannelHandlerContext, error: any Error) {
        context.close(promise: nil)
    }
}

/// Completes with the first frame the client receives, or the error that ended the connection.
private final class FirstFrame: ChannelInboundHandler, @unchecked Sendable {
    typealias InboundIn = DWCPFrame
    let promise: EventLoopPromise<DWCPFrame>
    private var isComplete = false

    init(promise: EventLoopPromise<DWCPFrame>) {
        self.promise = promise
    }

    func channelRead(context: ChannelHandlerContext, data: NIOAny) {
        complete(.success(unwrapInboundIn(data)))
    }

    func errorCaught(context: ChannelHandlerContext, error: any Error) {
        complete(.failure(error))
        context.close(promise: nil)
    }

    func channelInactive(context: ChannelHandlerContext) {
        complete(.failure(ChannelError.eof))
    }

    private func complete(_ result: Result<DWCPFrame, any Error>) {
        guard !isComplete else { return }
        isComplete = true
        promise.completeWith(result)
    }
}

@Suite("Mutual TLS 1.3 between cluster nodes")
struct MutualTLSTests {
    static let authority = try! ClusterAuthority.create(name: "test")
    static let server = try! authority.issue(node: "node-b", ipAddresses: ["127.0.0.1"])
    static let client = try! authority.issue(node: "node-a")

    /// Runs a TLS server with `serverIdentity`, connects a client with `clientConfiguration`, sends a
    /// DWCP hello, and returns the client's first frame (or error) and how many frames the server got.
    static func exchange(
        server serverIdentity: NodeIdentity = server,
        client clientConfiguration: TLSConfiguration,
        hostname: String = "node-b"
    ) async throws -> (reply: Result<DWCPFrame, any Error>, framesAtServer: Int) {
        let group = MultiThreadedEventLoopGroup.singleton
        let serverContext = try NIOSSLContext(configuration: serverIdentity.serverTLSConfiguration())
        let received = NIOLockedValueBox(0)
        let listener = try await ServerBootstrap(group: group)
            .childChannelInitializer { channel in
                channel.eventLoop.makeCompletedFuture {
                    try channel.pipeline.syncOperations.addHandler(NIOSSLServerHandler(context: serverContext))
                    try channel.pipeline.syncOperations.addHandler(ByteToMessageHandler(DWCPFrameDecoder()))
                    try channel.pipeline.syncOperations.addHandler(MessageToByteHandler(DWCPFrameEncoder()))
                    try channel.pipeline.syncOperations.addHandler(HelloResponder(received: received))
                }
            }
            .bind(host: "127.0.0.1", port: 0).get()
        do {
            let reply = try await connectAndSayHello(
                to: listener.localAddress!.port!, client: clientConfiguration, hostname: hostname)
            try? await listener.close()
            return (reply, received.withLockedValue { $0 })
        } catch {
            try? await listener.close()
            throw error
        }
    }

    /// Connects with `clientConfiguration`, sends a hello, and returns the first frame or the error.
    static func connectAndSayHello(
        to port: Int,
        client clientConfiguration: TLSConfiguration,
        hostname: String
    ) async throws -> Result<DWCPFrame, any Error> {
        let group = MultiThreadedEventLoopGroup.singleton
        let clientContext = try NIOSSLContext(configuration: clientConfiguration)
        let promise = group.next().makePromise(of: DWCPFrame.self)
        let connection = try await ClientBootstrap(group: group)
            .channelInitializer { channel in
                channel.eventLoop.makeCompletedFuture {
                    try channel.pipeline.syncOperations.addHandler(
                        try NIOSSLClientHandler(context: clientContext, serverHostname: hostname)
                    )
                    try channel.pipeline.syncOperations.addHandler(ByteToMessageHandler(DWCPFrameDecoder()))
                    try channel.pipeline.syncOperations.addHandler(MessageToByteHandler(DWCPFrameEncoder()))
                    try channel.pipeline.syncOperations.addHandler(FirstFrame(promise: promise))
                }
            }
            .connect(host: "127.0.0.1", port: port).get()
        var handshake = HandshakeStateMachine.client(nodeName: "node-a", sessionID: 7)
        connection.writeAndFlush(handshake.start(), promise: nil)
        let reply: Result<DWCPFrame, any Error>
        do {
            reply = .success(try await promise.futureResult.get())
        } catch {
            reply = .failure(error)
        }
        try? await connection.close()
        return reply
    }

    @Test("Two nodes of one cluster complete TLS 1.3 and the DWCP handshake")
    func sameClusterConnects() async throws {
        let (reply, frames) = try await Self.exchange(client: Self.client.clientTLSConfiguration())
        let frame = try reply.get()
        #expect(frame.type == .helloAccept)
        #expect(frames == 1)
    }

    @Test("A client certificate from another CA is rejected before any payload")
    func foreignClientRejected() async throws {
        let stranger = try ClusterAuthority.create(name: "other").issue(node: "node-a")
        var configuration = try stranger.clientTLSConfiguration()
        configuration.trustRoots = .certificates(
            try NIOSSLCertificate.fromPEMBytes(Array(Self.server.authorityPEM.utf8)))
        let (reply, frames) = try await Self.exchange(client: configuration)
        #expect(throws: (any Error).self) { try reply.get() }
        #expect(frames == 0)
    }

    @Test("A client without a certificate is rejected before any payload")
    func anonymousClientRejected() async throws {
        var configuration = TLSConfiguration.makeClientConfiguration()
        configuration.minimumTLSVersion = .tlsv13
        configuration.trustRoots = .certificates(
            try NIOSSLCertificate.fromPEMBytes(Array(Self.server.authorityPEM.utf8)))
        let (reply, frames) = try await Self.exchange(client: configuration)
        #expect(throws: (any Error).self) { try reply.get() }
        #expect(frames == 0)
    }

    @Test("A client refuses a server of another cluster, and a server that is not the node it dialled")
    func clientVerifiesServer() async throws {
        let impostor = try ClusterAuthority.create(name: "other").issue(node: "node-b")
        let (foreign, foreignFrames) = try await Self.exchange(
            server: impostor, client: Self.client.clientTLSConfiguration())
        #expect(throws: (any Error).self) { try foreign.get() }
        #expect(foreignFrames == 0)

        // NIOSSL also accepts an IP SAN equal to the dialled address, so name checking is shown with a
        // certificate that carries only the DNS name.
        let namedOnly = try Self.authority.issue(node: "node-b")
        let (named, _) = try await Self.exchange(server: namedOnly, client: Self.client.clientTLSConfiguration())
        #expect(try named.get().type == .helloAccept)
        let (misnamed, misnamedFrames) = try await Self.exchange(
            server: namedOnly,
            client: Self.client.clientTLSConfiguration(),
            hostname: "node-c"
        )
        #expect(throws: (any Error).self) { try misnamed.get() }
        #expect(misnamedFrames == 0)
    }
}

@Suite("Cluster certificates")
struct ClusterAuthorityTests {
    @Test("A CA survives a PEM round trip, and a key that is not its own is refused")
    func pemRoundTrip() throws {
        let authority = try ClusterAuthority.create(name: "round")
        let loaded = try ClusterAuthority(
            certificatePEM: authority.certificatePEM(), privateKeyPEM: authority.privateKeyPEM)
        #expect(loaded.certificate == authority.certificate)
        let other = try ClusterAuthority.create(name: "other")
        #expect(throws: SecurityError.self) {
            try ClusterAuthority(certificatePEM: authority.certificatePEM(), privateKeyPEM: other.privateKeyPEM)
        }
        #expect(throws: SecurityError.self) {
            try ClusterAuthority(certificatePEM: "not a certificate", privateKeyPEM: authority.privateKeyPEM)
        }
    }

    @Test(
        "Bad node names and addresses are refused",
        arguments: [("", []), ("node a", []), ("ok", ["300.1.1.1"]), ("ok", ["host"])])
    func badNames(node: String, addresses: [String]) throws {
        let authority = try ClusterAuthority.create(name: "names")
        #expect(throws: SecurityError.self) { try authority.issue(node: node, ipAddresses: addresses) }
    }

    @Test("A node certificate accepts IPv4 and IPv6 addresses")
    func addresses() throws {
        let authority = try ClusterAuthority.create(name: "addresses")
        let identity = try authority.issue(node: "node-1", ipAddresses: ["10.1.2.3", "::1"])
        #expect(identity.certificatePEM.hasPrefix("-----BEGIN CERTIFICATE-----"))
        #expect(try NIOSSLCertificate.fromPEMBytes(Array(identity.certificatePEM.utf8)).count == 1)
    }
}
