//! Migrations on an in-memory SQLite database: applied once, refused
//! when edited, gapped or newer, and each step atomic with its history row.

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
        "CREATE TRIGGER no_v7 BEFORE INSERT ON warden_schema_history \
         WHEN NEW.version = 7 BEGIN SELECT RAISE(ABORT, 'no V7'); END;",
    )
    .expect("trigger");
    let next = set.with("V7__table", "CREATE TABLE t7 (x INTEGER);");
    let err = upgrade(&mut conn, &next, true).expect_err("history insert fails");
    assert!(err.to_string().contains("stays at version 6"), "{err}");
    assert!(
        !conn.has_table("t7").expect("query"),
        "V7 committed without its row"
    );
}

#[test]
fn newer_schema_refused_unless_compatible() {
    let mut conn = rusqlite::Connection::open_in_memory().expect("open");
    let set = MigrationSet::builtin(Dialect::Sqlite);
    upgrade(&mut conn, &set, true).expect("migrate");
    // An older control plane (knows only V1) runs on V6: V2 to V6 said so.
    let old = upgrade(&mut conn, &set.clone().up_to(1), true).expect("compatible");
    assert_eq!((old.known, old.current), (1, 6));
    // A step V7 that needs code knowing V7.
    let next = set.clone().with(
        "V7__incompatible",
        "INSERT INTO warden_schema_compat VALUES (7, 7); CREATE TABLE t7 (x INTEGER);",
    );
    upgrade(&mut conn, &next, true).expect("v7");
    let err = upgrade(&mut conn, &set, true).expect_err("newer");
    let text = err.to_string();
    assert!(
        text.contains("version 7") && text.contains("the 6 this"),
        "{text}"
    );
}
