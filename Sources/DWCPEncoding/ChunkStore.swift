#if canImport(Glibc)
    import Glibc
#elseif canImport(Darwin)
    import Darwin
#endif

/// The receiver's persistent, crash-safe, content-addressed chunk store (HDE stage 5): chunks survive across
/// transfers, so a second migration, a checkpoint or a VM built from a common base image sends only what changed.
///
/// Chunks are keyed by ``ChunkKey`` (SHA-256 of the content, computed here, never taken from the peer) and kept in
/// an append-only log of numbered segment files in one directory. Each record is an 80-byte header (magic, length,
/// key, XXH3-128 identity, data checksum, header checksum) followed by the data. The index (key → segment, offset,
/// length) lives in memory and is rebuilt by scanning the segments when the store is opened:
///
/// - **Crash safety.** Records are only appended (gathered into `pwrite`s of up to 1 MiB), never overwritten. On
///   open a record is indexed only if its header checksum holds and, in the newest segment (the only one written
///   since its last `fsync`), its data checksum too. A write torn by a crash is therefore never addressable: the
///   torn tail is cut off and appends continue after the last whole record. Older segments were `fsync`ed when
///   they were sealed.
/// - **Bit rot.** Every read checks the data checksum and throws ``EncodingError/Code/checksumMismatch`` rather
///   than serve bad bytes; the chunk is then dropped from the index, so the sender is asked for it again.
/// - **Durability** is explicit: ``sync()`` writes the buffered records and `fsync`s the newest segment (and the
///   directory after segments were created or deleted). Chunks put since the last ``sync()`` may be lost by a
///   crash or power failure, never corrupted.
/// - **Size cap.** When the segments exceed ``Configuration/capacity`` the oldest segment is deleted; chunks in it
///   that were used (read, or put again) since they were written are first appended anew — a second-chance (CLOCK)
///   approximation of LRU — up to half of that segment's size, most recently used first.
///
/// The store implements ``KnownChunks`` and ``ChunkProvider`` by its SHA-256 keys, so ``ImageDecoder`` resolves
/// `known` records (image stream version 2) from it. It is a non-`Sendable` class that owns file descriptors:
/// confine it to one thread or actor.
public final class PersistentChunkStore: KnownChunks, ChunkProvider {
    /// Segment size and total size cap.
    public struct Configuration: Sendable, Hashable {
        /// A segment is sealed once the next record would take it past this many bytes; default 64 MiB.
        public var segmentCapacity: Int
        /// The most bytes all segments may take on disk before the oldest are evicted; default 16 GiB. At least
        /// twice ``segmentCapacity``.
        public var capacity: Int

        /// Creates a configuration.
        /// - Parameters:
        ///   - segmentCapacity: The size of a segment, 4 KiB...1 GiB.
        ///   - capacity: The size cap of the store, at least twice `segmentCapacity`.
        public init(segmentCapacity: Int = 64 << 20, capacity: Int = 16 << 30) {
            self.segmentCapacity = segmentCapacity
            self.capacity = capacity
        }

        /// The largest chunk the store accepts: one record fills a segment.
        public var maximumChunkLength: Int { segmentCapacity - ChunkRecord.headerLength }
    }

    /// What opening the store found on disk.
    public struct RecoveryReport: Sendable, Hashable {
        /// Segment files found.
        public var segments = 0
        /// Chunks indexed.
        public var chunks = 0
        /// Bytes cut off segment tails: records torn by a crash, or following a damaged header.
        public var truncatedBytes = 0
        /// Records whose header held but whose data failed its checksum; they are not indexed.
        public var corruptRecords = 0
    }

    /// Counters since the store was opened.
    public struct Statistics: Sendable, Hashable {
        /// Chunks held.
        public var chunks = 0
        /// Bytes the segment files take on disk (headers and superseded records included).
        public var size = 0
        /// Segments deleted by eviction.
        public var evictedSegments = 0
        /// Chunks dropped by eviction.
        public var evictedChunks = 0
        /// Recently used chunks appended anew before their segment was deleted.
        public var retainedChunks = 0
        /// Chunks dropped because a read found them corrupt.
        public var corruptChunks = 0
    }

    /// Where a chunk's record is, its XXH3-128 identity, and when it was last used (0: not used since it was
    /// written). 40 bytes: segment numbers, offsets and lengths fit 32 bits (segments are at most 1 GiB).
    struct Location {
        var identity: ChunkIdentity
        var lastUse: UInt64
        private var segmentNumber: UInt32
        private var offsetInSegment: UInt32
        private var dataLength: UInt32

        init(identity: ChunkIdentity, segment: UInt64, offset: Int, length: Int, lastUse: UInt64) {
            precondition(
                segment <= UInt32.max && offset <= UInt32.max && length <= UInt32.max,
                "segment \(segment), offset \(offset), length \(length) exceed the index's 32-bit fields")
            self.identity = identity
            self.lastUse = lastUse
            segmentNumber = UInt32(segment)
            offsetInSegment = UInt32(offset)
            dataLength = UInt32(length)
        }

        var segment: UInt64 { UInt64(segmentNumber) }
        var offset: Int { Int(offsetInSegment) }
        var length: Int { Int(dataLength) }
    }

    /// The directory holding the segment files.
    public let directory: String
    /// The configuration in force.
    public let configuration: Configuration
    /// What opening the store found.
    public internal(set) var recovery = RecoveryReport()

    var index: [ChunkKey: Location] = [:]
    /// Open segments by number; `order` lists their numbers oldest first, the last one takes appends.
    var segments: [UInt64: ChunkSegment] = [:]
    var order: [UInt64] = []
    /// The keys appended to each segment (possibly since moved or dropped: check the index).
    var segmentKeys: [UInt64: [ChunkKey]] = [:]
    var totalSize = 0
    var clock: UInt64 = 0
    var counters = Statistics()
    var needsDirectorySync = false
    private var lockDescriptor: Int32 = -1
    private var registeredDirectory: String?
    var scratch = UnsafeMutableRawBufferPointer.allocate(byteCount: 1 << 16, alignment: 16)
    /// Records appended but not yet written to the active segment: they follow its ``ChunkSegment/length``.
    var pending = UnsafeMutableRawBufferPointer.allocate(
        byteCount: PersistentChunkStore.writeBufferLength, alignment: 16)
    var pendingLength = 0
    var pendingKeys: [ChunkKey] = []
    /// Records are gathered into one `pwrite` of up to this many bytes; larger records are written alone.
    static let writeBufferLength = 1 << 20

    /// Opens the store in `directory`, creating the directory if it does not exist, and rebuilds the index.
    ///
    /// Torn tails are cut off (see ``recovery``). Only one store instance may have a directory open at a time; the
    /// directory's `LOCK` file (a POSIX record lock) enforces it between processes, a registry within the process.
    /// - Parameters:
    ///   - directory: The store's directory; its parent must exist.
    ///   - configuration: Segment size and size cap.
    /// - Throws: ``EncodingError/Code/invalidConfiguration``, ``EncodingError/Code/storeInUse`` if the
    ///   directory is open elsewhere, or ``EncodingError/Code/ioFailed``.
    public init(directory: String, configuration: Configuration = Configuration()) throws(EncodingError) {
        // Stored properties first, so that deinit (which frees the buffers) runs whatever throws below.
        self.directory = directory
        self.configuration = configuration
        guard (4096...(1 << 30)).contains(configuration.segmentCapacity),
            configuration.capacity >= 2 * configuration.segmentCapacity
        else {
            throw EncodingError(
                .invalidConfiguration, expected: "segments of 4 KiB...1 GiB and a capacity of at least two segments",
                found: "segments of \(configuration.segmentCapacity) bytes, capacity \(configuration.capacity)")
        }
        guard mkdir(directory, 0o755) == 0 || errno == EEXIST else {
            throw EncodingError.system("mkdir", path: directory)
        }
        try lockDirectory()
        try recover()
        try evictIfNeeded()
    }

    deinit {
        try? flush()  // a clean close writes what was put; durability still needs sync()
        scratch.deallocate()
        pending.deallocate()
        if lockDescriptor >= 0 {
            close(lockDescriptor)  // releases the record lock
        }
        if let registeredDirectory {
            OpenStoreDirectories.shared.remove(registeredDirectory)
        }
    }

    /// Takes the directory for this instance: against other processes with a POSIX record lock (`fcntl`) on
    /// `LOCK`, against other instances in this process with ``OpenStoreDirectories``.
    ///
    /// Not `flock`: a `flock` belongs to the open file description, which a child forked at that moment (this
    /// process spawns QEMU) shares until it execs, so a close-then-reopen could find the lock still held. Record
    /// locks belong to the process and are not inherited.
    private func lockDirectory() throws(EncodingError) {
        guard let resolved = realpath(directory, nil) else {
            throw EncodingError.system("realpath", path: directory)
        }
        let canonical = String(cString: resolved)
        free(resolved)
        guard OpenStoreDirectories.shared.insert(canonical) else {
            throw EncodingError(
                .storeInUse, expected: "no other store instance in this process to have \(canonical) open",
                found: "one open", advice: "open a directory once and share the instance")
        }
        registeredDirectory = canonical
        let lockPath = canonical + "/LOCK"
        lockDescriptor = open(lockPath, O_RDWR | O_CREAT | O_CLOEXEC, 0o644)
        guard lockDescriptor >= 0 else {
            throw EncodingError.system("open", path: lockPath)
        }
        var request = flock()
        request.l_type = Int16(F_WRLCK)
        request.l_whence = Int16(SEEK_SET)
        guard fcntl(lockDescriptor, F_SETLK, &request) == 0 else {
            let code = errno
            throw EncodingError(
                .storeInUse, expected: "no other process to have \(canonical) open", found: "its LOCK held",
                advice: "stop the other process, or open the store in one process only", systemError: code)
        }
    }

    /// The number of chunks held.
    public var count: Int { index.count }

    /// Counters since the store was opened, and its current size.
    public var statistics: Statistics {
        var result = counters
        result.chunks = index.count
        result.size = totalSize
        return result
    }

    // MARK: Put and get

    /// Stores a chunk; a chunk already held is not written again (it counts as a use).
    /// - Parameter bytes: The chunk's content, at most ``Configuration/maximumChunkLength`` bytes.
    /// - Returns: Its key, the SHA-256 of `bytes`.
    /// - Throws: ``EncodingError/Code/limitExceeded`` for a chunk too large, ``EncodingError/Code/ioFailed``
    ///   if the write fails (the store then holds nothing partial and stays usable).
    @discardableResult
    public func put(_ bytes: UnsafeRawBufferPointer) throws(EncodingError) -> ChunkKey {
        try put(bytes, key: ChunkKey(of: bytes))
    }

    /// Stores a chunk whose SHA-256 the caller computed already (an encoder that identified it); the key is
    /// trusted, not computed again. A chunk already held is not written again (it counts as a use).
    /// - Throws: As ``put(_:)-(UnsafeRawBufferPointer)``.
    @discardableResult
    public func put(_ bytes: UnsafeRawBufferPointer, key: ChunkKey) throws(EncodingError) -> ChunkKey {
        if index[key] != nil {
            touch(key)
            return key
        }
        guard bytes.count <= configuration.maximumChunkLength else {
            throw EncodingError(
                .limitExceeded, expected: "a chunk of at most \(configuration.maximumChunkLength) bytes",
                found: "\(bytes.count) bytes", advice: "cut objects into smaller chunks or use larger segments")
        }
        let identity = ChunkIdentity(of: bytes)
        try append(key: key, identity: identity, data: bytes, lastUse: 0)
        try evictIfNeeded()
        return key
    }

    /// Stores a chunk; a chunk already held is not written again (it counts as a use).
    /// - Parameter bytes: The chunk's content, at most ``Configuration/maximumChunkLength`` bytes.
    /// - Returns: Its key, the SHA-256 of `bytes`.
    /// - Throws: As ``put(_:)-(UnsafeRawBufferPointer)``.
    @discardableResult
    public func put(_ bytes: [UInt8]) throws(EncodingError) -> ChunkKey {
        let outcome: Result<ChunkKey, EncodingError> = bytes.withUnsafeBytes { raw in
            Result { () throws(EncodingError) -> ChunkKey in try put(raw) }
        }
        return try outcome.get()
    }

    /// The content of a chunk, verified against its checksum.
    /// - Parameter key: A chunk key.
    /// - Returns: The chunk's bytes, or nil if the store does not hold it.
    /// - Throws: ``EncodingError/Code/checksumMismatch`` if the stored record is corrupt (the chunk is then
    ///   dropped, so later look-ups return nil), or ``EncodingError/Code/ioFailed``.
    public func get(_ key: ChunkKey) throws(EncodingError) -> [UInt8]? {
        guard let location = index[key] else {
            return nil
        }
        let data = try readRecord(key, at: location)
        touch(key)
        return Array(data)
    }

    /// Whether the store holds a chunk (also ``KnownChunks``).
    /// - Parameter key: A chunk key.
    /// - Returns: True if ``get(_:)`` would find it (unless it turns out corrupt).
    public func contains(_ key: ChunkKey) -> Bool {
        index[key] != nil
    }

    /// Which of `keys` the store holds: the receiver's "have" answer.
    /// - Parameter keys: Chunk keys.
    /// - Returns: One flag per key, in order.
    public func contains(_ keys: [ChunkKey]) -> [Bool] {
        keys.map { index[$0] != nil }
    }

    /// Which of `prefixes` (``ChunkKey/prefix``) start the key of a chunk the store holds: the receiver's
    /// answer to an ``EncodedObjectOffer``. One pass over the index, whatever the number of prefixes.
    /// - Parameter prefixes: Key prefixes, as a sender announced them.
    /// - Returns: One flag per prefix, in order.
    public func holdsPrefixes(_ prefixes: [UInt64]) -> [Bool] {
        guard !index.isEmpty, !prefixes.isEmpty else { return [Bool](repeating: false, count: prefixes.count) }
        var asked = Set(prefixes)
        var held = Set<UInt64>()
        for key in index.keys where asked.remove(key.prefix) != nil {
            held.insert(key.prefix)
            if asked.isEmpty { break }
        }
        return prefixes.map(held.contains)
    }

    /// The keys of `keys` the store does not hold, in order and each once: the receiver's "want" answer.
    ///
    /// A sender that chose references from a ``ChunkSummary`` (which has false positives) MUST send the content
    /// of every key returned here instead of a reference.
    /// - Parameter keys: The keys a sender offers or refers to.
    /// - Returns: The keys the receiver needs the content of.
    public func missing(from keys: [ChunkKey]) -> [ChunkKey] {
        var seen: Set<ChunkKey> = []
        return keys.filter { index[$0] == nil && seen.insert($0).inserted }
    }

    /// A Bloom filter of the keys held, for a sender to decide which chunks to send as references.
    /// - Parameter falsePositiveRate: The target chance that a key not held is reported as held, 1e-9...0.5.
    /// - Returns: The summary; serialize it with ``ChunkSummary/serialized()``.
    public func summary(falsePositiveRate: Double = 0.01) -> ChunkSummary {
        var summary = ChunkSummary(expectedCount: index.count, falsePositiveRate: falsePositiveRate)
        for key in index.keys {
            summary.insert(key)
        }
        return summary
    }

    /// Makes every chunk put so far durable: `fsync`s the newest segment, and the directory if segments were
    /// created or deleted since the last call.
    /// - Throws: ``EncodingError/Code/ioFailed``.
    public func sync() throws(EncodingError) {
        try flush()
        try activeSegment.sync()
        if needsDirectorySync {
            let descriptor = open(directory, O_RDONLY | O_CLOEXEC)
            guard descriptor >= 0 else {
                throw EncodingError.system("open", path: directory)
            }
            defer { close(descriptor) }
            guard fsync(descriptor) == 0 else {
                throw EncodingError.system("fsync", path: directory)
            }
            needsDirectorySync = false
        }
    }

    // MARK: ChunkProvider

    /// The content of the chunk with this SHA-256 (``ChunkProvider``), checked against its record checksums.
    ///
    /// A corrupt record yields nil (and is dropped), which ``ImageDecoder`` reports as an unknown chunk; call
    /// ``get(_:)`` to see the typed error.
    /// - Parameter key: A chunk's SHA-256.
    /// - Returns: The bytes, or nil if not held or corrupt.
    public func contents(of key: ChunkKey) -> [UInt8]? {
        try? get(key)
    }

    // MARK: Internals shared with recovery and eviction

    var activeSegment: ChunkSegment {
        guard let number = order.last, let segment = segments[number] else {
            preconditionFailure("a chunk store always has an active segment once opened")
        }
        return segment
    }

    func touch(_ key: ChunkKey) {
        clock += 1
        index[key]?.lastUse = clock
    }

    /// Drops a chunk from the index (its bytes stay in the segment until the segment is evicted).
    func forget(_ key: ChunkKey) {
        index.removeValue(forKey: key)
    }

    func ensureScratch(_ count: Int) {
        if scratch.count < count {
            scratch.deallocate()
            scratch = UnsafeMutableRawBufferPointer.allocate(byteCount: max(count, scratch.count * 2), alignment: 16)
        }
    }

    /// Appends a record to the active segment (sealing it first if the record does not fit) and indexes it.
    ///
    /// Records are gathered in the write buffer and written by ``flush()`` with one `pwrite`; a record larger than
    /// the buffer is written at once. A buffered record is read from the buffer.
    func append(key: ChunkKey, identity: ChunkIdentity, data: UnsafeRawBufferPointer, lastUse: UInt64)
        throws(EncodingError)
    {
        let recordLength = ChunkRecord.headerLength + data.count
        var segment = activeSegment
        let end = segment.length + pendingLength
        if end > 0 && end + recordLength > configuration.segmentCapacity {
            segment = try startSegment()
        }
        if pendingLength + recordLength > pending.count {
            try flush()
        }
        let offset = segment.length + pendingLength
        let header = ChunkRecord.Header(
            length: data.count, key: key, identity: identity, dataChecksum: ChunkRecord.checksum(of: data))
        let isBuffered = recordLength <= pending.count
        let record: UnsafeMutableRawBufferPointer
        if isBuffered {
            record = UnsafeMutableRawBufferPointer(rebasing: pending[pendingLength..<(pendingLength + recordLength)])
        } else {
            ensureScratch(recordLength)
            record = UnsafeMutableRawBufferPointer(rebasing: scratch[0..<recordLength])
        }
        ChunkRecord.encode(header, into: record)
        if let base = data.baseAddress {
            (record.baseAddress! + ChunkRecord.headerLength).copyMemory(from: base, byteCount: data.count)
        }
        if isBuffered {
            pendingLength += recordLength
            pendingKeys.append(key)
        } else {
            try segment.append(UnsafeRawBufferPointer(record))
        }
        totalSize += recordLength
        index[key] = Location(
            identity: identity, segment: segment.number, offset: offset, length: data.count, lastUse: lastUse)
        segmentKeys[segment.number, default: []].append(key)
    }

    /// Writes the buffered records to the active segment. If the write fails, they are dropped from the index
    /// (the file is cut back, so nothing partial stays addressable) and the error is thrown.
    func flush() throws(EncodingError) {
        guard pendingLength > 0 else {
            return
        }
        let segment = activeSegment
        let flushedLength = segment.length
        defer {
            pendingLength = 0
            pendingKeys.removeAll(keepingCapacity: true)
        }
        do {
            try segment.append(UnsafeRawBufferPointer(rebasing: pending[0..<pendingLength]))
        } catch {
            for key in pendingKeys {
                if let location = index[key], location.segment == segment.number, location.offset >= flushedLength {
                    forget(key)
                }
            }
            totalSize -= pendingLength
            throw error
        }
    }

    /// Reads and verifies a record; on a mismatch drops the chunk and throws.
    /// - Returns: The data, valid until the next read, append or flush.
    func readRecord(_ key: ChunkKey, at location: Location) throws(EncodingError) -> UnsafeRawBufferPointer {
        guard let segment = segments[location.segment] else {
            preconditionFailure("chunk \(key) is indexed in segment \(location.segment), which is not open")
        }
        let total = ChunkRecord.headerLength + location.length
        let record: UnsafeRawBufferPointer
        let isComplete: Bool
        if location.segment == order.last, location.offset >= segment.length {
            let start = location.offset - segment.length
            record = UnsafeRawBufferPointer(rebasing: pending[start..<(start + total)])
            isComplete = true
        } else {
            ensureScratch(total)
            let buffer = UnsafeMutableRawBufferPointer(rebasing: scratch[0..<total])
            isComplete = try segment.read(into: buffer, at: location.offset)
            record = UnsafeRawBufferPointer(buffer)
        }
        let data = UnsafeRawBufferPointer(rebasing: record[ChunkRecord.headerLength...])
        guard isComplete, let header = ChunkRecord.decode(record), header.key == key,
            header.length == location.length, ChunkRecord.checksum(of: data) == header.dataChecksum
        else {
            forget(key)
            counters.corruptChunks += 1
            throw EncodingError(
                .checksumMismatch,
                expected:
                    "the \(location.length)-byte chunk \(key) intact at offset \(location.offset) of \(segment.path)",
                found: isComplete ? "a record that fails its checksum" : "the file ending inside the record",
                advice: "the chunk was dropped and will be requested again; check the disk for bit rot and that "
                    + "nothing else writes to the store directory")
        }
        return data
    }

    /// Seals the active segment (`fsync`) and starts the next one.
    @discardableResult
    func startSegment() throws(EncodingError) -> ChunkSegment {
        if let number = order.last, let current = segments[number] {
            try flush()
            try current.sync()
        }
        let number = (order.last ?? 0) + 1
        let segment = try ChunkSegment(directory: directory, number: number, creating: true)
        segments[number] = segment
        order.append(number)
        needsDirectorySync = true
        return segment
    }
}

/// The canonical paths of the directories that a ``PersistentChunkStore`` in this process has open.
final class OpenStoreDirectories: @unchecked Sendable {  // every access holds `mutex`
    static let shared = OpenStoreDirectories()

    private let mutex: UnsafeMutablePointer<pthread_mutex_t>
    private var paths: Set<String> = []

    private init() {
        mutex = UnsafeMutablePointer<pthread_mutex_t>.allocate(capacity: 1)
        mutex.initialize(to: pthread_mutex_t())
        pthread_mutex_init(mutex, nil)
    }

    /// Adds a path; false if it is already there.
    func insert(_ path: String) -> Bool {
        pthread_mutex_lock(mutex)
        defer { pthread_mutex_unlock(mutex) }
        return paths.insert(path).inserted
    }

    func remove(_ path: String) {
        pthread_mutex_lock(mutex)
        defer { pthread_mutex_unlock(mutex) }
        paths.remove(path)
    }
}
