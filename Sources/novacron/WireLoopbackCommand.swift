import ArgumentParser
import DWCPWire
import Foundation
import NIOCore
import NIOPosix

/// `novacron wire loopback`: a DWCP handshake, pings and a bulk frame exchange between a server and a
/// client in this process over real TCP on 127.0.0.1, with every frame's checksums verified.
struct WireLoopbackCommand: AsyncParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "loopback",
        abstract: "Exchange DWCP frames with itself over TCP on 127.0.0.1 and report what was measured."
    )

    @Option(help: "Chunk frames to send.")
    var frames = 4096

    @Option(help: "Payload bytes per chunk frame (at most 16 MiB).")
    var payloadBytes = 64 * 1024

    @Option(help: "Ping round trips to time before the bulk exchange.")
    var pings = 200

    @Flag(help: "Print the result as JSON.")
    var json = false

    func validate() throws {
        guard frames > 0 else { throw ValidationError("--frames must be at least 1, not \(frames)") }
        guard pings >= 0 else { throw ValidationError("--pings must be 0 or more, not \(pings)") }
        guard (1...DWCPFrame.hardMaximumPayloadLength).contains(payloadBytes) else {
            throw ValidationError(
                "--payload-bytes must be in 1...\(DWCPFrame.hardMaximumPayloadLength), not \(payloadBytes)"
            )
        }
    }

    func run() async throws {
        let report = try await WireLoopback(frames: frames, payloadBytes: payloadBytes, pings: pings).run()
        if json {
            let encoder = JSONEncoder()
            encoder.outputFormatting = [.prettyPrinted, .sortedKeys]
            print(String(decoding: try encoder.encode(report), as: UTF8.self))
        } else {
            print(report.summary)
        }
        guard report.verified else {
            throw ExitCode.failure
        }
    }
}

/// What one loopback run measured.
struct WireLoopbackReport: Codable, Sendable {
    var negotiatedVersion: UInt8
    var framesSent: Int
    var framesReceived: Int
    var payloadBytesReceived: Int
    var seconds: Double
    var throughputMiBPerSecond: Double
    var pingMedianMicroseconds: Double
    var pingP99Microseconds: Double
    var verified: Bool

    var summary: String {
        """
        DWCP v\(negotiatedVersion) loopback over TCP 127.0.0.1
          frames: \(framesSent) sent, \(framesReceived) received, \(payloadBytesReceived) payload bytes
          throughput: \(String(format: "%.1f", throughputMiBPerSecond)) MiB/s in \(String(format: "%.3f", seconds)) s
          ping RTT: median \(String(format: "%.0f", pingMedianMicroseconds)) µs, \
        p99 \(String(format: "%.0f", pingP99Microseconds)) µs
          verified: \(verified ? "yes (sequence contiguous, byte count equal, all checksums valid)" : "NO")
        """
    }
}

struct WireLoopback {
    typealias FrameChannel = NIOAsyncChannel<DWCPFrame, DWCPFrame>

    var frames: Int
    var payloadBytes: Int
    var pings: Int

    /// The server acknowledges every this many chunk frames.
    static let acknowledgementInterval = 64
    /// The client keeps at most this many unacknowledged chunk frames in flight, which bounds memory.
    static let window = 256

    /// What the server saw, returned to the client in the final ack's payload.
    struct ServerTally {
        var frames = 0
        var bytes = 0
        var isContiguous = true
    }

    func run() async throws -> WireLoopbackReport {
        let group = MultiThreadedEventLoopGroup.singleton
        let server = try await ServerBootstrap(group: group)
            .serverChannelOption(.socketOption(.so_reuseaddr), value: 1)
            .bind(host: "127.0.0.1", port: 0) { channel in
                channel.eventLoop.makeCompletedFuture { try Self.wrap(channel) }
            }
        guard let port = server.channel.localAddress?.port else {
            throw ValidationError("the loopback server has no local port")
        }
        return try await withThrowingTaskGroup(of: WireLoopbackReport?.self) { tasks in
            tasks.addTask {
                try await server.executeThenClose { connections in
                    var iterator = connections.makeAsyncIterator()
                    if let connection = try await iterator.next() {
                        try await Self.serve(connection)
                    }
                }
                return nil
            }
            tasks.addTask {
                let client = try await ClientBootstrap(group: group)
                    .connect(host: "127.0.0.1", port: port) { channel in
                        channel.eventLoop.makeCompletedFuture { try Self.wrap(channel) }
                    }
                return try await self.drive(client)
            }
            var report: WireLoopbackReport?
            for try await result in tasks where result != nil {
                report = result
            }
            return report!
        }
    }

    private static func wrap(_ channel: any Channel) throws -> FrameChannel {
        try channel.pipeline.syncOperations.addHandler(ByteToMessageHandler(DWCPFrameDecoder()))
        try channel.pipeline.syncOperations.addHandler(MessageToByteHandler(DWCPFrameEncoder()))
        return try FrameChannel(wrappingChannelSynchronously: channel)
    }

    /// The server: answers the handshake, echoes pings, acknowledges chunks, tallies what arrived.
    private static func serve(_ connection: FrameChannel) async throws {
        try await connection.executeThenClose { inbound, outbound in
            var handshake = HandshakeStateMachine.server(nodeName: "loopback-server")
            var tally = ServerTally()
            var established = false
            for try await frame in inbound {
                if !established {
                    switch handshake.receive(frame) {
                    case .sendAndEstablish(let reply, _):
                        try await outbound.write(reply)
                        established = true
                        continue
                    case .sendAndFail(let reply, let error):
                        try await outbound.write(reply)
                        throw error
                    case .fail(let error):
                        throw error
                    case .send, .establish:
                        preconditionFailure("a server handshake never sends without deciding")
                    }
                }
                switch frame.type {
                case .ping:
                    try await outbound.write(
                        DWCPFrame(
                            type: .pong, sessionID: frame.sessionID, sequence: frame.sequence, payload: frame.payload)
                    )
                case .chunk:
                    tally.isContiguous = tally.isContiguous && frame.sequence == UInt64(tally.frames + 1)
                    tally.frames += 1
                    tally.bytes += frame.payload.readableBytes
                    if tally.frames % WireLoopback.acknowledgementInterval == 0 && !frame.flags.contains(.endOfStream) {
                        try await outbound.write(
                            DWCPFrame(type: .ack, sessionID: frame.sessionID, sequence: frame.sequence))
                    }
                    if frame.flags.contains(.endOfStream) {
                        var payload = ByteBuffer()
                        payload.writeInteger(UInt64(tally.frames))
                        payload.writeInteger(UInt64(tally.bytes))
                        payload.writeInteger(UInt8(tally.isContiguous ? 1 : 0))
                        try await outbound.write(
                            DWCPFrame(
                                type: .ack,
                                flags: .endOfStream,
                                sessionID: frame.sessionID,
                                sequence: frame.sequence,
                                payload: payload
                            )
                        )
                    }
                case .close:
                    return
                default:
                    throw DWCPWireError(
                        .unexpectedFrame,
                        expected: "a ping, chunk or close frame",
                        found: "a \(frame.type) frame"
                    )
                }
            }
        }
    }

    /// The client: handshake, timed pings, then the bulk chunks, then compares the server's tally.
    private func drive(_ client: FrameChannel) async throws -> WireLoopbackReport {
        let sessionID = UInt64.random(in: 1...UInt64.max)
        var payload = ByteBuffer()
        payload.writeBytes((0..<payloadBytes).map { _ in UInt8.random(in: 0...255) })
        let payloadTemplate = payload
        let chunkCount = frames

        return try await client.executeThenClose { inbound, outbound in
            var responses = inbound.makeAsyncIterator()
            var handshake = HandshakeStateMachine.client(nodeName: "loopback-client", sessionID: sessionID)
            try await outbound.write(handshake.start())
            guard let answer = try await responses.next() else {
                throw DWCPWireError(.truncatedFrame, expected: "an accept", found: "the connection closed")
            }
            let outcome: HandshakeStateMachine.Outcome
            switch handshake.receive(answer) {
            case .establish(let established):
                outcome = established
            case .fail(let error), .sendAndFail(_, let error):
                throw error
            case .send, .sendAndEstablish:
                preconditionFailure("a client handshake decides on the first answer")
            }

            let clock = ContinuousClock()
            var roundTrips: [Duration] = []
            for index in 0..<pings {
                let sent = clock.now
                try await outbound.write(DWCPFrame(type: .ping, sessionID: sessionID, sequence: UInt64(index)))
                guard let pong = try await responses.next(), pong.type == .pong, pong.sequence == UInt64(index) else {
                    throw DWCPWireError(.unexpectedFrame, expected: "pong \(index)", found: "something else")
                }
                roundTrips.append(clock.now - sent)
            }

            let start = clock.now
            var acknowledged = 0
            for sequence in 1...chunkCount {
                while sequence - acknowledged > Self.window {
                    guard let ack = try await responses.next(), ack.type == .ack else {
                        throw DWCPWireError(.unexpectedFrame, expected: "an ack", found: "something else")
                    }
                    acknowledged = Int(ack.sequence)
                }
                let frame = DWCPFrame(
                    type: .chunk,
                    flags: sequence == chunkCount ? .endOfStream : [],
                    sessionID: sessionID,
                    sequence: UInt64(sequence),
                    payload: payloadTemplate
                )
                try await outbound.write(frame)
            }
            var final = try await responses.next()
            while let ack = final, ack.type == .ack, !ack.flags.contains(.endOfStream) {
                final = try await responses.next()
            }
            guard var ack = final, ack.type == .ack,
                let serverFrames = ack.payload.readInteger(as: UInt64.self),
                let serverBytes = ack.payload.readInteger(as: UInt64.self),
                let contiguous = ack.payload.readInteger(as: UInt8.self)
            else {
                throw DWCPWireError(.unexpectedFrame, expected: "the final ack", found: "something else")
            }
            let elapsed = clock.now - start
            try await outbound.write(DWCPFrame(type: .close, sessionID: sessionID, sequence: 0))

            let seconds = elapsed.seconds
            let sorted = roundTrips.map(\.seconds).sorted()
            let verified =
                serverFrames == UInt64(chunkCount) && serverBytes == UInt64(chunkCount * payloadTemplate.readableBytes)
                && contiguous == 1
            return WireLoopbackReport(
                negotiatedVersion: outcome.version,
                framesSent: chunkCount,
                framesReceived: Int(serverFrames),
                payloadBytesReceived: Int(serverBytes),
                seconds: seconds,
                throughputMiBPerSecond: Double(serverBytes) / 1_048_576 / seconds,
                pingMedianMicroseconds: sorted.percentile(0.5) * 1e6,
                pingP99Microseconds: sorted.percentile(0.99) * 1e6,
                verified: verified
            )
        }
    }
}

extension Duration {
    var seconds: Double {
        let (seconds, attoseconds) = components
        return Double(seconds) + Double(attoseconds) / 1e18
    }
}

extension [Double] {
    /// The value at quantile `q` of an ascending array (nearest rank), or 0 when empty.
    func percentile(_ q: Double) -> Double {
        guard !isEmpty else { return 0 }
        let rank = Int((q * Double(count)).rounded(.up)) - 1
        return self[Swift.min(Swift.max(rank, 0), count - 1)]
    }
}
