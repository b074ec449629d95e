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

use refinery::{Migration, Runner, Target};
use serde::Serialize;

use super::StoreError;

/// The table refinery keeps its history in.
pub const HISTORY_TABLE: &str = "warden_schema_history";

/// The advisory lock PostgreSQL replicas take while migrating.
const PG_LOCK: i64 = 7_270_417;

const SQLITE: &[(&str, &str)] = &[
    (
        "V1__initial",
        include_str!("../../migrations/sqlite/V1__initial.sql"),
    ),
    (
        "V2__sidecar_version",
        include_str!("../../migrations/sqlite/V2__sidecar_version.sql"),
    ),
];

const POSTGRES: &[(&str, &str)] = &[
    (
        "V1__initial",
        include_str!("../../migrations/postgres/V1__initial.sql"),
    ),
    (
        "V2__sidecar_version",
        include_str!("../../migrations/postgres/V2__sidecar_version.sql"),
    ),
];

/// Which SQL dialect a set of migrations is written in.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Dialect {
    Sqlite,
    Postgres,
}

/// The migrations a control plane knows: this build's, or (tests) a prefix
/// of them or extra ones after them.
#[derive(Debug, Clone)]
pub struct MigrationSet {
    steps: Vec<(String, String)>,
}

impl MigrationSet {
    /// Everything this build knows for `dialect`.
    pub fn builtin(dialect: Dialect) -> Self {
        let steps = match dialect {
            Dialect::Sqlite => SQLITE,
            Dialect::Postgres => POSTGRES,
        };
        MigrationSet {
            steps: steps
                .iter()
                .map(|(n, s)| ((*n).to_owned(), (*s).to_owned()))
                .collect(),
        }
    }

    /// Only the steps up to `version`: what an older control plane knows.
    pub fn up_to(mut self, version: i32) -> Self {
        self.steps
            .retain(|(name, _)| version_of(name).is_some_and(|v| v <= version));
        self
    }

    /// One more step, `V<n>__<name>` (tests: a step that fails half way).
    pub fn with(mut self, name: &str, sql: &str) -> Self {
        self.steps.push((name.to_owned(), sql.to_owned()));
        self.steps.sort_by_key(|(name, _)| version_of(name));
        self
    }

    /// The newest version in the set.
    pub fn newest(&self) -> i32 {
        self.steps
            .iter()
            .filter_map(|(n, _)| version_of(n))
            .max()
            .unwrap_or(0)
    }

    fn migrations(&self) -> Result<Vec<Migration>, StoreError> {
        self.steps
            .iter()
            .map(|(name, sql)| {
                Migration::unapplied(name, sql)
                    .map_err(|e| StoreError::schema(format!("migration {name}: {e}")))
            })
            .collect()
    }
}

fn version_of(name: &str) -> Option<i32> {
    name.strip_prefix('V')?.split_once("__")?.0.parse().ok()
}

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

/// One history row as stored, before refinery reads it (refinery panics
/// on a malformed row; a damaged or crafted backup must be refused).
type RawHistory = (Option<i64>, Option<String>, Option<String>, Option<String>);

/// What migrating needs of a connection beyond refinery's own trait.
pub(crate) trait SchemaConn: refinery::Migrate {
    fn has_table(&mut self, name: &str) -> Result<bool, StoreError>;
    /// `(version, name, applied_on, checksum)` of every history row.
    fn raw_history(&mut self) -> Result<Vec<RawHistory>, StoreError>;
    /// `(version, oldest_compatible)` of every compatibility row after
    /// `version`.
    fn compat_after(&mut self, version: i32) -> Result<Vec<(i64, i64)>, StoreError>;
}

const RAW_HISTORY: &str =
    "SELECT CAST(version AS BIGINT), name, applied_on, checksum FROM warden_schema_history";

impl SchemaConn for rusqlite::Connection {
    fn has_table(&mut self, name: &str) -> Result<bool, StoreError> {
        let n: i64 = self.query_row(
            "SELECT COUNT(*) FROM sqlite_master WHERE type = 'table' AND name = ?1",
            [name],
            |r| r.get(0),
        )?;
        Ok(n > 0)
    }

    fn raw_history(&mut self) -> Result<Vec<RawHistory>, StoreError> {
        use rusqlite::types::Value;
        let text = |v: Value| match v {
            Value::Text(t) => Some(t),
            _ => None,
        };
        let mut stmt = self.prepare(RAW_HISTORY)?;
        let rows = stmt
            .query_map([], |r| {
                Ok((
                    match r.get::<_, Value>(0)? {
                        Value::Integer(v) => Some(v),
                        _ => None,
                    },
                    text(r.get(1)?),
                    text(r.get(2)?),
                    text(r.get(3)?),
                ))
            })?
            .collect::<Result<Vec<_>, _>>()?;
        Ok(rows)
    }

    fn compat_after(&mut self, version: i32) -> Result<Vec<(i64, i64)>, StoreError> {
        if !self.has_table("warden_schema_compat")? {
            return Ok(Vec::new());
        }
        let mut stmt = self.prepare(
            "SELECT version, oldest_compatible FROM warden_schema_compat WHERE version > ?1",
        )?;
        let rows = stmt
            .query_map([version], |r| Ok((r.get(0)?, r.get(1)?)))?
            .collect::<Result<Vec<_>, _>>()?;
        Ok(rows)
    }
}

impl SchemaConn for postgres::Client {
    fn has_table(&mut self, name: &str) -> Result<bool, StoreError> {
        let row = self.query_one(
            "SELECT EXISTS (SELECT 1 FROM information_schema.tables \
             WHERE table_schema = current_schema() AND table_name = $1)",
            &[&name],
        )?;
        Ok(row.try_get(0)?)
    }

    fn raw_history(&mut self) -> Result<Vec<RawHistory>, StoreError> {
        self.query(RAW_HISTORY, &[])?
            .iter()
            .map(|r| Ok((r.try_get(0)?, r.try_get(1)?, r.try_get(2)?, r.try_get(3)?)))
            .collect()
    }

    fn compat_after(&mut self, version: i32) -> Result<Vec<(i64, i64)>, StoreError> {
        if !self.has_table("warden_schema_compat")? {
            return Ok(Vec::new());
        }
        self.query(
            "SELECT version, oldest_compatible FROM warden_schema_compat WHERE version > $1",
            &[&i64::from(version)],
        )?
        .iter()
        .map(|r| Ok((r.try_get(0)?, r.try_get(1)?)))
        .collect()
    }
}

/// Refuses a history refinery could not read without panicking.
fn check_raw_history(rows: &[RawHistory]) -> Result<(), StoreError> {
    use time::format_description::well_known::Rfc3339;
    for (version, name, applied_on, checksum) in rows {
        let sound = version.is_some_and(|v| i32::try_from(v).is_ok())
            && name.is_some()
            && applied_on
                .as_deref()
                .is_some_and(|t| time::OffsetDateTime::parse(t, &Rfc3339).is_ok())
            && checksum
                .as_deref()
                .is_some_and(|c| c.parse::<u64>().is_ok());
        if !sound {
            return Err(StoreError::schema(format!(
                "{HISTORY_TABLE} has a malformed row (version {version:?}, name {name:?}): \
                 the database was not made by Warden or is damaged"
            )));
        }
    }
    Ok(())
}

/// The applied history must be a prefix of what this build knows, step for
/// step (the same name and checksum: a released step is never edited), with
/// no gap; steps after the newest known one are judged by compatibility.
fn check_history(applied: &[Migration], known: &[Migration]) -> Result<(), StoreError> {
    for (i, m) in applied.iter().enumerate() {
        let expected = i32::try_from(i + 1).unwrap_or(i32::MAX);
        if m.version() != expected {
            return Err(StoreError::schema(format!(
                "the schema history has a gap: version {expected} was never applied, but {} was",
                m.version()
            )));
        }
        if let Some(ours) = known.iter().find(|k| k.version() == m.version())
            && (ours.name() != m.name() || ours.checksum() != m.checksum())
        {
            return Err(StoreError::schema(format!(
                "the database's step V{}__{} differs from this build's V{}__{} (name or \
                 checksum): a released migration was edited; nothing was changed",
                m.version(),
                m.name(),
                ours.version(),
                ours.name()
            )));
        }
    }
    Ok(())
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
mod tests {
    use super::*;

    #[test]
    fn both_dialects_have_the_same_steps() {
        let names = |d| {
            MigrationSet::builtin(d)
                .steps
                .into_iter()
                .map(|(n, _)| n)
                .collect::<Vec<_>>()
        };
        assert_eq!(names(Dialect::Sqlite), names(Dialect::Postgres));
        let set = MigrationSet::builtin(Dialect::Sqlite);
        assert_eq!(set.newest() as usize, set.steps.len());
        assert_eq!(set.clone().up_to(1).newest(), 1);
        assert!(set.migrations().is_ok());
    }

    #[test]
    fn sqlite_migrates_once_and_reports() {
        let mut conn = rusqlite::Connection::open_in_memory().expect("open");
        let set = MigrationSet::builtin(Dialect::Sqlite);
        let dry = upgrade(&mut conn, &set, false).expect("status");
        assert_eq!((dry.found, dry.current), (0, 0));
        assert_eq!(dry.pending.len(), set.steps.len());
        assert!(
            !conn.has_table(HISTORY_TABLE).expect("query"),
            "dry run wrote"
        );
        let done = upgrade(&mut conn, &set, true).expect("migrate");
        assert_eq!(done.current, set.newest());
        assert_eq!(done.migrated.len(), set.steps.len());
        assert!(done.applied.iter().all(|s| s.applied_on.is_some()));
        let again = upgrade(&mut conn, &set, true).expect("again");
        assert!(again.migrated.is_empty() && again.pending.is_empty());
    }

    #[test]
    fn an_edited_or_missing_step_is_refused_even_when_nothing_is_pending() {
        let mut conn = rusqlite::Connection::open_in_memory().expect("open");
        let set = MigrationSet::builtin(Dialect::Sqlite);
        upgrade(&mut conn, &set, true).expect("migrate");
        let mut edited = set.clone();
        edited.steps[0].1.push_str("\n-- edited after release\n");
        let err = upgrade(&mut conn, &edited, false).expect_err("edited V1");
        assert!(err.to_string().contains("was edited"), "{err}");
        // A gap: V1 removed from the history.
        conn.execute("DELETE FROM warden_schema_history WHERE version = 1", [])
            .expect("delete");
        let err = upgrade(&mut conn, &set, true).expect_err("gap");
        assert!(err.to_string().contains("gap"), "{err}");
        // A malformed row is refused, not a panic.
        conn.execute(
            "INSERT INTO warden_schema_history (version, name, applied_on, checksum) \
             VALUES (1, 'initial', 'yesterday', 'x')",
            [],
        )
        .expect("insert");
        let err = upgrade(&mut conn, &set, false).expect_err("malformed");
        assert!(err.to_string().contains("malformed"), "{err}");
    }

    #[test]
    fn a_step_and_its_history_row_commit_together() {
        let mut conn = rusqlite::Connection::open_in_memory().expect("open");
        let set = MigrationSet::builtin(Dialect::Sqlite);
        upgrade(&mut conn, &set, true).expect("migrate");
        // The step succeeds; recording it fails. Committed apart (refinery's
        // ungrouped mode), the table would stay with no history row, and
        // the next start would fail on it forever.
        conn.execute_batch(
            "CREATE TRIGGER no_v3 BEFORE INSERT ON warden_schema_history \
             WHEN NEW.version = 3 BEGIN SELECT RAISE(ABORT, 'no V3'); END;",
        )
        .expect("trigger");
        let next = set.with("V3__table", "CREATE TABLE t3 (x INTEGER);");
        let err = upgrade(&mut conn, &next, true).expect_err("history insert fails");
        assert!(err.to_string().contains("stays at version 2"), "{err}");
        assert!(
            !conn.has_table("t3").expect("query"),
            "V3 committed without its row"
        );
    }

    #[test]
    fn newer_schema_refused_unless_compatible() {
        let mut conn = rusqlite::Connection::open_in_memory().expect("open");
        let set = MigrationSet::builtin(Dialect::Sqlite);
        upgrade(&mut conn, &set, true).expect("migrate");
        // An older control plane (knows only V1) runs on V2: V2 said so.
        let old = upgrade(&mut conn, &set.clone().up_to(1), true).expect("compatible");
        assert_eq!((old.known, old.current), (1, 2));
        // A step V3 that needs code knowing V3.
        let next = set.clone().with(
            "V3__incompatible",
            "INSERT INTO warden_schema_compat VALUES (3, 3); CREATE TABLE t3 (x INTEGER);",
        );
        upgrade(&mut conn, &next, true).expect("v3");
        let err = upgrade(&mut conn, &set, true).expect_err("newer");
        let text = err.to_string();
        assert!(
            text.contains("version 3") && text.contains("the 2 this"),
            "{text}"
        );
    }
}
