import Foundation
import NIOSSL

/// A node's credentials: its certificate and key, and the cluster CA it trusts.
public struct NodeIdentity: Sendable {
    /// The node certificate (PEM).
    public let certificatePEM: String
    /// The node's private key (PEM).
    public let privateKeyPEM: String
    /// The cluster CA certificate (PEM) peers must chain to.
    public let authorityPEM: String

    /// Creates an identity from PEM text.
    public init(certificatePEM: String, privateKeyPEM: String, authorityPEM: String) {
        self.certificatePEM = certificatePEM
        self.privateKeyPEM = privateKeyPEM
        self.authorityPEM = authorityPEM
    }

    /// Loads an identity written by `novacron certs`.
    /// - Parameters:
    ///   - certificate: The node certificate file.
    ///   - key: The node key file.
    ///   - authority: The CA certificate file.
    /// - Throws: ``SecurityError/Code/unreadable``.
    public init(certificate: String, key: String, authority: String) throws {
        func read(_ path: String, _ what: String) throws -> String {
            guard let data = FileManager.default.contents(atPath: path) else {
                throw SecurityError(
                    .unreadable,
                    expected: "the \(what) at \(path)",
                    found: "no readable file",
                    advice: "create it with `novacron certs init` / `novacron certs issue`"
                )
            }
            return String(decoding: data, as: UTF8.self)
        }
        self.init(
            certificatePEM: try read(certificate, "node certificate"),
            privateKeyPEM: try read(key, "node key"),
            authorityPEM: try read(authority, "cluster CA certificate")
        )
    }

    /// TLS 1.3 for the accepting side: presents this node's certificate and requires a client
    /// certificate that chains to the cluster CA.
    public func serverTLSConfiguration() throws -> TLSConfiguration {
        var configuration = TLSConfiguration.makeServerConfiguration(
            certificateChain: try chain(),
            privateKey: try key()
        )
        try restrict(&configuration)
        configuration.certificateVerification = .noHostnameVerification
        return configuration
    }

    /// TLS 1.3 for the connecting side: presents this node's certificate and requires the server's
    /// to chain to the cluster CA and name the host dialled (DNS or IP SAN).
    public func clientTLSConfiguration() throws -> TLSConfiguration {
        var configuration = TLSConfiguration.makeClientConfiguration()
        configuration.certificateChain = try chain()
        configuration.privateKey = try key()
        try restrict(&configuration)
        configuration.certificateVerification = .fullVerification
        return configuration
    }

    private func restrict(_ configuration: inout TLSConfiguration) throws {
        configuration.minimumTLSVersion = .tlsv13
        configuration.maximumTLSVersion = .tlsv13
        configuration.trustRoots = .certificates(try parse(authorityPEM, "cluster CA certificate"))
    }

    private func chain() throws -> [NIOSSLCertificateSource] {
        try parse(certificatePEM, "node certificate").map { .certificate($0) }
    }

    private func key() throws -> NIOSSLPrivateKeySource {
        do {
            return .privateKey(try NIOSSLPrivateKey(bytes: Array(privateKeyPEM.utf8), format: .pem))
        } catch {
            throw SecurityError(.malformed, expected: "a PEM private key", found: "\(error)")
        }
    }

    private func parse(_ pem: String, _ what: String) throws -> [NIOSSLCertificate] {
        do {
            let certificates = try NIOSSLCertificate.fromPEMBytes(Array(pem.utf8))
            guard !certificates.isEmpty else {
                throw SecurityError(.malformed, expected: "a PEM \(what)", found: "no certificate")
            }
            return certificates
        } catch let error as SecurityError {
            throw error
        } catch {
            throw SecurityError(.malformed, expected: "a PEM \(what)", found: "\(error)")
        }
    }
}
