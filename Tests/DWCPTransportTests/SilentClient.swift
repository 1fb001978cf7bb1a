import Foundation

/// A TCP client that connects and says nothing, as a stuck or hostile peer would.
final class SilentClient: Sendable {
    let descriptor: Int32

    /// Connects to `127.0.0.1:port`.
    init?(port: Int) {
        descriptor = socket(AF_INET, Int32(SOCK_STREAM.rawValue), 0)
        guard descriptor >= 0 else { return nil }
        var address = Self.loopback(port: port)
        let connected = withUnsafePointer(to: &address) {
            $0.withMemoryRebound(to: sockaddr.self, capacity: 1) {
                connect(descriptor, $0, socklen_t(MemoryLayout<sockaddr_in>.size)) == 0
            }
        }
        guard connected else { return nil }  // deinit closes the socket
    }

    deinit { close(descriptor) }

    /// `127.0.0.1:port` as a socket address (port 0: any free port, for a listener).
    static func loopback(port: Int) -> sockaddr_in {
        var address = sockaddr_in()
        address.sin_family = sa_family_t(AF_INET)
        address.sin_port = UInt16(port).bigEndian
        address.sin_addr.s_addr = inet_addr("127.0.0.1")
        return address
    }

    /// Waits, on a thread of its own, until the peer closes the connection or `limit` passes.
    /// - Returns: Whether the peer closed it (end of stream or a reset) within `limit`.
    func closedByPeer(within limit: Duration) async -> Bool {
        let descriptor = self.descriptor
        return await withCheckedContinuation { continuation in
            Thread.detachNewThread {
                var timeout = timeval(tv_sec: Int(limit.components.seconds), tv_usec: 0)
                setsockopt(descriptor, SOL_SOCKET, SO_RCVTIMEO, &timeout, socklen_t(MemoryLayout<timeval>.size))
                var byte: UInt8 = 0
                let count = recv(descriptor, &byte, 1, 0)
                continuation.resume(returning: count == 0 || (count < 0 && errno == ECONNRESET))
            }
        }
    }
}
