@_spi(Fuzzing) import DWCPEncoding

#if canImport(Glibc)
    import Glibc
#endif

/// One scratch directory for the whole fuzzing run, emptied after every input.
let scratch: String = {
    var template = Array("/tmp/nc-segment-fuzz-XXXXXX".utf8CString)
    guard let path = mkdtemp(&template) else { fatalError("cannot create a scratch directory") }
    atexit { rmdir(scratch) }  // libFuzzer ends with exit(); every input left the directory empty
    return String(cString: path)
}()

/// libFuzzer entry point for the chunk store's segment recovery (built only with FUZZ=1; see `make fuzz`).
@_cdecl("LLVMFuzzerTestOneInput")
public func fuzzSegmentRecovery(_ data: UnsafePointer<UInt8>, _ size: Int) -> CInt {
    EncodingFuzzing.exerciseSegmentRecovery(UnsafeRawBufferPointer(start: data, count: size), directory: scratch)
    return 0
}
