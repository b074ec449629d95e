//! Warden's sidecar data plane, and the workload-identity core
//! ([`identity`]) that the control plane shares.

pub mod authz;
pub mod control;
pub mod identity;
pub mod intercept;
pub mod process;
pub mod sidecar;
pub mod tls;
pub mod watcher;
