import CZstd

/// Zstandard compression and decompression for HDE (hierarchical delta encoding), over libzstd.
///
/// ``Compressor`` and ``Decompressor`` reuse one libzstd context across calls; each is a non-`Sendable`
/// final class, so use one per thread or stream. ``Dictionary`` is immutable and may be shared.
public enum ZstdCodec {
    /// The content-size values libzstd returns for "unknown" and "error" (`ZSTD_CONTENTSIZE_*`).
    static let contentSizeUnknown = UInt64.max
    static let contentSizeError = UInt64.max - 1

    /// The range of compression levels libzstd accepts (negative levels are the fast modes).
    public static var levels: ClosedRange<Int> {
        Int(ZSTD_minCLevel())...Int(ZSTD_maxCLevel())
    }

    /// The largest frame libzstd may produce for `length` input bytes.
    /// - Parameter length: The input length.
    /// - Returns: The worst-case compressed size.
    public static func compressedBound(forLength length: Int) -> Int {
        ZSTD_compressBound(length)
    }

    static func isError(_ result: Int) -> Bool {
        ZSTD_isError(result) != 0
    }

    static func errorName(_ result: Int) -> String {
        String(cString: ZSTD_getErrorName(result))
    }

    /// A trained (or raw-content) Zstandard dictionary, shared read-only by compressors and decompressors.
    ///
    /// Holds the dictionary bytes and a digested decompression dictionary (`ZSTD_DDict`); compressors digest
    /// their own `ZSTD_CDict` at their level. libzstd documents a `ZSTD_DDict` as safe to use from several
    /// threads at once, which is why this class is `Sendable`.
    public final class Dictionary: @unchecked Sendable {
        /// The dictionary's bytes, as a peer receives them.
        public let bytes: [UInt8]
        /// The dictionary ID libzstd writes into frames (0 for a raw-content dictionary).
        public let id: UInt32
        let decompressionDictionary: OpaquePointer

        /// Loads a dictionary from its bytes.
        /// - Parameter bytes: A dictionary produced by ``train(samples:capacity:)`` or `zstd --train`.
        /// - Throws: ``EncodingError/Code/dictionaryFailed`` when libzstd cannot digest it.
        public init(bytes: [UInt8]) throws(EncodingError) {
            guard !bytes.isEmpty else {
                throw EncodingError(.dictionaryFailed, expected: "a non-empty dictionary", found: "0 bytes")
            }
            let ddict = bytes.withUnsafeBytes { ZSTD_createDDict($0.baseAddress, $0.count) }
            guard let ddict else {
                throw EncodingError(
                    .dictionaryFailed, expected: "a dictionary libzstd can load",
                    found: "\(bytes.count) bytes it rejected")
            }
            self.bytes = bytes
            self.id = bytes.withUnsafeBytes { ZDICT_getDictID($0.baseAddress, $0.count) }
            self.decompressionDictionary = ddict
        }

        deinit {
            ZSTD_freeDDict(decompressionDictionary)
        }

        /// Trains a dictionary from sample buffers with `ZDICT_trainFromBuffer`.
        /// - Parameters:
        ///   - samples: Representative inputs (e.g. pages of one workload); libzstd wants roughly 100× the
        ///     capacity in total.
        ///   - capacity: The largest dictionary size, in bytes.
        /// - Returns: The trained dictionary.
        /// - Throws: ``EncodingError/Code/dictionaryFailed`` when there are too few samples or training fails.
        public static func train(samples: [[UInt8]], capacity: Int = 112 * 1024) throws(EncodingError) -> Dictionary {
            guard capacity >= 256, !samples.isEmpty else {
                throw EncodingError(
                    .dictionaryFailed, expected: "a capacity of at least 256 bytes and at least one sample",
                    found: "capacity \(capacity), \(samples.count) samples")
            }
            var joined: [UInt8] = []
            joined.reserveCapacity(samples.reduce(0) { $0 + $1.count })
            var sizes: [Int] = []
            sizes.reserveCapacity(samples.count)
            for sample in samples {
                joined.append(contentsOf: sample)
                sizes.append(sample.count)
            }
            var buffer = [UInt8](repeating: 0, count: capacity)
            let result = buffer.withUnsafeMutableBytes { out in
                joined.withUnsafeBytes { input in
                    sizes.withUnsafeBufferPointer { sizePointer in
                        ZDICT_trainFromBuffer(
                            out.baseAddress, out.count, input.baseAddress, sizePointer.baseAddress,
                            UInt32(sizePointer.count))
                    }
                }
            }
            guard ZDICT_isError(result) == 0 else {
                throw EncodingError(
                    .dictionaryFailed, expected: "a trained dictionary",
                    found: String(cString: ZDICT_getErrorName(result)),
                    advice: "give more or larger samples (about 100× the capacity in total)")
            }
            buffer.removeLast(buffer.count - result)
            return try Dictionary(bytes: buffer)
        }
    }

    /// Compresses buffers into single Zstandard frames that declare their content size, reusing one context.
    public final class Compressor {
        private let context: OpaquePointer
        private let compressionDictionary: OpaquePointer?
        /// The compression level every frame is written at.
        public let level: Int
        /// The dictionary frames are compressed with, if any.
        public let dictionary: Dictionary?

        /// Creates a compressor.
        /// - Parameters:
        ///   - level: A level in ``ZstdCodec/levels``.
        ///   - dictionary: A dictionary to compress with; the decompressor needs the same one.
        /// - Throws: ``EncodingError/Code/invalidConfiguration`` for a level out of range.
        public init(level: Int, dictionary: Dictionary? = nil) throws(EncodingError) {
            guard ZstdCodec.levels.contains(level) else {
                throw EncodingError(
                    .invalidConfiguration, expected: "a zstd level in \(ZstdCodec.levels)", found: "\(level)")
            }
            guard let context = ZSTD_createCCtx() else {
                throw EncodingError(.compressionFailed, expected: "a zstd context", found: "allocation failure")
            }
            var cdict: OpaquePointer?
            if let dictionary {
                cdict = dictionary.bytes.withUnsafeBytes {
                    ZSTD_createCDict($0.baseAddress, $0.count, Int32(level))
                }
                guard let cdict, !ZstdCodec.isError(ZSTD_CCtx_refCDict(context, cdict)) else {
                    ZSTD_freeCCtx(context)
                    if let cdict { ZSTD_freeCDict(cdict) }
                    throw EncodingError(
                        .dictionaryFailed, expected: "a dictionary libzstd can digest", found: "it refused")
                }
            } else {
                _ = ZSTD_CCtx_setParameter(context, ZSTD_c_compressionLevel, Int32(level))
            }
            _ = ZSTD_CCtx_setParameter(context, ZSTD_c_contentSizeFlag, 1)
            self.context = context
            self.compressionDictionary = cdict
            self.level = level
            self.dictionary = dictionary
        }

        deinit {
            ZSTD_freeCCtx(context)
            if let compressionDictionary { ZSTD_freeCDict(compressionDictionary) }
        }

        /// Compresses `input` into one frame written at the start of `destination`.
        /// - Parameters:
        ///   - input: The bytes to compress.
        ///   - destination: Room for the frame; ``ZstdCodec/compressedBound(forLength:)`` bytes always suffice.
        /// - Returns: The frame's length in bytes.
        /// - Throws: ``EncodingError/Code/compressionFailed`` when libzstd fails or the frame does not fit.
        public func compress(_ input: UnsafeRawBufferPointer, into destination: UnsafeMutableRawBufferPointer)
            throws(EncodingError) -> Int
        {
            let result = ZSTD_compress2(
                context, destination.baseAddress, destination.count, input.baseAddress, input.count)
            guard !ZstdCodec.isError(result) else {
                throw EncodingError(
                    .compressionFailed, expected: "a zstd frame within \(destination.count) bytes",
                    found: ZstdCodec.errorName(result))
            }
            return result
        }

        /// Compresses `input` into one frame that may refer to `prefix` (its previous version, say): the
        /// decompressor needs the same prefix (``Decompressor/decompress(_:limit:prefix:)``).
        /// - Throws: ``EncodingError/Code/compressionFailed`` when libzstd fails.
        public func compress(_ input: [UInt8], prefix: [UInt8]) throws(EncodingError) -> [UInt8] {
            let referenced = prefix.withUnsafeBytes { ZSTD_CCtx_refPrefix(context, $0.baseAddress, $0.count) }
            guard !ZstdCodec.isError(referenced) else {
                throw EncodingError(
                    .compressionFailed, expected: "a prefix libzstd accepts", found: ZstdCodec.errorName(referenced))
            }
            // The prefix is referenced, not copied: it must stay put until the frame is made.
            return try withExtendedLifetime(prefix) { () throws(EncodingError) in try compress(input) }
        }

        /// Compresses `input` into one frame.
        /// - Parameter input: The bytes to compress.
        /// - Returns: The frame.
        /// - Throws: ``EncodingError/Code/compressionFailed`` when libzstd fails.
        public func compress(_ input: [UInt8]) throws(EncodingError) -> [UInt8] {
            var output = [UInt8](repeating: 0, count: ZSTD_compressBound(input.count))
            let length = try withBytes(of: input) { (raw) throws(EncodingError) in
                try withMutableBytes(of: &output) { (out) throws(EncodingError) in try compress(raw, into: out) }
            }
            output.removeLast(output.count - length)
            return output
        }
    }

    /// Decompresses single Zstandard frames under a hard output limit, reusing one context.
    ///
    /// A frame is accepted only if it declares its content size, that size is within the caller's limit, the
    /// input is exactly one frame, and it decodes to exactly the declared size. Nothing beyond the declared
    /// (and limited) size is ever allocated, so a decompression bomb costs a header parse.
    public final class Decompressor {
        private let context: OpaquePointer
        /// The dictionary frames are decompressed with, if any.
        public let dictionary: Dictionary?

        /// Creates a decompressor.
        /// - Parameter dictionary: The dictionary the frames were compressed with, if any.
        /// - Throws: ``EncodingError/Code/decompressionFailed`` if libzstd cannot allocate a context.
        public init(dictionary: Dictionary? = nil) throws(EncodingError) {
            guard let context = ZSTD_createDCtx() else {
                throw EncodingError(.decompressionFailed, expected: "a zstd context", found: "allocation failure")
            }
            self.context = context
            self.dictionary = dictionary
        }

        deinit {
            ZSTD_freeDCtx(context)
        }

        /// Reads the content size a frame declares, refusing unknown sizes and sizes above `limit`.
        /// - Parameters:
        ///   - frame: One complete frame.
        ///   - limit: The most bytes the caller accepts.
        /// - Returns: The declared content size.
        /// - Throws: ``EncodingError/Code/decompressionBomb`` or ``EncodingError/Code/decompressionFailed``.
        public func declaredContentSize(of frame: UnsafeRawBufferPointer, limit: Int) throws(EncodingError) -> Int {
            let size = ZSTD_getFrameContentSize(frame.baseAddress, frame.count)
            switch size {
            case ZstdCodec.contentSizeError:
                throw EncodingError(
                    .decompressionFailed, expected: "a zstd frame header",
                    found: "\(frame.count) bytes that are not one")
            case ZstdCodec.contentSizeUnknown:
                throw EncodingError(
                    .decompressionBomb, expected: "a frame that declares its content size",
                    found: "a frame of unknown size", advice: "compress with the content size flag (the default)")
            default:
                guard size <= UInt64(max(limit, 0)) else {
                    throw EncodingError(
                        .decompressionBomb, expected: "at most \(limit) decompressed bytes",
                        found: "a frame declaring \(size) bytes")
                }
                return Int(size)
            }
        }

        /// Decompresses exactly one frame into the start of `destination`.
        /// - Parameters:
        ///   - frame: One complete frame and nothing else.
        ///   - limit: The most decompressed bytes accepted; checked before anything is written.
        ///   - destination: Room for at least `min(limit, declared size)` bytes.
        /// - Returns: The number of bytes written (the frame's declared size).
        /// - Throws: ``EncodingError/Code/decompressionBomb`` for an unknown size or one above `limit` or the
        ///   destination, ``EncodingError/Code/trailingBytes`` when more than one frame is given, and
        ///   ``EncodingError/Code/decompressionFailed`` for a corrupt frame or a size mismatch.
        public func decompress(
            _ frame: UnsafeRawBufferPointer, limit: Int, into destination: UnsafeMutableRawBufferPointer
        ) throws(EncodingError) -> Int {
            let size = try declaredContentSize(of: frame, limit: min(limit, destination.count))
            let frameLength = ZSTD_findFrameCompressedSize(frame.baseAddress, frame.count)
            guard !ZstdCodec.isError(frameLength) else {
                throw EncodingError(
                    .decompressionFailed, expected: "one complete zstd frame",
                    found: ZstdCodec.errorName(frameLength))
            }
            guard frameLength == frame.count else {
                throw EncodingError(
                    .trailingBytes, expected: "exactly one frame of \(frameLength) bytes",
                    found: "\(frame.count) bytes")
            }
            let result: Int
            if let dictionary {
                result = ZSTD_decompress_usingDDict(
                    context, destination.baseAddress, size, frame.baseAddress, frame.count,
                    dictionary.decompressionDictionary)
            } else {
                result = ZSTD_decompressDCtx(context, destination.baseAddress, size, frame.baseAddress, frame.count)
            }
            guard !ZstdCodec.isError(result), result == size else {
                let found = ZstdCodec.isError(result) ? ZstdCodec.errorName(result) : "\(result) bytes"
                throw EncodingError(
                    .decompressionFailed, expected: "a valid frame of \(size) bytes", found: found)
            }
            return size
        }

        /// Decompresses one frame made by ``Compressor/compress(_:prefix:)`` with the same prefix.
        /// - Throws: As ``decompress(_:limit:into:)``.
        public func decompress(_ frame: [UInt8], limit: Int, prefix: [UInt8]) throws(EncodingError) -> [UInt8] {
            precondition(dictionary == nil, "a prefix replaces the dictionary")
            let referenced = prefix.withUnsafeBytes { ZSTD_DCtx_refPrefix(context, $0.baseAddress, $0.count) }
            guard !ZstdCodec.isError(referenced) else {
                throw EncodingError(
                    .decompressionFailed, expected: "a prefix libzstd accepts", found: ZstdCodec.errorName(referenced))
            }
            defer { _ = ZSTD_DCtx_reset(context, ZSTD_reset_session_only) }  // a refused frame leaves it referenced
            return try withExtendedLifetime(prefix) { () throws(EncodingError) in try decompress(frame, limit: limit) }
        }

        /// Decompresses exactly one frame under a hard limit.
        /// - Parameters:
        ///   - frame: One complete frame and nothing else.
        ///   - limit: The most decompressed bytes accepted.
        /// - Returns: The content.
        /// - Throws: As ``decompress(_:limit:into:)``.
        public func decompress(_ frame: [UInt8], limit: Int) throws(EncodingError) -> [UInt8] {
            try withBytes(of: frame) { (raw) throws(EncodingError) -> [UInt8] in
                let size = try declaredContentSize(of: raw, limit: limit)
                var output = [UInt8](repeating: 0, count: size)
                _ = try withMutableBytes(of: &output) { (out) throws(EncodingError) in
                    try decompress(raw, limit: limit, into: out)
                }
                return output
            }
        }
    }
}
