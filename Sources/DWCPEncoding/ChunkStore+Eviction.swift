extension PersistentChunkStore {
    /// Deletes the oldest segments while the store is above its capacity.
    ///
    /// The active segment is never evicted, and a configuration holds at least two segments, so the loop ends with
    /// the store at or below its capacity. Each eviction frees at least half of the evicted segment (see
    /// ``evictOldestSegment()``), so it always makes progress.
    func evictIfNeeded() throws(EncodingError) {
        while totalSize > configuration.capacity && order.count > 1 {
            try evictOldestSegment()
        }
    }

    /// Deletes the oldest segment after appending its recently used chunks anew.
    ///
    /// A chunk counts as recently used if it was read or put again since it was written (a second chance, as in
    /// the CLOCK algorithm); appending it anew resets that, so it must be used again to survive the next time
    /// around. At most half of the segment's bytes are carried forward, the most recently used chunks first, so
    /// eviction frees space even when everything was used. The copies are `fsync`ed before the segment is deleted,
    /// so a crash in between loses nothing that was durable.
    func evictOldestSegment() throws(EncodingError) {
        let number = order[0]
        guard let segment = segments[number] else {
            preconditionFailure("segment \(number) is in the eviction order but not open")
        }
        var live: [(key: ChunkKey, location: Location)] = []
        var seen: Set<ChunkKey> = []
        for key in segmentKeys[number] ?? [] {
            if let location = index[key], location.segment == number, seen.insert(key).inserted {
                live.append((key, location))
            }
        }
        let used = live.filter { $0.location.lastUse > 0 }.sorted { $0.location.lastUse > $1.location.lastUse }
        var budget = segment.length / 2
        var retained: Set<ChunkKey> = []
        for (key, location) in used where ChunkRecord.headerLength + location.length <= budget {
            guard let data = try? readRecord(key, at: location) else {
                continue  // corrupt: readRecord dropped it
            }
            let copy = Array(data)  // the scratch buffer is reused by the append
            let outcome: Result<Void, EncodingError> = copy.withUnsafeBytes { raw in
                Result { () throws(EncodingError) in
                    try append(key: key, identity: location.identity, data: raw, lastUse: 0)
                }
            }
            try outcome.get()
            budget -= ChunkRecord.headerLength + location.length
            retained.insert(key)
        }
        for (key, _) in live where !retained.contains(key) && index[key]?.segment == number {
            forget(key)
            counters.evictedChunks += 1
        }
        counters.retainedChunks += retained.count
        if !retained.isEmpty {
            try flush()
            try activeSegment.sync()
        }
        try segment.remove()
        order.removeFirst()
        segments[number] = nil
        segmentKeys[number] = nil
        totalSize -= segment.length
        counters.evictedSegments += 1
        needsDirectorySync = true
    }
}
