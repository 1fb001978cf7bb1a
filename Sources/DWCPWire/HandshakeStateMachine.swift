import NIOCore

/// Negotiates the protocol version at the start of a DWCP connection.
///
/// Sans-IO: it consumes frames and returns what to send and what was decided; the caller does the
/// I/O. The client sends a ``HandshakeMessage/Hello`` listing the versions it speaks; the server answers
/// with a ``HandshakeMessage/Accept`` naming the highest version both speak, or with a
/// ``HandshakeMessage/Reject`` saying why not. Handshake frames always use ``DWCPFrame/baseVersion``
/// headers so that peers of different versions can read them.
///
/// ```
/// client                          server
///   | hello(min...max, name) ------> |
///   | <------ accept(version, name)  |   highest common version
///   | <------ reject(min...max, why) |   no common version, or a malformed hello
/// ```
public struct HandshakeStateMachine: Sendable {
    /// Which side of the connection this machine plays.
    public enum Role: Hashable, Sendable {
        /// Sends the hello.
        case client
        /// Answers it.
        case server
    }

    /// What a completed handshake decided.
    public struct Outcome: Hashable, Sendable {
        /// The version both sides use from now on.
        public var version: UInt8
        /// The peer's node name.
        public var peerName: String
        /// The session id the client chose.
        public var sessionID: UInt64
    }

    /// What the caller must do after an event.
    public enum Action: Sendable {
        /// Send this frame and wait for the answer.
        case send(DWCPFrame)
        /// Send this frame; the handshake is complete.
        case sendAndEstablish(DWCPFrame, Outcome)
        /// The handshake is complete.
        case establish(Outcome)
        /// Send this frame (a reject), then close: the handshake failed.
        case sendAndFail(DWCPFrame, DWCPWireError)
        /// Close: the handshake failed.
        case fail(DWCPWireError)
    }

    private enum State: Sendable {
        case idle
        case awaitingAccept
        case awaitingHello
        case established(Outcome)
        case failed(DWCPWireError)
    }

    /// This machine's role.
    public let role: Role
    /// The versions this side speaks.
    public let versions: ClosedRange<UInt8>
    /// This side's node name.
    public let nodeName: String
    private let sessionID: UInt64
    private var state: State

    /// Creates the client side.
    /// - Parameters:
    ///   - nodeName: This node's name.
    ///   - sessionID: The session id to propose (chosen by the caller, e.g. at random).
    ///   - versions: The versions this side speaks.
    public static func client(
        nodeName: String,
        sessionID: UInt64,
        versions: ClosedRange<UInt8> = DWCPFrame.supportedVersions
    ) -> HandshakeStateMachine {
        HandshakeStateMachine(role: .client, versions: versions, nodeName: nodeName, sessionID: sessionID)
    }

    /// Creates the server side.
    /// - Parameters:
    ///   - nodeName: This node's name.
    ///   - versions: The versions this side speaks.
    public static func server(
        nodeName: String,
        versions: ClosedRange<UInt8> = DWCPFrame.supportedVersions
    ) -> HandshakeStateMachine {
        HandshakeStateMachine(role: .server, versions: versions, nodeName: nodeName, sessionID: 0)
    }

    private init(role: Role, versions: ClosedRange<UInt8>, nodeName: String, sessionID: UInt64) {
        self.role = role
        self.versions = versions
        self.nodeName = nodeName
        self.sessionID = sessionID
        self.state = role == .client ? .idle : .awaitingHello
    }

    /// The outcome, once the handshake has completed.
    public var outcome: Outcome? {
        if case .established(let outcome) = state { return outcome }
        return nil
    }

    /// Starts a client handshake.
    /// - Returns: The hello frame to send.
    public mutating func start() -> DWCPFrame {
        guard role == .client, case .idle = state else {
            preconditionFailure("HandshakeStateMachine.start() is for a client that has not started; state: \(state)")
        }
        state = .awaitingAccept
        var payload = ByteBuffer()
        HandshakeMessage.Hello(versions: versions, nodeName: nodeName).encode(into: &payload)
        return frame(.hello, sessionID: sessionID, payload: payload)
    }

    /// Feeds a frame received from the peer.
    /// - Parameter frame: The frame.
    /// - Returns: What to do next.
    public mutating func receive(_ frame: DWCPFrame) -> Action {
        switch state {
        case .awaitingHello:
            return receiveAsServer(frame)
        case .awaitingAccept:
            return receiveAsClient(frame)
        case .idle, .established, .failed:
            preconditionFailure("HandshakeStateMachine received a \(frame.type) frame in state \(state)")
        }
    }

    private mutating func receiveAsServer(_ frame: DWCPFrame) -> Action {
        let hello: HandshakeMessage.Hello
        do throws(DWCPWireError) {
            guard frame.type == .hello else {
                throw DWCPWireError(.unexpectedFrame, expected: "a hello frame", found: "a \(frame.type) frame")
            }
            hello = try HandshakeMessage.Hello(decoding: frame.payload)
        } catch {
            return reject(sessionID: frame.sessionID, reason: error.description, error: error)
        }
        guard let version = Self.highestCommonVersion(versions, hello.versions) else {
            let error = DWCPWireError(
                .noCommonVersion,
                expected: "a version in \(versions.describedAsVersions)",
                found: "peer '\(hello.nodeName)' speaking \(hello.versions.describedAsVersions)",
                advice: "upgrade the older node"
            )
            return reject(sessionID: frame.sessionID, reason: error.description, error: error)
        }
        let outcome = Outcome(version: version, peerName: hello.nodeName, sessionID: frame.sessionID)
        state = .established(outcome)
        var payload = ByteBuffer()
        HandshakeMessage.Accept(version: version, nodeName: nodeName).encode(into: &payload)
        return .sendAndEstablish(self.frame(.helloAccept, sessionID: frame.sessionID, payload: payload), outcome)
    }

    private mutating func receiveAsClient(_ frame: DWCPFrame) -> Action {
        do throws(DWCPWireError) {
            switch frame.type {
            case .helloAccept:
                let accept = try HandshakeMessage.Accept(decoding: frame.payload)
                guard versions.contains(accept.version) else {
                    throw DWCPWireError(
                        .noCommonVersion,
                        expected: "an accepted version in \(versions.describedAsVersions)",
                        found: "version \(accept.version) from '\(accept.nodeName)'"
                    )
                }
                let outcome = Outcome(version: accept.version, peerName: accept.nodeName, sessionID: sessionID)
                state = .established(outcome)
                return .establish(outcome)
            case .helloReject:
                let reject = try HandshakeMessage.Reject(decoding: frame.payload)
                throw DWCPWireError(
                    .rejectedByPeer,
                    expected: "an accept",
                    found: "a rejection from a peer speaking \(reject.versions.describedAsVersions): \(reject.reason)"
                )
            default:
                throw DWCPWireError(
                    .unexpectedFrame,
                    expected: "an accept or reject frame",
                    found: "a \(frame.type) frame"
                )
            }
        } catch {
            state = .failed(error)
            return .fail(error)
        }
    }

    private mutating func reject(sessionID: UInt64, reason: String, error: DWCPWireError) -> Action {
        state = .failed(error)
        var payload = ByteBuffer()
        HandshakeMessage.Reject(versions: versions, reason: reason).encode(into: &payload)
        return .sendAndFail(frame(.helloReject, sessionID: sessionID, payload: payload), error)
    }

    private func frame(_ type: DWCPFrame.FrameType, sessionID: UInt64, payload: ByteBuffer) -> DWCPFrame {
        DWCPFrame(version: DWCPFrame.baseVersion, type: type, sessionID: sessionID, sequence: 0, payload: payload)
    }

    /// The highest version in both ranges, if they overlap.
    /// - Parameters:
    ///   - ours: The versions one side speaks.
    ///   - theirs: The versions the other side speaks.
    /// - Returns: The highest common version, or `nil`.
    public static func highestCommonVersion(_ ours: ClosedRange<UInt8>, _ theirs: ClosedRange<UInt8>) -> UInt8? {
        let low = max(ours.lowerBound, theirs.lowerBound)
        let high = min(ours.upperBound, theirs.upperBound)
        return low <= high ? high : nil
    }
}
