import ArgumentParser
import DWCPSecurity
import Foundation

struct CertsCommand: ParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "certs",
        abstract: "Create the cluster CA and node certificates every DWCP connection authenticates with.",
        subcommands: [CertsInitCommand.self, CertsIssueCommand.self]
    )
}

/// Writes `contents` to `path`, refusing to overwrite unless `force`, with `permissions`.
func writeCredential(_ contents: String, to path: String, permissions: Int, force: Bool) throws {
    if FileManager.default.fileExists(atPath: path) && !force {
        throw SecurityError(
            .alreadyExists, expected: "no file at \(path)", found: "one", advice: "pass --force to replace it")
    }
    guard
        FileManager.default.createFile(
            atPath: path,
            contents: Data(contents.utf8),
            attributes: [.posixPermissions: permissions]
        )
    else {
        throw SecurityError(.ioFailed, expected: "to write \(path)", found: "an error")
    }
    try FileManager.default.setAttributes([.posixPermissions: permissions], ofItemAtPath: path)
}

/// `novacron certs init`: a new cluster CA in DIR (ca.pem, ca-key.pem).
struct CertsInitCommand: ParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "init",
        abstract: "Create a cluster CA: DIR/ca.pem and DIR/ca-key.pem (mode 0600)."
    )

    @Option(help: "Directory for the cluster's certificates.")
    var dir = "var/certs"

    @Option(help: "The cluster's name.")
    var cluster = "novacron"

    @Flag(help: "Replace an existing CA (every node certificate issued by it stops working).")
    var force = false

    func run() throws {
        try FileManager.default.createDirectory(atPath: dir, withIntermediateDirectories: true)
        let authority = try ClusterAuthority.create(name: cluster)
        try writeCredential(authority.privateKeyPEM, to: "\(dir)/ca-key.pem", permissions: 0o600, force: force)
        try writeCredential(try authority.certificatePEM(), to: "\(dir)/ca.pem", permissions: 0o644, force: force)
        print("cluster CA '\(cluster)' written to \(dir)/ca.pem (key: \(dir)/ca-key.pem, keep it safe)")
    }
}

/// `novacron certs issue NODE`: a node certificate signed by the CA in DIR.
struct CertsIssueCommand: ParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "issue",
        abstract: "Issue a node certificate: DIR/NODE.pem and DIR/NODE-key.pem (mode 0600)."
    )

    @Argument(help: "The node's name (a DNS-style name; it is the certificate's DNS SAN).")
    var node: String

    @Option(help: "Directory holding ca.pem and ca-key.pem.")
    var dir = "var/certs"

    @Option(name: .customLong("ip"), help: "An address the node is reached at (repeatable).")
    var addresses: [String] = []

    @Flag(help: "Replace an existing certificate for this node.")
    var force = false

    func run() throws {
        let certificate = try String(contentsOfFile: "\(dir)/ca.pem", encoding: .utf8)
        let key = try String(contentsOfFile: "\(dir)/ca-key.pem", encoding: .utf8)
        let authority = try ClusterAuthority(certificatePEM: certificate, privateKeyPEM: key)
        let identity = try authority.issue(node: node, ipAddresses: addresses)
        try writeCredential(identity.privateKeyPEM, to: "\(dir)/\(node)-key.pem", permissions: 0o600, force: force)
        try writeCredential(identity.certificatePEM, to: "\(dir)/\(node).pem", permissions: 0o644, force: force)
        print("node certificate for '\(node)' written to \(dir)/\(node).pem (key: \(dir)/\(node)-key.pem)")
    }
}
