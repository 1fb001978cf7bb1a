import Testing

@testable import NovaCronHypervisor

@Suite("Test guest heartbeat lines")
struct GuestHeartbeatTests {
    static let whole =
        "NOVACRON-HEARTBEAT seq=14 uptime_ms=16400 dirtied_pages=30591 verify=ok checksum=d7b893f30210d05f"

    @Test("A whole heartbeat line is parsed field by field")
    func whole() throws {
        let heartbeat = try #require(GuestHeartbeat(line: Self.whole))
        #expect(heartbeat.sequence == 14)
        #expect(heartbeat.uptimeMilliseconds == 16400)
        #expect(heartbeat.isVerified)
        #expect(heartbeat.checksum == "d7b893f30210d05f")
        let failed =
            "NOVACRON-HEARTBEAT seq=3 uptime_ms=9 dirtied_pages=1 verify=FAIL checksum=00000000000000ff"
            + " bad_page=7 bad_now=1"
        #expect(GuestHeartbeat(line: failed)?.isVerified == false)
    }

    /// The guest writes its serial port a byte at a time, so a migration can pause it mid-line: the line's head
    /// ends the source's console and its tail begins the destination's. Neither piece is a heartbeat.
    @Test("A heartbeat line cut anywhere, head or tail, is not a heartbeat")
    func cut() {
        let line = Self.whole
        for split in 1..<line.count {
            let head = String(line.prefix(split))
            let tail = String(line.dropFirst(split))
            #expect(GuestHeartbeat(line: head) == nil, "head \(head)")
            #expect(GuestHeartbeat(line: tail) == nil, "tail \(tail)")
        }
        #expect(GuestHeartbeat(line: "noise") == nil)
    }

    @Test("After a migration the first heartbeat is the next one, or the one after when the new console begins cut")
    func expectedFirst() {
        #expect(GuestHeartbeat.expectedFirst(after: 13, newConsoleFirstLine: Self.whole) == 14)
        #expect(
            GuestHeartbeat.expectedFirst(after: 13, newConsoleFirstLine: "ime_ms=16400 verify=ok checksum=00") == 15)
    }
}
