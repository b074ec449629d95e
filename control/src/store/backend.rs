//! The two databases behind [`super::Store`]: embedded SQLite and
//! PostgreSQL. Store logic is written once against [`Sql`]; statements use
//! `?N` placeholders (rewritten to `$N` for PostgreSQL) and only types both
//! share (64-bit integers, text).

use std::collections::HashMap;
use std::error::Error as _;
use std::path::PathBuf;
use std::sync::Mutex;

use postgres::types::{IsNull, ToSql, Type, to_sql_checked};

use super::StoreError;
use super::migrate::{self, Dialect, MigrationSet, SchemaStatus};

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

impl From<rusqlite::Error> for StoreError {
    fn from(e: rusqlite::Error) -> Self {
        let busy = matches!(
            e.sqlite_error_code(),
            Some(rusqlite::ErrorCode::DatabaseBusy | rusqlite::ErrorCode::DatabaseLocked)
        );
        StoreError::db(e.to_string(), busy)
    }
}

impl From<postgres::Error> for StoreError {
    fn from(e: postgres::Error) -> Self {
        use postgres::error::SqlState;
        let retry = e.code().is_some_and(|c| {
            *c == SqlState::T_R_SERIALIZATION_FAILURE || *c == SqlState::T_R_DEADLOCK_DETECTED
        });
        let message = match e.source() {
            Some(source) => format!("{e}: {source}"),
            None => e.to_string(),
        };
        StoreError::db(message, retry)
    }
}

impl rusqlite::ToSql for Val {
    fn to_sql(&self) -> rusqlite::Result<rusqlite::types::ToSqlOutput<'_>> {
        use rusqlite::types::{ToSqlOutput, ValueRef};
        Ok(match self {
            Val::Int(v) => ToSqlOutput::Borrowed(ValueRef::Integer(*v)),
            Val::Text(v) => ToSqlOutput::Borrowed(ValueRef::Text(v.as_bytes())),
            Val::Null => ToSqlOutput::Borrowed(ValueRef::Null),
        })
    }
}

fn sqlite_rows(
    conn: &rusqlite::Connection,
    sql: &str,
    params: &[Val],
) -> Result<Vec<Row>, StoreError> {
    use rusqlite::types::ValueRef;
    let mut stmt = conn.prepare_cached(sql)?;
    let columns = stmt.column_count();
    let mut rows = stmt.query(rusqlite::params_from_iter(params))?;
    let mut out = Vec::new();
    while let Some(row) = rows.next()? {
        let mut vals = Vec::with_capacity(columns);
        for i in 0..columns {
            vals.push(match row.get_ref(i)? {
                ValueRef::Integer(v) => Val::Int(v),
                ValueRef::Text(t) => Val::Text(String::from_utf8_lossy(t).into_owned()),
                ValueRef::Null => Val::Null,
                other => {
                    return Err(StoreError::db(
                        format!("column {i}: unexpected {:?}", other.data_type()),
                        false,
                    ));
                }
            });
        }
        out.push(Row(vals));
    }
    Ok(out)
}

/// SQLite's transactions are the group commit's savepoints on the one
/// connection (see [`super::group`]).
impl Sql for rusqlite::Connection {
    fn exec(&mut self, sql: &str, params: &[Val]) -> Result<u64, StoreError> {
        let n = self
            .prepare_cached(sql)?
            .execute(rusqlite::params_from_iter(params))?;
        Ok(n as u64)
    }

    fn rows(&mut self, sql: &str, params: &[Val]) -> Result<Vec<Row>, StoreError> {
        sqlite_rows(self, sql, params)
    }
}

impl ToSql for Val {
    fn to_sql(
        &self,
        ty: &Type,
        out: &mut bytes::BytesMut,
    ) -> Result<IsNull, Box<dyn std::error::Error + Sync + Send>> {
        match self {
            Val::Null => Ok(IsNull::Yes),
            Val::Int(v) if *ty == Type::INT4 => i32::try_from(*v)?.to_sql(ty, out),
            Val::Int(v) => v.to_sql(ty, out),
            Val::Text(v) => v.as_str().to_sql(ty, out),
        }
    }

    fn accepts(_ty: &Type) -> bool {
        true
    }

    to_sql_checked!();
}

/// `statements` as one PostgreSQL statement: each but the last a `WITH`
/// clause, their `?N` placeholders renumbered after the ones before.
fn pg_batch(statements: &[(&str, &[Val])]) -> String {
    use std::fmt::Write;
    let (mut out, mut offset, n) = (String::new(), 0, statements.len());
    for (i, (sql, params)) in statements.iter().enumerate() {
        match i {
            0 if n > 1 => out.push_str("WITH w0 AS ("),
            0 => {}
            _ if i + 1 == n => out.push_str(") "),
            _ => {
                let _ = write!(out, "), w{i} AS (");
            }
        }
        push_pg_sql(&mut out, sql, offset);
        offset += params.len();
    }
    out
}

/// `?N` placeholders to PostgreSQL's `$N`.
fn pg_sql(sql: &str) -> String {
    let mut out = String::with_capacity(sql.len());
    push_pg_sql(&mut out, sql, 0);
    out
}

/// `sql` onto `out` with each `?N` placeholder as `$(N + offset)`.
fn push_pg_sql(out: &mut String, sql: &str, offset: usize) {
    use std::fmt::Write;
    let mut chars = sql.chars().peekable();
    while let Some(c) = chars.next() {
        if c == '?' && chars.peek().is_some_and(char::is_ascii_digit) {
            let mut number = 0usize;
            while let Some(d) = chars.peek().and_then(|d| d.to_digit(10)) {
                number = number * 10 + d as usize;
                chars.next();
            }
            let _ = write!(out, "${}", number + offset);
        } else {
            out.push(c);
        }
    }
}

fn pg_val(row: &postgres::Row, i: usize) -> Result<Val, StoreError> {
    let ty = row.columns()[i].type_();
    let val = if *ty == Type::INT8 {
        row.try_get::<_, Option<i64>>(i)?.map(Val::Int)
    } else if *ty == Type::INT4 {
        row.try_get::<_, Option<i32>>(i)?
            .map(|v| Val::Int(v.into()))
    } else if *ty == Type::BOOL {
        row.try_get::<_, Option<bool>>(i)?
            .map(|v| Val::Int(v.into()))
    } else {
        row.try_get::<_, Option<String>>(i)?.map(Val::Text)
    };
    Ok(val.unwrap_or(Val::Null))
}

/// One PostgreSQL connection of the pool, and the statements prepared on it.
pub struct PgConn {
    client: postgres::Client,
    /// By their `?N` text. A statement given as text is parsed and planned
    /// by the server and costs a round trip of its own before it runs;
    /// prepared once, each later use is one round trip. Prepared statements
    /// belong to the session, not to a transaction, so a rollback keeps
    /// them; the cache is dropped after a transaction fails with a database
    /// error other than a serialization conflict (a concurrent replica's
    /// migration may have changed what a statement reads). Statements
    /// outlive transactions, so the connection must be the same server
    /// session throughout: direct, or through a session-pooling proxy, not
    /// a transaction-pooling one.
    statements: HashMap<String, postgres::Statement>,
}

impl PgConn {
    fn new(client: postgres::Client) -> Self {
        PgConn {
            client,
            statements: HashMap::new(),
        }
    }
}

/// A transaction on a [`PgConn`], preparing each statement once per
/// connection.
struct PgTx<'a, 'c> {
    tx: &'a mut postgres::Transaction<'c>,
    statements: &'a mut HashMap<String, postgres::Statement>,
}

impl PgTx<'_, '_> {
    fn statement(&mut self, sql: &str) -> Result<postgres::Statement, StoreError> {
        if let Some(statement) = self.statements.get(sql) {
            return Ok(statement.clone());
        }
        let statement = self.tx.prepare(pg_sql(sql).as_str())?;
        self.statements.insert(sql.to_owned(), statement.clone());
        Ok(statement)
    }
}

impl Sql for PgTx<'_, '_> {
    fn exec_all(&mut self, statements: &[(&str, &[Val])]) -> Result<(), StoreError> {
        if let [(sql, params)] = statements {
            return self.exec(sql, params).map(drop);
        }
        if statements.is_empty() {
            return Ok(());
        }
        let statement = self.statement(&pg_batch(statements))?;
        let params: Vec<&(dyn ToSql + Sync)> = statements
            .iter()
            .flat_map(|(_, params)| params.iter().map(|p| p as _))
            .collect();
        self.tx.execute(&statement, &params)?;
        Ok(())
    }

    fn exec(&mut self, sql: &str, params: &[Val]) -> Result<u64, StoreError> {
        let statement = self.statement(sql)?;
        let params: Vec<&(dyn ToSql + Sync)> = params.iter().map(|p| p as _).collect();
        Ok(self.tx.execute(&statement, &params)?)
    }

    fn rows(&mut self, sql: &str, params: &[Val]) -> Result<Vec<Row>, StoreError> {
        let statement = self.statement(sql)?;
        let params: Vec<&(dyn ToSql + Sync)> = params.iter().map(|p| p as _).collect();
        let rows = self.tx.query(&statement, &params)?;
        rows.iter()
            .map(|r| {
                (0..r.len())
                    .map(|i| pg_val(r, i))
                    .collect::<Result<Vec<_>, _>>()
                    .map(Row)
            })
            .collect()
    }
}

/// How many times a PostgreSQL transaction that lost a serialization
/// conflict to another replica is retried.
const MAX_ATTEMPTS: u32 = 8;

/// Connections a control plane keeps to PostgreSQL by default: transactions
/// of concurrent requests run side by side (each request's store work runs
/// on a blocking thread and takes one connection for its transaction).
pub const PG_POOL: usize = 8;

pub enum Backend {
    Sqlite(super::group::GroupCommit),
    Postgres {
        url: String,
        /// Opened as needed, up to [`PG_POOL`]; a closed one is reopened.
        pool: Vec<Mutex<Option<Box<PgConn>>>>,
        /// Which busy connection the next transaction waits for.
        next: std::sync::atomic::AtomicUsize,
    },
}

impl Drop for Backend {
    fn drop(&mut self) {
        // The blocking client shuts its own runtime down when dropped, which
        // panics inside another runtime: drop them on a plain thread.
        if let Backend::Postgres { pool, .. } = self {
            let clients: Vec<Box<PgConn>> = pool
                .iter_mut()
                .filter_map(|slot| {
                    slot.get_mut()
                        .unwrap_or_else(std::sync::PoisonError::into_inner)
                        .take()
                })
                .collect();
            if !clients.is_empty() {
                let _ = std::thread::Builder::new()
                    .name("postgres-close".into())
                    .spawn(move || drop(clients));
            }
        }
    }
}

/// The first free pool slot (so that a quiet control plane uses one
/// connection), else slot `wait` (rotating), waited for.
fn pool_slot<T>(pool: &[Mutex<T>], wait: usize) -> std::sync::MutexGuard<'_, T> {
    for slot in pool {
        match slot.try_lock() {
            Ok(guard) => return guard,
            Err(std::sync::TryLockError::Poisoned(p)) => return p.into_inner(),
            Err(std::sync::TryLockError::WouldBlock) => {}
        }
    }
    lock(&pool[wait % pool.len()])
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

/// Prepared statements a SQLite connection keeps.
const STATEMENT_CACHE: usize = 128;

fn sqlite_connect(path: &std::path::Path) -> Result<rusqlite::Connection, StoreError> {
    let conn = rusqlite::Connection::open(path)?;
    conn.busy_timeout(std::time::Duration::from_secs(5))?;
    // rusqlite keeps 16 prepared statements by default; the store has
    // about 70, and one pushed out is compiled again at its next use.
    conn.set_prepared_statement_cache_capacity(STATEMENT_CACHE);
    conn.pragma_update(None, "journal_mode", "WAL")?;
    conn.pragma_update(None, "synchronous", "FULL")?;
    Ok(conn)
}

/// Where `database`'s schema stands against `migrations` (or this build's);
/// with `apply`, migrates it. A PostgreSQL client is closed on a plain
/// thread (see [`Backend`]'s drop).
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

fn pg_connect(url: &str) -> Result<postgres::Client, StoreError> {
    let mut config: postgres::Config = url
        .parse()
        .map_err(|e: postgres::Error| StoreError::db(format!("database URL: {e}"), false))?;
    config.connect_timeout(std::time::Duration::from_secs(5));
    config.application_name("warden-control");
    Ok(config.connect(postgres::NoTls)?)
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
                let mut pool: Vec<Mutex<Option<Box<PgConn>>>> =
                    (0..PG_POOL).map(|_| Mutex::new(None)).collect();
                pool[0] = Mutex::new(Some(Box::new(PgConn::new(client))));
                Ok(Backend::Postgres {
                    url: url.clone(),
                    pool,
                    next: std::sync::atomic::AtomicUsize::new(0),
                })
            }
        }
    }

    /// At most `n` (at least 1) PostgreSQL connections; no change on SQLite.
    pub fn set_pool_size(&mut self, n: usize) {
        if let Backend::Postgres { pool, .. } = self {
            let n = n.max(1);
            if pool.len() > n {
                let extra: Vec<_> = pool
                    .drain(n..)
                    .filter_map(|slot| {
                        slot.into_inner()
                            .unwrap_or_else(std::sync::PoisonError::into_inner)
                    })
                    .collect();
                if !extra.is_empty() {
                    let _ = std::thread::Builder::new()
                        .name("postgres-close".into())
                        .spawn(move || drop(extra));
                }
            }
            pool.resize_with(n, || Mutex::new(None));
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
        mut f: impl FnMut(&mut dyn Sql) -> Result<T, StoreError>,
    ) -> Result<T, StoreError> {
        match self {
            Backend::Sqlite(group) => group.tx(f),
            Backend::Postgres { url, pool, next } => {
                let start = next.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                let mut guard = pool_slot(pool, start);
                let mut attempt = 0;
                loop {
                    attempt += 1;
                    if guard.as_ref().is_none_or(|c| c.client.is_closed()) {
                        *guard = Some(Box::new(PgConn::new(pg_connect(url)?)));
                    }
                    let Some(conn) = guard.as_mut() else {
                        return Err(StoreError::db("no database connection", true));
                    };
                    let PgConn { client, statements } = &mut **conn;
                    let result: Result<T, StoreError> = (|| {
                        let mut tx = client
                            .build_transaction()
                            .isolation_level(postgres::IsolationLevel::Serializable)
                            .start()?;
                        let value = f(&mut PgTx {
                            tx: &mut tx,
                            statements: &mut *statements,
                        })?;
                        tx.commit()?;
                        Ok(value)
                    })();
                    // Not after a lost serialization conflict (retried at
                    // once, with the same statements).
                    if let Err(StoreError::Db {
                        retryable: false, ..
                    }) = &result
                    {
                        statements.clear();
                    }
                    match result {
                        Err(e) if e.retryable() && attempt < MAX_ATTEMPTS => {
                            std::thread::sleep(std::time::Duration::from_millis(
                                (2u64 << attempt.min(6)) + u64::from(rand::random::<u8>() % 8),
                            ));
                        }
                        Err(e) => {
                            if guard.as_ref().is_some_and(|c| c.client.is_closed()) {
                                *guard = None;
                            }
                            return Err(e);
                        }
                        Ok(v) => return Ok(v),
                    }
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn placeholders_are_rewritten_for_postgres() {
        assert_eq!(
            pg_sql("SELECT a FROM t WHERE b = ?1 AND c = ?12 AND d = '?'"),
            "SELECT a FROM t WHERE b = $1 AND c = $12 AND d = '?'"
        );
    }

    #[test]
    fn batched_writes_are_one_postgres_statement() {
        let (a, b, c) = (
            [Val::Int(1), Val::Int(2)],
            std::array::from_fn::<Val, 12, _>(|_| Val::Null),
            [Val::Text("x".into())],
        );
        assert_eq!(
            pg_batch(&[
                ("INSERT INTO t (a, b) VALUES (?1, ?2)", &a),
                ("UPDATE u SET a = ?12 WHERE b = ?1 AND c = '?'", &b),
                ("INSERT INTO v (a) VALUES (?1)", &c),
            ]),
            "WITH w0 AS (INSERT INTO t (a, b) VALUES ($1, $2)), \
             w1 AS (UPDATE u SET a = $14 WHERE b = $3 AND c = '?') \
             INSERT INTO v (a) VALUES ($15)"
        );
        assert_eq!(
            pg_batch(&[
                ("INSERT INTO t (a) VALUES (?1)", &c),
                ("DELETE FROM u WHERE a = ?1", &c)
            ]),
            "WITH w0 AS (INSERT INTO t (a) VALUES ($1)) DELETE FROM u WHERE a = $2"
        );
        assert_eq!(
            pg_batch(&[("DELETE FROM u WHERE a = ?1", &c)]),
            "DELETE FROM u WHERE a = $1"
        );
    }

    #[test]
    fn database_urls() {
        assert_eq!(
            Database::parse("postgres://u:secret@db:5432/warden"),
            Database::Postgres("postgres://u:secret@db:5432/warden".into())
        );
        assert!(
            !Database::parse("postgres://u:secret@db:5432/warden")
                .describe()
                .contains("secret")
        );
        assert_eq!(
            Database::parse("/var/lib/w.db"),
            Database::Sqlite("/var/lib/w.db".into())
        );
    }
}
