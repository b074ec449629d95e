//! The command line: every command, argument and flag, with the help
//! text clap shows. The commands themselves are in `cli/`.

mod control;
mod identity;
mod policy;

use std::path::PathBuf;

use clap::{Args, Parser, Subcommand};

pub(crate) use control::{
    AdminArgs, ControlBackupArgs, ControlCommand, ControlMigrateArgs, ControlRestoreArgs,
    ControlServeArgs, IdentitiesCommand, TokenCommand, TokenCreateArgs,
};
pub(crate) use identity::{
    CaCommand, CaInitArgs, IdCommand, SvidCommand, SvidInspectArgs, SvidIssueArgs,
};
pub(crate) use policy::{PolicyCheckArgs, PolicyCommand, PolicyEvalArgs};

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
    /// The control plane: the CA, join tokens, renewal, revocation and
    /// policy distribution over one HTTPS API.
    #[command(subcommand)]
    Control(ControlCommand),
    /// The inventory of every identity the control plane issued.
    #[command(subcommand)]
    Identities(IdentitiesCommand),
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
    /// Threads serving traffic. 1 (the default) runs everything on one
    /// thread: a sidecar shares its node with the app, and on a busy
    /// machine cross-thread wakeups cost more than a second core gains.
    #[arg(long, env = "WARDEN_WORKERS", default_value_t = 1)]
    pub(crate) workers: usize,
}

#[derive(Args)]
pub(crate) struct DemoArgs {
    /// Leave the mesh running and print each component's admin URLs until Ctrl-C.
    #[arg(long)]
    pub(crate) keep: bool,
}
