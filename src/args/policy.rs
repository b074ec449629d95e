//! `warden policy ...`.

use std::path::PathBuf;

use clap::{Args, Subcommand};

use super::AdminArgs;

#[derive(Subcommand)]
pub(crate) enum PolicyCommand {
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
    /// First replays the recorded usage under it and prints what it would
    /// break or newly allow; asks before pushing a change (--yes: do not).
    Push(PolicyPushArgs),
    /// Write a least-privilege policy set that permits exactly the allowed
    /// traffic observed in the window (one permit per caller, service and
    /// action; routes as path patterns), keeping the current forbids.
    /// Validated against the schema. No usage in the window: says so and
    /// writes nothing.
    Propose {
        #[arg(long, value_parser = humantime::parse_duration, default_value = "7d")]
        since: std::time::Duration,
        /// Write the files into this directory (created; refused if it
        /// holds any file). Default: print them.
        #[arg(long)]
        out: Option<PathBuf>,
        #[command(flatten)]
        admin: AdminArgs,
    },
    /// Decide the recorded usage under a candidate policy directory: every
    /// (caller, action, service, route) whose decision would change, with
    /// the requests affected. Exits 0 when nothing changes, 1 otherwise.
    Replay {
        dir: PathBuf,
        #[arg(long, value_parser = humantime::parse_duration, default_value = "7d")]
        since: std::time::Duration,
        #[arg(long)]
        json: bool,
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
pub(crate) struct PolicyPushArgs {
    pub(crate) dir: PathBuf,
    /// Push without asking, whatever the replay shows (scripts).
    #[arg(long)]
    pub(crate) yes: bool,
    /// The window of usage replayed before the push.
    #[arg(long, value_parser = humantime::parse_duration, default_value = "7d")]
    pub(crate) since: std::time::Duration,
    #[command(flatten)]
    pub(crate) admin: AdminArgs,
}

#[derive(Args)]
pub(crate) struct PolicyCheckArgs {
    /// Directory of `*.cedar` files.
    pub(crate) dir: PathBuf,
}

#[derive(Args)]
pub(crate) struct PolicyEvalArgs {
    /// Directory of `*.cedar` files.
    pub(crate) dir: PathBuf,
    /// The caller's SPIFFE ID, or `unauthenticated`.
    #[arg(long)]
    pub(crate) principal: String,
    /// HTTP method.
    #[arg(long, default_value = "GET")]
    pub(crate) method: String,
    /// Request path.
    #[arg(long, default_value = "/")]
    pub(crate) path: String,
    /// Host header.
    #[arg(long, default_value = "localhost")]
    pub(crate) host: String,
    /// A request header, NAME=VALUE (repeatable). Only headers the schema declares reach policies.
    #[arg(long)]
    pub(crate) header: Vec<String>,
    /// The caller's address.
    #[arg(long, default_value = "127.0.0.1")]
    pub(crate) source_ip: std::net::IpAddr,
    /// Name of the service being called (the Cedar resource).
    #[arg(long, default_value = "service")]
    pub(crate) service: String,
    /// The called service's own SPIFFE ID, which gives its trust domain and namespace.
    #[arg(long)]
    pub(crate) service_id: Option<String>,
    /// Decide as if at this time (RFC 3339), e.g. for time-boxed policies.
    #[arg(long)]
    pub(crate) at: Option<String>,
    /// Decide an opaque TCP connection (action `connect`) instead of an HTTP request.
    #[arg(long)]
    pub(crate) tcp: bool,
    /// Print the decision as one JSON line.
    #[arg(long)]
    pub(crate) json: bool,
}
