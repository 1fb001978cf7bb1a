/// How a sender encodes an object before the transport carries it (`novacron send --encode`).
public enum EncodingMode: Sendable, Hashable, CustomStringConvertible {
    /// Plain bytes: the transport sends the file as it is (and can resume it).
    case none
    /// HDE with the zstd level chosen batch by batch for the most image bytes delivered per second
    /// (``DWCPEncoding/CompressionLevelController``), storing batches raw when compressing does not pay.
    case auto
    /// HDE with one fixed zstd level (or `nil`: zero, duplicate and known pages only, nothing compressed).
    case level(Int?)

    /// Parses `none`, `auto`, `raw` (HDE without zstd) or a zstd level such as `3`.
    /// - Parameter text: The option's argument.
    public init?(_ text: String) {
        switch text.lowercased() {
        case "none": self = .none
        case "auto": self = .auto
        case "raw": self = .level(nil)
        default:
            guard let level = Int(text), (1...19).contains(level) else { return nil }
            self = .level(level)
        }
    }

    /// The argument that parses back to this mode.
    public var description: String {
        switch self {
        case .none: "none"
        case .auto: "auto"
        case .level(nil): "raw"
        case .level(let level?): "\(level)"
        }
    }
}
