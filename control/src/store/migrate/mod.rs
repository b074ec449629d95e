//! Versioned schema migrations (refinery), for SQLite and PostgreSQL.
//!
//! The SQL lives in `control/migrations/<backend>/V<n>__<name>.sql`, one
//! directory per dialect, the same versions in both. An applied migration
//! is never edited: refinery keeps each one's checksum and refuses a
//! database whose history diverges from the code.
//!
//! Each step runs in one transaction with its history row, so a step that
//! fails half way leaves the schema as it was. PostgreSQL replicas starting
//! together serialize on an advisory lock and migrate once; a SQLite file
//! is guarded by a lock file beside it.
//!
//! A control plane that knows migrations up to K runs on a database at a
//! newer version D only when every step after K says it is readable by K
//! (`warden_schema_compat`, filled by the migrations themselves): that is
//! what lets replicas of two adjacent versions share one database during a
//! rolling upgrade. Otherwise it refuses to start, naming both versions.

mod history;
mod set;

use refinery::{Migration, Runner, Target};
use serde::Serialize;

use super::StoreError;
pub(crate) use history::SchemaConn;
use history::{check_history, check_raw_history};
pub use set::{Dialect, MigrationSet};

/// The table refinery keeps its history in.
pub const HISTORY_TABLE: &str = "warden_schema_history";

/// The advisory lock PostgreSQL replicas take while migrating.
const PG_LOCK: i64 = 7_270_417;

/// One step of the schema's history.
#[derive(Debug, Clone, Serialize, PartialEq, Eq)]
pub struct Step {
    pub version: i32,
    pub name: String,
    /// When it was applied (RFC 3339); `None` for a pending step.
    pub applied_on: Option<String>,
}

/// Where a database's schema stands against what this build knows.
#[derive(Debug, Clone, Serialize, PartialEq, Eq)]
pub struct SchemaStatus {
    /// The newest version this build knows.
    pub known: i32,
    /// The database's version before anything was applied (0: new, or
    /// made by a release before versioned migrations).
    pub found: i32,
    /// The database's version now.
    pub current: i32,
    /// Applied steps, oldest first (including those applied just now).
    pub applied: Vec<Step>,
    /// Steps this build would apply (empty once migrated).
    pub pending: Vec<Step>,
    /// The steps applied by this call.
    pub migrated: Vec<Step>,
}

fn runner(migrations: &[Migration]) -> Runner {
    let mut runner = Runner::new(migrations)
        .set_abort_divergent(true)
        .set_abort_missing(true);
    runner.set_migration_table_name(HISTORY_TABLE);
    runner
}

fn step(m: &Migration) -> Step {
    Step {
        version: m.version(),
        name: m.name().to_owned(),
        applied_on: m.applied_on().and_then(|t| {
            t.format(&time::format_description::well_known::Rfc3339)
                .ok()
        }),
    }
}

fn refinery_error(what: &str, e: refinery::Error) -> StoreError {
    StoreError::schema(format!("{what}: {e}"))
}

/// Reads where `conn`'s schema stands and, with `apply`, applies what is
/// pending, one transaction per step. The caller holds whatever lock keeps
/// other migrators out.
pub(crate) fn upgrade<C: SchemaConn>(
    conn: &mut C,
    set: &MigrationSet,
    apply: bool,
) -> Result<SchemaStatus, StoreError> {
    let known_migrations = set.migrations()?;
    let known = set.newest();
    let applied = if conn.has_table(HISTORY_TABLE)? {
        check_raw_history(&conn.raw_history()?)?;
        let mut applied = runner(&known_migrations)
            .get_applied_migrations(conn)
            .map_err(|e| refinery_error("cannot read the schema history", e))?;
        applied.sort_by_key(Migration::version);
        applied
    } else {
        Vec::new()
    };
    check_history(&applied, &known_migrations)?;
    let found = applied.iter().map(|m| m.version()).max().unwrap_or(0);
    let mut status = SchemaStatus {
        known,
        found,
        current: found,
        applied: applied.iter().map(step).collect(),
        pending: Vec::new(),
        migrated: Vec::new(),
    };
    if found > known {
        // Every step after the newest this build knows must say that code
        // knowing `known` may run on it; a step without a row says nothing
        // and is refused.
        let compat = conn.compat_after(known)?;
        let needs = applied
            .iter()
            .filter(|m| m.version() > known)
            .map(|m| {
                compat
                    .iter()
                    .find(|(v, _)| *v == i64::from(m.version()))
                    .map_or(i64::from(m.version()), |(_, oldest)| *oldest)
            })
            .max()
            .unwrap_or(0);
        if needs <= i64::from(known) {
            return Ok(status);
        }
        return Err(StoreError::schema(format!(
            "the database schema is at version {found}, newer than the {known} this \
             control plane (warden {}) knows, and not readable by it (a control plane \
             must know version {needs} or later): run a newer warden, or restore a \
             backup taken before the upgrade; nothing was changed",
            env!("CARGO_PKG_VERSION"),
        )));
    }
    status.pending = known_migrations
        .iter()
        .filter(|m| m.version() > found)
        .map(step)
        .collect();
    if !apply {
        return Ok(status);
    }
    for pending in std::mem::take(&mut status.pending) {
        // Grouped: the step and its history row commit together (refinery's
        // ungrouped mode commits them apart).
        runner(&known_migrations)
            .set_grouped(true)
            .set_target(Target::Version(pending.version))
            .run(conn)
            .map_err(|e| {
                StoreError::schema(format!(
                    "migration V{}__{} failed and was rolled back; the schema stays at \
                     version {}: {e}",
                    pending.version, pending.name, status.current
                ))
            })?;
        status.current = pending.version;
        status.migrated.push(pending);
    }
    status.applied = runner(&known_migrations)
        .get_applied_migrations(conn)
        .map_err(|e| refinery_error("cannot read the schema history", e))?
        .iter()
        .map(step)
        .collect();
    Ok(status)
}

/// [`upgrade`] for PostgreSQL, under the advisory lock: a replica starting
/// while another migrates waits for it, then finds nothing to do.
pub(crate) fn upgrade_postgres(
    client: &mut postgres::Client,
    set: &MigrationSet,
    apply: bool,
) -> Result<SchemaStatus, StoreError> {
    client.execute("SELECT pg_advisory_lock($1)", &[&PG_LOCK])?;
    // A step that waits long for a table lock (another replica's
    // transaction) fails and is rolled back rather than queueing every
    // replica's queries behind it; the next start tries again.
    let result = client
        .batch_execute("SET lock_timeout = '10s'")
        .map_err(StoreError::from)
        .and_then(|()| upgrade(client, set, apply));
    let _ = client.batch_execute("RESET lock_timeout");
    let unlocked = client.execute("SELECT pg_advisory_unlock($1)", &[&PG_LOCK]);
    let status = result?;
    unlocked?;
    Ok(status)
}

/// [`upgrade`] for a SQLite file, holding an exclusive lock on
/// `<file>.migrate-lock` so that two processes never migrate it at once.
pub(crate) fn upgrade_sqlite(
    conn: &mut rusqlite::Connection,
    path: &std::path::Path,
    set: &MigrationSet,
    apply: bool,
) -> Result<SchemaStatus, StoreError> {
    let mut name = path.as_os_str().to_owned();
    name.push(".migrate-lock");
    let lock_path = std::path::PathBuf::from(name);
    let lock = std::fs::OpenOptions::new()
        .create(true)
        .truncate(false)
        .write(true)
        .open(&lock_path)
        .map_err(|e| StoreError::schema(format!("cannot open {}: {e}", lock_path.display())))?;
    lock.lock()
        .map_err(|e| StoreError::schema(format!("cannot lock {}: {e}", lock_path.display())))?;
    upgrade(conn, set, apply)
    // The lock is released when `lock` is dropped.
}

#[cfg(test)]
mod tests;
