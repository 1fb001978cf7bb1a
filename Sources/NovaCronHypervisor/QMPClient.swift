import CNovaCronSystem
import Foundation
import NIOCore
import NIOPosix

#if canImport(Glibc)
    import Glibc
#endif

/// A QMP client over QEMU's unix socket: typed commands and replies, asynchronous events, and
/// descriptor passing (`getfd` with SCM_RIGHTS) so NovaCron can own migration streams.
///
/// Use it through ``withClient(socketPath:connectTimeout:isPeerAlive:_:)``, which connects, negotiates
/// capabilities, runs your closure and closes the connection. The protocol decisions live in
/// ``QMPProtocol``; this actor only moves bytes.
public actor QMPClient {
    /// The longest QMP line accepted; longer ones are skipped and fail the oldest command.
    public static let maximumLineLength = 4 * 1024 * 1024

    private enum Pending {
        case waiting(CheckedContinuation<JSONValue, any Error>)
        case finished(Result<JSONValue, HypervisorError>)
    }

    /// QMP events in arrival order (STOP, RESUME, SHUTDOWN, MIGRATION, …). Finishes when the connection closes.
    public nonisolated let events: AsyncStream<QMPProtocol.Event>
    private let eventSink: AsyncStream<QMPProtocol.Event>.Continuation
    private let channel: any Channel
    private let socketDescriptor: CInt
    private var machine = QMPProtocol()
    private var pending: [UInt64: Pending] = [:]
    private var readyWaiters: [CheckedContinuation<QMPProtocol.Greeting, any Error>] = []
    private var closedError: HypervisorError?
    /// QEMU's greeting, once the connection is ready.
    public private(set) var greeting: QMPProtocol.Greeting?
    /// Messages that arrived with nothing waiting for them (they did not end the connection).
    public private(set) var violations: [HypervisorError] = []

    private init(channel: any Channel, socketDescriptor: CInt) {
        self.channel = channel
        self.socketDescriptor = socketDescriptor
        (events, eventSink) = AsyncStream.makeStream(bufferingPolicy: .bufferingNewest(4096))
    }

    /// Connects to a QMP socket, negotiates, runs `body`, and closes the connection.
    /// - Parameters:
    ///   - socketPath: The unix socket QEMU listens on (`-qmp unix:PATH,server=on,wait=off`).
    ///   - connectTimeout: How long to keep trying while the socket does not exist or refuses.
    ///   - isPeerAlive: Asked between attempts; return `false` to stop trying (e.g. QEMU exited).
    ///   - body: What to do with the ready client.
    /// - Returns: What `body` returns.
    /// - Throws: ``HypervisorError`` (`connectFailed`, `connectionClosed`, …) or what `body` throws.
    public static func withClient<Result: Sendable>(
        socketPath: String,
        connectTimeout: Duration = .seconds(30),
        isPeerAlive: @Sendable () -> Bool = { true },
        _ body: (QMPClient) async throws -> Result
    ) async throws -> Result {
        let descriptor = try await connectUnixSocket(
            path: socketPath, timeout: connectTimeout, isPeerAlive: isPeerAlive)
        let (lines, lineSink) = AsyncStream.makeStream(of: DecodedLine.self)
        let channel: any Channel
        do {
            channel = try await ClientBootstrap(group: MultiThreadedEventLoopGroup.singleton)
                .withConnectedSocket(descriptor) { channel in
                    channel.eventLoop.makeCompletedFuture {
                        try channel.pipeline.syncOperations.addHandler(
                            ByteToMessageHandler(LineDecoder(maximumLength: maximumLineLength))
                        )
                        try channel.pipeline.syncOperations.addHandler(LineForwarder(lineSink))
                        return channel
                    }
                }
        } catch {
            close(descriptor)
            throw HypervisorError(.connectFailed, expected: "a QMP connection on \(socketPath)", found: "\(error)")
        }
        let client = QMPClient(channel: channel, socketDescriptor: descriptor)
        return try await withThrowingTaskGroup(of: Void.self) { group in
            group.addTask {
                for await line in lines {
                    await client.receive(line)
                }
                await client.connectionClosed(reason: "the peer closed the socket")
            }
            defer {
                channel.close(promise: nil)
            }
            let result: Result
            do {
                try await withThrowingTaskGroup(of: Void.self) { handshake in
                    handshake.addTask {
                        try await Task.sleep(for: connectTimeout)
                        await client.failUnlessReady(after: connectTimeout)
                    }
                    _ = try await client.waitUntilReady()
                    handshake.cancelAll()
                }
                result = try await body(client)
            } catch {
                try? await channel.close()
                try? await group.waitForAll()
                throw error
            }
            try? await channel.close()
            try await group.waitForAll()
            return result
        }
    }

    /// Waits for the greeting and capability negotiation.
    /// - Returns: QEMU's greeting.
    public func waitUntilReady() async throws -> QMPProtocol.Greeting {
        if let greeting { return greeting }
        if let closedError { throw closedError }
        return try await withCheckedThrowingContinuation { readyWaiters.append($0) }
    }

    /// Executes a QMP command.
    /// - Parameters:
    ///   - command: The command, e.g. `query-status`.
    ///   - arguments: Its arguments object.
    /// - Returns: The command's `return` value.
    /// - Throws: ``HypervisorError/Code/commandFailed`` with QEMU's error class and description,
    ///   ``HypervisorError/Code/connectionClosed``, or ``HypervisorError/Code/malformedMessage``.
    @discardableResult
    public func execute(_ command: String, _ arguments: JSONValue? = nil) async throws -> JSONValue {
        if let closedError { throw closedError }
        let (id, line) = machine.execute(command, arguments: arguments)
        pending[id] = nil
        if let line {
            try await write(line)
        }
        return try await result(for: id)
    }

    /// Hands `descriptor` to QEMU under `name` (`getfd` with SCM_RIGHTS), for `fd:NAME` URIs.
    ///
    /// QEMU receives its own duplicate; the caller still owns `descriptor` and should close it when
    /// QEMU has taken it (after this returns).
    /// - Parameters:
    ///   - descriptor: An open file descriptor (a socket or pipe end).
    ///   - name: The name QEMU will know it by.
    /// - Throws: ``HypervisorError/Code/descriptorPassingFailed`` or the command's error.
    public func passDescriptor(_ descriptor: CInt, named name: String) async throws {
        _ = try await waitUntilReady()
        let (id, line) = machine.execute("getfd", arguments: ["fdname": .string(name)])
        guard let line else {
            preconditionFailure("a ready QMPProtocol sends commands at once")
        }
        let socket = socketDescriptor
        // Every earlier write has completed (writes are awaited), so the kernel sees this message
        // after them and the descriptor rides with exactly this command.
        do {
            try await channel.eventLoop.submit {
                let sent = line.withUnsafeBytes { bytes in
                    novacron_send_with_descriptor(socket, bytes.baseAddress, bytes.count, descriptor)
                }
                guard sent == line.count else {
                    throw HypervisorError(
                        .descriptorPassingFailed,
                        expected: "to send getfd with descriptor \(descriptor) (\(line.count) bytes)",
                        found: sent < 0
                            ? "sendmsg failed: \(String(cString: strerror(errno)))" : "a partial send of \(sent)"
                    )
                }
            }.get()
        } catch {
            // The getfd line may be half-sent: the connection can no longer be trusted. Closing it
            // fails every outstanding command, the getfd included, instead of leaving it orphaned.
            connectionClosed(reason: "descriptor passing failed: \(error)")
            throw error
        }
        try await result(for: id)
    }

    // MARK: - Shell

    private func write(_ bytes: [UInt8]) async throws {
        do {
            try await channel.writeAndFlush(ByteBuffer(bytes: bytes))
        } catch {
            connectionClosed(reason: "write failed: \(error)")
            throw closedError!
        }
    }

    @discardableResult
    private func result(for id: UInt64) async throws -> JSONValue {
        if case .finished(let result) = pending.removeValue(forKey: id) {
            return try result.get()
        }
        return try await withCheckedThrowingContinuation { continuation in
            pending[id] = .waiting(continuation)
        }
    }

    private func receive(_ line: DecodedLine) {
        switch line {
        case .line(let buffer):
            perform(machine.receive(line: buffer.readableBytesView))
        case .overlong(let length):
            perform(
                machine.receiveUnframable(
                    HypervisorError(
                        .messageTooLong,
                        expected: "a QMP line of at most \(Self.maximumLineLength) bytes",
                        found: "\(length) bytes"
                    )
                )
            )
        }
    }

    private func connectionClosed(reason: String) {
        guard closedError == nil else { return }
        perform(machine.close(reason: reason))
        fail(HypervisorError(.connectionClosed, expected: "an open QMP connection", found: reason))
    }

    /// Ends the connection with `error`: waiters for readiness get it, later commands throw it.
    private func fail(_ error: HypervisorError) {
        guard closedError == nil else { return }
        closedError = error
        for waiter in readyWaiters {
            waiter.resume(throwing: error)
        }
        readyWaiters.removeAll()
        eventSink.finish()
        channel.close(promise: nil)
    }

    /// Fails the handshake if QEMU has not become ready within `timeout`.
    private func failUnlessReady(after timeout: Duration) {
        guard greeting == nil else { return }
        fail(
            HypervisorError(
                .connectFailed,
                expected: "a QMP greeting and capability negotiation within \(timeout)",
                found: "none",
                advice: "the peer accepted the connection but does not speak QMP"
            )
        )
    }

    private func perform(_ actions: [QMPProtocol.Action]) {
        for action in actions {
            switch action {
            case .send(let bytes):
                channel.writeAndFlush(ByteBuffer(bytes: bytes), promise: nil)
            case .ready(let greeting):
                self.greeting = greeting
                for waiter in readyWaiters {
                    waiter.resume(returning: greeting)
                }
                readyWaiters.removeAll()
            case .complete(let id, let result):
                if case .waiting(let continuation) = pending.removeValue(forKey: id) {
                    continuation.resume(with: result.mapError { $0 as any Error })
                } else {
                    pending[id] = .finished(result)
                }
            case .event(let event):
                eventSink.yield(event)
            case .violation(let error):
                violations.append(error)
            case .closeConnection(let error):
                fail(error)
            }
        }
    }

    // MARK: - Connecting

    private static func connectUnixSocket(
        path: String,
        timeout: Duration,
        isPeerAlive: @Sendable () -> Bool
    ) async throws -> CInt {
        var address = sockaddr_un()
        address.sun_family = sa_family_t(AF_UNIX)
        let capacity = MemoryLayout.size(ofValue: address.sun_path)
        guard path.utf8.count < capacity else {
            throw HypervisorError(
                .connectFailed,
                expected: "a socket path shorter than \(capacity) bytes",
                found: "\(path.utf8.count) bytes: \(path)",
                advice: "use a shorter runtime directory"
            )
        }
        withUnsafeMutableBytes(of: &address.sun_path) { raw in
            raw.copyBytes(from: path.utf8)
            raw[path.utf8.count] = 0
        }
        let deadline = ContinuousClock.now + timeout
        var lastError = "no attempt"
        while true {
            let descriptor = socket(AF_UNIX, Int32(SOCK_STREAM.rawValue) | Int32(SOCK_CLOEXEC.rawValue), 0)
            guard descriptor >= 0 else {
                throw HypervisorError(
                    .connectFailed,
                    expected: "a unix socket",
                    found: "socket() failed: \(String(cString: strerror(errno)))"
                )
            }
            let result = withUnsafePointer(to: &address) { pointer in
                pointer.withMemoryRebound(to: sockaddr.self, capacity: 1) {
                    connect(descriptor, $0, socklen_t(MemoryLayout<sockaddr_un>.size))
                }
            }
            if result == 0 {
                return descriptor
            }
            let code = errno
            lastError = String(cString: strerror(code))
            close(descriptor)
            guard code == ENOENT || code == ECONNREFUSED else { break }
            guard isPeerAlive(), ContinuousClock.now < deadline else { break }
            try await Task.sleep(for: .milliseconds(20))
        }
        throw HypervisorError(
            .connectFailed,
            expected: "QMP listening on \(path) within \(timeout)",
            found: lastError,
            advice: isPeerAlive() ? "check that QEMU was started with -qmp unix:\(path),server=on" : "QEMU has exited"
        )
    }
}
