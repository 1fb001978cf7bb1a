import Foundation
import Glibc
import Synchronization
import WANEmulation

/// Slots for packet bytes, allocated once; the engine refers to a packet by its slot index.
struct PacketPool: ~Copyable {
    let slotSize: Int
    let capacity: Int
    private let storage: UnsafeMutableRawPointer
    private let freeSlots: UnsafeMutablePointer<Int32>
    private var freeCount: Int

    init(capacity: Int, slotSize: Int) {
        self.capacity = capacity
        self.slotSize = slotSize
        storage = UnsafeMutableRawPointer.allocate(byteCount: capacity * slotSize, alignment: 64)
        freeSlots = UnsafeMutablePointer<Int32>.allocate(capacity: capacity)
        for index in 0..<capacity { freeSlots[index] = Int32(capacity - 1 - index) }
        freeCount = capacity
    }

    deinit {
        storage.deallocate()
        freeSlots.deallocate()
    }

    mutating func allocate() -> PacketHandle? {
        guard freeCount > 0 else { return nil }
        freeCount -= 1
        return PacketHandle(slot: freeSlots[freeCount])
    }

    mutating func release(_ handle: PacketHandle) {
        precondition(freeCount < capacity, "packet pool double release of \(handle)")
        freeSlots[freeCount] = handle.slot
        freeCount += 1
    }

    func buffer(_ handle: PacketHandle) -> UnsafeMutableRawPointer {
        storage + Int(handle.slot) * slotSize
    }
}

/// What one direction reported last: the engine's counters and verdict plus the shell's own counts.
struct DirectionSnapshot: Sendable {
    var counters = LinkCounters()
    var capacity = 0
    var isOverloaded = false
    var overloadReasons: [String] = []
    var writeErrors: UInt64 = 0
    var truncatedReads: UInt64 = 0
}

/// Why the forwarder stopped.
enum StopReason: String, Sendable {
    case signal
    case duration
    case deviceError = "device error"
}

private typealias PPollFunction =
    @convention(c) (
        UnsafeMutablePointer<pollfd>?, nfds_t, UnsafePointer<timespec>?, UnsafePointer<sigset_t>?
    ) -> Int32

/// `prctl(option, arg2, arg3, arg4, arg5)`; Swift's Glibc module does not import the variadic C declaration.
private typealias PrctlFunction = @convention(c) (Int32, UInt, UInt, UInt, UInt) -> Int32

/// Sets the calling thread's timer slack to 1 ns (default 50 us), so `ppoll` timeouts end when asked.
private func minimiseTimerSlack() {
    let setTimerSlack: Int32 = 29  // PR_SET_TIMERSLACK
    guard let symbol = dlsym(nil, "prctl") else { return }
    _ = unsafeBitCast(symbol, to: PrctlFunction.self)(setTimerSlack, 1, 0, 0, 0)
}

/// State the direction threads and the controlling thread share.
final class ForwarderControl: Sendable {
    let stop = Atomic<Bool>(false)
    let failed = Atomic<Bool>(false)
    let finishedThreads = Atomic<Int>(0)
    let snapshots = Mutex<[LinkDirection: DirectionSnapshot]>([:])
    /// The instant all directions measure from (CLOCK_MONOTONIC nanoseconds).
    let origin: UInt64

    init(origin: UInt64) {
        self.origin = origin
    }
}

/// One direction's I/O loop on its own thread: reads packets from the input TUN device in batches, asks the engine
/// what to do with them, and writes them to the output device when the engine says they are due. No allocation per
/// packet. The two directions share nothing but the stop flag, so each can have a core.
struct DirectionForwarder: ~Copyable {
    private var engine: LinkEmulator
    private var pool: PacketPool
    private let direction: LinkDirection
    private let input: Int32
    private let output: Int32
    private let control: ForwarderControl
    private let scratch: UnsafeMutableRawPointer
    private let ppoll: PPollFunction
    private var writeErrors: UInt64 = 0
    private var truncatedReads: UInt64 = 0
    private static let batchSize = 64

    /// Slot size: the TUN MTU (1500) plus room to detect oversized reads.
    static let slotSize = 2048

    init(
        engine: LinkEmulator,
        direction: LinkDirection,
        input: Int32,
        output: Int32,
        control: ForwarderControl
    ) throws {
        guard let symbol = dlsym(nil, "ppoll") else {
            throw ShellError(step: "forwarder", reason: "ppoll not found in libc")
        }
        ppoll = unsafeBitCast(symbol, to: PPollFunction.self)
        self.engine = engine
        self.direction = direction
        self.input = input
        self.output = output
        self.control = control
        pool = PacketPool(capacity: engine.capacity, slotSize: Self.slotSize)
        scratch = UnsafeMutableRawPointer.allocate(byteCount: Self.slotSize, alignment: 64)
    }

    deinit {
        scratch.deallocate()
    }

    private func now() -> LinkInstant {
        LinkInstant(nanoseconds: monotonicNanoseconds() - control.origin)
    }

    private func snapshot() -> DirectionSnapshot {
        DirectionSnapshot(
            counters: engine.counters, capacity: engine.capacity, isOverloaded: engine.isOverloaded,
            overloadReasons: engine.overloadReasons, writeErrors: writeErrors, truncatedReads: truncatedReads)
    }

    private func publish() {
        let snapshot = snapshot()
        let direction = direction
        control.snapshots.withLock { $0[direction] = snapshot }
    }

    /// Forwards until the control's stop flag is set or a device fails, then publishes the final snapshot.
    mutating func run() {
        minimiseTimerSlack()
        var descriptor = pollfd(fd: input, events: Int16(POLLIN), revents: 0)
        let publishInterval: UInt64 = 250_000_000
        var nextPublish = now().nanoseconds + publishInterval
        let maximumSleep: UInt64 = 10_000_000
        while !control.stop.load(ordering: .relaxed) {
            transmitDue()
            guard receive() else {
                control.failed.store(true, ordering: .relaxed)
                break
            }
            transmitDue()
            let current = now().nanoseconds
            if current >= nextPublish {
                nextPublish = current + publishInterval
                publish()
            }
            var sleep = maximumSleep
            if let next = engine.nextDeparture {
                sleep = next.nanoseconds > current ? min(next.nanoseconds - current, maximumSleep) : 0
            }
            if sleep > 0 {
                var timeout = timespec(tv_sec: Int(sleep / 1_000_000_000), tv_nsec: Int(sleep % 1_000_000_000))
                _ = ppoll(&descriptor, 1, &timeout, nil)
                if descriptor.revents & Int16(POLLERR | POLLHUP | POLLNVAL) != 0 {
                    control.failed.store(true, ordering: .relaxed)
                    break
                }
            }
        }
        publish()
    }

    private mutating func transmitDue() {
        var instant = now()
        while let packet = engine.dequeue(readyAt: instant) {
            if write(output, pool.buffer(packet.handle), Int(packet.size)) < 0 { writeErrors += 1 }
            instant = now()
            engine.recordTransmission(of: packet, at: instant)
            pool.release(packet.handle)
        }
    }

    /// Reads up to a batch of packets; returns false when the device failed.
    private mutating func receive() -> Bool {
        for _ in 0..<Self.batchSize {
            let handle = pool.allocate()
            let buffer = handle.map { pool.buffer($0) } ?? scratch
            let count = read(input, buffer, Self.slotSize)
            if count <= 0 {
                if let handle { pool.release(handle) }
                if count < 0 && errno != EAGAIN && errno != EINTR { return false }
                return true
            }
            if count >= Self.slotSize { truncatedReads += 1 }
            let decision = engine.enqueue(handle ?? PacketHandle(slot: -1), size: min(count, 65_535), at: now())
            if let handle, !decision.isScheduled { pool.release(handle) }
        }
        return true
    }
}

/// Runs both directions on their own threads and waits for a stop signal, the duration, or a device failure.
enum Forwarder {
    /// Forwards until SIGINT/SIGTERM/SIGHUP (which the caller MUST have blocked), `duration`, or a device error.
    /// - Parameters:
    ///   - link: Both directions' engines.
    ///   - descriptorA: Side a's TUN device.
    ///   - descriptorB: Side b's TUN device.
    ///   - duration: Stop after this many nanoseconds (nil: until a signal).
    ///   - onTick: Called about every half second with the latest snapshots (status file).
    /// - Returns: Why it stopped, the final snapshots and the elapsed nanoseconds.
    static func run(
        link: WANLink,
        descriptorA: Int32,
        descriptorB: Int32,
        duration: UInt64?,
        onTick: ([LinkDirection: DirectionSnapshot], UInt64) -> Void
    ) throws -> (reason: StopReason, snapshots: [LinkDirection: DirectionSnapshot], elapsed: UInt64) {
        let control = ForwarderControl(origin: monotonicNanoseconds())
        let uplink = try DirectionForwarder(
            engine: link.uplink, direction: .uplink, input: descriptorA, output: descriptorB, control: control)
        let downlink = try DirectionForwarder(
            engine: link.downlink, direction: .downlink, input: descriptorB, output: descriptorA, control: control)
        start(uplink, control: control, name: "wanem-uplink")
        start(downlink, control: control, name: "wanem-downlink")

        var stopSignals = sigset_t()
        sigemptyset(&stopSignals)
        for signal in [SIGINT, SIGTERM, SIGHUP] { sigaddset(&stopSignals, signal) }
        var reason = StopReason.signal
        var nextTick = monotonicNanoseconds() + 500_000_000
        while true {
            var wait = timespec(tv_sec: 0, tv_nsec: 100_000_000)
            if sigtimedwait(&stopSignals, nil, &wait) > 0 {
                reason = .signal
                break
            }
            let elapsed = monotonicNanoseconds() - control.origin
            if control.failed.load(ordering: .relaxed) {
                reason = .deviceError
                break
            }
            if let duration, elapsed >= duration {
                reason = .duration
                break
            }
            if monotonicNanoseconds() >= nextTick {
                nextTick += 500_000_000
                onTick(control.snapshots.withLock { $0 }, elapsed)
            }
        }
        control.stop.store(true, ordering: .relaxed)
        while control.finishedThreads.load(ordering: .acquiring) < 2 { sleepMilliseconds(5) }
        return (reason, control.snapshots.withLock { $0 }, monotonicNanoseconds() - control.origin)
    }

    private static func start(_ forwarder: consuming DirectionForwarder, control: ForwarderControl, name: String) {
        // A ~Copyable value cannot be captured by an escaping closure: hand it over through a box.
        let box = ForwarderBox(forwarder)
        let thread = Thread {
            box.run()
            control.finishedThreads.add(1, ordering: .releasing)
        }
        thread.name = name
        thread.start()
    }
}

/// Carries a direction's forwarder into its thread (used by exactly one thread, so it is never shared).
private final class ForwarderBox: @unchecked Sendable {
    private var forwarder: DirectionForwarder?

    init(_ forwarder: consuming DirectionForwarder) {
        self.forwarder = consume forwarder
    }

    func run() {
        if var forwarder = forwarder.take() {
            forwarder.run()
        }
    }
}

/// How many packets a direction may hold: twice what its rate carries through delay, jitter and the queue bound,
/// in 1500-byte packets, plus room for small packets; between 4096 and 262144.
func descriptorCapacity(for configuration: LinkConfiguration) -> Int {
    func seconds(_ duration: Duration) -> Double {
        Double(duration.components.seconds) + Double(duration.components.attoseconds) / 1e18
    }
    let bitsPerSecond: Double
    switch configuration.rate {
    case .bitsPerSecond(let bits): bitsPerSecond = Double(bits)
    case .trace: bitsPerSecond = configuration.rate.averageBitsPerSecond * 4
    }
    var holdSeconds = seconds(configuration.oneWayDelay) + seconds(configuration.jitter)
    switch configuration.queueLimit {
    case .duration(let limit): holdSeconds += seconds(limit)
    case .bytes(let bytes): holdSeconds += Double(bytes) * 8 / bitsPerSecond
    case .unlimited: return 262_144
    }
    let packets = bitsPerSecond * holdSeconds / 8 / 1500 * 2 + 4096
    return Int(min(max(packets, 4096), 262_144))
}
