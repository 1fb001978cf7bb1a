import Glibc

/// A TUN device opened on /dev/net/tun: raw IP packets in and out of one file descriptor.
///
/// The device exists as long as the descriptor is open (it is not made persistent), so a killed forwarder leaves no
/// device behind.
struct TUNDevice: ~Copyable {
    // linux/if_tun.h constants, which Swift's Glibc module does not import.
    private static let tunFlag: Int16 = 0x0001  // IFF_TUN
    private static let noPacketInformationFlag: Int16 = 0x1000  // IFF_NO_PI
    private static let setInterface: UInt = 0x4004_54ca  // TUNSETIFF

    /// The interface name.
    let name: String
    /// The non-blocking descriptor.
    let descriptor: Int32

    /// Creates and opens a TUN interface named `name` in the caller's network namespace.
    init(name: String) throws {
        guard name.utf8.count < 16 else {
            throw ShellError(step: "create TUN \(name)", reason: "interface names are at most 15 bytes")
        }
        let descriptor = open("/dev/net/tun", O_RDWR | O_NONBLOCK | O_CLOEXEC)
        guard descriptor >= 0 else {
            throw ShellError(
                step: "open /dev/net/tun", reason: "\(String(cString: strerror(errno))) (needs root and the tun driver)"
            )
        }
        var request = ifreq()
        withUnsafeMutableBytes(of: &request.ifr_ifrn.ifrn_name) { buffer in
            for (index, byte) in name.utf8.enumerated() { buffer[index] = byte }
        }
        request.ifr_ifru.ifru_flags = Self.tunFlag | Self.noPacketInformationFlag
        guard ioctl(descriptor, Self.setInterface, &request) == 0 else {
            let reason = String(cString: strerror(errno))
            close(descriptor)
            throw ShellError(step: "TUNSETIFF \(name)", reason: reason)
        }
        self.name = name
        self.descriptor = descriptor
    }

    deinit {
        close(descriptor)
    }
}
