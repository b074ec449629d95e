use super::pg::{pg_batch, pg_sql};
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
