//! The two databases behind [`super::Store`]: embedded SQLite and
//! PostgreSQL. Store logic is written once against [`Sql`]; statements use
//! `?N` placeholders (rewritten to `$N` for PostgreSQL) and only types both
//! share (64-bit integers, text).

use std::path::PathBuf;
use std::sync::Mutex;

use super::StoreError;
use super::migrate::{self, Dialect, MigrationSet, SchemaStatus};

mod pg;
mod sqlite;
#[cfg(test)]
mod tests;

use pg::PgPool;
use pg::pg_connect;
use sqlite::sqlite_connect;

/// Where the control plane keeps its state.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Database {
    /// A SQLite file (the embedded default).
    Sqlite(PathBuf),
    /// A PostgreSQL connection string, `postgres://user:password@host:port/db`;
    /// several replicas may share it.
    Postgres(String),
}

impl Database {
    /// `postgres://...` or `postgresql://...` is PostgreSQL; anything else a
    /// SQLite file path.
    pub fn parse(text: &str) -> Database {
        if text.starts_with("postgres://") || text.starts_with("postgresql://") {
            Database::Postgres(text.to_owned())
        } else {
            Database::Sqlite(PathBuf::from(
                text.strip_prefix("sqlite://").unwrap_or(text),
            ))
        }
    }

    /// For logs: the kind and where, never a password.
    pub fn describe(&self) -> String {
        match self {
            Database::Sqlite(path) => format!("sqlite {}", path.display()),
            Database::Postgres(url) => {
                let host = url.rsplit('@').next().unwrap_or("");
                format!("postgres {host}")
            }
        }
    }
}

/// A value passed to or read from a statement.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Val {
    Int(i64),
    Text(String),
    Null,
}

impl From<i64> for Val {
    fn from(v: i64) -> Self {
        Val::Int(v)
    }
}

impl From<&str> for Val {
    fn from(v: &str) -> Self {
        Val::Text(v.to_owned())
    }
}

impl From<&String> for Val {
    fn from(v: &String) -> Self {
        Val::Text(v.clone())
    }
}

impl From<String> for Val {
    fn from(v: String) -> Self {
        Val::Text(v)
    }
}

impl<T: Into<Val>> From<Option<T>> for Val {
    fn from(v: Option<T>) -> Self {
        v.map_or(Val::Null, Into::into)
    }
}

/// One result row.
#[derive(Debug, Clone)]
pub struct Row(pub Vec<Val>);

fn bad_column(i: usize, want: &str, got: &Val) -> StoreError {
    StoreError::db(format!("column {i}: expected {want}, found {got:?}"), false)
}

impl Row {
    pub fn int(&self, i: usize) -> Result<i64, StoreError> {
        match self.0.get(i) {
            Some(Val::Int(v)) => Ok(*v),
            other => Err(bad_column(i, "an integer", other.unwrap_or(&Val::Null))),
        }
    }

    pub fn opt_int(&self, i: usize) -> Result<Option<i64>, StoreError> {
        match self.0.get(i) {
            Some(Val::Null) => Ok(None),
            _ => self.int(i).map(Some),
        }
    }

    pub fn text(&self, i: usize) -> Result<String, StoreError> {
        match self.0.get(i) {
            Some(Val::Text(v)) => Ok(v.clone()),
            other => Err(bad_column(i, "text", other.unwrap_or(&Val::Null))),
        }
    }

    pub fn opt_text(&self, i: usize) -> Result<Option<String>, StoreError> {
        match self.0.get(i) {
            Some(Val::Null) => Ok(None),
            _ => self.text(i).map(Some),
        }
    }
}

/// What store logic runs statements through: one transaction.
pub trait Sql {
    fn exec(&mut self, sql: &str, params: &[Val]) -> Result<u64, StoreError>;
    fn rows(&mut self, sql: &str, params: &[Val]) -> Result<Vec<Row>, StoreError>;

    fn row(&mut self, sql: &str, params: &[Val]) -> Result<Option<Row>, StoreError> {
        Ok(self.rows(sql, params)?.into_iter().next())
    }

    /// Runs `statements`, writes whose counts are not needed and none of
    /// which reads or writes a row another of them writes (PostgreSQL gets
    /// them as one statement, the first ones as data-modifying `WITH`
    /// clauses, which run on one snapshot in no set order): one round trip
    /// instead of one each.
    fn exec_all(&mut self, statements: &[(&str, &[Val])]) -> Result<(), StoreError> {
        for (sql, params) in statements {
            self.exec(sql, params)?;
        }
        Ok(())
    }
}

/// Connections a control plane keeps to PostgreSQL by default: transactions
/// of concurrent requests run side by side (each request's store work runs
/// on a blocking thread and takes one connection for its transaction).
pub const PG_POOL: usize = 8;

pub enum Backend {
    Sqlite(super::group::GroupCommit),
    /// Connections opened as needed, up to [`PG_POOL`] (or the size set);
    /// a closed one is replaced.
    Postgres(PgPool),
}

pub(super) fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    // A panic while holding the lock dropped (rolled back) its transaction;
    // the connection itself is consistent.
    m.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
}

/// `migrations`, or this build's for `dialect`.
fn or_builtin(migrations: Option<&MigrationSet>, dialect: Dialect) -> MigrationSet {
    migrations
        .cloned()
        .unwrap_or_else(|| MigrationSet::builtin(dialect))
}

/// Where `database`'s schema stands against `migrations` (or this build's);
/// with `apply`, migrates it. On PostgreSQL the blocking client runs (and
/// is dropped) on a thread of its own, never inside a runtime.
pub fn migrate(
    database: &Database,
    migrations: Option<&MigrationSet>,
    apply: bool,
) -> Result<SchemaStatus, StoreError> {
    match database {
        Database::Sqlite(path) => {
            let set = or_builtin(migrations, Dialect::Sqlite);
            if !apply {
                // A dry run writes nothing: no file, no pragma, no lock file.
                let mut conn = if path.exists() {
                    rusqlite::Connection::open_with_flags(
                        path,
                        rusqlite::OpenFlags::SQLITE_OPEN_READ_ONLY,
                    )?
                } else {
                    rusqlite::Connection::open_in_memory()?
                };
                return migrate::upgrade(&mut conn, &set, false);
            }
            let mut conn = sqlite_connect(path)?;
            migrate::upgrade_sqlite(&mut conn, path, &set, true)
        }
        Database::Postgres(url) => {
            let url = url.clone();
            let set = or_builtin(migrations, Dialect::Postgres);
            // The blocking client must not run (or drop) inside a runtime.
            std::thread::scope(|scope| {
                scope
                    .spawn(move || {
                        let mut client = pg_connect(&url)?;
                        migrate::upgrade_postgres(&mut client, &set, apply)
                    })
                    .join()
                    .unwrap_or_else(|_| Err(StoreError::schema("the migration thread panicked")))
            })
        }
    }
}

impl Backend {
    /// Opens `database` and brings its schema up to date (`migrations`, or
    /// this build's), refusing one newer than it can run on.
    pub fn open(
        database: &Database,
        migrations: Option<&MigrationSet>,
    ) -> Result<Backend, StoreError> {
        match database {
            Database::Sqlite(path) => {
                let mut conn = sqlite_connect(path)?;
                let set = or_builtin(migrations, Dialect::Sqlite);
                migrate::upgrade_sqlite(&mut conn, path, &set, true)?;
                Ok(Backend::Sqlite(super::group::GroupCommit::new(conn)))
            }
            Database::Postgres(url) => {
                let mut client = pg_connect(url)?;
                let set = or_builtin(migrations, Dialect::Postgres);
                migrate::upgrade_postgres(&mut client, &set, true)?;
                // Dropped where it was made: the caller is not inside a
                // runtime, or connecting would have panicked already.
                drop(client);
                Ok(Backend::Postgres(PgPool::new(url, PG_POOL)?))
            }
        }
    }

    /// At most `n` (at least 1) PostgreSQL connections; no change on SQLite.
    pub fn set_pool_size(&mut self, n: usize) {
        if let Backend::Postgres(pool) = self {
            pool.resize(n);
        }
    }

    /// Runs `f` in one transaction: committed if it returns `Ok`, rolled
    /// back otherwise; `Ok` only once committed. SQLite takes the write
    /// lock up front (`BEGIN IMMEDIATE`) and commits concurrent callers'
    /// transactions together (see [`super::group`]); PostgreSQL runs
    /// SERIALIZABLE and retries `f` when a concurrent replica's transaction
    /// wins a conflict, so `f` must be safe to run again.
    pub fn tx<T>(
        &self,
        f: impl FnMut(&mut dyn Sql) -> Result<T, StoreError>,
    ) -> Result<T, StoreError> {
        match self {
            Backend::Sqlite(group) => group.tx(f),
            Backend::Postgres(pool) => pg::tx(pool, f),
        }
    }
}
