@_spi(Fuzzing) import DWCPEncoding

/// libFuzzer entry point for the chunk-store summary parser (built only with FUZZ=1; see `make fuzz`).
@_cdecl("LLVMFuzzerTestOneInput")
public func fuzzChunkSummary(_ data: UnsafePointer<UInt8>, _ size: Int) -> CInt {
    EncodingFuzzing.exerciseChunkSummary(UnsafeRawBufferPointer(start: data, count: size))
    return 0
}
