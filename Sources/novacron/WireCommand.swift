import ArgumentParser
import DWCPWire
import Foundation
import NIOCore

struct WireCommand: ParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "wire",
        abstract: "Inspect and exercise the DWCP wire format.",
        subcommands: [WireLoopbackCommand.self, WireDecodeCommand.self, WireSampleCommand.self]
    )
}

/// `novacron wire decode FILE`: lists the frames in a file, stopping at the first malformed one.
struct WireDecodeCommand: ParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "decode",
        abstract: "List the DWCP frames in a file; exit 1 at the first malformed frame."
    )

    @Argument(help: "A file holding DWCP frames back to back.")
    var file: String

    @Option(help: "The largest payload to accept, in bytes.")
    var maxPayloadBytes = DWCPFrame.hardMaximumPayloadLength

    func run() throws {
        guard let data = FileManager.default.contents(atPath: file) else {
            throw ValidationError("cannot read '\(file)': no such file or not readable")
        }
        var buffer = ByteBuffer(bytes: data)
        let limits = DWCPFrameLimits(maximumPayloadLength: maxPayloadBytes)
        var count = 0
        do {
            while buffer.readableBytes > 0 {
                let offset = buffer.readerIndex
                guard let frame = try buffer.readDWCPFrame(limits: limits) else {
                    throw DWCPWireError(
                        .truncatedFrame,
                        expected: "a complete frame at offset \(offset)",
                        found: "\(buffer.readableBytes) bytes before the end of the file"
                    )
                }
                print(Self.describe(frame, at: offset))
                count += 1
            }
        } catch {
            print("\(count) frames decoded before offset \(buffer.readerIndex)")
            FileHandle.standardError.write(Data("novacron: \(error)\n".utf8))
            throw ExitCode.failure
        }
        print("\(count) frames, \(data.count) bytes, all checksums valid")
    }

    static func describe(_ frame: DWCPFrame, at offset: Int) -> String {
        var line = "@\(offset) v\(frame.version) \(frame.type) session=\(frame.sessionID) seq=\(frame.sequence)"
        line += " payload=\(frame.payload.readableBytes)B"
        if frame.flags.contains(.endOfStream) {
            line += " end-of-stream"
        }
        return line
    }
}

/// `novacron wire sample --out FILE`: writes one frame of every type, for tests, fuzz corpora and docs.
struct WireSampleCommand: ParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "sample",
        abstract: "Write one valid DWCP frame of every type to a file."
    )

    @Option(help: "Where to write the frames.")
    var out: String

    func run() throws {
        var buffer = ByteBuffer()
        for (index, type) in DWCPFrame.FrameType.allCases.enumerated() {
            let payload = ByteBuffer(string: "sample \(type) payload")
            let frame = DWCPFrame(
                type: type,
                flags: index == DWCPFrame.FrameType.allCases.count - 1 ? .endOfStream : [],
                sessionID: 0x4E6F_7661_4372_6F6E,
                sequence: UInt64(index),
                payload: payload
            )
            try buffer.writeDWCPFrame(frame)
        }
        guard FileManager.default.createFile(atPath: out, contents: Data(buffer.readableBytesView)) else {
            throw ValidationError("cannot write '\(out)'")
        }
        print("wrote \(DWCPFrame.FrameType.allCases.count) frames (\(buffer.readableBytes) bytes) to \(out)")
    }
}
