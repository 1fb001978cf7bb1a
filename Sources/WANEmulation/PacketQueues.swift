/// A packet the shell owns, named by its slot in the shell's packet pool.
public struct PacketHandle: Sendable, Hashable, CustomStringConvertible {
    /// The slot index in the shell's pool.
    public var slot: Int32

    /// Creates a handle.
    /// - Parameter slot: The slot index in the shell's pool.
    @inlinable
    public init(slot: Int32) {
        self.slot = slot
    }

    /// "#slot".
    public var description: String { "#\(slot)" }
}

/// A packet the engine has scheduled: which pool slot, how big, when it arrived and when it must leave.
public struct ScheduledPacket: Sendable, Hashable {
    /// The shell's pool slot holding the bytes.
    public var handle: PacketHandle
    /// Size in bytes as read from the TUN device.
    public var size: Int32
    /// When the packet arrived at the link.
    public var arrival: LinkInstant
    /// When the packet must leave the link.
    public var departure: LinkInstant

    /// Creates a scheduled packet.
    /// - Parameters:
    ///   - handle: The pool slot.
    ///   - size: Size in bytes.
    ///   - arrival: Arrival instant.
    ///   - departure: Departure instant.
    @inlinable
    public init(handle: PacketHandle, size: Int32, arrival: LinkInstant, departure: LinkInstant) {
        self.handle = handle
        self.size = size
        self.arrival = arrival
        self.departure = departure
    }
}

/// A fixed-capacity FIFO ring; storage is allocated once, so pushing and popping never allocate.
struct FixedRing<Element: Sendable>: Sendable {
    private var storage: [Element]
    private var head = 0
    private(set) var count = 0

    init(capacity: Int, filler: Element) {
        storage = Array(repeating: filler, count: max(capacity, 1))
    }

    var capacity: Int { storage.count }
    var isFull: Bool { count == storage.count }
    var isEmpty: Bool { count == 0 }

    var first: Element? {
        count == 0 ? nil : storage[head]
    }

    mutating func append(_ element: Element) {
        precondition(count < storage.count, "FixedRing overflow: capacity \(storage.count)")
        var index = head + count
        if index >= storage.count { index -= storage.count }
        storage[index] = element
        count += 1
    }

    mutating func removeFirst() -> Element {
        precondition(count > 0, "FixedRing underflow")
        let element = storage[head]
        head += 1
        if head == storage.count { head = 0 }
        count -= 1
        return element
    }
}

/// A fixed-capacity binary min-heap ordered by departure, ties broken by arrival order; used when jitter may reorder.
struct DepartureHeap: Sendable {
    private struct Entry: Sendable {
        var packet: ScheduledPacket
        var sequence: UInt64

        func precedes(_ other: Entry) -> Bool {
            packet.departure != other.packet.departure
                ? packet.departure < other.packet.departure : sequence < other.sequence
        }
    }

    private var storage: [Entry]
    private(set) var count = 0
    private var nextSequence: UInt64 = 0

    init(capacity: Int) {
        let filler = ScheduledPacket(handle: PacketHandle(slot: -1), size: 0, arrival: .zero, departure: .zero)
        storage = Array(repeating: Entry(packet: filler, sequence: 0), count: max(capacity, 1))
    }

    var isFull: Bool { count == storage.count }
    var first: ScheduledPacket? { count == 0 ? nil : storage[0].packet }

    mutating func insert(_ packet: ScheduledPacket) {
        precondition(count < storage.count, "DepartureHeap overflow: capacity \(storage.count)")
        var index = count
        let entry = Entry(packet: packet, sequence: nextSequence)
        nextSequence &+= 1
        count += 1
        while index > 0 {
            let parent = (index - 1) / 2
            guard entry.precedes(storage[parent]) else { break }
            storage[index] = storage[parent]
            index = parent
        }
        storage[index] = entry
    }

    mutating func removeFirst() -> ScheduledPacket {
        precondition(count > 0, "DepartureHeap underflow")
        let top = storage[0].packet
        count -= 1
        guard count > 0 else { return top }
        let last = storage[count]
        var index = 0
        while true {
            let left = 2 * index + 1
            guard left < count else { break }
            let right = left + 1
            let child = right < count && storage[right].precedes(storage[left]) ? right : left
            guard storage[child].precedes(last) else { break }
            storage[index] = storage[child]
            index = child
        }
        storage[index] = last
        return top
    }
}
