//! Transparent interception: the rules `warden init` sets in a workload's
//! network namespace so that its TCP goes through its sidecar without the
//! app knowing ([`rules`]), and installing or removing them with iptables
//! or nftables ([`apply`]); and where a redirected connection was going
//! ([`original_dst`]).

pub mod apply;
pub mod original_dst;
pub mod rules;

pub use apply::{Backend, InitError, Outcome, install, remove};
pub use original_dst::{Redirected, original_dst, redirected};
pub use rules::{Cidr, Family, Interception, IptablesRules, RulesError};
