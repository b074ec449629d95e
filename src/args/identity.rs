//! `warden ca ...`, `warden svid ...` and `warden id ...`: the CA, SVIDs
//! and SPIFFE IDs.

use std::path::PathBuf;
use std::time::Duration;

use clap::{Args, Subcommand};

use super::AdminArgs;

#[derive(Subcommand)]
pub(crate) enum CaCommand {
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
pub(crate) struct CaInitArgs {
    /// Trust domain the CA issues identities for, e.g. `example.org`.
    #[arg(long)]
    pub(crate) trust_domain: String,
    /// Directory to create the CA in (created if missing).
    #[arg(long)]
    pub(crate) dir: PathBuf,
    /// PEM certificate of an existing CA to sign ours under (bring your own
    /// PKI); may be followed by its chain up to the root.
    #[arg(long, requires = "root_key")]
    pub(crate) root_cert: Option<PathBuf>,
    /// PEM private key of --root-cert.
    #[arg(long, requires = "root_cert")]
    pub(crate) root_key: Option<PathBuf>,
    /// Lifetime of the CA certificate.
    #[arg(long, default_value = "365d", value_parser = humantime::parse_duration)]
    pub(crate) ca_ttl: Duration,
    /// SVID lifetime when a request does not name one.
    #[arg(long, default_value = "1h", value_parser = humantime::parse_duration)]
    pub(crate) default_svid_ttl: Duration,
    /// Longest SVID lifetime the CA will sign.
    #[arg(long, default_value = "24h", value_parser = humantime::parse_duration)]
    pub(crate) max_svid_ttl: Duration,
}

#[derive(Subcommand)]
pub(crate) enum SvidCommand {
    /// Make a key here and have the local CA sign an SVID for it (a developer
    /// convenience; in a mesh the sidecar gets its SVID from the control plane).
    Issue(SvidIssueArgs),
    /// Show an SVID's identity, validity and every SPIFFE rule it breaks.
    /// Exits 1 if it breaks any, or if --bundle does not validate it.
    Inspect(SvidInspectArgs),
}

#[derive(Args)]
pub(crate) struct SvidIssueArgs {
    /// CA directory made by `warden ca init`.
    #[arg(long)]
    pub(crate) ca_dir: PathBuf,
    /// The workload's SPIFFE ID, e.g. `spiffe://example.org/ns/prod/sa/api`.
    #[arg(long)]
    pub(crate) spiffe_id: String,
    /// Lifetime of the SVID (at most the CA's maximum).
    #[arg(long, value_parser = humantime::parse_duration)]
    pub(crate) ttl: Option<Duration>,
    /// Directory to write svid.pem, svid.key (0600) and bundle.pem to;
    /// existing files are replaced atomically.
    #[arg(long)]
    pub(crate) out: PathBuf,
}

#[derive(Args)]
pub(crate) struct SvidInspectArgs {
    /// Certificate file: PEM (leaf first, chain may follow) or DER.
    pub(crate) file: PathBuf,
    /// Also validate the chain against this trust bundle (PEM or SPIFFE JSON).
    #[arg(long)]
    pub(crate) bundle: Option<PathBuf>,
    /// Print JSON instead of text.
    #[arg(long)]
    pub(crate) json: bool,
}

#[derive(Subcommand)]
pub(crate) enum IdCommand {
    /// Validate a SPIFFE ID: exit 0 if valid, else 1 and the rule it breaks.
    Check {
        /// The SPIFFE ID to check.
        id: String,
    },
}
