//! PostgreSQL behind [`super::Sql`]: a `deadpool-postgres` pool of
//! `tokio-postgres` connections, `?N` placeholders rewritten to `$N`, each
//! statement prepared once per pooled connection, SERIALIZABLE transactions
//! retried after a lost conflict.

use std::error::Error as _;

use postgres::types::{IsNull, ToSql, Type, to_sql_checked};

use super::{Row, Sql, StoreError, Val};

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
pub(super) fn pg_batch(statements: &[(&str, &[Val])]) -> String {
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
pub(super) fn pg_sql(sql: &str) -> String {
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

/// The PostgreSQL pool: `deadpool-postgres` connections (`tokio-postgres`
/// clients, each with the statements prepared on it), driven by a runtime
/// of their own with one worker thread. The store's callers are blocking
/// threads (or plain ones): each waits on that runtime with `block_on`, so
/// the pool works the same whichever runtime, if any, the caller belongs to.
pub struct PgPool {
    pool: deadpool_postgres::Pool,
    /// `Some` until dropped; shut down without waiting, so that dropping the
    /// pool inside another runtime does not panic.
    rt: Option<tokio::runtime::Runtime>,
}

impl PgPool {
    /// Up to `size` connections to `url`, opened when first needed.
    pub(super) fn new(url: &str, size: usize) -> Result<PgPool, StoreError> {
        let rt = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(1)
            .thread_name("postgres-io")
            .enable_all()
            .build()
            .map_err(|e| StoreError::db(format!("PostgreSQL runtime: {e}"), false))?;
        let manager = deadpool_postgres::Manager::from_config(
            pg_config(url)?,
            postgres::NoTls,
            deadpool_postgres::ManagerConfig {
                // A closed connection is never handed out; an open one
                // without a query first (a failed transaction rolled back).
                recycling_method: deadpool_postgres::RecyclingMethod::Fast,
            },
        );
        let pool = deadpool_postgres::Pool::builder(manager)
            .max_size(size.max(1))
            // The most recently used connection first, so that a quiet
            // control plane keeps using one.
            .queue_mode(deadpool_postgres::QueueMode::Lifo)
            .build()
            .map_err(|e| StoreError::db(format!("PostgreSQL pool: {e}"), false))?;
        Ok(PgPool { pool, rt: Some(rt) })
    }

    /// At most `n` (at least 1) connections.
    pub(super) fn resize(&self, n: usize) {
        self.pool.resize(n.max(1));
    }

    fn block_on<F: Future>(&self, f: F) -> F::Output {
        match &self.rt {
            Some(rt) => rt.block_on(f),
            // Only while dropping, when nothing runs a transaction.
            None => unreachable!("the PostgreSQL pool's runtime is gone"),
        }
    }
}

impl Drop for PgPool {
    fn drop(&mut self) {
        if let Some(rt) = self.rt.take() {
            rt.shutdown_background();
        }
    }
}

/// A transaction on a pooled connection, each statement prepared once per
/// connection (`prepare_cached`). A statement given as text is parsed and
/// planned by the server and costs a round trip of its own before it runs;
/// prepared once, each later use is one round trip. Prepared statements
/// belong to the session, not to a transaction, so a rollback keeps them;
/// the cache is dropped after a transaction fails with a database error
/// other than a serialization conflict (a concurrent replica's migration
/// may have changed what a statement reads). Statements outlive
/// transactions, so the connection must be the same server session
/// throughout: direct, or through a session-pooling proxy, not a
/// transaction-pooling one.
struct PgTx<'a, 'c> {
    tx: &'a deadpool_postgres::Transaction<'c>,
    pool: &'a PgPool,
    /// An error said the connection is gone (see [`connection_lost`]).
    lost: bool,
}

impl PgTx<'_, '_> {
    /// `f` on the pool's runtime; its error noted when it says the
    /// connection is gone.
    fn run<T>(
        &mut self,
        f: impl Future<Output = Result<T, postgres::Error>>,
    ) -> Result<T, StoreError> {
        self.pool.block_on(f).map_err(|e| {
            self.lost |= connection_lost(&e);
            e.into()
        })
    }

    fn statement(&mut self, sql: &str) -> Result<postgres::Statement, StoreError> {
        let tx = self.tx;
        self.run(tx.prepare_cached(&pg_sql(sql)))
    }
}

/// Whether `e` means the connection cannot be used again: closed, or ended
/// by the server (class 57P: shutdown, `pg_terminate_backend`; class 08:
/// connection exceptions). The connection task may not have seen the end
/// yet when the error reaches the caller.
fn connection_lost(e: &postgres::Error) -> bool {
    e.is_closed()
        || e.code()
            .is_some_and(|c| c.code().starts_with("57P") || c.code().starts_with("08"))
}

impl Sql for PgTx<'_, '_> {
    fn exec_all(&mut self, statements: &[(&str, &[Val])]) -> Result<(), StoreError> {
        if let [(sql, params)] = statements {
            return self.exec(sql, params).map(drop);
        }
        if statements.is_empty() {
            return Ok(());
        }
        let tx = self.tx;
        let statement = self.run(tx.prepare_cached(&pg_batch(statements)))?;
        let params: Vec<&(dyn ToSql + Sync)> = statements
            .iter()
            .flat_map(|(_, params)| params.iter().map(|p| p as _))
            .collect();
        self.run(tx.execute(&statement, &params))?;
        Ok(())
    }

    fn exec(&mut self, sql: &str, params: &[Val]) -> Result<u64, StoreError> {
        let statement = self.statement(sql)?;
        let params: Vec<&(dyn ToSql + Sync)> = params.iter().map(|p| p as _).collect();
        let tx = self.tx;
        self.run(tx.execute(&statement, &params))
    }

    fn rows(&mut self, sql: &str, params: &[Val]) -> Result<Vec<Row>, StoreError> {
        let statement = self.statement(sql)?;
        let params: Vec<&(dyn ToSql + Sync)> = params.iter().map(|p| p as _).collect();
        let tx = self.tx;
        let rows = self.run(tx.query(&statement, &params))?;
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

/// `url` as the pool's client configuration: a 5 s connect timeout, and
/// the application name `warden-control` (seen in `pg_stat_activity`).
fn pg_config(url: &str) -> Result<deadpool_postgres::tokio_postgres::Config, StoreError> {
    let mut config: deadpool_postgres::tokio_postgres::Config = url
        .parse()
        .map_err(|e: postgres::Error| StoreError::db(format!("database URL: {e}"), false))?;
    config.connect_timeout(std::time::Duration::from_secs(5));
    config.application_name("warden-control");
    Ok(config)
}

/// A blocking client, for migrations (`refinery` takes one), with the
/// pool's settings: not inside a runtime.
pub(super) fn pg_connect(url: &str) -> Result<postgres::Client, StoreError> {
    Ok(postgres::Config::from(pg_config(url)?).connect(postgres::NoTls)?)
}

/// A pool's failure to hand out a connection.
fn pool_error(e: deadpool_postgres::PoolError) -> StoreError {
    match e {
        deadpool_postgres::PoolError::Backend(e) => e.into(),
        other => StoreError::db(format!("PostgreSQL pool: {other}"), false),
    }
}

/// [`super::Backend::tx`] on PostgreSQL: a pooled connection, SERIALIZABLE,
/// retried after a lost serialization conflict. A connection an error
/// showed gone, or found closed, leaves the pool.
pub(super) fn tx<T>(
    pool: &PgPool,
    mut f: impl FnMut(&mut dyn Sql) -> Result<T, StoreError>,
) -> Result<T, StoreError> {
    let mut attempt = 0;
    loop {
        attempt += 1;
        let mut client = pool.block_on(pool.pool.get()).map_err(pool_error)?;
        let mut lost = false;
        let result: Result<T, StoreError> = (|| {
            // Dropped without a commit (an error, or a panic in `f`), the
            // transaction queues its ROLLBACK before the connection goes
            // back to the pool, so the next BEGIN on it follows that.
            let begun = pool.block_on(
                client
                    .build_transaction()
                    .isolation_level(postgres::IsolationLevel::Serializable)
                    .start(),
            );
            let tx = begun.inspect_err(|e| lost = connection_lost(e))?;
            let mut sql = PgTx {
                tx: &tx,
                pool,
                lost: false,
            };
            let value = f(&mut sql);
            lost = sql.lost;
            let value = value?;
            pool.block_on(tx.commit())
                .inspect_err(|e| lost = connection_lost(e))?;
            Ok(value)
        })();
        if lost || client.is_closed() {
            // Not back to the pool: the next transaction opens another.
            drop(deadpool_postgres::Object::take(client));
        } else {
            // Not after a lost serialization conflict (retried at
            // once, with the same statements).
            if let Err(StoreError::Db {
                retryable: false, ..
            }) = &result
            {
                client.statement_cache.clear();
            }
            // Back to the pool before any backoff below.
            drop(client);
        }
        match result {
            Err(e) if e.retryable() && attempt < MAX_ATTEMPTS => {
                std::thread::sleep(std::time::Duration::from_millis(
                    (2u64 << attempt.min(6)) + u64::from(rand::random::<u8>() % 8),
                ));
            }
            Err(e) => return Err(e),
            Ok(v) => return Ok(v),
        }
    }
}
