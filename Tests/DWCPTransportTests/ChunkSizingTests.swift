import Testing

@testable import DWCPTransport

@Suite("Chunks sized to the path")
struct ChunkSizingTests {
    static let block = ChunkSizer.adaptiveBlockSize

    @Test(
        "A chunk is a quarter of one stream's share of the window, a power of two blocks, 256 KiB to 1 MiB",
        arguments: [
            // The default 64 MiB window: 1 MiB chunks up to 16 streams (a LAN's two get 8 MiB each).
            (64 << 20, 2, 4), (64 << 20, 16, 4),
            // More streams: 20 leave 819 KiB per quarter → 512 KiB; 64 leave 256 KiB.
            (64 << 20, 20, 2), (64 << 20, 64, 1),
            // A 16 MiB window: 16 streams get one block, 8 two, 4 four.
            (16 << 20, 16, 1), (16 << 20, 8, 2), (16 << 20, 4, 4),
            // A window too small for a block per quarter: still one block.
            (1 << 20, 1, 1), (8 << 20, 64, 1),
        ] as [(Int, Int, Int)]
    )
    func sizes(window: Int, streams: Int, blocks: Int) {
        let sizer = ChunkSizer(blockSize: Self.block, maximumChunkSize: ChunkSizer.adaptiveMaximumChunkSize)
        #expect(sizer.blocks(windowBytes: window, streams: streams) == blocks)
        // With a higher cap the same rule goes on up: 64 MiB over 2 streams, 8 MiB quarters → 16 blocks.
        let larger = ChunkSizer(blockSize: Self.block, maximumChunkSize: 4 << 20)
        #expect(larger.blocks(windowBytes: 64 << 20, streams: 2) == 16)
    }

    @Test("A fixed chunk size is one block whatever the window")
    func fixedSize() {
        let sizer = ChunkSizer(blockSize: 1 << 20, maximumChunkSize: 1 << 20)
        #expect(sizer.blocks(windowBytes: 1 << 30, streams: 1) == 1)
    }

    @Test("Grants are whole chunks of blocks; an acknowledgement releases all of a chunk's blocks")
    func multiBlockChunks() {
        var sender = TransferSender(blockSize: 10, windowBlocks: 16)
        sender.setChunkBlocks(4)
        sender.addObject(0, windowBlocks: 16, totalBlocks: 20)
        sender.streamOpened(0, window: 1000, now: .zero)
        #expect(sender.claimGrant(object: 0) == 4)
        #expect(sender.claimGrant(object: 0) == 4)
        #expect(sender.claimGrant(object: 0) == nil)  // two grants at most
        sender.chunkRead(0, size: 40)
        sender.chunkRead(4, size: 40)
        let sent = sender.assign(now: .zero)
        #expect(sent.map(\.chunk.index) == [0, 4] && sent.map(\.chunk.size) == [40, 40])
        // The window holds 8 blocks and 2 grants of 4: full until an acknowledgement.
        #expect(sender.claimGrant(object: 0) == 4 && sender.claimGrant(object: 0) == 4)
        #expect(sender.claimGrant(object: 0) == nil)
        sender.chunkRead(8, size: 40)
        sender.chunkRead(12, size: 40)
        #expect(sender.claimGrant(object: 0) == nil)
        // Block 3 (inside chunk 0) is not a chunk of its own: an acknowledgement of it matches nothing.
        let outcome1 = sender.acknowledged(ChunkAddress(index: 3), on: 0, now: .zero)
        #expect(!outcome1)
        let outcome2 = sender.acknowledged(ChunkAddress(index: 0), on: 0, now: .zero)
        #expect(outcome2)
        #expect(sender.claimGrant(object: 0) == 4)
        sender.chunkRead(16, size: 40)
        for chunk in sender.assign(now: .zero) {
            let outcome3 = sender.acknowledged(chunk.chunk.address, on: 0, now: .zero)
            #expect(outcome3)
        }
        let outcome4 = sender.acknowledged(ChunkAddress(index: 4), on: 0, now: .zero)
        #expect(outcome4)
        sender.sourceEnded(blockCount: 20)
        #expect(sender.isComplete && sender.chunksAcknowledged == 5)
    }

    @Test("After a resume a chunk stops short of the next block the receiver holds")
    func chunksStopAtHeldBlocks() {
        var present = ChunkBitmap()
        for block in [2, 3, 7] { present.insert(block) }
        var sender = TransferSender(blockSize: 10, windowBlocks: 64)
        sender.setChunkBlocks(4)
        sender.addObject(0, windowBlocks: 64, totalBlocks: 20, present: present)
        // From block 0 the grant of 4 stops at held block 2; from 4 at held block 7; from 8 it is whole.
        #expect(sender.claimGrant(object: 0, at: 0) == 2)
        sender.chunkRead(0, size: 20)
        #expect(sender.claimGrant(object: 0, at: 4) == 3)
        sender.chunkRead(4, size: 30)
        #expect(sender.claimGrant(object: 0, at: 8) == 4)
    }

    @Test(
        "A grant waits for room for a whole chunk while acknowledgements are due, and takes what there is when none are"
    )
    func grantsWaitForWholeChunks() {
        var sender = TransferSender(blockSize: 10, windowBlocks: 16)
        sender.setChunkBlocks(2)
        sender.addObject(0, windowBlocks: 16, totalBlocks: nil)
        sender.streamOpened(0, window: 1000, now: .zero)
        // Chunks of 2 blocks fill the window.
        for index in stride(from: 0, to: 16, by: 2) {
            #expect(sender.claimGrant(object: 0) == 2)
            sender.chunkRead(index, size: 20)
        }
        _ = sender.assign(now: .zero)
        // Now 4 blocks per chunk: 2 free blocks are not granted while acknowledgements are due; 4 are.
        sender.setChunkBlocks(4)
        let outcome5 = sender.acknowledged(ChunkAddress(index: 0), on: 0, now: .zero)
        #expect(outcome5)
        #expect(sender.claimGrant(object: 0) == nil)
        let outcome6 = sender.acknowledged(ChunkAddress(index: 2), on: 0, now: .zero)
        #expect(outcome6)
        #expect(sender.claimGrant(object: 0) == 4)
        // An object whose own window is smaller than a chunk, with nothing in flight: it gets its window.
        var narrow = TransferSender(blockSize: 10, windowBlocks: 64)
        narrow.setChunkBlocks(8)
        narrow.addObject(0, windowBlocks: 3, totalBlocks: 100)
        #expect(narrow.claimGrant(object: 0) == 3)
        #expect(narrow.claimGrant(object: 0) == nil)
    }

    @Test(
        "The receiver stores a chunk of several blocks, acknowledges a copy of it, and refuses one overlapping it in part"
    )
    func receiverMultiBlock() throws {
        var receiver = TransferReceiver(blockSize: 100, windowBlocks: 8, declaredBytes: 950)
        let outcome7 = try receiver.chunkArrived(index: 0, size: 400) == .store
        #expect(outcome7)
        #expect(receiver.contiguousBlocks == 4 && receiver.present.count == 4)
        let outcome8 = try receiver.chunkArrived(index: 0, size: 400) == .duplicate
        #expect(outcome8)
        #expect(throws: TransportError.self) { try receiver.chunkArrived(index: 2, size: 400) }  // blocks 2, 3 held
        #expect(throws: TransportError.self) { try receiver.chunkArrived(index: 8, size: 500) }  // past the window
        #expect(throws: TransportError.self) { try receiver.chunkArrived(index: 4, size: 250) }  // short, not the end
        // The object's last 250 bytes: blocks 7, 8, 9, the last one short.
        let outcome9 = try receiver.chunkArrived(index: 7, size: 250) == .store
        #expect(outcome9)
        #expect(throws: TransportError.self) { try receiver.chunkArrived(index: 4, size: 350) }  // past the end
        let outcome10 = try receiver.chunkArrived(index: 4, size: 300) == .store
        #expect(outcome10)
        let outcome11 = try receiver.finish(totalBlocks: 10, totalBytes: 950)
        #expect(outcome11)
        #expect(receiver.bytesStored == 950)
    }

    @Test("A stream of unknown length ends with a short chunk of several blocks, which tells its length")
    func receiverUnknownLengthMultiBlock() throws {
        var receiver = TransferReceiver(blockSize: 100, windowBlocks: 8, declaredBytes: nil)
        #expect(receiver.knownLength == nil)
        let outcome12 = try receiver.chunkArrived(index: 2, size: 230) == .store  // blocks 2, 3, 4 (30 bytes)
        #expect(outcome12)
        // What a file destination reads back of the last block before the prefix reaches it.
        #expect(receiver.knownLength == 430)
        #expect(throws: TransportError.self) { try receiver.chunkArrived(index: 5, size: 100) }
        let outcome13 = try receiver.chunkArrived(index: 0, size: 200) == .store
        #expect(outcome13)
        #expect(throws: TransportError.self) { try receiver.finish(totalBlocks: 4, totalBytes: 330) }
        let outcome14 = try receiver.finish(totalBlocks: 5, totalBytes: 430)
        #expect(outcome14)
    }

    @Test("The session sizes chunks from the stream count, and resizes them when the controller changes it")
    func sessionFollowsStreamCount() {
        var session = SenderSession(
            configuration: SenderSessionTests.configuration {
                $0.initialStreams = 16
                $0.maximumStreams = 16
                $0.windowBytes = 16 << 20
                $0.sampleInterval = .seconds(1)
            })
        _ = session.connected(roundTrip: .milliseconds(1), streamInFlightLimit: 4 << 20)
        _ = session.accepted(
            SenderSessionTests.accept(blockSize: UInt32(Self.block), windowBlocks: 4096), objectSize: nil)
        // 16 MiB over 16 streams: 256 KiB chunks.
        #expect(session.transfer?.chunkBlocks == 1)
        var now = Duration.zero
        var index = 0
        for stream in 0..<16 { _ = session.streamReady(stream, now: now) }
        // Goodput stays flat whatever the stream count: the controller sheds streams, and the chunks grow.
        var counts: [Int: Int] = [:]
        while now < .seconds(300) {
            while index * Self.block < Int(2.5e6 * now.seconds), let blocks = session.claimGrant(object: 0) {
                for case .send(let chunk, let stream) in session.chunkRead(
                    index, size: blocks * Self.block, now: now)
                {
                    _ = session.acknowledged(chunk, on: stream, now: now)
                }
                index += blocks
            }
            now += .milliseconds(100)
            for action in session.tick(now: now) {
                if case .finishStream(let stream) = action { _ = session.streamEnded(stream, now: now, error: nil) }
            }
            counts[session.controller!.streamCount] = session.transfer!.chunkBlocks
        }
        let fewest = counts.keys.min()!
        #expect(fewest < 8, "\(counts)")
        // 16 MiB ÷ 4 ÷ streams, in 256 KiB blocks, rounded down to a power of two, at most 4.
        let expected = { (streams: Int) in min(4, 1 << (Int.bitWidth - 1 - (16 / streams).leadingZeroBitCount)) }
        #expect(Set(counts.values).count >= 2, "the chunks never grew: \(counts)")
        #expect(counts.allSatisfy { streams, blocks in blocks == expected(streams) }, "\(counts)")
    }
}
