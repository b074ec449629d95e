//! Authorization: a Cedar decision on every request, keyed on the caller's
//! verified identity. Default deny, forbid wins, errors deny; policies are
//! validated against the schema, sliced by scope for speed and hot-swapped.
//!
//! Where a request is authorized: [`PeerAuthorizer::authorize_http`].

pub mod context_needs;
pub mod engine;
mod error;
pub mod index;
pub mod model;
mod native;
pub mod policy_error;
pub mod policy_files;
pub mod policy_set;
pub mod reload;

pub use engine::{Decision, Mode, Outcome, PeerAuthorizer, PolicyEngine};
pub use error::AuthzError;
pub use model::{
    HttpRequestFacts, Peer, ServiceInfo, TcpConnectionFacts, TlsVersion, UnauthenticatedKind,
};
pub use policy_set::{
    PolicyError, PolicyFiles, PolicyIssue, PolicySchema, PolicySnapshot, PolicySource,
    read_policy_dir,
};
pub use reload::{PolicyWatcher, ReloadStatus};
