//! A decision: its outcome, the policies that made it, and how the facts
//! the engine found become one.

use serde::Serialize;

use super::{Mode, PolicyEngine};

/// The outcome of one authorization, for the response, the trace span and
/// the audit line.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Decision {
    /// Whether the request may proceed (always true in audit mode).
    pub allowed: bool,
    /// What the policies decided (a deny in audit mode is still `allowed`).
    pub decision: Outcome,
    pub mode: Mode,
    pub principal: String,
    pub action: String,
    pub resource: String,
    /// The policies that decided: the permits for an allow, the forbids for
    /// a deny caused by a forbid; empty for a default deny.
    pub policies: Vec<String>,
    /// Evaluation errors; any error makes the decision a deny.
    pub errors: Vec<String>,
    pub policy_version: String,
}

/// What the policies decided, serialized as `"allow"` or `"deny"`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Outcome {
    Allow,
    Deny,
}

impl Outcome {
    /// The label in metrics, spans and access logs.
    pub fn as_str(self) -> &'static str {
        match self {
            Outcome::Allow => "allow",
            Outcome::Deny => "deny",
        }
    }
}

impl std::fmt::Display for Outcome {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// So `decision.decision == "deny"` reads as it always has.
impl PartialEq<&str> for Outcome {
    fn eq(&self, other: &&str) -> bool {
        self.as_str() == *other
    }
}

impl Decision {
    /// One JSON line for the audit log.
    pub fn audit_json(&self) -> String {
        serde_json::to_string(self).unwrap_or_default()
    }
}

impl PolicyEngine {
    /// The decision from the satisfied forbids and permits and the
    /// evaluation errors, whichever way they were found.
    pub(super) fn conclude(
        &self,
        principal: String,
        action: &str,
        policy_version: String,
        forbids: Vec<String>,
        permits: Vec<String>,
        errors: Vec<String>,
    ) -> Decision {
        let decided_allow = forbids.is_empty() && !permits.is_empty();
        // Cedar skips a policy whose evaluation errors, even a forbid; Warden
        // denies instead, so an erroring forbid can never let a request through.
        let allow = decided_allow && errors.is_empty();
        // The deciding policies: permits for an allow, forbids for a forbid
        // deny. An allow overturned by an error has none (the errors say why).
        let policies = if allow {
            permits
        } else if decided_allow {
            Vec::new()
        } else {
            forbids
        };
        self.finish(allow, principal, action, policy_version, policies, errors)
    }

    pub(super) fn finish(
        &self,
        allow: bool,
        principal: String,
        action: &str,
        policy_version: String,
        mut policies: Vec<String>,
        mut errors: Vec<String>,
    ) -> Decision {
        // Cedar reports in no particular order; sorted, decisions compare and log stably.
        policies.sort();
        errors.sort();
        let decision = Decision {
            allowed: allow || self.mode == Mode::Audit,
            decision: if allow { Outcome::Allow } else { Outcome::Deny },
            mode: self.mode,
            principal,
            action: action.to_owned(),
            resource: self.resource_text.clone(),
            policies,
            errors,
            policy_version,
        };
        // The caller writes the audit line: it knows the request (id,
        // trace, path), which a second line here would not.
        decision
    }
}
