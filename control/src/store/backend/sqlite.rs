//! SQLite behind [`super::Sql`]: one connection (WAL, `synchronous=FULL`),
//! its statements cached; transactions are the group commit's.

use super::{Row, Sql, StoreError, Val};

impl From<rusqlite::Error> for StoreError {
    fn from(e: rusqlite::Error) -> Self {
        let busy = matches!(
            e.sqlite_error_code(),
            Some(rusqlite::ErrorCode::DatabaseBusy | rusqlite::ErrorCode::DatabaseLocked)
        );
        StoreError::db(e.to_string(), busy)
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

/// Prepared statements a SQLite connection keeps.
const STATEMENT_CACHE: usize = 128;

pub(super) fn sqlite_connect(path: &std::path::Path) -> Result<rusqlite::Connection, StoreError> {
    let conn = rusqlite::Connection::open(path)?;
    conn.busy_timeout(std::time::Duration::from_secs(5))?;
    // rusqlite keeps 16 prepared statements by default; the store has
    // about 70, and one pushed out is compiled again at its next use.
    conn.set_prepared_statement_cache_capacity(STATEMENT_CACHE);
    conn.pragma_update(None, "journal_mode", "WAL")?;
    conn.pragma_update(None, "synchronous", "FULL")?;
    Ok(conn)
}
