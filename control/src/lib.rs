//! Warden's control plane. So far: the certificate authority that issues
//! X.509-SVIDs ([`ca`]) and the secure file writes it needs ([`files`]).

pub mod ca;
pub mod files;
