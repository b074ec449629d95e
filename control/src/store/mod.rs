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
mod endpoints;
mod federation;
mod group;
mod inventory;
mod issuance;
mod kinds;
pub mod migrate;
mod policy;
mod records;
mod revocation;
mod usage;

use std::sync::Arc;

pub use backend::{Database, PG_POOL};

use crate::reason::Reason;
use backend::{Backend, Sql, Val};
pub use backup::{BackupReport, backup_sqlite, restore_sqlite};
pub use endpoints::{EndpointOwner, EndpointRecord};
pub use federation::FederatedRecord;
pub use kinds::{IdentityStatus, STALE_LIFETIMES, SvidKind, UnknownWord};
pub use migrate::{Dialect, MigrationSet, SchemaStatus};
use policy::policy_head;
pub use records::{AuditEvent, IdentityRecord, PolicyBundle, Revocations, Signed, SvidRecord};
use revocation::revocation_seq;
pub use usage::{MAX_REPORTERS_PER_CALLEE, MAX_ROWS_PER_CALLEE_DAY, NewEdge, Recorded};

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

/// Takes each audit record as one JSON line, `{"audit": {...}}`.
pub type AuditSink = Arc<dyn Fn(&str) + Send + Sync>;

/// The control plane's database.
pub struct Store {
    backend: Backend,
    /// Where each audit record also goes as a JSON line, if anywhere.
    echo: Option<AuditSink>,
    /// Usage rows one callee may add per day.
    usage_row_cap: i64,
    /// Sidecar processes whose last report number is kept per callee.
    reporter_cap: i64,
}

fn labels_map(text: &str) -> serde_json::Map<String, serde_json::Value> {
    serde_json::from_str(text).unwrap_or_default()
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
        let echo: Option<AuditSink> = if echo_audit {
            Some(Arc::new(echo_to_stdout))
        } else {
            None
        };
        Ok(Store {
            backend: Backend::open(database, migrations)?,
            echo,
            usage_row_cap: usage::MAX_ROWS_PER_CALLEE_DAY,
            reporter_cap: usage::MAX_REPORTERS_PER_CALLEE,
        })
    }

    /// At most `n` connections to PostgreSQL (default
    /// [`backend::PG_POOL`]); SQLite has one.
    pub fn with_connections(mut self, n: usize) -> Self {
        self.backend.set_pool_size(n);
        self
    }

    /// At most `n` usage rows per callee and day (tests; default
    /// [`MAX_ROWS_PER_CALLEE_DAY`]).
    pub fn with_usage_row_cap(mut self, n: i64) -> Self {
        self.usage_row_cap = n;
        self
    }

    /// At most `n` sidecar processes' report numbers kept per callee
    /// (tests; default [`MAX_REPORTERS_PER_CALLEE`]).
    pub fn with_reporter_cap(mut self, n: i64) -> Self {
        self.reporter_cap = n.max(1);
        self
    }

    /// Audit lines go to `sink` instead of stdout (if they are echoed at
    /// all: see [`Store::open`]).
    pub fn with_audit_sink(mut self, sink: AuditSink) -> Self {
        if self.echo.is_some() {
            self.echo = Some(sink);
        }
        self
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
        if let Some(sink) = &self.echo
            && let Ok(line) = serde_json::to_string(&serde_json::json!({ "audit": e }))
        {
            sink(&line);
        }
    }

    /// The revocation count, the current policy version and the discovery
    /// registry's mark at `now`: cheap, for the watch poller.
    pub fn change_marks(&self, now: i64) -> Result<ChangeMarks, StoreError> {
        self.backend.tx(|sql| {
            Ok(ChangeMarks {
                revocation_seq: revocation_seq(sql)?,
                policy_head: policy_head(sql)?,
                endpoints: endpoints::endpoints_mark(sql, now)?,
                federation: federation::federation_mark(sql)?,
            })
        })
    }
}

/// What the watch poller reads: each moves when what it marks changes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ChangeMarks {
    pub revocation_seq: i64,
    pub policy_head: Option<i64>,
    /// The discovery registry's mark.
    pub endpoints: String,
    /// The federated bundles' mark.
    pub federation: String,
}

fn insert_audit(sql: &mut dyn Sql, e: &AuditEvent) -> Result<(), StoreError> {
    sql.exec(INSERT_AUDIT, &audit_params(e))?;
    Ok(())
}

/// An audit record, with [`audit_params`].
const INSERT_AUDIT: &str = "INSERT INTO audit (at, event, outcome, spiffe_id, serial, reason, \
     detail, actor) VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8)";

fn audit_params(e: &AuditEvent) -> [Val; 8] {
    [
        e.at.into(),
        (&e.event).into(),
        (&e.outcome).into(),
        e.spiffe_id.as_ref().into(),
        e.serial.as_ref().into(),
        e.reason.as_ref().into(),
        (&e.detail).into(),
        (&e.actor).into(),
    ]
}

/// The system time in Unix seconds (the server reads its injected
/// [`crate::clock::Clock`] instead).
pub fn unix_now() -> i64 {
    crate::clock::unix_secs(std::time::SystemTime::now())
}

#[cfg(test)]
mod tests;

/// Runs `sql` on this build's SQLite schema three times, with `params` of
/// 1,000, 1,001 and 1,002, and checks SQLite compiled it only once: a
/// statement whose plan depends on a bound value (some joins, with STAT4)
/// is compiled again on every call.
#[cfg(test)]
fn assert_compiled_once(sql: &str, params: impl Fn(i64) -> Vec<rusqlite::types::Value>) {
    let mut conn = rusqlite::Connection::open_in_memory().expect("open");
    migrate::upgrade(&mut conn, &MigrationSet::builtin(Dialect::Sqlite), true).expect("migrate");
    for value in [1_000, 1_001, 1_002] {
        let mut stmt = conn.prepare_cached(sql).expect("prepare");
        let rows = stmt
            .query_map(rusqlite::params_from_iter(params(value)), |_| Ok(()))
            .expect("query");
        assert!(rows.count() <= 1, "{sql}");
    }
    let stmt = conn.prepare_cached(sql).expect("prepare");
    assert_eq!(
        stmt.get_status(rusqlite::StatementStatus::RePrepare),
        0,
        "{sql}"
    );
}

/// An audit line on stdout, a copy of the record the database holds. A
/// closed stdout (a log collector gone, a pipe nobody reads) must not fail
/// the request that made the record, as `println!` would by panicking:
/// the error is logged once, on stderr.
fn echo_to_stdout(line: &str) {
    use std::io::Write;
    use std::sync::atomic::{AtomicBool, Ordering};
    static WARNED: AtomicBool = AtomicBool::new(false);
    let mut out = std::io::stdout().lock();
    if let Err(e) = writeln!(out, "{line}").and_then(|()| out.flush())
        && !WARNED.swap(true, Ordering::Relaxed)
    {
        tracing::warn!(error = %e, "cannot write audit lines to stdout; they are in the database");
    }
}
