import DWCPWire
import Foundation
import NIOCore
import NIOPosix

/// One object of a session, and its share of the data streams.
public struct TransferObject: Sendable {
    /// The most a weight can be.
    public static let maximumWeight = 255

    /// Where its bytes come from.
    public var source: TransferSource
    /// Its share of the data streams relative to the session's other objects (1…255): while two
    /// objects of weights 4 and 1 both have chunks to send, they get 4/5 and 1/5 of the bytes.
    public var weight: Int

    /// Creates an object to send.
    public init(_ source: TransferSource, weight: Int = 1) {
        precondition((1...Self.maximumWeight).contains(weight), "a weight is 1…255, not \(weight)")
        self.source = source
        self.weight = weight
    }
}

/// Sends objects to a `TransferServer` over one DWCP session: a control stream plus an adaptive
/// number of data streams (AMST) that every object of the session shares by weight. This is the I/O
/// shell around ``SenderSession`` (one session) and ``ReconnectPolicy`` (whether a broken one is
/// re-established); every decision is theirs.
public enum TransferClient {
    /// Sends `source` and returns once the receiver has verified the object's SHA-256 and committed it.
    /// See ``send(objects:configuration:progress:reconnecting:)``.
    public static func send(
        _ source: TransferSource,
        configuration: SendConfiguration,
        progress: @escaping @Sendable (TransferProgress) -> Void = { _ in },
        reconnecting: @escaping @Sendable (ReconnectNotice) -> Void = { _ in }
    ) async throws -> SendReport {
        try await send(
            objects: [TransferObject(source)], configuration: configuration, progress: progress,
            reconnecting: reconnecting)
    }

    /// Sends `objects` over one session and returns once the receiver has verified every object's
    /// SHA-256 and committed it.
    ///
    /// When a session of files breaks after the receiver accepted it (the connection drops, the
    /// receiver restarts), it is re-established as ``ReconnectPolicy`` decides, each time resuming from
    /// the chunks the receiver holds.
    /// - Parameters:
    ///   - objects: Files or standard input (at most once), with their weights; object 0 first.
    ///   - configuration: Where to, how, and the tuning.
    ///   - progress: Called once per interval with a snapshot (all objects together).
    ///   - reconnecting: Called before each re-establishment.
    /// - Returns: What was sent and measured (by the attempt that completed).
    /// - Throws: ``TransportError`` saying what failed: refused, unreachable, authentication, checksum, source.
    public static func send(
        objects: [TransferObject],
        configuration: SendConfiguration,
        progress: @escaping @Sendable (TransferProgress) -> Void = { _ in },
        reconnecting: @escaping @Sendable (ReconnectNotice) -> Void = { _ in }
    ) async throws -> SendReport {
        let descriptors = objects.compactMap(\.source.streamDescriptor)
        guard !objects.isEmpty, objects.count < ChunkAddress.maximumObjects,
            Set(descriptors).count == descriptors.count
        else {
            throw TransportError(
                .invalidArgument,
                expected:
                    "1 to \(ChunkAddress.maximumObjects - 1) objects, each stream (standard input, a descriptor) once",
                found: "\(objects.count) objects, streams on descriptors \(descriptors)"
            )
        }
        var attempt = configuration
        var policy = ReconnectPolicy(
            attempts: configuration.reconnectAttempts, firstDelay: configuration.reconnectDelay,
            resumable: objects.allSatisfy(\.source.isRereadable))
        // Objects the receiver committed, by their place in `objects`: a re-established session offers
        // only the others (a committed file would be refused as existing).
        var committed: [Int: SendReport.Object] = [:]
        while true {
            let remaining = objects.indices.filter { committed[$0] == nil }
            var accepted = false
            var committedNow: [Int: SendReport.Object] = [:]
            do {
                var report = try await sendOnce(
                    remaining.map { objects[$0] }, configuration: attempt, progress: progress, accepted: &accepted,
                    committed: &committedNow)
                if remaining.count < objects.count {
                    for (object, report) in committedNow { committed[remaining[object]] = report }
                    report.objects = objects.indices.map { committed[$0]! }
                }
                report.reconnects = policy.reconnects
                return report
            } catch let error as TransportError {
                for (object, report) in committedNow { committed[remaining[object]] = report }
                guard !Task.isCancelled, let delay = policy.attemptFailed(error, accepted: accepted) else {
                    throw error
                }
                reconnecting(
                    ReconnectNotice(
                        attempt: policy.reconnects, attempts: policy.attempts, delaySeconds: delay.seconds,
                        reason: "\(error)"))
                try await Task.sleep(for: delay)
                attempt.resume = true
                attempt.faults = [:]
                attempt.controlFault = nil
            }
        }
    }

    /// One session: connect, offer, move the chunks, finish. Whatever the outcome, `accepted` says
    /// whether the receiver accepted the offer, and `committed` holds the objects it committed.
    private static func sendOnce(
        _ objects: [TransferObject],
        configuration: SendConfiguration,
        progress: @escaping @Sendable (TransferProgress) -> Void,
        accepted: inout Bool,
        committed: inout [Int: SendReport.Object]
    ) async throws -> SendReport {
        let readers = try objects.map { try SourceReader($0.source) }
        // Whatever happens, a producer must not wait for this session any longer.
        defer { for reader in readers { reader.producer?.sessionEnded() } }
        if configuration.resume && readers.contains(where: { $0.size == nil }) {
            throw TransportError(
                .invalidArgument,
                expected: "a file to resume",
                found: "a stream (standard input or a descriptor)",
                advice: "a stream cannot be read twice; send it again without --resume"
            )
        }
        let peer = "\(configuration.host):\(configuration.port)"
        let control = try await TransportConnection.connect(
            host: configuration.host,
            port: configuration.port,
            security: configuration.security,
            serverName: configuration.serverName,
            nodeName: configuration.nodeName,
            congestionControl: .systemDefault,
            faults: configuration.controlFault
        )
        let (commands, commandSink) = AsyncStream.makeStream(of: SenderCore.Command.self)
        let core = SenderCore(
            configuration: configuration, readers: readers, weights: objects.map(\.weight), commands: commandSink)
        // The control connection's TCP handshake gave the kernel a first RTT sample: enough to size the
        // stream count and open the data streams while TLS and the offer are still under way.
        await core.connected(
            roundTrip: await TCPStatistics.read(control.channel)?.roundTrip ?? .zero,
            streamInFlightLimit: Self.streamInFlightLimit())
        do {
            try await runSession(
                control, commands: commands, core: core, readers: readers, configuration: configuration, peer: peer,
                progress: progress)
        } catch {
            accepted = await core.wasAccepted
            committed = await core.committedObjects()
            throw error
        }
        accepted = await core.wasAccepted
        committed = await core.committedObjects()
        return try await core.result()
    }

    /// Runs the control stream, the source readers, the ticker and the data streams until the session ends.
    private static func runSession(
        _ control: FrameChannel,
        commands: AsyncStream<SenderCore.Command>,
        core: SenderCore,
        readers: [SourceReader],
        configuration: SendConfiguration,
        peer: String,
        progress: @escaping @Sendable (TransferProgress) -> Void
    ) async throws {
        try await control.executeThenClose { inbound, outbound in
            await withTaskGroup(of: Void.self) { group in
                group.addTask {
                    await core.failing {
                        var iterator = inbound.makeAsyncIterator()
                        try await runControl(
                            &iterator, outbound: outbound, core: core, readers: readers,
                            configuration: configuration, peer: peer)
                    }
                }
                for (object, reader) in readers.enumerated() {
                    group.addTask {
                        await core.failing { try await readSource(reader, object: object, core: core) }
                    }
                }
                group.addTask {
                    while !Task.isCancelled {
                        try? await Task.sleep(for: configuration.interval)
                        if let snapshot = await core.tick() { progress(snapshot) }
                    }
                }
                for await command in commands {
                    switch command {
                    case .open(let stream, let delay):
                        group.addTask {
                            if delay > .zero { try? await Task.sleep(for: delay) }
                            await runDataStream(stream, core: core, configuration: configuration, peer: peer)
                        }
                    case .send(let message):
                        await core.failing { try await outbound.write(frame(message, session: core.sessionID)) }
                    }
                }
                // A producer's read may be waiting for an answer that will not come now.
                for reader in readers { reader.producer?.sessionEnded() }
                group.cancelAll()
            }
        }
    }

    private static func frame(_ message: SessionMessage, session: UInt64) -> DWCPFrame {
        DWCPFrame(type: .control, sessionID: session, sequence: 0, payload: message.encoded)
    }

    private static func runControl(
        _ iterator: inout NIOAsyncChannelInboundStream<DWCPFrame>.AsyncIterator,
        outbound: NIOAsyncChannelOutboundWriter<DWCPFrame>,
        core: SenderCore,
        readers: [SourceReader],
        configuration: SendConfiguration,
        peer: String
    ) async throws {
        let offers = readers.enumerated().map { object, reader in
            frame(
                .offer(
                    SessionMessage.Offer(
                        transferID: reader.transferID,
                        name: reader.name,
                        totalBytes: reader.size,
                        blockSize: UInt32(configuration.blockSize),
                        resume: configuration.resume,
                        object: UInt16(object),
                        objects: UInt16(readers.count),
                        weight: UInt8(core.weight(of: object)),
                        content: reader.offerContent
                    )),
                session: 0)
        }
        // Every offer goes out with the hello; the receiver answers them in order.
        _ = try await TransportConnection.sayHello(
            inbound: &iterator, outbound: outbound, nodeName: configuration.nodeName, peer: peer,
            pipelined: offers)
        while true {
            switch try await nextMessage(&iterator, peer: peer) {
            case .accept(let accept):
                guard readers.indices.contains(Int(accept.object)) else {
                    throw TransportError(
                        .protocolViolation, expected: "an accept for an offered object",
                        found: "object \(accept.object)")
                }
                if let query = try await readers[Int(accept.object)].accepted(reply: accept.reply) {
                    guard query.count <= SessionMessage.maximumContentLength else {
                        throw TransportError(
                            .invalidArgument,
                            expected: "a query of at most \(SessionMessage.maximumContentLength) bytes",
                            found: "\(query.count)")
                    }
                    try await outbound.write(
                        frame(.query(object: accept.object, content: query), session: accept.sessionID))
                }
                try await core.accepted(accept)
            case .answer(let object, let content):
                guard readers.indices.contains(Int(object)), readers[Int(object)].producer != nil else {
                    throw TransportError(
                        .protocolViolation, expected: "an answer for a producer's query", found: "object \(object)")
                }
                try await readers[Int(object)].answered(content)
            case .refuse(let reason):
                throw TransportError(.refused, expected: "the receiver to accept the transfer", found: reason)
            case .complete(let object, let digest):
                if await core.completed(object: Int(object), digest) { return }
            case .failed(let reason):
                throw TransportError(
                    reason.hasPrefix("checksum") ? .checksumMismatch : .destinationFailed,
                    expected: "the receiver to store and verify the objects",
                    found: reason
                )
            case let other:
                throw TransportError(
                    .protocolViolation, expected: "accept, refuse, complete or failed", found: "\(other)")
            }
        }
    }

    /// The next control message; the connection closing is an error.
    static func nextMessage(
        _ iterator: inout NIOAsyncChannelInboundStream<DWCPFrame>.AsyncIterator,
        peer: String
    ) async throws -> SessionMessage {
        while true {
            let frame: DWCPFrame?
            do {
                frame = try await iterator.next()
            } catch {
                throw TransportConnection.classify(error, peer: peer)
            }
            guard let frame else {
                throw TransportError(
                    .connectionFailed,
                    expected: "the session's control stream to stay open",
                    found: "\(peer) closed it",
                    advice: "the receiver stopped; start it again and send with --resume"
                )
            }
            switch frame.type {
            case .control: return try SessionMessage(decoding: frame.payload)
            case .ping, .pong: continue
            default:
                throw TransportError(.protocolViolation, expected: "a control frame", found: "a \(frame.type) frame")
            }
        }
    }

    private static func readSource(_ reader: SourceReader, object: Int, core: SenderCore) async throws {
        let (blockSize, skipped) = await core.waitUntilAccepted(object: object)
        var index = 0
        while true {
            if skipped.contains(index) {
                // A block the receiver holds is read for the SHA-256 but not sent, so it needs no grant.
                guard let block = try await reader.readChunk(chunkSize: blockSize) else { break }
                index += 1
                if block.readableBytes < blockSize { break }
                continue
            }
            let blocks = try await core.reserve(object, at: index)
            guard let chunk = try await reader.readChunk(chunkSize: blocks * blockSize) else { break }
            try await core.deliver(index, of: object, chunk)
            index += (chunk.readableBytes + blockSize - 1) / blockSize
            if chunk.readableBytes < blocks * blockSize { break }
        }
        await core.sourceEnded(object: object, blockCount: index, digest: reader.digest())
    }

    private static func runDataStream(
        _ stream: Int,
        core: SenderCore,
        configuration: SendConfiguration,
        peer: String
    ) async {
        var failure: (any Error)?
        do {
            let channel = try await TransportConnection.connect(
                host: configuration.host,
                port: configuration.port,
                security: configuration.security,
                serverName: configuration.serverName,
                nodeName: configuration.nodeName,
                congestionControl: configuration.congestionControl
                    .map { .required($0) } ?? .preferred(SendConfiguration.preferredCongestionControl),
                faults: configuration.faults[stream]
            )
            try await channel.executeThenClose { inbound, outbound in
                var iterator = inbound.makeAsyncIterator()
                let (session, token) = try await core.credentials()
                // Chunks follow the hello and the attach at once; the answer to the hello is read
                // before the first acknowledgement.
                let handshake = try await TransportConnection.sendHello(
                    inbound: &iterator, outbound: outbound, nodeName: configuration.nodeName, peer: peer,
                    pipelined: [
                        frame(
                            .attach(sessionID: session, token: token, stream: UInt16(truncatingIfNeeded: stream)),
                            session: session)
                    ])
                let chunks = await core.streamReady(stream, channel: channel.channel)
                let connection = channel.channel
                try await withThrowingTaskGroup(of: Void.self) { group in
                    group.addTask {
                        for await (address, payload) in chunks {
                            let delay = await core.pace(payload.readableBytes)
                            if delay > .zero { try await Task.sleep(for: delay) }
                            try await outbound.write(
                                DWCPFrame(
                                    type: .chunk, sessionID: session, sequence: address.sequence, payload: payload))
                            await core.sent(payload.readableBytes)
                        }
                        // Drained on purpose (or the transfer ended): closing ends the reader below.
                        connection.close(promise: nil)
                    }
                    _ = try await TransportConnection.awaitHelloAnswer(
                        handshake, inbound: &iterator, outbound: outbound, peer: peer)
                    while let frame = try await iterator.next() {
                        switch frame.type {
                        case .ack:
                            await core.acknowledged(ChunkAddress(sequence: frame.sequence), on: stream)
                        case .control:
                            if case .failed(let reason) = try SessionMessage(decoding: frame.payload) {
                                await core.fail(
                                    TransportError(
                                        .destinationFailed, expected: "the receiver to store every chunk",
                                        found: reason))
                            }
                        default:
                            throw TransportError(
                                .protocolViolation, expected: "ack frames on a data stream",
                                found: "a \(frame.type) frame")
                        }
                    }
                    group.cancelAll()
                    throw TransportError(
                        .connectionFailed, expected: "data stream \(stream) to stay open", found: "it closed")
                }
            }
        } catch {
            failure = error
        }
        await core.streamEnded(stream, error: failure)
    }

    /// What one TCP stream of this host can keep in flight, from the kernel's buffer ceilings
    /// (`net.ipv4.tcp_rmem` and `tcp_wmem` maxima; Linux defaults when unreadable).
    static func streamInFlightLimit() -> Int {
        func maximum(_ name: String, default value: Int) -> Int {
            guard let text = try? String(contentsOfFile: "/proc/sys/net/ipv4/\(name)", encoding: .utf8),
                let last = text.split(whereSeparator: { $0 == " " || $0 == "\t" || $0 == "\n" }).last,
                let number = Int(last)
            else { return value }
            return number
        }
        return StreamCountController.streamInFlightLimit(
            receiveBufferMaximum: maximum("tcp_rmem", default: 6 << 20),
            sendBufferMaximum: maximum("tcp_wmem", default: 4 << 20))
    }
}
