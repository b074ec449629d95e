//! The 0.1.0 control-plane fixture (`tests/fixtures/control-0.1`) and what
//! the upgrade, schema and backup tests read of a database directly: its
//! schema history and tables, off any runtime.
#![allow(dead_code)]

use std::path::Path;

use warden_control::store::{Database, MigrationSet, Store, migrate::Dialect};

use crate::support::control::{Db, csr_pem};
use crate::support::mesh::TD;
use warden_proxy::identity::SpiffeId;

pub const FIXTURE_TOKEN: &str = "wjt_fixture_unused_0001";
pub const NEWEST: i32 = 6;

pub fn id(path: &str) -> String {
    format!("spiffe://{TD}/{path}")
}

pub fn csr_for(spiffe_id: &str) -> (String, String) {
    csr_pem(&SpiffeId::parse(spiffe_id).expect("id"))
}

/// Runs blocking PostgreSQL or store work off any runtime.
pub fn off_runtime<T: Send + 'static>(f: impl FnOnce() -> T + Send + 'static) -> T {
    std::thread::spawn(f).join().expect("thread")
}

pub fn pg(url: &str) -> ::postgres::Client {
    ::postgres::Client::connect(url, ::postgres::NoTls).expect("connect")
}

/// A data directory (and database) holding the 0.1.0 fixture.
pub fn load_fixture(data: &Path, db: &Db) {
    std::fs::create_dir_all(data).expect("data dir");
    match db {
        Db::Sqlite => rusqlite::Connection::open(data.join("control.db"))
            .expect("sqlite")
            .execute_batch(include_str!("../fixtures/control-0.1/sqlite.sql"))
            .expect("load fixture"),
        Db::Postgres(url) => {
            let url = url.clone();
            off_runtime(move || {
                pg(&url)
                    .batch_execute(include_str!("../fixtures/control-0.1/postgres.sql"))
                    .expect("load fixture")
            })
        }
    }
}

/// A temporary data directory holding the 0.1.0 fixture, and its database.
pub fn fixture_database(db: &Db) -> (tempfile::TempDir, std::path::PathBuf, Database) {
    let dir = tempfile::tempdir().expect("tempdir");
    let data = dir.path().join("control");
    load_fixture(&data, db);
    let database = database(&data, db);
    (dir, data, database)
}

pub fn dialect(db: &Db) -> Dialect {
    match db {
        Db::Sqlite => Dialect::Sqlite,
        Db::Postgres(_) => Dialect::Postgres,
    }
}

/// Opens (migrating) `database` with `set`, off any runtime.
pub fn open_with(
    database: &Database,
    set: &MigrationSet,
) -> Result<(), warden_control::store::StoreError> {
    let (database, set) = (database.clone(), set.clone());
    off_runtime(move || Store::open_with(&database, false, Some(&set)).map(drop))
}

pub fn database(data: &Path, db: &Db) -> Database {
    match db {
        Db::Sqlite => Database::Sqlite(data.join("control.db")),
        Db::Postgres(url) => Database::Postgres(url.clone()),
    }
}

/// The schema history's versions, each with how many times it was applied.
pub fn history(database: &Database) -> Vec<(i64, i64)> {
    let sql = "SELECT CAST(version AS BIGINT), CAST(COUNT(*) AS BIGINT) FROM warden_schema_history \
               GROUP BY version ORDER BY version";
    match database.clone() {
        Database::Sqlite(path) => {
            let conn = rusqlite::Connection::open(path).expect("sqlite");
            let mut stmt = conn.prepare(sql).expect("prepare");
            stmt.query_map([], |r| Ok((r.get(0)?, r.get(1)?)))
                .expect("query")
                .collect::<Result<_, _>>()
                .expect("rows")
        }
        Database::Postgres(url) => off_runtime(move || {
            pg(&url)
                .query(sql, &[])
                .expect("query")
                .iter()
                .map(|r| (r.get(0), r.get(1)))
                .collect()
        }),
    }
}

pub fn has_table(database: &Database, table: &'static str) -> bool {
    match database.clone() {
        Database::Sqlite(path) => {
            let conn = rusqlite::Connection::open(path).expect("sqlite");
            conn.query_row(
                "SELECT COUNT(*) FROM sqlite_master WHERE name = ?1",
                [table],
                |r| r.get::<_, i64>(0),
            )
            .expect("query")
                > 0
        }
        Database::Postgres(url) => off_runtime(move || {
            pg(&url)
                .query_one("SELECT to_regclass($1) IS NOT NULL", &[&table])
                .expect("query")
                .get(0)
        }),
    }
}

pub fn history_is_absent(database: &Database) -> bool {
    !has_table(database, "warden_schema_history")
}
