import CNovaCronSystem
import NIOCore

/// What the kernel knows about one TCP connection (`TCP_INFO`, read through Linux's own layout:
/// glibc's struct stops before the delivery rate and the limited times).
struct TCPStatistics: Sendable {
    /// The smoothed round-trip time.
    var roundTrip: Duration
    /// Segments retransmitted over the connection's life.
    var retransmits: UInt64
    /// The most recent delivery-rate sample, bytes per second.
    var deliveryRate: Double
    /// Time spent sending (including the two limited times below).
    var busy: Duration
    /// Time the peer's receive window held the sender back.
    var receiveWindowLimited: Duration
    /// Time the local send buffer held the sender back.
    var sendBufferLimited: Duration

    /// Reads the statistics of `channel`'s socket; `nil` for a channel without one (or a kernel that says nothing).
    static func read(_ channel: any Channel) async -> TCPStatistics? {
        guard let provider = channel as? any SocketOptionProvider else { return nil }
        let future: EventLoopFuture<novacron_tcp_info> = provider.unsafeGetSocketOption(
            level: .tcp, name: .tcp_info)
        guard let info = try? await future.get(), info.rtt > 0 else { return nil }
        return TCPStatistics(
            roundTrip: .microseconds(Int64(info.rtt)),
            retransmits: UInt64(info.total_retrans),
            deliveryRate: Double(info.delivery_rate),
            busy: .microseconds(Int64(info.busy_time)),
            receiveWindowLimited: .microseconds(Int64(info.rwnd_limited)),
            sendBufferLimited: .microseconds(Int64(info.sndbuf_limited))
        )
    }
}

extension novacron_tcp_info: @retroactive @unchecked Sendable {}
