//! What the store records and hands back: SVIDs, identities,
//! revocations, policy bundles and audit events.

use std::collections::BTreeMap;

use serde::Serialize;

use super::kinds::{IdentityStatus, SvidKind};
use super::unix_now;
use crate::reason::Reason;

/// One SVID as the inventory records it.
#[derive(Debug, Clone, Serialize, PartialEq, Eq)]
pub struct SvidRecord {
    pub serial: String,
    pub spiffe_id: String,
    /// SHA-256 of the certified SubjectPublicKeyInfo, hex.
    pub key_sha256: String,
    pub issued_at: i64,
    pub expires_at: i64,
    /// `join` (first SVID, by token) or `renew`.
    pub kind: SvidKind,
    /// The sidecar instance that asked for it.
    pub instance: String,
    pub revoked: bool,
    /// The Warden version the sidecar reported (`Warden-Version`), if any.
    pub sidecar_version: Option<String>,
}

/// One identity: everything known about a SPIFFE ID.
#[derive(Debug, Clone, Serialize, PartialEq, Eq)]
pub struct IdentityRecord {
    pub spiffe_id: String,
    /// `pending` (token made, never joined), `active`, `expired`, `stale`, `revoked`.
    pub status: IdentityStatus,
    pub labels: serde_json::Map<String, serde_json::Value>,
    pub created_at: i64,
    pub last_issued_at: Option<i64>,
    pub expires_at: Option<i64>,
    pub last_serial: Option<String>,
    pub instance: Option<String>,
    /// The Warden version the sidecar reported with its last SVID.
    pub sidecar_version: Option<String>,
    pub svids_issued: i64,
    pub revoked_at: Option<i64>,
    pub revoke_reason: Option<String>,
    /// Unix seconds: the last request it made (reported by the callee's
    /// sidecar), within the usage retention.
    pub last_seen_as_caller: Option<i64>,
    /// The last request it served.
    pub last_seen_as_callee: Option<i64>,
}

/// What sidecars must refuse.
#[derive(Debug, Clone, Default, Serialize, PartialEq, Eq)]
pub struct Revocations {
    /// How many revocations were made; changes with every revocation.
    pub seq: i64,
    pub spiffe_ids: Vec<String>,
    /// Revoked serials that have not expired yet (an expired certificate is
    /// refused anyway).
    pub serials: Vec<String>,
}

/// A stored policy bundle.
#[derive(Debug, Clone, Serialize, PartialEq, Eq)]
pub struct PolicyBundle {
    pub version: i64,
    pub created_at: i64,
    /// The policy set's content digest, the version sidecars report.
    pub digest: String,
    /// File name to text, `schema.cedarschema` included if pushed.
    pub files: BTreeMap<String, String>,
}

/// One audit record.
#[derive(Debug, Clone, Serialize, PartialEq, Eq)]
pub struct AuditEvent {
    pub at: i64,
    /// `token_created`, `join`, `renew`, `revoke`, `policy_push`, `policy_rollback`, `admin`, ...
    pub event: String,
    /// `ok` or `refused`.
    pub outcome: String,
    pub spiffe_id: Option<String>,
    pub serial: Option<String>,
    /// Stable reason code for refusals.
    pub reason: Option<String>,
    pub detail: String,
    /// Who asked: a SPIFFE ID, `admin`, a token id, an address.
    pub actor: String,
}

/// What the signer hands back for the store to record.
pub struct Signed<T> {
    pub record: SvidRecord,
    pub value: T,
}

impl AuditEvent {
    pub fn ok(event: &str, spiffe_id: Option<&str>, serial: Option<&str>, actor: &str) -> Self {
        AuditEvent {
            at: unix_now(),
            event: event.to_owned(),
            outcome: "ok".to_owned(),
            spiffe_id: spiffe_id.map(str::to_owned),
            serial: serial.map(str::to_owned),
            reason: None,
            detail: String::new(),
            actor: actor.to_owned(),
        }
    }

    pub fn refused(event: &str, reason: Reason, detail: impl Into<String>, actor: &str) -> Self {
        AuditEvent {
            outcome: "refused".to_owned(),
            reason: Some(reason.code().to_owned()),
            detail: detail.into(),
            ..Self::ok(event, None, None, actor)
        }
    }

    pub fn with_detail(mut self, detail: impl Into<String>) -> Self {
        self.detail = detail.into();
        self
    }

    pub fn with_id(mut self, spiffe_id: Option<&str>) -> Self {
        self.spiffe_id = spiffe_id.map(str::to_owned);
        self
    }
}
