//! `warden access ...`: least privilege from observed use.

use std::path::PathBuf;
use std::time::Duration;

use clap::Subcommand;

use super::AdminArgs;

#[derive(Subcommand)]
pub(crate) enum AccessCommand {
    /// Per identity, what the current policies allow it (asked of the
    /// policy engine, per service, action and route seen) against what it
    /// used: grants never used, policies that decided nothing, permits
    /// covering many identities of which few used them.
    Report {
        /// The window: usage seen this long ago or later (whole days).
        #[arg(long, value_parser = humantime::parse_duration, default_value = "7d")]
        since: Duration,
        /// Only this identity (a SPIFFE ID).
        #[arg(long)]
        identity: Option<String>,
        #[arg(long)]
        json: bool,
        #[command(flatten)]
        admin: AdminArgs,
    },
    /// Edges first seen in the window: a caller calling a service for the
    /// first time, or calling it from a source range (/24, /64) not seen
    /// before for it. Each was also audited (`new_edge`).
    Edges {
        #[arg(long, value_parser = humantime::parse_duration, default_value = "1h")]
        new_since: Duration,
        #[arg(long)]
        json: bool,
        #[command(flatten)]
        admin: AdminArgs,
    },
    /// The access graph as a self-contained HTML page (inline SVG):
    /// identities, observed calls weighted by count, denied attempts red,
    /// grants nobody used dashed.
    Graph {
        /// The file to write (`-`: stdout).
        #[arg(long)]
        out: PathBuf,
        #[arg(long, value_parser = humantime::parse_duration, default_value = "7d")]
        since: Duration,
        #[command(flatten)]
        admin: AdminArgs,
    },
}
