import Foundation
import Testing

@Suite("novacron wire (real processes, TCP on 127.0.0.1)")
struct WireCLITests {
    @Test("loopback: handshake, pings and 32 MiB of chunk frames arrive verified over TCP")
    func loopbackExchange() throws {
        let result = try NovaCronCLI.run(["wire", "loopback", "--frames", "512", "--payload-bytes", "65536", "--json"])
        #expect(result.status == 0, "\(result.standardError)")
        let report = try JSONSerialization.jsonObject(with: Data(result.standardOutput.utf8)) as? [String: Any]
        #expect(report?["verified"] as? Bool == true)
        #expect(report?["negotiatedVersion"] as? Int == 1)
        #expect(report?["framesReceived"] as? Int == 512)
        #expect(report?["payloadBytesReceived"] as? Int == 512 * 65536)
        #expect((report?["throughputMiBPerSecond"] as? Double ?? 0) > 0)
    }

    @Test("sample and decode: every frame type is listed and checks out")
    func sampleThenDecode() throws {
        let directory = try TemporaryDirectory()
        let file = directory.url.appendingPathComponent("frames.dwcp").path
        #expect(try NovaCronCLI.run(["wire", "sample", "--out", file]).status == 0)
        let decoded = try NovaCronCLI.run(["wire", "decode", file])
        #expect(decoded.status == 0, "\(decoded.standardError)")
        for type in ["hello", "helloAccept", "helloReject", "control", "chunk", "ack", "ping", "pong", "close"] {
            #expect(decoded.standardOutput.contains(" \(type) "), "\(type) missing from:\n\(decoded.standardOutput)")
        }
        #expect(decoded.standardOutput.contains("9 frames"))
    }

    @Test("decode: a corrupted payload byte exits 1 with the typed error and the offset")
    func decodeCorruptedFile() throws {
        let directory = try TemporaryDirectory()
        let file = directory.url.appendingPathComponent("frames.dwcp")
        #expect(try NovaCronCLI.run(["wire", "sample", "--out", file.path]).status == 0)
        var bytes = try Data(contentsOf: file)
        bytes[100] ^= 0xFF  // inside the second frame's payload (first frame: 40 + 20 bytes)
        try bytes.write(to: file)
        let decoded = try NovaCronCLI.run(["wire", "decode", file.path])
        #expect(decoded.status == 1)
        #expect(decoded.standardError.contains("payload checksum mismatch"), "\(decoded.standardError)")
        #expect(decoded.standardOutput.contains("1 frames decoded before offset 60"))
    }

    @Test("bad arguments and missing files give a clear error and a non-zero exit")
    func badInput() throws {
        let missing = try NovaCronCLI.run(["wire", "decode", "/nonexistent/novacron.dwcp"])
        #expect(missing.status != 0)
        #expect(missing.standardError.contains("cannot read '/nonexistent/novacron.dwcp'"))

        let badFlag = try NovaCronCLI.run(["wire", "loopback", "--payload-bytes", "0"])
        #expect(badFlag.status != 0)
        #expect(badFlag.standardError.contains("--payload-bytes must be in 1..."))
    }

    @Test("version names the DWCP versions and the linked libraries")
    func version() throws {
        let result = try NovaCronCLI.run(["version"])
        #expect(result.status == 0)
        #expect(result.standardOutput.contains("DWCP wire versions 1...1"))
        #expect(result.standardOutput.contains("libzstd 1."))
        #expect(result.standardOutput.contains("libxxhash 0."))
    }
}
