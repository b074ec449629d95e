//! The control plane's state: join tokens, the inventory of every identity
//! and SVID the CA issued, revocations, policy bundles and the audit trail.
//!
//! Embedded SQLite in WAL mode with `synchronous=FULL`: a transaction that
//! returned is on disk, so a `kill -9` at any point loses nothing committed.
//! Every operation that changes state is one transaction, and an SVID is
//! recorded in the same transaction that consumes its token, before the
//! certificate leaves the process: a certificate in a workload's hands is
//! always in the inventory.

use std::path::Path;
use std::sync::Mutex;

use rusqlite::{Connection, OptionalExtension, TransactionBehavior, params};
use serde::Serialize;

/// A refused or failed store operation. `code` is a stable reason for the
/// API and the audit trail.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("{message}")]
    Refused { code: &'static str, message: String },
    #[error("database: {0}")]
    Db(#[from] rusqlite::Error),
}

impl StoreError {
    pub fn refused(code: &'static str, message: impl Into<String>) -> Self {
        StoreError::Refused {
            code,
            message: message.into(),
        }
    }

    pub fn code(&self) -> &'static str {
        match self {
            StoreError::Refused { code, .. } => code,
            StoreError::Db(_) => "database",
        }
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
    /// Highest revocation sequence number; changes with every revocation.
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
    pub files: std::collections::BTreeMap<String, String>,
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

/// The SQLite store.
pub struct Store {
    conn: Mutex<Connection>,
    /// Also print each audit record as a JSON line on stdout.
    echo_audit: bool,
}

const SCHEMA: &str = "
CREATE TABLE IF NOT EXISTS tokens (
    hash TEXT PRIMARY KEY,
    token_id TEXT NOT NULL,
    spiffe_id TEXT NOT NULL,
    labels TEXT NOT NULL,
    created_at INTEGER NOT NULL,
    expires_at INTEGER NOT NULL,
    used_at INTEGER
);
CREATE TABLE IF NOT EXISTS identities (
    spiffe_id TEXT PRIMARY KEY,
    labels TEXT NOT NULL,
    created_at INTEGER NOT NULL,
    revoked_at INTEGER,
    revoke_reason TEXT
);
CREATE TABLE IF NOT EXISTS svids (
    serial TEXT PRIMARY KEY,
    spiffe_id TEXT NOT NULL,
    key_sha256 TEXT NOT NULL,
    issued_at INTEGER NOT NULL,
    expires_at INTEGER NOT NULL,
    kind TEXT NOT NULL,
    instance TEXT NOT NULL,
    revoked INTEGER NOT NULL DEFAULT 0
);
CREATE INDEX IF NOT EXISTS svids_by_id ON svids (spiffe_id, issued_at);
CREATE TABLE IF NOT EXISTS revocations (
    seq INTEGER PRIMARY KEY AUTOINCREMENT,
    at INTEGER NOT NULL,
    spiffe_id TEXT,
    serial TEXT,
    expires_at INTEGER,
    reason TEXT NOT NULL
);
CREATE TABLE IF NOT EXISTS policies (
    version INTEGER PRIMARY KEY AUTOINCREMENT,
    created_at INTEGER NOT NULL,
    digest TEXT NOT NULL,
    files TEXT NOT NULL
);
CREATE TABLE IF NOT EXISTS policy_head (
    id INTEGER PRIMARY KEY CHECK (id = 1),
    version INTEGER NOT NULL
);
CREATE TABLE IF NOT EXISTS audit (
    seq INTEGER PRIMARY KEY AUTOINCREMENT,
    at INTEGER NOT NULL,
    event TEXT NOT NULL,
    outcome TEXT NOT NULL,
    spiffe_id TEXT,
    serial TEXT,
    reason TEXT,
    detail TEXT NOT NULL,
    actor TEXT NOT NULL
);
";

fn labels_map(text: &str) -> serde_json::Map<String, serde_json::Value> {
    serde_json::from_str(text).unwrap_or_default()
}

impl Store {
    /// Opens (creating if needed) the database at `path`. With
    /// `echo_audit`, every audit record is also a JSON line on stdout.
    pub fn open(path: &Path, echo_audit: bool) -> Result<Self, StoreError> {
        let conn = Connection::open(path)?;
        conn.busy_timeout(std::time::Duration::from_secs(5))?;
        conn.pragma_update(None, "journal_mode", "WAL")?;
        conn.pragma_update(None, "synchronous", "FULL")?;
        conn.pragma_update(None, "foreign_keys", "ON")?;
        conn.execute_batch(SCHEMA)?;
        Ok(Store {
            conn: Mutex::new(conn),
            echo_audit,
        })
    }

    fn conn(&self) -> std::sync::MutexGuard<'_, Connection> {
        // A panic while holding the lock rolled its transaction back (the
        // transaction guard drops); the connection itself is consistent.
        self.conn
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// Records an audit event (outside any other transaction: refusals are
    /// audited even though they change nothing else).
    pub fn audit(&self, event: &AuditEvent) -> Result<(), StoreError> {
        insert_audit(self.echo_audit, &self.conn(), event)
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
        let mut conn = self.conn();
        let tx = conn.transaction_with_behavior(TransactionBehavior::Immediate)?;
        let revoked: Option<Option<i64>> = tx
            .query_row(
                "SELECT revoked_at FROM identities WHERE spiffe_id = ?1",
                [spiffe_id],
                |r| r.get(0),
            )
            .optional()?;
        if let Some(Some(_)) = revoked {
            return Err(StoreError::refused(
                "identity_revoked",
                format!("{spiffe_id} is revoked; no token can be made for it"),
            ));
        }
        let labels_text = serde_json::Value::Object(labels.clone()).to_string();
        tx.execute(
            "INSERT INTO tokens (hash, token_id, spiffe_id, labels, created_at, expires_at) VALUES (?1, ?2, ?3, ?4, ?5, ?6)",
            params![hash, token_id, spiffe_id, labels_text, now, expires_at],
        )?;
        // Labels given at token creation describe the identity; later
        // tokens may add labels, never drop them.
        let existing: Option<String> = tx
            .query_row(
                "SELECT labels FROM identities WHERE spiffe_id = ?1",
                [spiffe_id],
                |r| r.get(0),
            )
            .optional()?;
        match existing {
            None => {
                tx.execute(
                    "INSERT INTO identities (spiffe_id, labels, created_at) VALUES (?1, ?2, ?3)",
                    params![spiffe_id, labels_text, now],
                )?;
            }
            Some(old) => {
                let mut merged = labels_map(&old);
                merged.extend(labels.clone());
                tx.execute(
                    "UPDATE identities SET labels = ?2 WHERE spiffe_id = ?1",
                    params![spiffe_id, serde_json::Value::Object(merged).to_string()],
                )?;
            }
        }
        insert_audit(
            self.echo_audit,
            &tx,
            &AuditEvent::ok("token_created", Some(spiffe_id), None, "admin")
                .with_detail(format!("token {token_id} expires at {expires_at}")),
        )?;
        tx.commit()?;
        Ok(())
    }

    /// Redeems a join token: checks it (unused, unexpired, identity not
    /// revoked), calls `sign` with the bound SPIFFE ID, records the SVID and
    /// marks the token used, in one transaction. A refusal changes nothing.
    pub fn redeem_token<T>(
        &self,
        hash: &str,
        now: i64,
        sign: impl FnOnce(&str) -> Result<Signed<T>, StoreError>,
    ) -> Result<T, StoreError> {
        let mut conn = self.conn();
        let tx = conn.transaction_with_behavior(TransactionBehavior::Immediate)?;
        let row: Option<(String, String, i64, Option<i64>)> = tx
            .query_row(
                "SELECT token_id, spiffe_id, expires_at, used_at FROM tokens WHERE hash = ?1",
                [hash],
                |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?, r.get(3)?)),
            )
            .optional()?;
        let Some((token_id, spiffe_id, expires_at, used_at)) = row else {
            return Err(StoreError::refused(
                "unknown_token",
                "the join token is not known to this control plane",
            ));
        };
        if let Some(used) = used_at {
            return Err(StoreError::refused(
                "token_reused",
                format!("join token {token_id} was already used at {used}; tokens are single-use"),
            ));
        }
        if expires_at <= now {
            return Err(StoreError::refused(
                "token_expired",
                format!("join token {token_id} expired at {expires_at}"),
            ));
        }
        check_not_revoked(&tx, &spiffe_id)?;
        let signed = sign(&spiffe_id)?;
        insert_svid(&tx, &signed.record)?;
        tx.execute(
            "UPDATE tokens SET used_at = ?2 WHERE hash = ?1",
            params![hash, now],
        )?;
        insert_audit(
            self.echo_audit,
            &tx,
            &AuditEvent::ok(
                "join",
                Some(&spiffe_id),
                Some(&signed.record.serial),
                &format!("token:{token_id}"),
            )
            .with_detail(format!(
                "instance {} expires at {}",
                signed.record.instance, signed.record.expires_at
            )),
        )?;
        tx.commit()?;
        Ok(signed.value)
    }

    /// Renews for the holder of `serial` (its current SVID, already verified
    /// by the TLS handshake): refused if that SVID was not issued here, or
    /// it or its identity is revoked.
    pub fn renew<T>(
        &self,
        spiffe_id: &str,
        serial: &str,
        sign: impl FnOnce(&str) -> Result<Signed<T>, StoreError>,
    ) -> Result<T, StoreError> {
        let mut conn = self.conn();
        let tx = conn.transaction_with_behavior(TransactionBehavior::Immediate)?;
        let row: Option<(String, bool)> = tx
            .query_row(
                "SELECT spiffe_id, revoked FROM svids WHERE serial = ?1",
                [serial],
                |r| Ok((r.get(0)?, r.get(1)?)),
            )
            .optional()?;
        match row {
            None => {
                return Err(StoreError::refused(
                    "unknown_svid",
                    format!("SVID {serial} was not issued by this control plane"),
                ));
            }
            Some((owner, _)) if owner != spiffe_id => {
                return Err(StoreError::refused(
                    "identity_mismatch",
                    format!("SVID {serial} belongs to {owner}, not {spiffe_id}"),
                ));
            }
            Some((_, true)) => {
                return Err(StoreError::refused(
                    "svid_revoked",
                    format!("SVID {serial} is revoked"),
                ));
            }
            Some(_) => {}
        }
        check_not_revoked(&tx, spiffe_id)?;
        let signed = sign(spiffe_id)?;
        insert_svid(&tx, &signed.record)?;
        insert_audit(
            self.echo_audit,
            &tx,
            &AuditEvent::ok(
                "renew",
                Some(spiffe_id),
                Some(&signed.record.serial),
                spiffe_id,
            )
            .with_detail(format!(
                "renewed {serial}; instance {} expires at {}",
                signed.record.instance, signed.record.expires_at
            )),
        )?;
        tx.commit()?;
        Ok(signed.value)
    }

    /// Revokes an identity (`spiffe://...`) or one SVID (its serial).
    /// Returns the SPIFFE ID affected and how many SVIDs were revoked.
    pub fn revoke(
        &self,
        target: &str,
        reason: &str,
        now: i64,
    ) -> Result<(String, usize), StoreError> {
        let mut conn = self.conn();
        let tx = conn.transaction_with_behavior(TransactionBehavior::Immediate)?;
        let result = if target.starts_with("spiffe://") {
            let known: Option<Option<i64>> = tx
                .query_row(
                    "SELECT revoked_at FROM identities WHERE spiffe_id = ?1",
                    [target],
                    |r| r.get(0),
                )
                .optional()?;
            match known {
                None => {
                    return Err(StoreError::refused(
                        "unknown_identity",
                        format!("{target} is not in the inventory"),
                    ));
                }
                Some(Some(at)) => {
                    return Err(StoreError::refused(
                        "already_revoked",
                        format!("{target} was already revoked at {at}"),
                    ));
                }
                Some(None) => {}
            }
            tx.execute(
                "UPDATE identities SET revoked_at = ?2, revoke_reason = ?3 WHERE spiffe_id = ?1",
                params![target, now, reason],
            )?;
            let n = tx.execute(
                "UPDATE svids SET revoked = 1 WHERE spiffe_id = ?1 AND revoked = 0",
                [target],
            )?;
            // Unused tokens for it die with it.
            tx.execute(
                "UPDATE tokens SET used_at = ?2 WHERE spiffe_id = ?1 AND used_at IS NULL",
                params![target, now],
            )?;
            tx.execute(
                "INSERT INTO revocations (at, spiffe_id, reason) VALUES (?1, ?2, ?3)",
                params![now, target, reason],
            )?;
            (target.to_owned(), n)
        } else {
            let serial = target.to_ascii_lowercase().replace(':', "");
            let row: Option<(String, i64, bool)> = tx
                .query_row(
                    "SELECT spiffe_id, expires_at, revoked FROM svids WHERE serial = ?1",
                    [&serial],
                    |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?)),
                )
                .optional()?;
            let Some((id, expires_at, revoked)) = row else {
                return Err(StoreError::refused(
                    "unknown_serial",
                    format!("no SVID with serial {serial} was issued here"),
                ));
            };
            if revoked {
                return Err(StoreError::refused(
                    "already_revoked",
                    format!("SVID {serial} was already revoked"),
                ));
            }
            tx.execute("UPDATE svids SET revoked = 1 WHERE serial = ?1", [&serial])?;
            tx.execute(
                "INSERT INTO revocations (at, serial, expires_at, reason) VALUES (?1, ?2, ?3, ?4)",
                params![now, serial, expires_at, reason],
            )?;
            (id, 1)
        };
        insert_audit(
            self.echo_audit,
            &tx,
            &AuditEvent::ok("revoke", Some(&result.0), None, "admin")
                .with_detail(format!("{target}: {reason}")),
        )?;
        tx.commit()?;
        Ok(result)
    }

    /// Everything sidecars must refuse now.
    pub fn revocations(&self, now: i64) -> Result<Revocations, StoreError> {
        let conn = self.conn();
        let seq: i64 =
            conn.query_row("SELECT COALESCE(MAX(seq), 0) FROM revocations", [], |r| {
                r.get(0)
            })?;
        let mut ids = Vec::new();
        let mut stmt = conn.prepare(
            "SELECT spiffe_id FROM revocations WHERE spiffe_id IS NOT NULL ORDER BY spiffe_id",
        )?;
        for id in stmt.query_map([], |r| r.get::<_, String>(0))? {
            ids.push(id?);
        }
        let mut serials = Vec::new();
        let mut stmt = conn.prepare(
            "SELECT serial FROM revocations WHERE serial IS NOT NULL AND expires_at > ?1 ORDER BY serial",
        )?;
        for serial in stmt.query_map([now], |r| r.get::<_, String>(0))? {
            serials.push(serial?);
        }
        Ok(Revocations {
            seq,
            spiffe_ids: ids,
            serials,
        })
    }

    /// Highest revocation sequence number: cheap, for watchers to poll.
    pub fn revocation_seq(&self) -> Result<i64, StoreError> {
        Ok(self
            .conn()
            .query_row("SELECT COALESCE(MAX(seq), 0) FROM revocations", [], |r| {
                r.get(0)
            })?)
    }

    /// Every identity, with its status at `now`.
    pub fn identities(&self, now: i64) -> Result<Vec<IdentityRecord>, StoreError> {
        self.query_identities(now, None)
    }

    /// The SPIFFE ID an SVID serial was issued to.
    pub fn owner_of_serial(&self, serial: &str) -> Result<Option<String>, StoreError> {
        Ok(self
            .conn()
            .query_row(
                "SELECT spiffe_id FROM svids WHERE serial = ?1",
                [serial],
                |r| r.get(0),
            )
            .optional()?)
    }

    /// One identity and every SVID issued to it, newest first.
    pub fn identity(
        &self,
        spiffe_id: &str,
        now: i64,
    ) -> Result<Option<(IdentityRecord, Vec<SvidRecord>)>, StoreError> {
        let Some(identity) = self.query_identities(now, Some(spiffe_id))?.pop() else {
            return Ok(None);
        };
        let conn = self.conn();
        let mut stmt = conn.prepare(
            "SELECT serial, spiffe_id, key_sha256, issued_at, expires_at, kind, instance, revoked \
             FROM svids WHERE spiffe_id = ?1 ORDER BY issued_at DESC, rowid DESC",
        )?;
        let svids = stmt
            .query_map([spiffe_id], svid_row)?
            .collect::<Result<Vec<_>, _>>()?;
        Ok(Some((identity, svids)))
    }

    fn query_identities(
        &self,
        now: i64,
        only: Option<&str>,
    ) -> Result<Vec<IdentityRecord>, StoreError> {
        let conn = self.conn();
        let mut stmt = conn.prepare(
            "SELECT i.spiffe_id, i.labels, i.created_at, i.revoked_at, i.revoke_reason, \
                    s.issued_at, s.expires_at, s.serial, s.instance, \
                    (SELECT COUNT(*) FROM svids c WHERE c.spiffe_id = i.spiffe_id) \
             FROM identities i \
             LEFT JOIN svids s ON s.rowid = ( \
                 SELECT rowid FROM svids l WHERE l.spiffe_id = i.spiffe_id \
                 ORDER BY l.issued_at DESC, l.rowid DESC LIMIT 1) \
             WHERE (?1 IS NULL OR i.spiffe_id = ?1) \
             ORDER BY i.spiffe_id",
        )?;
        let rows = stmt.query_map([only], |r| {
            let issued: Option<i64> = r.get(5)?;
            let expires: Option<i64> = r.get(6)?;
            let ttl = issued.zip(expires).map(|(i, e)| e - i);
            let mut record = IdentityRecord {
                spiffe_id: r.get(0)?,
                status: String::new(),
                labels: labels_map(&r.get::<_, String>(1)?),
                created_at: r.get(2)?,
                revoked_at: r.get(3)?,
                revoke_reason: r.get(4)?,
                last_issued_at: issued,
                expires_at: expires,
                last_serial: r.get(7)?,
                instance: r.get(8)?,
                svids_issued: r.get(9)?,
            };
            record.status_at(now, ttl);
            Ok(record)
        })?;
        Ok(rows.collect::<Result<Vec<_>, _>>()?)
    }

    /// Stores a validated policy bundle and makes it current. Pushing the
    /// files of the current bundle again is a no-op that returns its version.
    pub fn push_policy(
        &self,
        digest: &str,
        files: &std::collections::BTreeMap<String, String>,
        now: i64,
    ) -> Result<(i64, bool), StoreError> {
        let mut conn = self.conn();
        let tx = conn.transaction_with_behavior(TransactionBehavior::Immediate)?;
        if let Some(current) = current_policy(&tx)?
            && current.digest == digest
        {
            return Ok((current.version, false));
        }
        let files_text = serde_json::to_string(files).unwrap_or_default();
        tx.execute(
            "INSERT INTO policies (created_at, digest, files) VALUES (?1, ?2, ?3)",
            params![now, digest, files_text],
        )?;
        let version = tx.last_insert_rowid();
        tx.execute(
            "INSERT INTO policy_head (id, version) VALUES (1, ?1) ON CONFLICT (id) DO UPDATE SET version = ?1",
            [version],
        )?;
        insert_audit(
            self.echo_audit,
            &tx,
            &AuditEvent::ok("policy_push", None, None, "admin")
                .with_detail(format!("version {version}, digest {digest}")),
        )?;
        tx.commit()?;
        Ok((version, true))
    }

    /// Makes an earlier bundle current again.
    pub fn rollback_policy(&self, version: i64) -> Result<PolicyBundle, StoreError> {
        let mut conn = self.conn();
        let tx = conn.transaction_with_behavior(TransactionBehavior::Immediate)?;
        let Some(bundle) = policy_version(&tx, version)? else {
            return Err(StoreError::refused(
                "unknown_version",
                format!("there is no policy version {version}"),
            ));
        };
        tx.execute(
            "INSERT INTO policy_head (id, version) VALUES (1, ?1) ON CONFLICT (id) DO UPDATE SET version = ?1",
            [version],
        )?;
        insert_audit(
            self.echo_audit,
            &tx,
            &AuditEvent::ok("policy_rollback", None, None, "admin")
                .with_detail(format!("version {version}, digest {}", bundle.digest)),
        )?;
        tx.commit()?;
        Ok(bundle)
    }

    /// The current policy bundle, if one was ever pushed.
    pub fn current_policy(&self) -> Result<Option<PolicyBundle>, StoreError> {
        current_policy(&self.conn())
    }

    /// The current policy version, cheaply, for watchers.
    pub fn policy_head(&self) -> Result<Option<i64>, StoreError> {
        Ok(self
            .conn()
            .query_row("SELECT version FROM policy_head WHERE id = 1", [], |r| {
                r.get(0)
            })
            .optional()?)
    }

    /// Every stored policy version, without the files.
    pub fn policy_versions(&self) -> Result<Vec<(i64, i64, String)>, StoreError> {
        let conn = self.conn();
        let mut stmt =
            conn.prepare("SELECT version, created_at, digest FROM policies ORDER BY version")?;
        let rows = stmt.query_map([], |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?)))?;
        Ok(rows.collect::<Result<Vec<_>, _>>()?)
    }

    /// The newest audit records, oldest first.
    pub fn audit_tail(&self, limit: u32) -> Result<Vec<AuditEvent>, StoreError> {
        let conn = self.conn();
        let mut stmt = conn.prepare(
            "SELECT at, event, outcome, spiffe_id, serial, reason, detail, actor FROM audit \
             ORDER BY seq DESC LIMIT ?1",
        )?;
        let mut rows = stmt
            .query_map([limit], |r| {
                Ok(AuditEvent {
                    at: r.get(0)?,
                    event: r.get(1)?,
                    outcome: r.get(2)?,
                    spiffe_id: r.get(3)?,
                    serial: r.get(4)?,
                    reason: r.get(5)?,
                    detail: r.get(6)?,
                    actor: r.get(7)?,
                })
            })?
            .collect::<Result<Vec<_>, _>>()?;
        rows.reverse();
        Ok(rows)
    }
}

fn check_not_revoked(conn: &Connection, spiffe_id: &str) -> Result<(), StoreError> {
    let revoked: Option<Option<i64>> = conn
        .query_row(
            "SELECT revoked_at FROM identities WHERE spiffe_id = ?1",
            [spiffe_id],
            |r| r.get(0),
        )
        .optional()?;
    match revoked {
        Some(Some(at)) => Err(StoreError::refused(
            "identity_revoked",
            format!("{spiffe_id} was revoked at {at}"),
        )),
        Some(None) => Ok(()),
        None => Err(StoreError::refused(
            "unknown_identity",
            format!("{spiffe_id} is not in the inventory"),
        )),
    }
}

fn insert_svid(conn: &Connection, svid: &SvidRecord) -> Result<(), StoreError> {
    conn.execute(
        "INSERT INTO svids (serial, spiffe_id, key_sha256, issued_at, expires_at, kind, instance) \
         VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7)",
        params![
            svid.serial,
            svid.spiffe_id,
            svid.key_sha256,
            svid.issued_at,
            svid.expires_at,
            svid.kind,
            svid.instance
        ],
    )?;
    Ok(())
}

fn svid_row(r: &rusqlite::Row<'_>) -> rusqlite::Result<SvidRecord> {
    Ok(SvidRecord {
        serial: r.get(0)?,
        spiffe_id: r.get(1)?,
        key_sha256: r.get(2)?,
        issued_at: r.get(3)?,
        expires_at: r.get(4)?,
        kind: r.get(5)?,
        instance: r.get(6)?,
        revoked: r.get(7)?,
    })
}

fn insert_audit(echo: bool, conn: &Connection, e: &AuditEvent) -> Result<(), StoreError> {
    conn.execute(
        "INSERT INTO audit (at, event, outcome, spiffe_id, serial, reason, detail, actor) \
         VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8)",
        params![
            e.at,
            e.event,
            e.outcome,
            e.spiffe_id,
            e.serial,
            e.reason,
            e.detail,
            e.actor
        ],
    )?;
    // The same record as one JSON line on stdout, for the log pipeline.
    if echo && let Ok(line) = serde_json::to_string(&serde_json::json!({ "audit": e })) {
        println!("{line}");
    }
    Ok(())
}

fn policy_version(conn: &Connection, version: i64) -> Result<Option<PolicyBundle>, StoreError> {
    let row: Option<(i64, i64, String, String)> = conn
        .query_row(
            "SELECT version, created_at, digest, files FROM policies WHERE version = ?1",
            [version],
            |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?, r.get(3)?)),
        )
        .optional()?;
    Ok(
        row.map(|(version, created_at, digest, files)| PolicyBundle {
            version,
            created_at,
            digest,
            files: serde_json::from_str(&files).unwrap_or_default(),
        }),
    )
}

fn current_policy(conn: &Connection) -> Result<Option<PolicyBundle>, StoreError> {
    let head: Option<i64> = conn
        .query_row("SELECT version FROM policy_head WHERE id = 1", [], |r| {
            r.get(0)
        })
        .optional()?;
    match head {
        Some(v) => policy_version(conn, v),
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
        }
    }

    #[test]
    fn tokens_are_single_use_and_refusals_change_nothing() {
        let dir = tempfile::tempdir().expect("tempdir");
        let store = Store::open(&dir.path().join("db"), false).expect("open");
        let id = "spiffe://td/a";
        store
            .create_token("h", "t1", id, &serde_json::Map::new(), 100, 200)
            .expect("token");
        let refused = store
            .redeem_token("h", 150, |_| -> Result<Signed<()>, StoreError> {
                Err(StoreError::refused("bad_csr", "no"))
            })
            .expect_err("signer refused");
        assert_eq!(refused.code(), "bad_csr");
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
        let store = Store::open(&dir.path().join("db"), false).expect("open");
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
