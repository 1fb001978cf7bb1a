@_spi(Fuzzing) import DWCPWire

/// libFuzzer entry point for the DWCP frame decoder and handshake (built only with FUZZ=1; see `make fuzz`).
@_cdecl("LLVMFuzzerTestOneInput")
public func fuzzWireFrames(_ data: UnsafePointer<UInt8>, _ size: Int) -> CInt {
    WireFuzzing.exercise(UnsafeRawBufferPointer(start: data, count: size))
    return 0
}
