//! The schema under change: a migration failing half way is rolled back, a
//! schema newer than the binary is refused unless its newer steps say the
//! binary may run on it, and replicas of adjacent versions starting
//! together on one PostgreSQL database migrate once.

#[macro_use]
mod support;

#[path = "support/control_fixture.rs"]
mod control_fixture;

use std::sync::{Arc, Barrier};

use control_fixture::{dialect, fixture_database, has_table, history, off_runtime, open_with};
use support::control::{Control, Db, any_port};
use support::mesh::TD;
use warden_control::store::{Database, MigrationSet, Store, migrate::Dialect};
use warden_proxy::control::api;

on_both_backends!(
    a_migration_failing_half_way_is_rolled_back_and_the_schema_stays,
    a_newer_schema_is_refused_at_start_and_left_unchanged,
);
/// A step that fails half way (its first statement succeeds, its second
/// does not) is rolled back with its history row: the schema stays at the
/// version before, the control plane refuses to start and says why, and
/// the data is intact.
async fn a_migration_failing_half_way_is_rolled_back_and_the_schema_stays(db: Db) {
    let (_dir, data, database) = fixture_database(&db);
    let dialect = dialect(&db);
    let broken = MigrationSet::builtin(dialect).with(
        "V7__half_way",
        "CREATE TABLE half_way (x BIGINT);\n\
         ALTER TABLE svids ADD COLUMN broken TEXT;\n\
         INSERT INTO no_such_table VALUES (1);",
    );
    let err = open_with(&database, &broken).expect_err("the broken step must fail");
    let text = err.to_string();
    assert!(
        text.contains("V7__half_way failed and was rolled back; the schema stays at version 6"),
        "{text}"
    );
    // Steps 1 to 6 committed on their own; step 7 left nothing behind.
    assert_eq!(
        history(&database),
        vec![(1, 1), (2, 1), (3, 1), (4, 1), (5, 1), (6, 1)]
    );
    assert!(!has_table(&database, "half_way"), "half of V7 survived");

    // Today's control plane starts on it and serves the fixture's rows.
    let control = Control::start(&data, any_port(), &db, &[]);
    let list: Vec<serde_json::Value> = control
        .client(true)
        .get(api::ADMIN_IDENTITIES)
        .await
        .expect("list");
    assert_eq!(list.len(), 3, "{list:#?}");
}

/// A schema newer than this binary, by a step that older code cannot run
/// on, is refused at start with both versions named, and nothing changes;
/// a newer step that says older code may run on it is accepted (the
/// rolling-upgrade case).
async fn a_newer_schema_is_refused_at_start_and_left_unchanged(db: Db) {
    let (_dir, data, database) = fixture_database(&db);
    let dialect = dialect(&db);
    // A future release's V7, readable by code that knows V6.
    let compatible = MigrationSet::builtin(dialect).with(
        "V7__additive",
        "INSERT INTO warden_schema_compat (version, oldest_compatible) VALUES (7, 6);\n\
         CREATE TABLE future_seven (x BIGINT);",
    );
    {
        let (database, set) = (database.clone(), compatible.clone());
        off_runtime(move || Store::open_with(&database, false, Some(&set)).map(drop)).expect("V7");
    }
    let control = Control::start(&data, any_port(), &db, &[]);
    drop(control);

    // Its V8 is not readable by code that knows V6.
    let incompatible = compatible.with(
        "V8__breaking",
        "INSERT INTO warden_schema_compat (version, oldest_compatible) VALUES (8, 8);\n\
         CREATE TABLE future_eight (x BIGINT);",
    );
    open_with(&database, &incompatible).expect("V8");
    let before = history(&database);
    let mut serve = std::process::Command::new(support::warden_bin());
    serve
        .args(["control", "serve", "--trust-domain", TD, "--data-dir"])
        .arg(&data)
        .args(["--listen", "127.0.0.1:0", "--metrics-listen", "127.0.0.1:0"]);
    if let Db::Postgres(url) = &db {
        serve.args(["--database", url]);
    }
    let out = serve.output().expect("serve");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success(), "started on a newer schema");
    assert!(
        stderr.contains("schema is at version 8, newer than the 6 this control plane")
            && stderr.contains("must know version 8"),
        "{stderr}"
    );
    assert_eq!(
        history(&database),
        before,
        "the refused start changed the history"
    );
}

/// Two replicas starting at the same moment on one new PostgreSQL
/// database, one of the previous schema version (knows V2) and one of
/// this (V3), in either order: each step is applied exactly once and both
/// start. Two replicas of the same version likewise.
#[test]
fn postgres_replicas_of_adjacent_versions_starting_together_migrate_once() {
    for round in 0..6 {
        let Db::Postgres(url) = Db::postgres() else {
            unreachable!()
        };
        let database = Database::Postgres(url);
        let sets = match round % 3 {
            0 => [
                Some(MigrationSet::builtin(Dialect::Postgres).up_to(2)),
                None,
            ],
            1 => [
                None,
                Some(MigrationSet::builtin(Dialect::Postgres).up_to(2)),
            ],
            _ => [None, None],
        };
        let barrier = Arc::new(Barrier::new(2));
        let replicas: Vec<_> = sets
            .into_iter()
            .map(|set| {
                let (database, barrier) = (database.clone(), barrier.clone());
                std::thread::spawn(move || {
                    barrier.wait();
                    // The older replica is today's code with yesterday's
                    // migrations: it only starts (its queries are today's).
                    let older = set.is_some();
                    Store::open_with(&database, false, set.as_ref()).map(|store| {
                        let identities = if older {
                            Ok(0)
                        } else {
                            store.identities(0).map(|l| l.len())
                        };
                        drop(store);
                        identities
                    })
                })
            })
            .collect();
        for replica in replicas {
            let started = replica.join().expect("replica thread");
            assert!(
                matches!(started, Ok(Ok(0))),
                "round {round}: a replica failed to start: {started:?}"
            );
        }
        // Both started: had both applied V2 (no lock), the second would
        // have failed on the column V2 adds.
        assert_eq!(
            history(&database),
            vec![(1, 1), (2, 1), (3, 1), (4, 1), (5, 1), (6, 1)],
            "round {round}"
        );
    }
}
