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
