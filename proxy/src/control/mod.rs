//! The sidecar's side of the control plane: a small HTTPS client, the SVID
//! source that joins with a token and renews over mTLS, and the watch that
//! brings revocations, trust-bundle changes and policy bundles.

pub mod api;

mod addr;
mod client;
mod error;
mod source;
mod state_dir;
mod watch;

use sha2::{Digest, Sha256};

pub use addr::ControlAddr;
pub use client::{ControlClient, trust_store};
pub use error::ControlError;
pub use source::ControlSource;
pub use state_dir::StateDir;
pub use watch::{ApplyRegistry, Discovery, WatchState, WatchTargets, revoked_set, run_watch};

/// SHA-256 of `bytes`, lowercase hex.
pub fn digest_hex(bytes: &[u8]) -> String {
    hex::encode(Sha256::digest(bytes))
}
