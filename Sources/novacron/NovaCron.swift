import ArgumentParser

@main
struct NovaCron: AsyncParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "novacron",
        abstract: "NovaCron: a distributed hypervisor for VMs across slow, lossy, long-distance links.",
        version: NovaCronVersion.string,
        subcommands: [
            VersionCommand.self, SendCommand.self, ReceiveCommand.self, CertsCommand.self, VMCommand.self,
            WireCommand.self, AgentCommand.self,
        ]
    )
}
