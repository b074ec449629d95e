//! `warden control ...`, `warden identities ...` and the flags every admin
//! command shares to reach the control plane.

use std::path::PathBuf;
use std::time::Duration;

use clap::{Args, Subcommand};

#[derive(Subcommand)]
pub(crate) enum ControlCommand {
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
pub(crate) struct ControlMigrateArgs {
    /// The control plane's data directory (its database is `control.db`).
    #[arg(long, env = "WARDEN_CONTROL_DIR", default_value = "warden-control")]
    pub(crate) data_dir: PathBuf,
    /// A PostgreSQL URL or SQLite file instead of `<data-dir>/control.db`.
    #[arg(long, env = "WARDEN_CONTROL_DATABASE")]
    pub(crate) database: Option<String>,
    /// Only list applied and pending migrations; change nothing.
    #[arg(long)]
    pub(crate) dry_run: bool,
    /// Print the result as JSON.
    #[arg(long)]
    pub(crate) json: bool,
}

#[derive(Args)]
pub(crate) struct ControlBackupArgs {
    /// The control plane's data directory (its database is `control.db`).
    #[arg(long, env = "WARDEN_CONTROL_DIR", default_value = "warden-control")]
    pub(crate) data_dir: PathBuf,
    /// The backup file to create (refused if it exists); written 0600.
    #[arg(long)]
    pub(crate) out: PathBuf,
    /// Print the result as JSON.
    #[arg(long)]
    pub(crate) json: bool,
}

#[derive(Args)]
pub(crate) struct ControlRestoreArgs {
    /// The data directory to restore into: it must have no `control.db`.
    #[arg(long, env = "WARDEN_CONTROL_DIR", default_value = "warden-control")]
    pub(crate) data_dir: PathBuf,
    /// A file made by `warden control backup`.
    #[arg(long)]
    pub(crate) from: PathBuf,
    /// Print the result as JSON.
    #[arg(long)]
    pub(crate) json: bool,
}

#[derive(Subcommand)]
pub(crate) enum TokenCommand {
    /// Print a single-use join token bound to one SPIFFE ID.
    Create(TokenCreateArgs),
}

#[derive(Args)]
pub(crate) struct ControlServeArgs {
    /// Directory for the CA, the database, `admin.token` and `control.json`.
    #[arg(long, env = "WARDEN_CONTROL_DIR", default_value = "warden-control")]
    pub(crate) data_dir: PathBuf,
    /// The HTTPS API.
    #[arg(long, default_value = "127.0.0.1:7443")]
    pub(crate) listen: std::net::SocketAddr,
    /// Plaintext `/live`, `/ready` and `/metrics`.
    #[arg(long, default_value = "127.0.0.1:7080")]
    pub(crate) metrics_listen: std::net::SocketAddr,
    /// A CA directory prepared with `warden ca init` (default: `<data-dir>/ca`,
    /// created on first start).
    #[arg(long)]
    pub(crate) ca_dir: Option<PathBuf>,
    /// Trust domain of the CA created on first start (default `warden.local`).
    #[arg(long)]
    pub(crate) trust_domain: Option<String>,
    /// Default SVID lifetime of the CA created on first start.
    #[arg(long, value_parser = humantime::parse_duration)]
    pub(crate) svid_ttl: Option<Duration>,
    /// State store: `postgres://user:password@host:port/db` (replicas share
    /// it, and the CA via --ca-dir), or a SQLite file. Default: SQLite
    /// `<data-dir>/control.db`.
    #[arg(long, env = "WARDEN_CONTROL_DATABASE")]
    pub(crate) database: Option<String>,
    /// Which addresses a sidecar may register for discovery: `caller`
    /// (only the address it connects from) or `any` (for sidecars behind
    /// NAT; any address no other live identity holds).
    #[arg(long, value_enum, default_value = "caller")]
    pub(crate) endpoint_addresses: EndpointAddressesArg,
    /// Attest pods by their projected service-account tokens: the `iss`
    /// of the cluster's tokens (`kubectl get --raw /.well-known/openid-configuration`).
    #[arg(long)]
    pub(crate) k8s_issuer: Option<String>,
    /// The cluster issuer's public keys, a JWKS file (`kubectl get --raw
    /// /openid/v1/jwks`); re-read when it changes.
    #[arg(long)]
    pub(crate) k8s_jwks: Option<PathBuf>,
    /// The audience of the injected pods' projected tokens.
    #[arg(long, default_value = "warden")]
    pub(crate) k8s_audience: String,
    /// Who may attest: NAMESPACE, NAMESPACE/SERVICE_ACCOUNT, or '*'
    /// (repeatable; required with --k8s-issuer).
    #[arg(long)]
    pub(crate) k8s_allow: Vec<String>,
    /// The longest lifetime (exp - iat) of a token that attests.
    #[arg(long, value_parser = humantime::parse_duration, default_value = "1h")]
    pub(crate) k8s_max_token_ttl: Duration,
    /// Also accept tokens bound to no pod (`kubectl create token`).
    #[arg(long)]
    pub(crate) k8s_allow_unbound: bool,
    /// Federate with another trust domain through its SPIFFE bundle
    /// endpoint (https_spiffe): TRUST_DOMAIN=https://HOST:PORT/PATH,spiffe_id=ENDPOINT_ID[,bundle=FILE],
    /// FILE being its bundle to authenticate the endpoint with until the
    /// first fetch (repeatable).
    #[arg(long, value_name = "TD=URL,spiffe_id=ID[,bundle=FILE]", value_parser = parse_federation)]
    pub(crate) federate_with: Vec<warden_control::server::Federation>,
    /// The refresh hint (spiffe_refresh_hint) of the bundle this control
    /// plane serves at /v1/spiffe-bundle.
    #[arg(long, value_parser = humantime::parse_duration, default_value = "5m")]
    pub(crate) bundle_refresh_hint: Duration,
    /// At most this many connections to PostgreSQL: concurrent requests'
    /// transactions run side by side (SQLite: one writer, whatever this says).
    #[arg(long, env = "WARDEN_CONTROL_DATABASE_CONNECTIONS", default_value_t = warden_control::store::PG_POOL)]
    pub(crate) database_connections: usize,
    /// Threads serving the API (TLS, HTTP, JSON); database work runs on
    /// blocking threads besides. Default: one per core.
    #[arg(long, env = "WARDEN_CONTROL_WORKERS")]
    pub(crate) workers: Option<usize>,
    /// How long the usage sidecars report is kept (whole days): older
    /// usage, and edges not seen since, are deleted hourly.
    #[arg(long, value_parser = humantime::parse_duration, default_value = "30d")]
    pub(crate) usage_retention: Duration,
}

fn parse_federation(s: &str) -> Result<warden_control::server::Federation, String> {
    s.parse()
}

#[derive(Subcommand)]
pub(crate) enum BundleCommand {
    /// This trust domain's bundle, as the SPIFFE bundle endpoint serves it
    /// (`--format pem`: the X.509 authorities only).
    Show {
        #[arg(long, value_enum, default_value = "spiffe")]
        format: BundleFormat,
        #[command(flatten)]
        admin: AdminArgs,
    },
    /// Ours and every federated trust domain's: sequence, last refresh,
    /// endpoint, and why the last fetch failed if it did.
    List {
        #[arg(long)]
        json: bool,
        #[command(flatten)]
        admin: AdminArgs,
    },
}

#[derive(Clone, Copy, clap::ValueEnum)]
pub(crate) enum BundleFormat {
    Spiffe,
    Pem,
}

#[derive(Clone, Copy, clap::ValueEnum)]
pub(crate) enum EndpointAddressesArg {
    Caller,
    Any,
}

/// How admin commands reach the control plane.
#[derive(Args, Clone)]
pub(crate) struct AdminArgs {
    /// The control plane's data directory: `control.json`, `bundle.pem` and
    /// `admin.token` are read from it (copy those three to administer from elsewhere).
    #[arg(long, env = "WARDEN_CONTROL_DIR", default_value = "warden-control")]
    pub(crate) data_dir: PathBuf,
    /// API address, instead of the one in `control.json`.
    #[arg(long, env = "WARDEN_CONTROL_SERVER")]
    pub(crate) server: Option<std::net::SocketAddr>,
    /// Trust bundle that authenticates the control plane (default `<data-dir>/bundle.pem`).
    #[arg(long)]
    pub(crate) bundle: Option<PathBuf>,
    /// Admin token file (default `<data-dir>/admin.token`).
    #[arg(long)]
    pub(crate) admin_token_file: Option<PathBuf>,
}

#[derive(Args)]
pub(crate) struct TokenCreateArgs {
    /// The SPIFFE ID the joining sidecar will get, e.g. `spiffe://warden.local/ns/prod/sa/api`.
    #[arg(long)]
    pub(crate) spiffe_id: String,
    /// How long the token may be used (single use either way).
    #[arg(long, default_value = "15m", value_parser = humantime::parse_duration)]
    pub(crate) ttl: Duration,
    /// Owner or other label for the inventory, KEY=VALUE (repeatable).
    #[arg(long)]
    pub(crate) label: Vec<String>,
    /// Print token, id, SPIFFE ID and expiry as JSON.
    #[arg(long)]
    pub(crate) json: bool,
    #[command(flatten)]
    pub(crate) admin: AdminArgs,
}

#[derive(Subcommand)]
pub(crate) enum EndpointsCommand {
    /// Every live entry: address, ports, identity, instance, expiry.
    List {
        #[arg(long)]
        json: bool,
        #[command(flatten)]
        admin: AdminArgs,
    },
    /// Set a service address (a Kubernetes Service's ClusterIP): sidecars
    /// send what their apps send to it over mTLS, to this identity.
    Add {
        /// The address (`kubectl get svc NAME -o jsonpath='{.spec.clusterIP}'`).
        #[arg(long)]
        address: std::net::IpAddr,
        /// The identity the Service's pods prove.
        #[arg(long)]
        spiffe_id: String,
        /// The Service, `namespace/name`.
        #[arg(long)]
        name: String,
        /// Its ports, comma-separated (none: every port).
        #[arg(long, value_delimiter = ',')]
        ports: Vec<u16>,
        #[command(flatten)]
        admin: AdminArgs,
    },
    /// Remove a service address.
    Remove {
        #[arg(long)]
        address: std::net::IpAddr,
        #[command(flatten)]
        admin: AdminArgs,
    },
}

#[derive(Subcommand)]
pub(crate) enum IdentitiesCommand {
    /// Every identity: status (pending, active, expired, stale, revoked),
    /// expiry, last serial, instance and labels.
    List {
        /// Only active identities whose SVID expires within this window.
        #[arg(long, value_parser = humantime::parse_duration)]
        expiring_within: Option<Duration>,
        /// Only identities with this status.
        #[arg(long)]
        status: Option<String>,
        /// Only active identities that made and served no request in this
        /// window though they held an identity all through it (issued and
        /// renewed, unused): candidates for removal.
        #[arg(long, value_parser = humantime::parse_duration)]
        unused_for: Option<Duration>,
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
