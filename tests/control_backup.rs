//! Backups: an online SQLite backup under 100 joins in flight and its
//! restore, and a pg_dump round trip of a live PostgreSQL database.

#[macro_use]
mod support;

#[path = "support/control_fixture.rs"]
mod control_fixture;

use std::collections::BTreeSet;
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use control_fixture::{NEWEST, csr_for, history, id, load_fixture};
use support::control::{Control, Db, any_port};
use warden_control::store::Database;
use warden_proxy::control::api;
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
        vec![(1, 1), (2, 1), (3, 1), (4, 1), (5, 1), (6, 1)]
    );
    // The same CA (data directory), the restored database.
    let control = Control::start(&data, any_port(), &restored, &[]);
    let after: Vec<serde_json::Value> = control
        .client(true)
        .get(api::ADMIN_IDENTITIES)
        .await
        .expect("list");
    assert_eq!(before, after);
    assert_eq!(
        history(&Database::Postgres(to)),
        vec![(1, 1), (2, 1), (3, 1), (4, 1), (5, 1), (6, 1)]
    );
}
