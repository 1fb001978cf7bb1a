import Foundation
import WANEmulation

/// The outcome of driving one direction with a list of arrivals in virtual time.
struct VirtualRun {
    var decisions: [EnqueueDecision] = []
    var delivered: [ScheduledPacket] = []

    var scheduledCount: Int { decisions.filter(\.isScheduled).count }
    var droppedByQueueCount: Int { decisions.filter { $0 == .droppedByQueue }.count }
    var droppedByLossCount: Int { decisions.filter { $0 == .droppedByLoss }.count }

    /// The rate at which packets left during `window` (departure instants in nanoseconds), in bits per second:
    /// the bytes of every packet that left in the window after the first one, over the time from the first
    /// departure in the window to the last.
    func deliveredBitsPerSecond(in window: ClosedRange<UInt64>) -> Double {
        let inWindow = delivered.filter { window.contains($0.departure.nanoseconds) }
        guard let first = inWindow.first, let last = inWindow.last, last.departure > first.departure else { return 0 }
        let bytes = inWindow.dropFirst().reduce(0) { $0 + Int($1.size) }
        return Double(bytes) * 8 / (Double(last.departure.nanoseconds - first.departure.nanoseconds) / 1e9)
    }
}

/// Drives `link` as the shell would: before each arrival, every packet due is dequeued (and reported as sent on
/// time); after the last arrival everything left is dequeued at its departure. The handle of arrival `i` is `i`.
func drive(_ link: inout LinkEmulator, arrivals: some Sequence<(LinkInstant, Int)>) -> VirtualRun {
    var result = VirtualRun()
    var sequence: Int32 = 0
    for (instant, size) in arrivals {
        while let packet = link.dequeue(readyAt: instant) {
            link.recordTransmission(of: packet, at: packet.departure)
            result.delivered.append(packet)
        }
        result.decisions.append(link.enqueue(PacketHandle(slot: sequence), size: size, at: instant))
        sequence += 1
    }
    while let next = link.nextDeparture, let packet = link.dequeue(readyAt: next) {
        link.recordTransmission(of: packet, at: packet.departure)
        result.delivered.append(packet)
    }
    return result
}

/// Arrivals of `size`-byte packets every `intervalNanoseconds` from 0 for `count` packets.
func periodicArrivals(count: Int, size: Int, intervalNanoseconds: UInt64) -> [(LinkInstant, Int)] {
    (0..<count).map { (LinkInstant(nanoseconds: UInt64($0) * intervalNanoseconds), size) }
}

/// Finds a file of the shared data set (`../shared/data/...` beside the package root), or nil when absent.
func sharedDataFile(_ relativePath: String, testFile: String = #filePath) -> URL? {
    var candidates: [URL] = []
    let packageRoot = URL(fileURLWithPath: testFile).deletingLastPathComponent().deletingLastPathComponent()
        .deletingLastPathComponent()
    candidates.append(packageRoot.appendingPathComponent("../shared/data").appendingPathComponent(relativePath))
    let current = URL(fileURLWithPath: FileManager.default.currentDirectoryPath)
    candidates.append(current.appendingPathComponent("../shared/data").appendingPathComponent(relativePath))
    return candidates.first { FileManager.default.fileExists(atPath: $0.path) }?.standardizedFileURL
}

/// A symmetric configuration with a constant rate.
func constantLink(
    megabits: Double,
    oneWayDelayMilliseconds: Double = 0,
    jitterMilliseconds: Double = 0,
    allowsReordering: Bool = false,
    queue: QueueLimit = .unlimited,
    loss: LossModel = .none
) -> LinkConfiguration {
    LinkConfiguration(
        rate: .bitsPerSecond(UInt64(megabits * 1_000_000)),
        oneWayDelay: .nanoseconds(Int64(oneWayDelayMilliseconds * 1_000_000)),
        jitter: .nanoseconds(Int64(jitterMilliseconds * 1_000_000)),
        allowsReordering: allowsReordering,
        queueLimit: queue,
        loss: loss)
}
