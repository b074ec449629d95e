//! Upgrades without losing anything: a database made by Warden 0.1.0
//! (`tests/fixtures/control-0.1`) migrated by today's control plane on
//! SQLite and PostgreSQL with every row still served; replicas of adjacent
//! schema versions on one PostgreSQL database; a migration failing half
//! way; a schema newer than the binary; an online backup under 100 joins
//! and its restore; a pg_dump round trip; and a 0.1.0 sidecar (its API
//! types frozen in `support/api_0_1.rs`) against today's control plane.

#[macro_use]
mod support;

#[path = "support/api_0_1.rs"]
mod api_0_1;

use std::collections::BTreeSet;
use std::path::Path;
use std::sync::{Arc, Barrier};
use std::time::Duration;

use http::Method;
use support::control::{Control, Db, any_port, csr_pem, server_id};
use support::mesh::TD;
use warden_control::store::{Database, MigrationSet, Store, migrate::Dialect};
use warden_proxy::control::api;
use warden_proxy::identity::{SpiffeId, Svid};

const FIXTURE_TOKEN: &str = "wjt_fixture_unused_0001";
const NEWEST: i32 = 2;

fn id(path: &str) -> String {
    format!("spiffe://{TD}/{path}")
}

fn csr_for(spiffe_id: &str) -> (String, String) {
    csr_pem(&SpiffeId::parse(spiffe_id).expect("id"))
}

/// Runs blocking PostgreSQL or store work off any runtime.
fn off_runtime<T: Send + 'static>(f: impl FnOnce() -> T + Send + 'static) -> T {
    std::thread::spawn(f).join().expect("thread")
}

fn pg(url: &str) -> ::postgres::Client {
    ::postgres::Client::connect(url, ::postgres::NoTls).expect("connect")
}

/// A data directory (and database) holding the 0.1.0 fixture.
fn load_fixture(data: &Path, db: &Db) {
    std::fs::create_dir_all(data).expect("data dir");
    match db {
        Db::Sqlite => rusqlite::Connection::open(data.join("control.db"))
            .expect("sqlite")
            .execute_batch(include_str!("fixtures/control-0.1/sqlite.sql"))
            .expect("load fixture"),
        Db::Postgres(url) => {
            let url = url.clone();
            off_runtime(move || {
                pg(&url)
                    .batch_execute(include_str!("fixtures/control-0.1/postgres.sql"))
                    .expect("load fixture")
            })
        }
    }
}

/// A temporary data directory holding the 0.1.0 fixture, and its database.
fn fixture_database(db: &Db) -> (tempfile::TempDir, std::path::PathBuf, Database) {
    let dir = tempfile::tempdir().expect("tempdir");
    let data = dir.path().join("control");
    load_fixture(&data, db);
    let database = database(&data, db);
    (dir, data, database)
}

fn dialect(db: &Db) -> Dialect {
    match db {
        Db::Sqlite => Dialect::Sqlite,
        Db::Postgres(_) => Dialect::Postgres,
    }
}

/// Opens (migrating) `database` with `set`, off any runtime.
fn open_with(
    database: &Database,
    set: &MigrationSet,
) -> Result<(), warden_control::store::StoreError> {
    let (database, set) = (database.clone(), set.clone());
    off_runtime(move || Store::open_with(&database, false, Some(&set)).map(drop))
}

fn database(data: &Path, db: &Db) -> Database {
    match db {
        Db::Sqlite => Database::Sqlite(data.join("control.db")),
        Db::Postgres(url) => Database::Postgres(url.clone()),
    }
}

/// The schema history's versions, each with how many times it was applied.
fn history(database: &Database) -> Vec<(i64, i64)> {
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

fn has_table(database: &Database, table: &'static str) -> bool {
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

on_both_backends!(
    a_0_1_database_is_migrated_and_a_0_1_sidecar_reads_every_row,
    a_migration_failing_half_way_is_rolled_back_and_the_schema_stays,
    a_newer_schema_is_refused_at_start_and_left_unchanged,
);

/// Today's control plane starts on 0.1.0's database: the schema is
/// migrated, and every row of the fixture is served. A 0.1.0 sidecar
/// (frozen types, no version header) joins with the fixture's token, renews
/// over mTLS and watches, and sees the fixture's revocations and policy.
async fn a_0_1_database_is_migrated_and_a_0_1_sidecar_reads_every_row(db: Db) {
    let (_dir, data, database) = fixture_database(&db);
    assert!(history_is_absent(&database), "the fixture has no history");

    // `warden control migrate --dry-run` lists both steps and changes
    // nothing; `warden control migrate` applies them.
    let migrate = |dry_run: bool| {
        let mut cmd = std::process::Command::new(support::warden_bin());
        cmd.args(["control", "migrate", "--data-dir"]).arg(&data);
        if dry_run {
            cmd.arg("--dry-run");
        }
        if let Db::Postgres(url) = &db {
            cmd.args(["--database", url]);
        }
        let out = cmd.output().expect("warden control migrate");
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8_lossy(&out.stdout).into_owned()
    };
    let listed = migrate(true);
    assert!(
        listed.contains("schema version 0 (this warden knows 2)")
            && listed.lines().filter(|l| l.ends_with("pending")).count() == 2
            && listed.contains("dry run: nothing was changed"),
        "{listed}"
    );
    assert!(history_is_absent(&database), "the dry run wrote");
    let applied = migrate(false);
    assert_eq!(applied.matches("applied now").count(), 2, "{applied}");
    assert_eq!(history(&database), vec![(1, 1), (2, 1)]);

    let control = Control::start(&data, any_port(), &db, &[]);
    assert_eq!(history(&database), vec![(1, 1), (2, 1)]);
    let admin = control.client(true);

    // Identities, SVIDs and their statuses, as 0.1.0 left them.
    let list: Vec<serde_json::Value> = admin.get(api::ADMIN_IDENTITIES).await.expect("list");
    let status = |who: &str| {
        list.iter()
            .find(|i| i["spiffe_id"] == id(who))
            .map(|i| i["status"].as_str().unwrap_or("").to_owned())
    };
    assert_eq!(status("fixture/api").as_deref(), Some("stale"), "{list:#?}");
    assert_eq!(status("fixture/new").as_deref(), Some("pending"));
    assert_eq!(status("fixture/old").as_deref(), Some("revoked"));
    let api_id: serde_json::Value = admin
        .get(&format!(
            "{}/{}",
            api::ADMIN_IDENTITIES,
            "5f1e0c0ffee00000000000000000a002"
        ))
        .await
        .expect("by serial");
    assert_eq!(api_id["labels"]["team"], "payments");
    assert_eq!(api_id["svids"].as_array().map(Vec::len), Some(2));
    assert_eq!(api_id["svids"][0]["instance"], "api-7f9c");
    assert_eq!(
        api_id["svids"][0]["sidecar_version"],
        serde_json::Value::Null
    );

    // Policy versions and the audit trail.
    let policies: serde_json::Value = admin.get(api::ADMIN_POLICIES).await.expect("policies");
    assert_eq!(policies["current"], 1, "{policies}");
    assert_eq!(policies["versions"].as_array().map(Vec::len), Some(2));
    let audit: Vec<serde_json::Value> = admin
        .get(&format!("{}?limit=1000", api::ADMIN_AUDIT))
        .await
        .expect("audit");
    for (event, outcome) in [
        ("token_created", "ok"),
        ("join", "ok"),
        ("revoke", "ok"),
        ("join", "refused"),
    ] {
        assert!(
            audit.iter().any(|e| e["event"] == event
                && e["outcome"] == outcome
                && e["at"].as_i64() < Some(1_790_000_000)),
            "fixture audit row {event}/{outcome} missing: {audit:#?}"
        );
    }

    // A 0.1.0 sidecar: join with the fixture's token, renew, watch.
    let new_id = id("fixture/new");
    let store = Arc::new(control.bundle_store());
    let old = api_0_1::OldClient::new(control.api, server_id(), store.clone());
    let (csr, key) = csr_for(&new_id);
    let joined: api_0_1::SvidResponse = old
        .post(
            api_0_1::JOIN,
            &api_0_1::JoinRequest {
                token: FIXTURE_TOKEN.into(),
                csr,
                instance: "old-sidecar".into(),
                ttl_secs: None,
            },
        )
        .await
        .expect("0.1.0 join");
    assert_eq!(joined.spiffe_id, new_id);
    let svid = Svid::from_pem(joined.chain_pem.as_bytes(), key.as_bytes()).expect("svid");
    store.install(svid, None).expect("install");
    let (csr, key) = csr_for(&new_id);
    let renewed: api_0_1::SvidResponse = old
        .post(
            api_0_1::RENEW,
            &api_0_1::RenewRequest {
                csr,
                instance: "old-sidecar".into(),
                ttl_secs: None,
            },
        )
        .await
        .expect("0.1.0 renew");
    assert_ne!(renewed.serial, joined.serial);
    let svid = Svid::from_pem(renewed.chain_pem.as_bytes(), key.as_bytes()).expect("svid");
    store.install(svid, None).expect("install");
    let (headers, watched): (_, api_0_1::WatchResponse) = old
        .call(
            Method::GET,
            &format!(
                "{}?revocations=-1&bundle=&policy=none&wait_ms=0",
                api_0_1::WATCH
            ),
            None,
        )
        .await
        .expect("0.1.0 watch");
    assert!(watched.revocations.spiffe_ids.contains(&id("fixture/old")));
    assert!(
        watched
            .revocations
            .serials
            .contains(&"5f1e0c0ffee00000000000000000b002".to_owned()),
        "{:?}",
        watched.revocations
    );
    assert_eq!(watched.policy_version, Some(1));
    let policy = watched.policy.expect("the current policy");
    assert!(policy.files["main.cedar"].starts_with("permit"));
    assert_eq!(
        headers
            .get(api::VERSION_HEADER)
            .and_then(|v| v.to_str().ok()),
        Some(api::VERSION),
        "the control plane says its version"
    );

    // Today's sidecar is recorded with its version; the old one without.
    let token: api::TokenResponse = admin
        .post(
            api::ADMIN_TOKENS,
            &api::TokenRequest {
                spiffe_id: id("fixture/today"),
                ttl_secs: None,
                labels: Default::default(),
            },
        )
        .await
        .expect("token");
    let today = control.client(false);
    let bundle: api::BundleResponse = today.get(api::BUNDLE).await.expect("bundle");
    assert_eq!(bundle.version, api::VERSION);
    assert_eq!(today.server_version().as_deref(), Some(api::VERSION));
    let (csr, _) = csr_for(&id("fixture/today"));
    let _: api::SvidResponse = today
        .post(
            api::JOIN,
            &api::JoinRequest {
                token: token.token,
                csr,
                instance: "new-sidecar".into(),
                ttl_secs: None,
            },
        )
        .await
        .expect("join");
    let list: Vec<serde_json::Value> = admin.get(api::ADMIN_IDENTITIES).await.expect("list");
    let version_of = |who: &str| {
        list.iter()
            .find(|i| i["spiffe_id"] == id(who))
            .map(|i| i["sidecar_version"].clone())
    };
    assert_eq!(version_of("fixture/today"), Some(api::VERSION.into()));
    assert_eq!(version_of("fixture/new"), Some(serde_json::Value::Null));

    // `warden control migrate --dry-run` while it serves: nothing pending.
    let mut args = vec!["control", "migrate", "--dry-run"];
    if let Db::Postgres(url) = &db {
        args.extend(["--database", url.as_str()]);
    }
    let out = control.cli_ok(&args);
    assert!(
        out.contains(&format!(
            "schema version {NEWEST} (this warden knows {NEWEST})"
        )) && !out.contains("pending"),
        "{out}"
    );
}

fn history_is_absent(database: &Database) -> bool {
    !has_table(database, "warden_schema_history")
}

/// A step that fails half way (its first statement succeeds, its second
/// does not) is rolled back with its history row: the schema stays at the
/// version before, the control plane refuses to start and says why, and
/// the data is intact.
async fn a_migration_failing_half_way_is_rolled_back_and_the_schema_stays(db: Db) {
    let (_dir, data, database) = fixture_database(&db);
    let dialect = dialect(&db);
    let broken = MigrationSet::builtin(dialect).with(
        "V3__half_way",
        "CREATE TABLE half_way (x BIGINT);\n\
         ALTER TABLE svids ADD COLUMN broken TEXT;\n\
         INSERT INTO no_such_table VALUES (1);",
    );
    let err = open_with(&database, &broken).expect_err("the broken step must fail");
    let text = err.to_string();
    assert!(
        text.contains("V3__half_way failed and was rolled back; the schema stays at version 2"),
        "{text}"
    );
    // Steps 1 and 2 committed on their own; step 3 left nothing behind.
    assert_eq!(history(&database), vec![(1, 1), (2, 1)]);
    assert!(!has_table(&database, "half_way"), "half of V3 survived");

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
    // A future release's V3, readable by code that knows V2.
    let compatible = MigrationSet::builtin(dialect).with(
        "V3__additive",
        "INSERT INTO warden_schema_compat (version, oldest_compatible) VALUES (3, 2);\n\
         CREATE TABLE future_three (x BIGINT);",
    );
    {
        let (database, set) = (database.clone(), compatible.clone());
        off_runtime(move || Store::open_with(&database, false, Some(&set)).map(drop)).expect("V3");
    }
    let control = Control::start(&data, any_port(), &db, &[]);
    drop(control);

    // Its V4 is not readable by code that knows V2.
    let incompatible = compatible.with(
        "V4__breaking",
        "INSERT INTO warden_schema_compat (version, oldest_compatible) VALUES (4, 4);\n\
         CREATE TABLE future_four (x BIGINT);",
    );
    open_with(&database, &incompatible).expect("V4");
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
        stderr.contains("schema is at version 4, newer than the 2 this control plane")
            && stderr.contains("must know version 4"),
        "{stderr}"
    );
    assert_eq!(
        history(&database),
        before,
        "the refused start changed the history"
    );
}

/// Two replicas starting at the same moment on one new PostgreSQL
/// database, one of the previous schema version (knows V1) and one of
/// this (V2), in either order: each step is applied exactly once and both
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
                Some(MigrationSet::builtin(Dialect::Postgres).up_to(1)),
                None,
            ],
            1 => [
                None,
                Some(MigrationSet::builtin(Dialect::Postgres).up_to(1)),
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
        assert_eq!(history(&database), vec![(1, 1), (2, 1)], "round {round}");
    }
}

/// `warden control backup` while 100 joins are in flight: the copy passes
/// `PRAGMA integrity_check`, holds every join answered before the backup
/// began, is restored by `warden control restore` into an empty data
/// directory, and a control plane serves from it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn backup_under_100_joins_in_flight_restores_every_answered_join() {
    let dir = tempfile::tempdir().expect("tempdir");
    let data = dir.path().join("control");
    let control = Control::start(&data, any_port(), &Db::Sqlite, &[]);
    let admin = control.client(true);
    let mut tokens = Vec::new();
    for i in 0..100 {
        let t: api::TokenResponse = admin
            .post(
                api::ADMIN_TOKENS,
                &api::TokenRequest {
                    spiffe_id: id(&format!("load/w{i}")),
                    ttl_secs: None,
                    labels: Default::default(),
                },
            )
            .await
            .expect("token");
        tokens.push(t);
    }
    let answered = Arc::new(std::sync::Mutex::new(BTreeSet::new()));
    let mut joins = tokio::task::JoinSet::new();
    for t in tokens {
        let client = control.client(false);
        let answered = answered.clone();
        joins.spawn(async move {
            let (csr, _) = csr_for(&t.spiffe_id);
            let svid: api::SvidResponse = client
                .post(
                    api::JOIN,
                    &api::JoinRequest {
                        token: t.token,
                        csr,
                        instance: "load".into(),
                        ttl_secs: None,
                    },
                )
                .await
                .expect("join");
            answered.lock().expect("lock").insert(svid.serial);
        });
    }
    // Back up once some joins are answered and others are still running:
    // polled every 5 ms (finer than `eventually`), or the joins finish first.
    for _ in 0..2_000 {
        if answered.lock().expect("lock").len() >= 20 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    let before_backup = answered.lock().expect("lock").clone();
    let backup = dir.path().join("backup.db");
    let (bin, data2, backup2) = (support::warden_bin(), data.clone(), backup.clone());
    let out = tokio::task::spawn_blocking(move || {
        std::process::Command::new(bin)
            .args(["control", "backup", "--data-dir"])
            .arg(&data2)
            .arg("--out")
            .arg(&backup2)
            .output()
            .expect("backup")
    })
    .await
    .expect("backup task");
    let in_flight_after = 100 - answered.lock().expect("lock").len();
    assert!(
        out.status.success(),
        "backup failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    while let Some(joined) = joins.join_next().await {
        joined.expect("join task");
    }
    eprintln!(
        "backup began with {} joins answered; {in_flight_after} were still in flight when it finished",
        before_backup.len()
    );
    assert!(
        before_backup.len() < 100,
        "the backup did not overlap the joins"
    );
    {
        use std::os::unix::fs::PermissionsExt;
        let mode = std::fs::metadata(&backup)
            .expect("backup")
            .permissions()
            .mode();
        assert_eq!(mode & 0o777, 0o600);
    }
    // One self-contained file: no WAL beside it, rollback-journal mode.
    assert!(!dir.path().join("backup.db-wal").exists());
    let copy = rusqlite::Connection::open(&backup).expect("open backup");
    let mode: String = copy
        .query_row("PRAGMA journal_mode", [], |r| r.get(0))
        .expect("journal_mode");
    assert_eq!(mode, "delete");
    let verdict: String = copy
        .query_row("PRAGMA integrity_check", [], |r| r.get(0))
        .expect("integrity_check");
    assert_eq!(verdict, "ok");
    let serials: BTreeSet<String> = copy
        .prepare("SELECT serial FROM svids")
        .expect("prepare")
        .query_map([], |r| r.get(0))
        .expect("query")
        .collect::<Result<_, _>>()
        .expect("rows");
    let missing: Vec<_> = before_backup.difference(&serials).collect();
    assert!(
        missing.is_empty(),
        "answered before the backup, missing from it: {missing:?}"
    );
    drop(copy);

    // A second backup to the same path is refused; restore into a data
    // directory that has a database is refused.
    let again = control.cli(&["control", "backup", "--out", &backup.display().to_string()]);
    assert!(!again.status.success());
    assert!(String::from_utf8_lossy(&again.stderr).contains("already exists"));
    let over = control.cli(&[
        "control",
        "restore",
        "--from",
        &backup.display().to_string(),
    ]);
    assert!(!over.status.success());
    assert!(String::from_utf8_lossy(&over.stderr).contains("restore into an empty data directory"));
    drop(control);

    // Restore into a new data directory that has the old CA, and serve.
    let restored = dir.path().join("restored");
    std::fs::create_dir_all(&restored).expect("dir");
    copy_dir(&data.join("ca"), &restored.join("ca"));
    let out = std::process::Command::new(support::warden_bin())
        .args(["control", "restore", "--data-dir"])
        .arg(&restored)
        .arg("--from")
        .arg(&backup)
        .output()
        .expect("restore");
    assert!(
        out.status.success(),
        "restore failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let printed = String::from_utf8_lossy(&out.stdout);
    assert!(
        printed.contains(&format!("schema version {NEWEST}")),
        "{printed}"
    );
    let control = Control::start(&restored, any_port(), &Db::Sqlite, &[]);
    let list: Vec<serde_json::Value> = control
        .client(true)
        .get(api::ADMIN_IDENTITIES)
        .await
        .expect("list");
    let active = list.iter().filter(|i| i["status"] == "active").count();
    assert!(
        active >= before_backup.len(),
        "{active} active after restore"
    );
}

fn copy_dir(from: &Path, to: &Path) {
    std::fs::create_dir_all(to).expect("mkdir");
    for entry in std::fs::read_dir(from).expect("read_dir") {
        let entry = entry.expect("entry");
        let target = to.join(entry.file_name());
        if entry.file_type().expect("type").is_dir() {
            copy_dir(&entry.path(), &target);
        } else {
            std::fs::copy(entry.path(), &target).expect("copy");
        }
    }
}

/// `pg_dump` of a live control plane's database restored with `psql` into
/// another database: a control plane started on the copy serves the same
/// inventory and finds nothing to migrate.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn postgres_pg_dump_round_trip() {
    let dir = tempfile::tempdir().expect("tempdir");
    let source = Db::postgres();
    let data = dir.path().join("control");
    load_fixture(&data, &source);
    let control = Control::start(&data, any_port(), &source, &[]);
    let before: Vec<serde_json::Value> = control
        .client(true)
        .get(api::ADMIN_IDENTITIES)
        .await
        .expect("list");
    let (Db::Postgres(from), Db::Postgres(to)) = (&source, Db::postgres()) else {
        unreachable!()
    };
    let dump = dir.path().join("control.sql");
    let bin = support::postgres::bin_dir();
    let out = std::process::Command::new(bin.join("pg_dump"))
        .args(["--no-owner", "--dbname", from, "--file"])
        .arg(&dump)
        .output()
        .expect("pg_dump");
    assert!(
        out.status.success(),
        "pg_dump: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    drop(control);
    let out = std::process::Command::new(bin.join("psql"))
        .args([
            "--quiet",
            "--set",
            "ON_ERROR_STOP=1",
            "--dbname",
            &to,
            "--file",
        ])
        .arg(&dump)
        .output()
        .expect("psql");
    assert!(
        out.status.success(),
        "psql: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let restored = Db::Postgres(to.clone());
    assert_eq!(
        history(&Database::Postgres(to.clone())),
        vec![(1, 1), (2, 1)]
    );
    // The same CA (data directory), the restored database.
    let control = Control::start(&data, any_port(), &restored, &[]);
    let after: Vec<serde_json::Value> = control
        .client(true)
        .get(api::ADMIN_IDENTITIES)
        .await
        .expect("list");
    assert_eq!(before, after);
    assert_eq!(history(&Database::Postgres(to)), vec![(1, 1), (2, 1)]);
}

/// Today's request bodies are accepted by 0.1.0's strict request types
/// (its control plane refuses unknown fields): a field added to a request
/// without the version check would fail here.
#[test]
fn todays_requests_fit_0_1_request_types() {
    fn fits<New: serde::Serialize, Old: serde::de::DeserializeOwned>(new: &New) {
        let json = serde_json::to_string(new).expect("json");
        if let Err(e) = serde_json::from_str::<Old>(&json) {
            panic!("0.1.0 refuses {json}: {e}");
        }
    }
    fits::<_, api_0_1::JoinRequest>(&api::JoinRequest {
        token: "t".into(),
        csr: "c".into(),
        instance: "i".into(),
        ttl_secs: Some(60),
    });
    fits::<_, api_0_1::RenewRequest>(&api::RenewRequest {
        csr: "c".into(),
        instance: "i".into(),
        ttl_secs: None,
    });
    fits::<_, api_0_1::TokenRequest>(&api::TokenRequest {
        spiffe_id: "spiffe://example.org/a".into(),
        ttl_secs: None,
        labels: Default::default(),
    });
    // And 0.1.0's responses still decode for today's client: a control
    // plane one version older sends no `version` in its bundle.
    let old_bundle =
        serde_json::json!({"trust_domain": "example.org", "bundle_pem": "", "digest": "d"});
    let bundle: api::BundleResponse = serde_json::from_value(old_bundle).expect("old bundle");
    assert_eq!(bundle.version, "");
}
