//! Warden's control plane: the certificate authority that issues
//! X.509-SVIDs ([`ca`]), the inventory and audit trail ([`store`]), and the
//! HTTPS API sidecars and operators use ([`server`]).

pub mod access;
pub mod attest;
pub mod ca;
pub mod clock;
pub mod files;
pub mod reason;
pub mod server;
pub mod store;
