//! Reading a database's schema history, and refusing one this build must
//! not run on (malformed, edited or with a gap).

use refinery::Migration;

use super::{HISTORY_TABLE, StoreError};

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
pub(super) fn check_raw_history(rows: &[RawHistory]) -> Result<(), StoreError> {
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
pub(super) fn check_history(applied: &[Migration], known: &[Migration]) -> Result<(), StoreError> {
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
