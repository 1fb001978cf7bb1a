import Crypto
import Foundation
import SwiftASN1
import X509

/// A NovaCron cluster's certificate authority: the root every node certificate chains to.
///
/// Every DWCP connection is TLS 1.3 with mutual authentication against this CA. Keys are ECDSA
/// P-256 (swift-crypto); certificates are built with swift-certificates.
public struct ClusterAuthority: Sendable {
    /// The CA certificate.
    public let certificate: Certificate
    private let privateKey: P256.Signing.PrivateKey

    /// Creates a new CA with a fresh key.
    /// - Parameters:
    ///   - name: The cluster's name, used as the CA's common name.
    ///   - validFor: How long the CA is valid.
    ///   - now: The current time (injected for tests).
    public static func create(name: String, validFor: TimeInterval = 10 * 365 * 86400, now: Date = Date()) throws
        -> ClusterAuthority
    {
        let key = P256.Signing.PrivateKey()
        let subject = try DistinguishedName {
            OrganizationName("NovaCron")
            CommonName("\(name) cluster CA")
        }
        let certificate = try Certificate(
            version: .v3,
            serialNumber: Certificate.SerialNumber(),
            publicKey: Certificate.PublicKey(key.publicKey),
            notValidBefore: now.addingTimeInterval(-300),
            notValidAfter: now.addingTimeInterval(validFor),
            issuer: subject,
            subject: subject,
            signatureAlgorithm: .ecdsaWithSHA256,
            extensions: try Certificate.Extensions {
                Critical(BasicConstraints.isCertificateAuthority(maxPathLength: 0))
                Critical(KeyUsage(keyCertSign: true, cRLSign: true))
                SubjectKeyIdentifier(hash: Certificate.PublicKey(key.publicKey))
            },
            issuerPrivateKey: Certificate.PrivateKey(key)
        )
        return ClusterAuthority(certificate: certificate, privateKey: key)
    }

    /// Loads a CA from its PEM certificate and key.
    /// - Throws: ``SecurityError/Code/malformed`` if either does not parse or they do not belong together.
    public init(certificatePEM: String, privateKeyPEM: String) throws {
        do {
            certificate = try Certificate(pemEncoded: certificatePEM)
            privateKey = try P256.Signing.PrivateKey(pemRepresentation: privateKeyPEM)
        } catch {
            throw SecurityError(.malformed, expected: "a PEM CA certificate and P-256 key", found: "\(error)")
        }
        guard certificate.publicKey == Certificate.PublicKey(privateKey.publicKey) else {
            throw SecurityError(
                .malformed, expected: "the CA key that matches the CA certificate", found: "another key")
        }
    }

    private init(certificate: Certificate, privateKey: P256.Signing.PrivateKey) {
        self.certificate = certificate
        self.privateKey = privateKey
    }

    /// The CA certificate in PEM.
    public func certificatePEM() throws -> String {
        try certificate.serializeAsPEM().pemString
    }

    /// The CA private key in PEM. Keep it off the nodes when you can.
    public var privateKeyPEM: String { privateKey.pemRepresentation }

    /// Issues a node certificate usable for both ends of a DWCP connection.
    /// - Parameters:
    ///   - node: The node's name; it becomes the common name and a DNS subject alternative name.
    ///   - ipAddresses: IPv4 or IPv6 addresses the node is reached at (IP SANs).
    ///   - validFor: How long the certificate is valid.
    ///   - now: The current time (injected for tests).
    /// - Returns: The node's identity: certificate, key, and this CA's certificate.
    /// - Throws: ``SecurityError/Code/invalidName`` for an unusable name or address.
    public func issue(
        node: String,
        ipAddresses: [String] = [],
        validFor: TimeInterval = 365 * 86400,
        now: Date = Date()
    ) throws -> NodeIdentity {
        guard !node.isEmpty, node.utf8.count <= 253,
            node.allSatisfy({ $0.isASCII && ($0.isLetter || $0.isNumber || $0 == "-" || $0 == ".") })
        else {
            throw SecurityError(
                .invalidName, expected: "a DNS-style node name (letters, digits, '-', '.')", found: "'\(node)'")
        }
        var names: [GeneralName] = [.dnsName(node)]
        for address in ipAddresses {
            guard let bytes = Self.addressBytes(address) else {
                throw SecurityError(.invalidName, expected: "an IPv4 or IPv6 address", found: "'\(address)'")
            }
            names.append(.ipAddress(ASN1OctetString(contentBytes: ArraySlice(bytes))))
        }
        let key = P256.Signing.PrivateKey()
        let subject = try DistinguishedName {
            OrganizationName("NovaCron")
            CommonName(node)
        }
        let authorityKeyIdentifier = try certificate.extensions.subjectKeyIdentifier?.keyIdentifier
        let leaf = try Certificate(
            version: .v3,
            serialNumber: Certificate.SerialNumber(),
            publicKey: Certificate.PublicKey(key.publicKey),
            notValidBefore: now.addingTimeInterval(-300),
            notValidAfter: now.addingTimeInterval(validFor),
            issuer: certificate.subject,
            subject: subject,
            signatureAlgorithm: .ecdsaWithSHA256,
            extensions: try Certificate.Extensions {
                Critical(BasicConstraints.notCertificateAuthority)
                Critical(KeyUsage(digitalSignature: true))
                try ExtendedKeyUsage([.serverAuth, .clientAuth])
                SubjectAlternativeNames(names)
                SubjectKeyIdentifier(hash: Certificate.PublicKey(key.publicKey))
                if let authorityKeyIdentifier {
                    AuthorityKeyIdentifier(keyIdentifier: authorityKeyIdentifier)
                }
            },
            issuerPrivateKey: Certificate.PrivateKey(privateKey)
        )
        return try NodeIdentity(
            certificatePEM: leaf.serializeAsPEM().pemString,
            privateKeyPEM: key.pemRepresentation,
            authorityPEM: certificatePEM()
        )
    }

    static func addressBytes(_ address: String) -> [UInt8]? {
        var v4 = in_addr()
        if inet_pton(AF_INET, address, &v4) == 1 {
            return withUnsafeBytes(of: &v4) { Array($0) }
        }
        var v6 = in6_addr()
        if inet_pton(AF_INET6, address, &v6) == 1 {
            return withUnsafeBytes(of: &v6) { Array($0) }
        }
        return nil
    }
}
