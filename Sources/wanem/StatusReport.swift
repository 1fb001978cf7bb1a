import Foundation
import WANEmulation

/// The JSON a running or finished link reports: counters per direction and the validity verdict.
enum StatusReport {
    static func direction(_ snapshot: DirectionSnapshot, elapsedSeconds: Double) -> [String: Any] {
        let counters = snapshot.counters
        let delay = counters.queueDelay
        return [
            "arrived_packets": counters.arrivedPackets,
            "arrived_bytes": counters.arrivedBytes,
            "forwarded_packets": counters.forwardedPackets,
            "forwarded_bytes": counters.forwardedBytes,
            "forwarded_mbit_per_s": elapsedSeconds > 0 ? Double(counters.forwardedBytes) * 8 / elapsedSeconds / 1e6 : 0,
            "dropped_loss_packets": counters.droppedByLossPackets,
            "dropped_loss_bytes": counters.droppedByLossBytes,
            "dropped_queue_packets": counters.droppedByQueuePackets,
            "dropped_queue_bytes": counters.droppedByQueueBytes,
            "dropped_capacity_packets": counters.droppedByCapacityPackets,
            "transmitted_packets": counters.transmittedPackets,
            "late_packets": counters.latePackets,
            "late_fraction": counters.lateFraction,
            "max_lateness_ms": Double(counters.maximumLatenessNanoseconds) / 1e6,
            "mean_lateness_ms": counters.transmittedPackets == 0
                ? 0 : Double(counters.totalLatenessNanoseconds) / Double(counters.transmittedPackets) / 1e6,
            "queue_delay_p50_ms": Double(delay.percentileNanoseconds(0.5)) / 1e6,
            "queue_delay_p99_ms": Double(delay.percentileNanoseconds(0.99)) / 1e6,
            "queue_delay_max_ms": Double(delay.maximumNanoseconds) / 1e6,
            "write_errors": snapshot.writeErrors,
            "truncated_reads": snapshot.truncatedReads,
            "descriptor_capacity": snapshot.capacity,
            "overloaded": snapshot.isOverloaded,
            "overload_reasons": snapshot.overloadReasons,
        ]
    }

    static func make(
        name: String,
        snapshots: [LinkDirection: DirectionSnapshot],
        elapsedNanoseconds: UInt64,
        running: Bool,
        stopReason: StopReason?
    ) -> [String: Any] {
        let elapsed = Double(elapsedNanoseconds) / 1e9
        var usage = rusage()
        getrusage(__rusage_who_t(RUSAGE_SELF.rawValue), &usage)
        let cpuSeconds =
            Double(usage.ru_utime.tv_sec) + Double(usage.ru_utime.tv_usec) / 1e6
            + Double(usage.ru_stime.tv_sec) + Double(usage.ru_stime.tv_usec) / 1e6
        let uplink = snapshots[.uplink] ?? DirectionSnapshot()
        let downlink = snapshots[.downlink] ?? DirectionSnapshot()
        var report: [String: Any] = [
            "name": name,
            "pid": Int(getpid()),
            "running": running,
            "elapsed_seconds": elapsed,
            "cpu_seconds": cpuSeconds,
            "valid": !uplink.isOverloaded && !downlink.isOverloaded,
            "uplink": direction(uplink, elapsedSeconds: elapsed),
            "downlink": direction(downlink, elapsedSeconds: elapsed),
        ]
        if let stopReason { report["stop_reason"] = stopReason.rawValue }
        return report
    }

    static func write(_ report: [String: Any], to path: String) {
        guard
            let data = try? JSONSerialization.data(
                withJSONObject: report, options: [.prettyPrinted, .sortedKeys])
        else { return }
        let temporary = path + ".tmp"
        if FileManager.default.createFile(atPath: temporary, contents: data) {
            _ = rename(temporary, path)
        }
    }
}
