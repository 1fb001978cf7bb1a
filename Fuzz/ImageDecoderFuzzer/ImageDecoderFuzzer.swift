@_spi(Fuzzing) import DWCPEncoding

/// libFuzzer entry point for the HDE image stream decoder (built only with FUZZ=1; see `make fuzz`).
@_cdecl("LLVMFuzzerTestOneInput")
public func fuzzImageDecoder(_ data: UnsafePointer<UInt8>, _ size: Int) -> CInt {
    EncodingFuzzing.exerciseImageDecoder(UnsafeRawBufferPointer(start: data, count: size))
    return 0
}
