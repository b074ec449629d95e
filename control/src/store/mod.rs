//! The control plane's state: join tokens, the inventory of every identity
//! and SVID the CA issued, revocations, policy bundles and the audit trail.
//!
//! Embedded SQLite (WAL, `synchronous=FULL`) by default, or PostgreSQL so
//! that several control-plane replicas share one state ([`Database`]).
//! Every operation that changes state is one transaction, and an SVID is
//! recorded in the same transaction that consumes its token or authorizes
//! its renewal, before the certificate leaves the process: a certificate in
//! a workload's hands is always in the inventory, and a `kill -9` at any
//! point loses nothing that was committed.

mod backend;
mod backup;
pub mod migrate;

use std::collections::BTreeMap;

use serde::Serialize;

pub use backend::Database;

use crate::reason::Reason;
use backend::{Backend, Row, Sql};
pub use backup::{BackupReport, backup_sqlite, restore_sqlite};
pub use migrate::{Dialect, MigrationSet, SchemaStatus};

/// A refused or failed store operation; [`StoreError::reason`] is what
/// the API and the audit trail say.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("{message}")]
    Refused { reason: Reason, message: String },
    #[error("database: {message}")]
    Db { message: String, retryable: bool },
    /// The schema is newer than this build can run on, its history diverges
    /// from the code, or a migration failed (and was rolled back).
    #[error("database schema: {0}")]
    Schema(String),
}

impl StoreError {
    pub fn refused(reason: Reason, message: impl Into<String>) -> Self {
        StoreError::Refused {
            reason,
            message: message.into(),
        }
    }

    pub(crate) fn db(message: impl Into<String>, retryable: bool) -> Self {
        StoreError::Db {
            message: message.into(),
            retryable,
        }
    }

    pub(crate) fn schema(message: impl Into<String>) -> Self {
        StoreError::Schema(message.into())
    }

    fn retryable(&self) -> bool {
        matches!(
            self,
            StoreError::Db {
                retryable: true,
                ..
            }
        )
    }

    pub fn reason(&self) -> Reason {
        match self {
            StoreError::Refused { reason, .. } => *reason,
            StoreError::Db { .. } => Reason::Database,
            StoreError::Schema(_) => Reason::Schema,
        }
    }

    pub fn code(&self) -> &'static str {
        self.reason().code()
    }
}

/// An identity becomes `stale` once it has gone unrenewed for this many
/// lifetimes past its last SVID's expiry: its workload is gone, and whoever
/// owns it should clean it up.
pub const STALE_LIFETIMES: i64 = 3;

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
    pub kind: String,
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
    pub status: String,
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
}

impl IdentityRecord {
    fn status_at(&mut self, now: i64, ttl: Option<i64>) {
        self.status = if self.revoked_at.is_some() {
            "revoked"
        } else {
            match (self.expires_at, ttl) {
                (None, _) => "pending",
                (Some(exp), _) if exp > now => "active",
                (Some(exp), Some(ttl)) if now - exp > STALE_LIFETIMES * ttl.max(1) => "stale",
                _ => "expired",
            }
        }
        .to_owned();
    }
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

/// The control plane's database.
pub struct Store {
    backend: Backend,
    /// Also print each audit record as a JSON line on stdout.
    echo_audit: bool,
}

fn labels_map(text: &str) -> serde_json::Map<String, serde_json::Value> {
    serde_json::from_str(text).unwrap_or_default()
}

fn revoked_at(sql: &mut dyn Sql, spiffe_id: &str) -> Result<Option<Option<i64>>, StoreError> {
    sql.row(
        "SELECT revoked_at FROM identities WHERE spiffe_id = ?1",
        &[spiffe_id.into()],
    )?
    .map(|r| r.opt_int(0))
    .transpose()
}

impl Store {
    /// Opens (creating the schema if needed) `database`. With `echo_audit`,
    /// every audit record is also a JSON line on stdout.
    pub fn open(database: &Database, echo_audit: bool) -> Result<Self, StoreError> {
        Self::open_with(database, echo_audit, None)
    }

    /// [`Store::open`] with a migration set other than this build's (tests:
    /// an older control plane, or a step that fails).
    pub fn open_with(
        database: &Database,
        echo_audit: bool,
        migrations: Option<&MigrationSet>,
    ) -> Result<Self, StoreError> {
        Ok(Store {
            backend: Backend::open(database, migrations)?,
            echo_audit,
        })
    }

    /// Where `database`'s schema stands; with `apply`, migrates it first.
    /// Opens nothing else (the `warden control migrate` command).
    pub fn migrate(database: &Database, apply: bool) -> Result<SchemaStatus, StoreError> {
        backend::migrate(database, None, apply)
    }

    /// Records an audit event (outside any other transaction: refusals are
    /// audited even though they change nothing else).
    pub fn audit(&self, event: &AuditEvent) -> Result<(), StoreError> {
        self.backend.tx(|sql| insert_audit(sql, event))?;
        self.echo(event);
        Ok(())
    }

    fn echo(&self, e: &AuditEvent) {
        if self.echo_audit
            && let Ok(line) = serde_json::to_string(&serde_json::json!({ "audit": e }))
        {
            println!("{line}");
        }
    }

    /// Stores a join token (by its hash only) bound to `spiffe_id`. Refused
    /// for a revoked identity.
    pub fn create_token(
        &self,
        hash: &str,
        token_id: &str,
        spiffe_id: &str,
        labels: &serde_json::Map<String, serde_json::Value>,
        now: i64,
        expires_at: i64,
    ) -> Result<(), StoreError> {
        let event = AuditEvent::ok("token_created", Some(spiffe_id), None, "admin")
            .with_detail(format!("token {token_id} expires at {expires_at}"));
        let labels_text = serde_json::Value::Object(labels.clone()).to_string();
        self.backend.tx(|sql| {
            let existing = sql.row(
                "SELECT revoked_at, labels FROM identities WHERE spiffe_id = ?1",
                &[spiffe_id.into()],
            )?;
            if let Some(row) = &existing
                && row.opt_int(0)?.is_some()
            {
                return Err(StoreError::refused(
                    Reason::IdentityRevoked,
                    format!("{spiffe_id} is revoked; no token can be made for it"),
                ));
            }
            sql.exec(
                "INSERT INTO tokens (hash, token_id, spiffe_id, labels, created_at, expires_at) VALUES (?1, ?2, ?3, ?4, ?5, ?6)",
                &[hash.into(), token_id.into(), spiffe_id.into(), labels_text.clone().into(), now.into(), expires_at.into()],
            )?;
            // Labels given at token creation describe the identity; later
            // tokens may add labels, never drop them.
            match existing {
                None => {
                    sql.exec(
                        "INSERT INTO identities (spiffe_id, labels, created_at) VALUES (?1, ?2, ?3)",
                        &[spiffe_id.into(), labels_text.clone().into(), now.into()],
                    )?;
                }
                Some(row) => {
                    let mut merged = labels_map(&row.text(1)?);
                    merged.extend(labels.clone());
                    sql.exec(
                        "UPDATE identities SET labels = ?2 WHERE spiffe_id = ?1",
                        &[spiffe_id.into(), serde_json::Value::Object(merged).to_string().into()],
                    )?;
                }
            }
            insert_audit(sql, &event)
        })?;
        self.echo(&event);
        Ok(())
    }

    /// Redeems a join token: checks it (unused, unexpired, identity not
    /// revoked), calls `sign` with the bound SPIFFE ID, records the SVID and
    /// marks the token used, in one transaction. A refusal changes nothing.
    /// `sign` may run more than once (a transaction retried after a
    /// conflict with another replica); only one result is ever returned.
    pub fn redeem_token<T>(
        &self,
        hash: &str,
        now: i64,
        sign: impl Fn(&str) -> Result<Signed<T>, StoreError>,
    ) -> Result<T, StoreError> {
        let (value, event) = self.backend.tx(|sql| {
            let row = sql.row(
                "SELECT token_id, spiffe_id, expires_at, used_at FROM tokens WHERE hash = ?1",
                &[hash.into()],
            )?;
            let Some(row) = row else {
                return Err(StoreError::refused(
                    Reason::UnknownToken,
                    "the join token is not known to this control plane",
                ));
            };
            let (token_id, spiffe_id) = (row.text(0)?, row.text(1)?);
            if let Some(used) = row.opt_int(3)? {
                return Err(StoreError::refused(
                    Reason::TokenReused,
                    format!(
                        "join token {token_id} was already used at {used}; tokens are single-use"
                    ),
                ));
            }
            let expires_at = row.int(2)?;
            if expires_at <= now {
                return Err(StoreError::refused(
                    Reason::TokenExpired,
                    format!("join token {token_id} expired at {expires_at}"),
                ));
            }
            check_not_revoked(sql, &spiffe_id)?;
            let signed = sign(&spiffe_id)?;
            insert_svid(sql, &signed.record)?;
            sql.exec(
                "UPDATE tokens SET used_at = ?2 WHERE hash = ?1",
                &[hash.into(), now.into()],
            )?;
            let event = AuditEvent::ok(
                "join",
                Some(&spiffe_id),
                Some(&signed.record.serial),
                &format!("token:{token_id}"),
            )
            .with_detail(format!(
                "instance {} expires at {}",
                signed.record.instance, signed.record.expires_at
            ));
            insert_audit(sql, &event)?;
            Ok((signed.value, event))
        })?;
        self.echo(&event);
        Ok(value)
    }

    /// Renews for the holder of `serial` (its current SVID, already verified
    /// by the TLS handshake): refused if that SVID was not issued here, or
    /// it or its identity is revoked. `sign` may run more than once, as for
    /// [`Store::redeem_token`].
    pub fn renew<T>(
        &self,
        spiffe_id: &str,
        serial: &str,
        sign: impl Fn(&str) -> Result<Signed<T>, StoreError>,
    ) -> Result<T, StoreError> {
        let (value, event) = self.backend.tx(|sql| {
            let row = sql.row(
                "SELECT spiffe_id, revoked FROM svids WHERE serial = ?1",
                &[serial.into()],
            )?;
            let Some(row) = row else {
                return Err(StoreError::refused(
                    Reason::UnknownSvid,
                    format!("SVID {serial} was not issued by this control plane"),
                ));
            };
            let owner = row.text(0)?;
            if owner != spiffe_id {
                return Err(StoreError::refused(
                    Reason::IdentityMismatch,
                    format!("SVID {serial} belongs to {owner}, not {spiffe_id}"),
                ));
            }
            if row.int(1)? != 0 {
                return Err(StoreError::refused(
                    Reason::SvidRevoked,
                    format!("SVID {serial} is revoked"),
                ));
            }
            check_not_revoked(sql, spiffe_id)?;
            let signed = sign(spiffe_id)?;
            insert_svid(sql, &signed.record)?;
            let event = AuditEvent::ok(
                "renew",
                Some(spiffe_id),
                Some(&signed.record.serial),
                spiffe_id,
            )
            .with_detail(format!(
                "renewed {serial}; instance {} expires at {}",
                signed.record.instance, signed.record.expires_at
            ));
            insert_audit(sql, &event)?;
            Ok((signed.value, event))
        })?;
        self.echo(&event);
        Ok(value)
    }

    /// Revokes an identity (`spiffe://...`) or one SVID (its serial).
    /// Returns the SPIFFE ID affected and how many SVIDs were revoked.
    pub fn revoke(
        &self,
        target: &str,
        reason: &str,
        now: i64,
    ) -> Result<(String, usize), StoreError> {
        let (result, event) = self.backend.tx(|sql| {
            let result = if target.starts_with("spiffe://") {
                match revoked_at(sql, target)? {
                    None => {
                        return Err(StoreError::refused(
                            Reason::UnknownIdentity,
                            format!("{target} is not in the inventory"),
                        ));
                    }
                    Some(Some(at)) => {
                        return Err(StoreError::refused(
                            Reason::AlreadyRevoked,
                            format!("{target} was already revoked at {at}"),
                        ));
                    }
                    Some(None) => {}
                }
                sql.exec(
                    "UPDATE identities SET revoked_at = ?2, revoke_reason = ?3 WHERE spiffe_id = ?1",
                    &[target.into(), now.into(), reason.into()],
                )?;
                let n = sql.exec(
                    "UPDATE svids SET revoked = 1 WHERE spiffe_id = ?1 AND revoked = 0",
                    &[target.into()],
                )?;
                // Unused tokens for it die with it.
                sql.exec(
                    "UPDATE tokens SET used_at = ?2 WHERE spiffe_id = ?1 AND used_at IS NULL",
                    &[target.into(), now.into()],
                )?;
                sql.exec(
                    "INSERT INTO revocations (at, spiffe_id, reason) VALUES (?1, ?2, ?3)",
                    &[now.into(), target.into(), reason.into()],
                )?;
                (target.to_owned(), usize::try_from(n).unwrap_or(usize::MAX))
            } else {
                let serial = target.to_ascii_lowercase().replace(':', "");
                let row = sql.row(
                    "SELECT spiffe_id, expires_at, revoked FROM svids WHERE serial = ?1",
                    &[serial.as_str().into()],
                )?;
                let Some(row) = row else {
                    return Err(StoreError::refused(
                        Reason::UnknownSerial,
                        format!("no SVID with serial {serial} was issued here"),
                    ));
                };
                if row.int(2)? != 0 {
                    return Err(StoreError::refused(
                        Reason::AlreadyRevoked,
                        format!("SVID {serial} was already revoked"),
                    ));
                }
                sql.exec("UPDATE svids SET revoked = 1 WHERE serial = ?1", &[serial.as_str().into()])?;
                sql.exec(
                    "INSERT INTO revocations (at, serial, expires_at, reason) VALUES (?1, ?2, ?3, ?4)",
                    &[now.into(), serial.as_str().into(), row.int(1)?.into(), reason.into()],
                )?;
                (row.text(0)?, 1)
            };
            let event = AuditEvent::ok("revoke", Some(&result.0), None, "admin")
                .with_detail(format!("{target}: {reason}"));
            insert_audit(sql, &event)?;
            Ok((result, event))
        })?;
        self.echo(&event);
        Ok(result)
    }

    /// Everything sidecars must refuse now.
    pub fn revocations(&self, now: i64) -> Result<Revocations, StoreError> {
        self.backend.tx(|sql| {
            let seq = revocation_seq(sql)?;
            let spiffe_ids = sql
                .rows(
                    "SELECT spiffe_id FROM revocations WHERE spiffe_id IS NOT NULL ORDER BY spiffe_id",
                    &[],
                )?
                .iter()
                .map(|r| r.text(0))
                .collect::<Result<_, _>>()?;
            let serials = sql
                .rows(
                    "SELECT serial FROM revocations WHERE serial IS NOT NULL AND expires_at > ?1 ORDER BY serial",
                    &[now.into()],
                )?
                .iter()
                .map(|r| r.text(0))
                .collect::<Result<_, _>>()?;
            Ok(Revocations { seq, spiffe_ids, serials })
        })
    }

    /// Highest revocation sequence number and the current policy version:
    /// cheap, for the watch poller.
    pub fn change_marks(&self) -> Result<(i64, Option<i64>), StoreError> {
        self.backend
            .tx(|sql| Ok((revocation_seq(sql)?, policy_head(sql)?)))
    }

    /// The latest expiry of the SVIDs issued at or before `at`: once past,
    /// a CA that stopped signing at `at` has no live SVID left.
    pub fn last_expiry_issued_by(&self, at: i64) -> Result<i64, StoreError> {
        self.backend.tx(|sql| {
            sql.row(
                "SELECT COALESCE(MAX(expires_at), 0) FROM svids WHERE issued_at <= ?1",
                &[at.into()],
            )?
            .map_or(Ok(0), |r| r.int(0))
        })
    }

    /// Highest revocation sequence number.
    pub fn revocation_seq(&self) -> Result<i64, StoreError> {
        self.backend.tx(revocation_seq)
    }

    /// Every identity, with its status at `now`.
    pub fn identities(&self, now: i64) -> Result<Vec<IdentityRecord>, StoreError> {
        self.backend.tx(|sql| query_identities(sql, now, None))
    }

    /// The SPIFFE ID an SVID serial was issued to.
    pub fn owner_of_serial(&self, serial: &str) -> Result<Option<String>, StoreError> {
        self.backend.tx(|sql| {
            sql.row(
                "SELECT spiffe_id FROM svids WHERE serial = ?1",
                &[serial.into()],
            )?
            .map(|r| r.text(0))
            .transpose()
        })
    }

    /// One identity and every SVID issued to it, newest first.
    pub fn identity(
        &self,
        spiffe_id: &str,
        now: i64,
    ) -> Result<Option<(IdentityRecord, Vec<SvidRecord>)>, StoreError> {
        self.backend.tx(|sql| {
            let Some(identity) = query_identities(sql, now, Some(spiffe_id))?.pop() else {
                return Ok(None);
            };
            let svids = sql
                .rows(
                    "SELECT serial, spiffe_id, key_sha256, issued_at, expires_at, kind, instance, revoked, \
                     sidecar_version FROM svids WHERE spiffe_id = ?1 ORDER BY issued_at DESC, expires_at DESC, serial DESC",
                    &[spiffe_id.into()],
                )?
                .iter()
                .map(svid_row)
                .collect::<Result<Vec<_>, _>>()?;
            Ok(Some((identity, svids)))
        })
    }

    /// Stores a validated policy bundle and makes it current. Pushing the
    /// files of the current bundle again is a no-op that returns its version.
    pub fn push_policy(
        &self,
        digest: &str,
        files: &BTreeMap<String, String>,
        now: i64,
    ) -> Result<(i64, bool), StoreError> {
        let files_text = serde_json::to_string(files).unwrap_or_default();
        let (result, event) = self.backend.tx(|sql| {
            if let Some(current) = current_policy(sql)?
                && current.digest == digest
            {
                return Ok(((current.version, false), None));
            }
            let version = sql
                .row(
                    "INSERT INTO policies (created_at, digest, files) VALUES (?1, ?2, ?3) RETURNING version",
                    &[now.into(), digest.into(), files_text.as_str().into()],
                )?
                .ok_or_else(|| StoreError::db("INSERT returned no version", false))?
                .int(0)?;
            set_policy_head(sql, version)?;
            let event = AuditEvent::ok("policy_push", None, None, "admin")
                .with_detail(format!("version {version}, digest {digest}"));
            insert_audit(sql, &event)?;
            Ok(((version, true), Some(event)))
        })?;
        if let Some(event) = event {
            self.echo(&event);
        }
        Ok(result)
    }

    /// Makes an earlier bundle current again.
    pub fn rollback_policy(&self, version: i64) -> Result<PolicyBundle, StoreError> {
        let (bundle, event) = self.backend.tx(|sql| {
            let Some(bundle) = policy_version(sql, version)? else {
                return Err(StoreError::refused(
                    Reason::UnknownVersion,
                    format!("there is no policy version {version}"),
                ));
            };
            set_policy_head(sql, version)?;
            let event = AuditEvent::ok("policy_rollback", None, None, "admin")
                .with_detail(format!("version {version}, digest {}", bundle.digest));
            insert_audit(sql, &event)?;
            Ok((bundle, event))
        })?;
        self.echo(&event);
        Ok(bundle)
    }

    /// The current policy bundle, if one was ever pushed.
    pub fn current_policy(&self) -> Result<Option<PolicyBundle>, StoreError> {
        self.backend.tx(current_policy)
    }

    /// The current policy version.
    pub fn policy_head(&self) -> Result<Option<i64>, StoreError> {
        self.backend.tx(policy_head)
    }

    /// Every stored policy version, without the files.
    pub fn policy_versions(&self) -> Result<Vec<(i64, i64, String)>, StoreError> {
        self.backend.tx(|sql| {
            sql.rows(
                "SELECT version, created_at, digest FROM policies ORDER BY version",
                &[],
            )?
            .iter()
            .map(|r| Ok((r.int(0)?, r.int(1)?, r.text(2)?)))
            .collect()
        })
    }

    /// The newest audit records, oldest first.
    pub fn audit_tail(&self, limit: u32) -> Result<Vec<AuditEvent>, StoreError> {
        let mut rows = self.backend.tx(|sql| {
            sql.rows(
                "SELECT at, event, outcome, spiffe_id, serial, reason, detail, actor FROM audit \
                 ORDER BY seq DESC LIMIT ?1",
                &[i64::from(limit).into()],
            )?
            .iter()
            .map(|r| {
                Ok(AuditEvent {
                    at: r.int(0)?,
                    event: r.text(1)?,
                    outcome: r.text(2)?,
                    spiffe_id: r.opt_text(3)?,
                    serial: r.opt_text(4)?,
                    reason: r.opt_text(5)?,
                    detail: r.text(6)?,
                    actor: r.text(7)?,
                })
            })
            .collect::<Result<Vec<_>, StoreError>>()
        })?;
        rows.reverse();
        Ok(rows)
    }
}

/// How many revocations are committed. A count, not `MAX(seq)`: on
/// PostgreSQL sequence values can commit out of order, and a revocation
/// committed after a higher one must still change the mark watchers compare.
fn revocation_seq(sql: &mut dyn Sql) -> Result<i64, StoreError> {
    sql.row("SELECT COUNT(*) FROM revocations", &[])?
        .map_or(Ok(0), |r| r.int(0))
}

fn policy_head(sql: &mut dyn Sql) -> Result<Option<i64>, StoreError> {
    sql.row("SELECT version FROM policy_head WHERE id = 1", &[])?
        .map(|r| r.int(0))
        .transpose()
}

fn set_policy_head(sql: &mut dyn Sql, version: i64) -> Result<(), StoreError> {
    sql.exec(
        "INSERT INTO policy_head (id, version) VALUES (1, ?1) ON CONFLICT (id) DO UPDATE SET version = ?1",
        &[version.into()],
    )?;
    Ok(())
}

fn query_identities(
    sql: &mut dyn Sql,
    now: i64,
    only: Option<&str>,
) -> Result<Vec<IdentityRecord>, StoreError> {
    let rows = sql.rows(
        "SELECT i.spiffe_id, i.labels, i.created_at, i.revoked_at, i.revoke_reason, \
                s.issued_at, s.expires_at, s.serial, s.instance, \
                (SELECT COUNT(*) FROM svids c WHERE c.spiffe_id = i.spiffe_id), s.sidecar_version \
         FROM identities i \
         LEFT JOIN svids s ON s.serial = ( \
             SELECT l.serial FROM svids l WHERE l.spiffe_id = i.spiffe_id \
             ORDER BY l.issued_at DESC, l.expires_at DESC, l.serial DESC LIMIT 1) \
         WHERE (CAST(?1 AS TEXT) IS NULL OR i.spiffe_id = CAST(?1 AS TEXT)) \
         ORDER BY i.spiffe_id",
        &[only.into()],
    )?;
    rows.iter()
        .map(|r| {
            let issued = r.opt_int(5)?;
            let expires = r.opt_int(6)?;
            let ttl = issued.zip(expires).map(|(i, e)| e - i);
            let mut record = IdentityRecord {
                spiffe_id: r.text(0)?,
                status: String::new(),
                labels: labels_map(&r.text(1)?),
                created_at: r.int(2)?,
                revoked_at: r.opt_int(3)?,
                revoke_reason: r.opt_text(4)?,
                last_issued_at: issued,
                expires_at: expires,
                last_serial: r.opt_text(7)?,
                instance: r.opt_text(8)?,
                svids_issued: r.int(9)?,
                sidecar_version: r.opt_text(10)?,
            };
            record.status_at(now, ttl);
            Ok(record)
        })
        .collect()
}

fn check_not_revoked(sql: &mut dyn Sql, spiffe_id: &str) -> Result<(), StoreError> {
    match revoked_at(sql, spiffe_id)? {
        Some(Some(at)) => Err(StoreError::refused(
            Reason::IdentityRevoked,
            format!("{spiffe_id} was revoked at {at}"),
        )),
        Some(None) => Ok(()),
        None => Err(StoreError::refused(
            Reason::UnknownIdentity,
            format!("{spiffe_id} is not in the inventory"),
        )),
    }
}

fn insert_svid(sql: &mut dyn Sql, svid: &SvidRecord) -> Result<(), StoreError> {
    sql.exec(
        "INSERT INTO svids (serial, spiffe_id, key_sha256, issued_at, expires_at, kind, instance, \
         sidecar_version) VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8)",
        &[
            (&svid.serial).into(),
            (&svid.spiffe_id).into(),
            (&svid.key_sha256).into(),
            svid.issued_at.into(),
            svid.expires_at.into(),
            (&svid.kind).into(),
            (&svid.instance).into(),
            svid.sidecar_version.as_ref().into(),
        ],
    )?;
    Ok(())
}

fn svid_row(r: &Row) -> Result<SvidRecord, StoreError> {
    Ok(SvidRecord {
        serial: r.text(0)?,
        spiffe_id: r.text(1)?,
        key_sha256: r.text(2)?,
        issued_at: r.int(3)?,
        expires_at: r.int(4)?,
        kind: r.text(5)?,
        instance: r.text(6)?,
        revoked: r.int(7)? != 0,
        sidecar_version: r.opt_text(8)?,
    })
}

fn insert_audit(sql: &mut dyn Sql, e: &AuditEvent) -> Result<(), StoreError> {
    sql.exec(
        "INSERT INTO audit (at, event, outcome, spiffe_id, serial, reason, detail, actor) \
         VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8)",
        &[
            e.at.into(),
            (&e.event).into(),
            (&e.outcome).into(),
            e.spiffe_id.as_ref().into(),
            e.serial.as_ref().into(),
            e.reason.as_ref().into(),
            (&e.detail).into(),
            (&e.actor).into(),
        ],
    )?;
    Ok(())
}

fn policy_version(sql: &mut dyn Sql, version: i64) -> Result<Option<PolicyBundle>, StoreError> {
    sql.row(
        "SELECT version, created_at, digest, files FROM policies WHERE version = ?1",
        &[version.into()],
    )?
    .map(|r| {
        Ok(PolicyBundle {
            version: r.int(0)?,
            created_at: r.int(1)?,
            digest: r.text(2)?,
            files: serde_json::from_str(&r.text(3)?).unwrap_or_default(),
        })
    })
    .transpose()
}

fn current_policy(sql: &mut dyn Sql) -> Result<Option<PolicyBundle>, StoreError> {
    match policy_head(sql)? {
        Some(v) => policy_version(sql, v),
        None => Ok(None),
    }
}

pub fn unix_now() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| i64::try_from(d.as_secs()).unwrap_or(i64::MAX))
        .unwrap_or(0)
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

    pub fn refused(event: &str, reason: &str, detail: impl Into<String>, actor: &str) -> Self {
        AuditEvent {
            outcome: "refused".to_owned(),
            reason: Some(reason.to_owned()),
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

#[cfg(test)]
mod tests {
    use super::*;

    fn record(serial: &str, id: &str, issued: i64, ttl: i64) -> SvidRecord {
        SvidRecord {
            serial: serial.into(),
            spiffe_id: id.into(),
            key_sha256: "k".into(),
            issued_at: issued,
            expires_at: issued + ttl,
            kind: "join".into(),
            instance: "i".into(),
            revoked: false,
            sidecar_version: None,
        }
    }

    #[test]
    fn tokens_are_single_use_and_refusals_change_nothing() {
        let dir = tempfile::tempdir().expect("tempdir");
        let store = Store::open(&Database::Sqlite(dir.path().join("db")), false).expect("open");
        let id = "spiffe://td/a";
        store
            .create_token("h", "t1", id, &serde_json::Map::new(), 100, 200)
            .expect("token");
        let refused = store
            .redeem_token("h", 150, |_| -> Result<Signed<()>, StoreError> {
                Err(StoreError::refused(
                    crate::reason::Reason::Csr(crate::reason::CsrReason::Malformed),
                    "no",
                ))
            })
            .expect_err("signer refused");
        assert_eq!(refused.code(), "csr_malformed");
        // The refusal did not burn the token.
        store
            .redeem_token("h", 150, |bound| {
                assert_eq!(bound, id);
                Ok(Signed {
                    record: record("s1", id, 150, 60),
                    value: (),
                })
            })
            .expect("redeem");
        let again = store
            .redeem_token("h", 151, |_| -> Result<Signed<()>, StoreError> {
                unreachable!("a used token never reaches the signer")
            })
            .expect_err("reuse");
        assert_eq!(again.code(), "token_reused");
        store
            .create_token("h2", "t2", id, &serde_json::Map::new(), 100, 120)
            .expect("token");
        let expired = store
            .redeem_token("h2", 150, |_| -> Result<Signed<()>, StoreError> {
                unreachable!()
            })
            .expect_err("expired");
        assert_eq!(expired.code(), "token_expired");
        let identities = store.identities(160).expect("list");
        assert_eq!(identities.len(), 1);
        assert_eq!(identities[0].status, "active");
        assert_eq!(identities[0].svids_issued, 1);
        assert_eq!(store.identities(211).expect("list")[0].status, "expired");
        assert_eq!(
            store.identities(211 + 181).expect("list")[0].status,
            "stale"
        );
    }

    #[test]
    fn revocation_blocks_renewal_and_is_listed() {
        let dir = tempfile::tempdir().expect("tempdir");
        let store = Store::open(&Database::Sqlite(dir.path().join("db")), false).expect("open");
        let id = "spiffe://td/a";
        store
            .create_token("h", "t1", id, &serde_json::Map::new(), 100, 200)
            .expect("token");
        store
            .redeem_token("h", 150, |_| {
                Ok(Signed {
                    record: record("s1", id, 150, 60),
                    value: (),
                })
            })
            .expect("redeem");
        store
            .renew(id, "s1", |_| {
                Ok(Signed {
                    record: record("s2", id, 170, 60),
                    value: (),
                })
            })
            .expect("renew");
        assert_eq!(
            store
                .renew(
                    "spiffe://td/b",
                    "s2",
                    |_| -> Result<Signed<()>, StoreError> { unreachable!() }
                )
                .expect_err("other id")
                .code(),
            "identity_mismatch"
        );
        store
            .revoke("S2", "key leaked", 180)
            .expect("revoke serial");
        assert_eq!(
            store
                .renew(id, "s2", |_| -> Result<Signed<()>, StoreError> {
                    unreachable!()
                })
                .expect_err("revoked serial")
                .code(),
            "svid_revoked"
        );
        let r = store.revocations(181).expect("revocations");
        assert_eq!(r.serials, ["s2"]);
        assert!(r.spiffe_ids.is_empty());
        // Expired serials drop off the list.
        assert!(store.revocations(300).expect("r").serials.is_empty());
        store.revoke(id, "decommissioned", 190).expect("revoke id");
        assert_eq!(
            store
                .renew(id, "s1", |_| -> Result<Signed<()>, StoreError> {
                    unreachable!()
                })
                .expect_err("revoked id")
                .code(),
            "svid_revoked"
        );
        assert_eq!(
            store
                .create_token("h3", "t3", id, &serde_json::Map::new(), 200, 300)
                .expect_err("no token for revoked")
                .code(),
            "identity_revoked"
        );
        assert_eq!(store.revocations(200).expect("r").spiffe_ids, [id]);
        assert_eq!(store.identities(200).expect("l")[0].status, "revoked");
        assert_eq!(
            store.revoke(id, "again", 201).expect_err("twice").code(),
            "already_revoked"
        );
    }
}
