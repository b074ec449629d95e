//! `warden`: the one binary for people and machines. Argument parsing lives
//! here; each command group is a module under `cli/`.

mod cli;

/// jemalloc, its background threads returning freed memory to the system
/// within seconds (glibc's allocator kept 20x the idle RSS after 10,000
/// connections came and went; see the README's pressure bench).
#[cfg(feature = "jemalloc")]
#[global_allocator]
static ALLOCATOR: tikv_jemallocator::Jemalloc = tikv_jemallocator::Jemalloc;

use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use clap::{Args, Parser, Subcommand};

#[derive(Parser)]
#[command(
    name = "warden",
    version,
    about = "Warden: a service-mesh sidecar that gives every workload a SPIFFE identity and enforces it",
    long_about = None,
)]
struct Cli {
    /// Log filter, RUST_LOG syntax (for example `info` or `warden_proxy=debug`).
    #[arg(long, global = true, env = "WARDEN_LOG", default_value = "warn")]
    log: String,
    /// Log lines as `text` or `json` (one JSON object per line).
    #[arg(
        long,
        global = true,
        env = "WARDEN_LOG_FORMAT",
        value_enum,
        default_value = "text"
    )]
    log_format: LogFormat,
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
    audit: AuditLevel,
    #[command(subcommand)]
    command: Command,
}

#[derive(Clone, Copy, clap::ValueEnum)]
enum AuditLevel {
    Deny,
    All,
}

#[derive(Clone, Copy, clap::ValueEnum)]
enum LogFormat {
    Text,
    Json,
}

/// Audit records (`warden::audit`) go to their own sink, which neither
/// `--log` nor the admin API's log filter can turn off.
const AUDIT_TARGET: &str = "warden::audit";

/// Installs the log subscriber, to stderr: the log lines, with a filter
/// that can be replaced while running (the sidecar's admin API does), and
/// the audit lines, which that filter does not govern.
fn init_logging(
    filter: &str,
    format: LogFormat,
    audit: AuditLevel,
) -> warden_proxy::sidecar::LogControl {
    use tracing_subscriber::Layer;
    use tracing_subscriber::filter::filter_fn;
    use tracing_subscriber::layer::SubscriberExt;
    use tracing_subscriber::util::SubscriberInitExt;
    let initial = tracing_subscriber::EnvFilter::try_new(filter).unwrap_or_else(|_| "warn".into());
    let (log_filter, handle) = tracing_subscriber::reload::Layer::new(initial);
    let sink = || match format {
        LogFormat::Text => tracing_subscriber::fmt::layer()
            .with_writer(std::io::stderr)
            .boxed(),
        LogFormat::Json => tracing_subscriber::fmt::layer()
            .json()
            .with_current_span(false)
            .with_writer(std::io::stderr)
            .boxed(),
    };
    let logs = sink()
        .with_filter(filter_fn(|meta| meta.target() != AUDIT_TARGET))
        .with_filter(log_filter)
        .boxed();
    // Denies are audited at warn, allowed requests at debug.
    let audit_level = match audit {
        AuditLevel::Deny => tracing::Level::INFO,
        AuditLevel::All => tracing::Level::DEBUG,
    };
    let audit = sink()
        .with_filter(
            tracing_subscriber::filter::Targets::new().with_target(AUDIT_TARGET, audit_level),
        )
        .boxed();
    let _ = tracing_subscriber::registry()
        .with(vec![logs, audit])
        .try_init();
    let current = std::sync::Arc::new(std::sync::Mutex::new(filter.to_owned()));
    std::sync::Arc::new(move |new: Option<&str>| {
        let mut current = current
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        if let Some(new) = new {
            let parsed = tracing_subscriber::EnvFilter::try_new(new)
                .map_err(|e| format!("{new:?} is not a log filter: {e}"))?;
            handle.reload(parsed).map_err(|e| e.to_string())?;
            *current = new.to_owned();
        }
        Ok(current.clone())
    })
}

#[derive(Subcommand)]
enum Command {
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

#[derive(Subcommand)]
enum ControlCommand {
    /// Serve the control-plane API. On first start creates the CA (unless
    /// --ca-dir names one made by `warden ca init`), the database and the
    /// admin token in --data-dir.
    Serve(ControlServeArgs),
    /// Join tokens.
    #[command(subcommand)]
    Token(TokenCommand),
    /// Apply the database's pending schema migrations (`serve` also applies
    /// them on start), or list them with --dry-run.
    Migrate(ControlMigrateArgs),
    /// Take a consistent copy of the SQLite database while the control
    /// plane serves (the CA's key in `<data-dir>/ca` is not in it: back that
    /// up with your secrets). For PostgreSQL use pg_dump.
    Backup(ControlBackupArgs),
    /// Put a backup taken by `backup` back as the database of a data
    /// directory that has none.
    Restore(ControlRestoreArgs),
}

#[derive(Args)]
struct ControlMigrateArgs {
    /// The control plane's data directory (its database is `control.db`).
    #[arg(long, env = "WARDEN_CONTROL_DIR", default_value = "warden-control")]
    data_dir: PathBuf,
    /// A PostgreSQL URL or SQLite file instead of `<data-dir>/control.db`.
    #[arg(long, env = "WARDEN_CONTROL_DATABASE")]
    database: Option<String>,
    /// Only list applied and pending migrations; change nothing.
    #[arg(long)]
    dry_run: bool,
    /// Print the result as JSON.
    #[arg(long)]
    json: bool,
}

#[derive(Args)]
struct ControlBackupArgs {
    /// The control plane's data directory (its database is `control.db`).
    #[arg(long, env = "WARDEN_CONTROL_DIR", default_value = "warden-control")]
    data_dir: PathBuf,
    /// The backup file to create (refused if it exists); written 0600.
    #[arg(long)]
    out: PathBuf,
    /// Print the result as JSON.
    #[arg(long)]
    json: bool,
}

#[derive(Args)]
struct ControlRestoreArgs {
    /// The data directory to restore into: it must have no `control.db`.
    #[arg(long, env = "WARDEN_CONTROL_DIR", default_value = "warden-control")]
    data_dir: PathBuf,
    /// A file made by `warden control backup`.
    #[arg(long)]
    from: PathBuf,
    /// Print the result as JSON.
    #[arg(long)]
    json: bool,
}

#[derive(Subcommand)]
enum TokenCommand {
    /// Print a single-use join token bound to one SPIFFE ID.
    Create(TokenCreateArgs),
}

#[derive(Args)]
struct ControlServeArgs {
    /// Directory for the CA, the database, `admin.token` and `control.json`.
    #[arg(long, env = "WARDEN_CONTROL_DIR", default_value = "warden-control")]
    data_dir: PathBuf,
    /// The HTTPS API.
    #[arg(long, default_value = "127.0.0.1:7443")]
    listen: std::net::SocketAddr,
    /// Plaintext `/live`, `/ready` and `/metrics`.
    #[arg(long, default_value = "127.0.0.1:7080")]
    metrics_listen: std::net::SocketAddr,
    /// A CA directory prepared with `warden ca init` (default: `<data-dir>/ca`,
    /// created on first start).
    #[arg(long)]
    ca_dir: Option<PathBuf>,
    /// Trust domain of the CA created on first start (default `warden.local`).
    #[arg(long)]
    trust_domain: Option<String>,
    /// Default SVID lifetime of the CA created on first start.
    #[arg(long, value_parser = humantime::parse_duration)]
    svid_ttl: Option<Duration>,
    /// State store: `postgres://user:password@host:port/db` (replicas share
    /// it, and the CA via --ca-dir), or a SQLite file. Default: SQLite
    /// `<data-dir>/control.db`.
    #[arg(long, env = "WARDEN_CONTROL_DATABASE")]
    database: Option<String>,
}

/// How admin commands reach the control plane.
#[derive(Args, Clone)]
struct AdminArgs {
    /// The control plane's data directory: `control.json`, `bundle.pem` and
    /// `admin.token` are read from it (copy those three to administer from elsewhere).
    #[arg(long, env = "WARDEN_CONTROL_DIR", default_value = "warden-control")]
    data_dir: PathBuf,
    /// API address, instead of the one in `control.json`.
    #[arg(long, env = "WARDEN_CONTROL_SERVER")]
    server: Option<std::net::SocketAddr>,
    /// Trust bundle that authenticates the control plane (default `<data-dir>/bundle.pem`).
    #[arg(long)]
    bundle: Option<PathBuf>,
    /// Admin token file (default `<data-dir>/admin.token`).
    #[arg(long)]
    admin_token_file: Option<PathBuf>,
}

#[derive(Args)]
struct TokenCreateArgs {
    /// The SPIFFE ID the joining sidecar will get, e.g. `spiffe://warden.local/ns/prod/sa/api`.
    #[arg(long)]
    spiffe_id: String,
    /// How long the token may be used (single use either way).
    #[arg(long, default_value = "15m", value_parser = humantime::parse_duration)]
    ttl: Duration,
    /// Owner or other label for the inventory, KEY=VALUE (repeatable).
    #[arg(long)]
    label: Vec<String>,
    /// Print token, id, SPIFFE ID and expiry as JSON.
    #[arg(long)]
    json: bool,
    #[command(flatten)]
    admin: AdminArgs,
}

#[derive(Subcommand)]
enum IdentitiesCommand {
    /// Every identity: status (pending, active, expired, stale, revoked),
    /// expiry, last serial, instance and labels.
    List {
        /// Only active identities whose SVID expires within this window.
        #[arg(long, value_parser = humantime::parse_duration)]
        expiring_within: Option<Duration>,
        /// Only identities with this status.
        #[arg(long)]
        status: Option<String>,
        #[arg(long)]
        json: bool,
        #[command(flatten)]
        admin: AdminArgs,
    },
    /// One identity (by SPIFFE ID or SVID serial) with every SVID issued to it, as JSON.
    Show {
        target: String,
        #[arg(long, hide = true)]
        json: bool,
        #[command(flatten)]
        admin: AdminArgs,
    },
    /// Revoke an identity (every SVID, no more issuance) or one SVID by
    /// serial; sidecars refuse it and cut its connections within seconds.
    Revoke {
        target: String,
        #[arg(long)]
        reason: String,
        #[command(flatten)]
        admin: AdminArgs,
    },
}

#[derive(Args)]
struct ProxyArgs {
    /// TOML configuration file (see the README's configuration table).
    #[arg(long, env = "WARDEN_CONFIG")]
    config: Option<PathBuf>,
    /// Override one setting, `section.key=value` (repeatable); wins over the
    /// file and over `WARDEN_<SECTION>_<KEY>` environment variables.
    #[arg(long = "set", value_name = "KEY=VALUE")]
    set: Vec<String>,
    /// Threads serving traffic. 1 (the default) runs everything on one
    /// thread: a sidecar shares its node with the app, and on a busy
    /// machine cross-thread wakeups cost more than a second core gains.
    #[arg(long, env = "WARDEN_WORKERS", default_value_t = 1)]
    workers: usize,
}

#[derive(Args)]
struct DemoArgs {
    /// Leave the mesh running and print each component's admin URLs until Ctrl-C.
    #[arg(long)]
    keep: bool,
}

#[derive(Subcommand)]
enum PolicyCommand {
    /// Validate a policy directory (its `*.cedar` files against its
    /// `schema.cedarschema`, or the built-in schema). Exits 1 with every
    /// problem, located by file and line.
    Check(PolicyCheckArgs),
    /// Decide one request against a policy directory and say why: the
    /// decision, the deciding policies with their file and line, and any
    /// evaluation errors. Exits 0 on allow, 1 on deny.
    Eval(Box<PolicyEvalArgs>),
    /// Validate a policy directory and store it on the control plane as the
    /// next version; sidecars with `control.policies = true` hot-swap it.
    Push {
        dir: PathBuf,
        #[command(flatten)]
        admin: AdminArgs,
    },
    /// Make an earlier policy version current again.
    Rollback {
        version: i64,
        #[command(flatten)]
        admin: AdminArgs,
    },
    /// List the policy versions stored on the control plane.
    Versions {
        #[command(flatten)]
        admin: AdminArgs,
    },
}

#[derive(Args)]
struct PolicyCheckArgs {
    /// Directory of `*.cedar` files.
    dir: PathBuf,
}

#[derive(Args)]
struct PolicyEvalArgs {
    /// Directory of `*.cedar` files.
    dir: PathBuf,
    /// The caller's SPIFFE ID, or `unauthenticated`.
    #[arg(long)]
    principal: String,
    /// HTTP method.
    #[arg(long, default_value = "GET")]
    method: String,
    /// Request path.
    #[arg(long, default_value = "/")]
    path: String,
    /// Host header.
    #[arg(long, default_value = "localhost")]
    host: String,
    /// A request header, NAME=VALUE (repeatable). Only headers the schema declares reach policies.
    #[arg(long)]
    header: Vec<String>,
    /// The caller's address.
    #[arg(long, default_value = "127.0.0.1")]
    source_ip: std::net::IpAddr,
    /// Name of the service being called (the Cedar resource).
    #[arg(long, default_value = "service")]
    service: String,
    /// The called service's own SPIFFE ID, which gives its trust domain and namespace.
    #[arg(long)]
    service_id: Option<String>,
    /// Decide as if at this time (RFC 3339), e.g. for time-boxed policies.
    #[arg(long)]
    at: Option<String>,
    /// Decide an opaque TCP connection (action `connect`) instead of an HTTP request.
    #[arg(long)]
    tcp: bool,
    /// Print the decision as one JSON line.
    #[arg(long)]
    json: bool,
}

#[derive(Subcommand)]
enum CaCommand {
    /// Create a CA: a new ECDSA P-256 root, or with --root-cert/--root-key an
    /// intermediate under an existing root. Never overwrites an existing CA.
    Init(CaInitArgs),
    /// Rotate the control plane's signing CA with no restart anywhere: the
    /// new root is published at once, signs after --grace, and the old root
    /// leaves the bundle once every SVID it signed has expired.
    Rotate {
        /// How long the new root is in the bundle before it signs (sidecars
        /// pick it up meanwhile).
        #[arg(long, default_value = "10m", value_parser = humantime::parse_duration)]
        grace: Duration,
        #[command(flatten)]
        admin: AdminArgs,
    },
    /// Show the control plane's CA rotation plan and trust bundle.
    Status {
        #[command(flatten)]
        admin: AdminArgs,
    },
}

#[derive(Args)]
struct CaInitArgs {
    /// Trust domain the CA issues identities for, e.g. `example.org`.
    #[arg(long)]
    trust_domain: String,
    /// Directory to create the CA in (created if missing).
    #[arg(long)]
    dir: PathBuf,
    /// PEM certificate of an existing CA to sign ours under (bring your own
    /// PKI); may be followed by its chain up to the root.
    #[arg(long, requires = "root_key")]
    root_cert: Option<PathBuf>,
    /// PEM private key of --root-cert.
    #[arg(long, requires = "root_cert")]
    root_key: Option<PathBuf>,
    /// Lifetime of the CA certificate.
    #[arg(long, default_value = "365d", value_parser = humantime::parse_duration)]
    ca_ttl: Duration,
    /// SVID lifetime when a request does not name one.
    #[arg(long, default_value = "1h", value_parser = humantime::parse_duration)]
    default_svid_ttl: Duration,
    /// Longest SVID lifetime the CA will sign.
    #[arg(long, default_value = "24h", value_parser = humantime::parse_duration)]
    max_svid_ttl: Duration,
}

#[derive(Subcommand)]
enum SvidCommand {
    /// Make a key here and have the local CA sign an SVID for it (a developer
    /// convenience; in a mesh the sidecar gets its SVID from the control plane).
    Issue(SvidIssueArgs),
    /// Show an SVID's identity, validity and every SPIFFE rule it breaks.
    /// Exits 1 if it breaks any, or if --bundle does not validate it.
    Inspect(SvidInspectArgs),
}

#[derive(Args)]
struct SvidIssueArgs {
    /// CA directory made by `warden ca init`.
    #[arg(long)]
    ca_dir: PathBuf,
    /// The workload's SPIFFE ID, e.g. `spiffe://example.org/ns/prod/sa/api`.
    #[arg(long)]
    spiffe_id: String,
    /// Lifetime of the SVID (at most the CA's maximum).
    #[arg(long, value_parser = humantime::parse_duration)]
    ttl: Option<Duration>,
    /// Directory to write svid.pem, svid.key (0600) and bundle.pem to;
    /// existing files are replaced atomically.
    #[arg(long)]
    out: PathBuf,
}

#[derive(Args)]
struct SvidInspectArgs {
    /// Certificate file: PEM (leaf first, chain may follow) or DER.
    file: PathBuf,
    /// Also validate the chain against this trust bundle (PEM or SPIFFE JSON).
    #[arg(long)]
    bundle: Option<PathBuf>,
    /// Print JSON instead of text.
    #[arg(long)]
    json: bool,
}

#[derive(Subcommand)]
enum IdCommand {
    /// Validate a SPIFFE ID: exit 0 if valid, else 1 and the rule it breaks.
    Check {
        /// The SPIFFE ID to check.
        id: String,
    },
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let log_control = init_logging(&cli.log, cli.log_format, cli.audit);
    warden_proxy::tls::install_default_provider();
    let result = match cli.command {
        Command::Ca(CaCommand::Init(args)) => cli::ca::init(args),
        Command::Ca(CaCommand::Rotate { grace, admin }) => cli::control::ca_rotate(grace, &admin),
        Command::Ca(CaCommand::Status { admin }) => cli::control::ca_status(&admin),
        Command::Svid(SvidCommand::Issue(args)) => cli::svid::issue(args),
        Command::Svid(SvidCommand::Inspect(args)) => cli::svid::inspect(args),
        Command::Id(IdCommand::Check { id }) => cli::id::check(&id),
        Command::Policy(PolicyCommand::Check(args)) => cli::policy::check(args),
        Command::Policy(PolicyCommand::Eval(args)) => cli::policy::eval(*args),
        Command::Proxy(args) => cli::proxy::run(args, log_control),
        Command::Demo(args) => cli::demo::run(args),
        Command::Control(ControlCommand::Serve(args)) => cli::control::serve(args),
        Command::Control(ControlCommand::Migrate(args)) => cli::control::migrate(args),
        Command::Control(ControlCommand::Backup(args)) => cli::control::backup(args),
        Command::Control(ControlCommand::Restore(args)) => cli::control::restore(args),
        Command::Control(ControlCommand::Token(TokenCommand::Create(args))) => {
            cli::control::token_create(args)
        }
        Command::Identities(command) => cli::control::identities(command),
        Command::Policy(PolicyCommand::Push { dir, admin }) => {
            cli::control::policy_push(&dir, &admin)
        }
        Command::Policy(PolicyCommand::Rollback { version, admin }) => {
            cli::control::policy_rollback(version, &admin)
        }
        Command::Policy(PolicyCommand::Versions { admin }) => cli::control::policy_versions(&admin),
    };
    match result {
        Ok(code) => code,
        Err(e) => {
            eprintln!("error: {}", cli::shown_lines(&format!("{e:#}")));
            ExitCode::FAILURE
        }
    }
}
