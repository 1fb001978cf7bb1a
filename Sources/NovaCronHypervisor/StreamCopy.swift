import Foundation
import NIOPosix

#if canImport(Glibc)
    import Glibc
#endif

/// Blocking copies between descriptors, run on NIO's thread pool so no event loop or task blocks, and the
/// socket pairs they run between.
public enum StreamCopy {
    /// Copies from `source` until end of file into `destination`, then shuts down `destination`'s
    /// writing side if it is a socket. Returns the bytes copied. Neither descriptor is closed.
    static func copy(from source: CInt, to destination: CInt, what: String) async throws -> Int {
        try await NIOThreadPool.singleton.runIfActive {
            var buffer = [UInt8](repeating: 0, count: 1 << 20)
            var total = 0
            while true {
                let count = buffer.withUnsafeMutableBytes { read(source, $0.baseAddress, $0.count) }
                if count == 0 { break }
                if count < 0 {
                    if errno == EINTR { continue }
                    throw HypervisorError(
                        .streamFailed,
                        expected: "to read \(what)",
                        found: "read failed after \(total) bytes: \(String(cString: strerror(errno)))"
                    )
                }
                var offset = 0
                while offset < count {
                    let written = buffer.withUnsafeBytes {
                        write(destination, $0.baseAddress! + offset, count - offset)
                    }
                    if written < 0 {
                        if errno == EINTR { continue }
                        throw HypervisorError(
                            .streamFailed,
                            expected: "to write \(what)",
                            found: "write failed after \(total + offset) bytes: \(String(cString: strerror(errno)))"
                        )
                    }
                    offset += written
                }
                total += count
            }
            _ = shutdown(destination, Int32(SHUT_WR))
            return total
        }
    }

    /// A connected pair of unix stream sockets, close-on-exec: one end for NovaCron, the other for QEMU
    /// (`migrate fd:` / `migrate-incoming fd:` after ``QMPClient/passDescriptor(_:named:)``).
    /// - Throws: ``HypervisorError/Code/streamFailed``.
    public static func socketPair() throws -> (CInt, CInt) {
        var descriptors: [CInt] = [-1, -1]
        guard socketpair(AF_UNIX, Int32(SOCK_STREAM.rawValue) | Int32(SOCK_CLOEXEC.rawValue), 0, &descriptors) == 0
        else {
            throw HypervisorError(
                .streamFailed,
                expected: "a socket pair",
                found: "socketpair failed: \(String(cString: strerror(errno)))"
            )
        }
        return (descriptors[0], descriptors[1])
    }
}
