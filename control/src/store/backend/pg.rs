//! PostgreSQL behind [`super::Sql`]: `?N` placeholders rewritten to `$N`,
//! each statement prepared once per pooled connection, SERIALIZABLE
//! transactions retried after a lost conflict.

use std::collections::HashMap;
use std::error::Error as _;
use std::sync::Mutex;
use std::sync::atomic::AtomicUsize;

use postgres::types::{IsNull, ToSql, Type, to_sql_checked};

use super::{Row, Sql, StoreError, Val, pool_slot};

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
    pub(super) fn new(client: postgres::Client) -> Self {
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

pub(super) fn pg_connect(url: &str) -> Result<postgres::Client, StoreError> {
    let mut config: postgres::Config = url
        .parse()
        .map_err(|e: postgres::Error| StoreError::db(format!("database URL: {e}"), false))?;
    config.connect_timeout(std::time::Duration::from_secs(5));
    config.application_name("warden-control");
    Ok(config.connect(postgres::NoTls)?)
}

/// [`super::Backend::tx`] on PostgreSQL: a pool connection (reopened if closed),
/// SERIALIZABLE, retried after a lost serialization conflict.
pub(super) fn tx<T>(
    url: &str,
    pool: &[Mutex<Option<Box<PgConn>>>],
    next: &AtomicUsize,
    mut f: impl FnMut(&mut dyn Sql) -> Result<T, StoreError>,
) -> Result<T, StoreError> {
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
