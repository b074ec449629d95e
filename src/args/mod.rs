//! The command line: every command, argument and flag, with the help
//! text clap shows. The commands themselves are in `cli/`.

mod access;
mod control;
mod identity;
mod kube;
mod policy;

use std::path::PathBuf;

use clap::{Args, Parser, Subcommand};

pub(crate) use access::AccessCommand;
pub(crate) use control::{
    AdminArgs, BundleCommand, BundleFormat, ControlBackupArgs, ControlCommand, ControlMigrateArgs,
    ControlRestoreArgs, ControlServeArgs, EndpointAddressesArg, EndpointsCommand,
    IdentitiesCommand, TokenCommand, TokenCreateArgs,
};
pub(crate) use identity::{
    CaCommand, CaInitArgs, IdCommand, SvidCommand, SvidInspectArgs, SvidIssueArgs,
};
pub(crate) use kube::{InjectArgs, InjectCommand, InjectServeArgs, InstallArgs, MeshArgs};
pub(crate) use policy::{PolicyCheckArgs, PolicyCommand, PolicyEvalArgs, PolicyPushArgs};

#[derive(Parser)]
#[command(
    name = "warden",
    version,
    about = "Warden: a service-mesh sidecar that gives every workload a SPIFFE identity and enforces it",
    long_about = None,
)]
pub(crate) struct Cli {
    /// Log filter, RUST_LOG syntax (for example `info` or `warden_proxy=debug`).
    #[arg(long, global = true, env = "WARDEN_LOG", default_value = "warn")]
    pub(crate) log: String,
    /// Log lines as `text` or `json` (one JSON object per line).
    #[arg(
        long,
        global = true,
        env = "WARDEN_LOG_FORMAT",
        value_enum,
        default_value = "text"
    )]
    pub(crate) log_format: LogFormat,
    /// What the audit log (target `warden::audit`, on stderr whatever the
    /// log filter) records: `deny` (denied requests and connections,
    /// refused admin calls) or `all` (allowed requests too).
    #[arg(
        long,
        global = true,
        env = "WARDEN_AUDIT",
        value_enum,
        default_value = "deny"
    )]
    pub(crate) audit: AuditLevel,
    #[command(subcommand)]
    pub(crate) command: Command,
}

#[derive(Clone, Copy, clap::ValueEnum)]
pub(crate) enum AuditLevel {
    Deny,
    All,
}

#[derive(Clone, Copy, clap::ValueEnum)]
pub(crate) enum LogFormat {
    Text,
    Json,
}

#[derive(Subcommand)]
pub(crate) enum Command {
    /// Create and manage the certificate authority.
    #[command(subcommand)]
    Ca(CaCommand),
    /// Issue and inspect X.509-SVIDs.
    #[command(subcommand)]
    Svid(SvidCommand),
    /// Work with SPIFFE IDs.
    #[command(subcommand)]
    Id(IdCommand),
    /// Validate Cedar policies and explain decisions.
    #[command(subcommand)]
    Policy(PolicyCommand),
    /// Run the sidecar: mTLS in front of the local app, mTLS out to peer
    /// sidecars, a Cedar decision on every request.
    Proxy(ProxyArgs),
    /// Run a demo mesh on loopback: a CA, two apps behind their sidecars,
    /// an allowed call and a denied one.
    Demo(DemoArgs),
    /// Redirect this network namespace's TCP through the sidecar
    /// (iptables or nftables), as an init container does.
    Init(InitArgs),
    /// The control plane: the CA, join tokens, renewal, revocation and
    /// policy distribution over one HTTPS API.
    #[command(subcommand)]
    Control(ControlCommand),
    /// The inventory of every identity the control plane issued.
    #[command(subcommand)]
    Identities(IdentitiesCommand),
    /// The discovery registry: where each workload is reached, and the
    /// identity it must prove there.
    #[command(subcommand)]
    Endpoints(EndpointsCommand),
    /// What each identity used against what the policies allow it:
    /// report, new edges, the access graph (`warden policy propose` and
    /// `replay` turn it into a tighter policy set).
    #[command(subcommand)]
    Access(AccessCommand),
    /// Trust bundles: this trust domain's (as its SPIFFE bundle endpoint
    /// serves it) and the federated ones.
    #[command(subcommand)]
    Bundle(BundleCommand),
    /// Add the sidecar to Kubernetes pods (manifests on stdin or in files,
    /// to stdout), take it out (--uninject), or serve the admission
    /// webhook that does it as pods are created (`inject serve`).
    Inject(InjectArgs),
    /// Print the manifests that run Warden in a cluster: the control
    /// plane, the injection webhook and its configuration.
    Install(InstallArgs),
}

#[derive(Args)]
pub(crate) struct ProxyArgs {
    /// TOML configuration file (see the README's configuration table).
    #[arg(long, env = "WARDEN_CONFIG")]
    pub(crate) config: Option<PathBuf>,
    /// Override one setting, `section.key=value` (repeatable); wins over the
    /// file and over `WARDEN_<SECTION>_<KEY>` environment variables.
    #[arg(long = "set", value_name = "KEY=VALUE")]
    pub(crate) set: Vec<String>,
    /// Threads serving traffic, each a single-threaded runtime with its own
    /// `SO_REUSEPORT` socket on every traffic address: a connection stays
    /// on the thread that accepted it. 1 (the default) runs everything on
    /// one thread.
    #[arg(long, env = "WARDEN_WORKERS", default_value_t = 1)]
    pub(crate) workers: usize,
}

#[derive(Args)]
pub(crate) struct InitArgs {
    /// The sidecar's user id: its own connections are never redirected.
    #[arg(long)]
    pub(crate) proxy_uid: u32,
    /// The sidecar's group id: connections of this group are never redirected either.
    #[arg(long)]
    pub(crate) proxy_gid: Option<u32>,
    /// Where redirected inbound connections go (the sidecar's inbound.listen port).
    #[arg(long, default_value_t = 15006)]
    pub(crate) inbound_port: u16,
    /// Where redirected outbound connections go (the transparent outbound port).
    #[arg(long, default_value_t = 15001)]
    pub(crate) outbound_port: u16,
    /// The sidecar's admin port: never redirected.
    #[arg(long, default_value_t = 15000)]
    pub(crate) admin_port: u16,
    /// Inbound ports left alone, comma-separated.
    #[arg(long, value_delimiter = ',')]
    pub(crate) skip_inbound_ports: Vec<u16>,
    /// Outbound destination ports left alone, comma-separated.
    #[arg(long, value_delimiter = ',')]
    pub(crate) skip_outbound_ports: Vec<u16>,
    /// Outbound destinations left alone, comma-separated CIDRs (10.0.0.0/8, fd00::/8).
    #[arg(long, value_delimiter = ',')]
    pub(crate) skip_outbound_cidrs: Vec<String>,
    /// `iptables` (as installed: nft-backed on current distributions),
    /// `iptables-legacy` or `nftables`; default: iptables if installed, else nftables.
    #[arg(long, value_enum)]
    pub(crate) backend: Option<InitBackend>,
    /// IPv4 only (no ip6tables rules; nftables covers both families in one table).
    #[arg(long)]
    pub(crate) no_ipv6: bool,
    /// Names Warden's chains (<PREFIX>_INBOUND, <PREFIX>_OUTPUT) and nftables table (lowercase).
    #[arg(long, default_value = "WARDEN")]
    pub(crate) chain_prefix: String,
    /// Print the commands and rules, change nothing.
    #[arg(long)]
    pub(crate) dry_run: bool,
    /// Remove exactly what init added (nothing installed: no change).
    #[arg(long)]
    pub(crate) remove: bool,
}

#[derive(Clone, Copy, clap::ValueEnum)]
pub(crate) enum InitBackend {
    Iptables,
    IptablesLegacy,
    Nftables,
}

#[derive(Args)]
pub(crate) struct DemoArgs {
    /// Leave the mesh running and print each component's admin URLs until Ctrl-C.
    #[arg(long)]
    pub(crate) keep: bool,
}
