@_spi(Fuzzing) import DWCPEncoding

/// libFuzzer entry point for the HDE opaque-stream decoder (built only with FUZZ=1; see `make fuzz`).
@_cdecl("LLVMFuzzerTestOneInput")
public func fuzzStreamDecoder(_ data: UnsafePointer<UInt8>, _ size: Int) -> CInt {
    EncodingFuzzing.exerciseStreamDecoder(UnsafeRawBufferPointer(start: data, count: size))
    return 0
}
