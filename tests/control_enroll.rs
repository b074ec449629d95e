//! Joining and staying enrolled, end to end: real `warden control serve`
//! and `warden proxy` processes on 127.0.0.1, sidecars bootstrapped by join
//! tokens, renewal under traffic, an outage, a restart and a kill -9, two
//! replicas on one PostgreSQL database, and the sidecar's control-plane
//! settings.

#[macro_use]
mod support;

#[path = "support/control_flows.rs"]
mod control_flows;

use std::collections::BTreeMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use control_flows::{Traffic, join, orders_and_frontend, refused_code, renewals, serial_of};
use support::control::{Control, Db, any_port, csr_pem, eventually, on_postgres};
use support::mesh::{FRONTEND, INTRUDER, ORDERS, Proxy, get};
use warden_proxy::control::api;
use warden_proxy::identity::SpiffeId;

on_both_backends!(
    sidecars_join_by_token_renew_under_traffic_and_ride_out_a_control_plane_outage,
    a_restart_keeps_the_ca_and_inventory_and_kill9_loses_no_committed_issuance,
);
async fn sidecars_join_by_token_renew_under_traffic_and_ride_out_a_control_plane_outage(db: Db) {
    let dir = tempfile::tempdir().expect("tempdir");
    let data = dir.path().join("control");
    // 12 s SVIDs: renewed about every 4.5 s.
    let mut control = Control::start(&data, any_port(), &db, &["--svid-ttl", "12s"]);
    let (_app, server, client) = orders_and_frontend(&control, &control, dir.path()).await;
    let traffic = Traffic::start(client.outbound[0], 2);

    // At least five renewals of each sidecar while traffic flows.
    renewals(&[&server, &client], 5, Duration::from_secs(60)).await;

    // The control plane dies (SIGKILL) for longer than a renewal interval:
    // until each sidecar has tried to renew and failed.
    let failed_renewals = |p: &Proxy| p.logs().matches("SVID refresh").count();
    let failed_before = [failed_renewals(&server), failed_renewals(&client)];
    let api = control.api;
    control.kill9();
    let before = [serial_of(&server).await, serial_of(&client).await];
    eventually(
        Duration::from_secs(30),
        "a failed renewal on each sidecar",
        || async {
            let now = [failed_renewals(&server), failed_renewals(&client)];
            now.iter()
                .zip(failed_before)
                .all(|(n, b)| *n > b)
                .then_some(())
        },
    )
    .await;
    let metrics = client.metrics().await;
    assert!(
        metrics.contains("warden_svid_expiry_timestamp_seconds"),
        "time left is exported while the control plane is down"
    );
    // It comes back on the same address with the same data directory.
    let control = Control::start(&data, api, &db, &[]);
    eventually(Duration::from_secs(30), "renewal after the restart", || {
        let before = &before;
        let (server, client) = (&server, &client);
        async move {
            let now = [serial_of(server).await, serial_of(client).await];
            now.iter().zip(before).all(|(n, b)| n != b).then_some(())
        }
    })
    .await;
    let (ok, failed, errors) = traffic.finish().await;
    assert_eq!(failed, 0, "failed requests: {errors:?}\n{}", client.logs());
    assert!(ok > 100, "only {ok} requests went through");

    // The inventory saw every renewal, across the restart.
    let list: Vec<serde_json::Value> =
        serde_json::from_str(&control.cli_ok(&["identities", "list", "--json"])).expect("json");
    let by_id: BTreeMap<&str, &serde_json::Value> = list
        .iter()
        .map(|i| (i["spiffe_id"].as_str().expect("id"), i))
        .collect();
    for (id, instance) in [(ORDERS, "orders-1"), (FRONTEND, "frontend-1")] {
        let i = by_id[id];
        assert_eq!(i["status"], "active", "{i}");
        assert_eq!(i["instance"], instance);
        assert_eq!(i["labels"]["owner"], "tests");
        assert!(i["svids_issued"].as_i64().expect("count") >= 7, "{i}");
    }
    let soon: Vec<serde_json::Value> = serde_json::from_str(&control.cli_ok(&[
        "identities",
        "list",
        "--expiring-within",
        "1h",
        "--json",
    ]))
    .expect("json");
    assert_eq!(soon.len(), 2);
    eprintln!("{ok} requests, 0 failed");
}

async fn a_restart_keeps_the_ca_and_inventory_and_kill9_loses_no_committed_issuance(db: Db) {
    let dir = tempfile::tempdir().expect("tempdir");
    let data = dir.path().join("control");
    let mut control = Control::start(&data, any_port(), &db, &[]);
    let bundle = std::fs::read(data.join("bundle.pem")).expect("bundle");
    let admin = control.client(true);
    let mut tokens = Vec::new();
    for i in 0..120 {
        let t: api::TokenResponse = admin
            .post(
                api::ADMIN_TOKENS,
                &api::TokenRequest {
                    spiffe_id: format!("spiffe://example.org/ns/batch/sa/job-{i}"),
                    ttl_secs: None,
                    labels: BTreeMap::new(),
                },
            )
            .await
            .expect("token");
        tokens.push(t);
    }
    // 120 joins at once; SIGKILL after the first 10 answers.
    let anon = control.client(false);
    let done = Arc::new(AtomicU64::new(0));
    let mut joins = Vec::new();
    for t in tokens {
        let anon = anon.clone();
        let done = done.clone();
        joins.push(tokio::spawn(async move {
            let id = SpiffeId::parse(&t.spiffe_id).expect("id");
            let result = join(&anon, &t.token, csr_pem(&id).0).await;
            if result.is_ok() {
                done.fetch_add(1, Ordering::SeqCst);
            }
            result.ok()
        }));
    }
    // Poll tightly: the kill must land while joins are still in flight.
    let deadline = Instant::now() + Duration::from_secs(30);
    while done.load(Ordering::SeqCst) < 10 {
        assert!(Instant::now() < deadline, "ten joins never completed");
        tokio::time::sleep(Duration::from_millis(1)).await;
    }
    control.kill9();
    let mut issued = Vec::new();
    for j in joins {
        if let Some(svid) = j.await.expect("join task") {
            issued.push(svid);
        }
    }
    assert!(issued.len() >= 10);

    let control = Control::start(&data, any_port(), &db, &[]);
    assert_eq!(
        std::fs::read(data.join("bundle.pem")).expect("bundle"),
        bundle,
        "the CA changed"
    );
    let admin = control.client(true);
    for svid in &issued {
        let shown: serde_json::Value = admin
            .get(&format!("{}/{}", api::ADMIN_IDENTITIES, svid.serial))
            .await
            .unwrap_or_else(|e| panic!("{} ({}) lost: {e}", svid.spiffe_id, svid.serial));
        assert_eq!(shown["spiffe_id"], svid.spiffe_id.as_str());
        assert_eq!(shown["status"], "active");
        assert_eq!(shown["svids"][0]["serial"], svid.serial.as_str());
    }
    eprintln!(
        "{} of 120 joins answered before SIGKILL; all are in the inventory",
        issued.len()
    );
}

#[test]
fn sidecar_config_for_the_control_plane_is_checked() {
    let out = support::warden(&[
        "proxy",
        "--set",
        "control.address=127.0.0.1:1",
        "--set",
        "identity.dir=/tmp",
        "--set",
        "admin.listen=127.0.0.1:0",
    ]);
    assert!(!out.status.success());
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("identity.dir"),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let out = support::warden(&[
        "proxy",
        "--set",
        "control.address=127.0.0.1:1",
        "--set",
        "control.server_id=spiffe://example.org/warden/control",
        "--set",
        "control.bundle=/nonexistent",
        "--set",
        "admin.listen=127.0.0.1:0",
    ]);
    assert!(!out.status.success());
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("control.token"),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
}

/// PostgreSQL ends the control plane's connections (a failover, a restart,
/// `pg_terminate_backend`): the pool replaces them, with no restart. A call
/// on a connection already ended may fail (at most one per connection),
/// and every call after it succeeds.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn postgres_connections_ended_by_the_server_are_replaced() {
    let dir = tempfile::tempdir().expect("tempdir");
    let (url, control) = on_postgres(&dir.path().join("c"));
    let admin = control.client(true);
    let token = |n: usize| api::TokenRequest {
        spiffe_id: format!("spiffe://{}/ns/pool/sa/w{n}", support::mesh::TD),
        ttl_secs: Some(600),
        labels: BTreeMap::new(),
    };
    for n in 0..3 {
        admin
            .post::<_, api::TokenResponse>(api::ADMIN_TOKENS, &token(n))
            .await
            .expect("a token before");
    }

    // The server ends every connection of the control plane's.
    let ended = tokio::task::spawn_blocking(move || {
        let mut pg = ::postgres::Client::connect(&url, ::postgres::NoTls).expect("connect");
        let row = pg
            .query_one(
                // Each ended and gone (waited for, up to 5 s) counts.
                "SELECT count(*) FILTER (WHERE pg_terminate_backend(pid, 5000)) \
                 FROM pg_stat_activity \
                 WHERE datname = current_database() AND application_name = 'warden-control'",
                &[],
            )
            .expect("terminate");
        row.get::<_, i64>(0)
    })
    .await
    .expect("terminate");
    assert!(ended >= 1, "the control plane held no connection");

    let mut failures = 0;
    for n in 3..(3 + ended as usize + 3) {
        if let Err(e) = admin
            .post::<_, api::TokenResponse>(api::ADMIN_TOKENS, &token(n))
            .await
        {
            failures += 1;
            assert!(
                failures <= ended,
                "{failures} calls failed after {ended} connections ended; last: {e}"
            );
        }
    }
    let list: Vec<serde_json::Value> = admin
        .get(api::ADMIN_IDENTITIES)
        .await
        .expect("identities after");
    let made = list
        .iter()
        .filter(|i| {
            i["spiffe_id"]
                .as_str()
                .is_some_and(|id| id.contains("/ns/pool/"))
        })
        .count();
    assert_eq!(
        made,
        3 + ended as usize + 3 - failures as usize,
        "every call that succeeded made one identity: {list:#?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_replicas_share_one_postgres_database() {
    let dir = tempfile::tempdir().expect("tempdir");
    let db = Db::postgres();
    let a = Control::start(&dir.path().join("a"), any_port(), &db, &[]);
    let ca_dir = dir.path().join("a").join("ca");
    let b = Control::start(
        &dir.path().join("b"),
        any_port(),
        &db,
        &["--ca-dir", ca_dir.to_str().expect("utf-8")],
    );
    assert_eq!(
        std::fs::read(dir.path().join("a/bundle.pem")).expect("a"),
        std::fs::read(dir.path().join("b/bundle.pem")).expect("b"),
        "replicas sign with one CA"
    );

    // One token, redeemed at both replicas at once: exactly one join wins.
    let token = a.token(INTRUDER);
    let intruder = SpiffeId::parse(INTRUDER).expect("id");
    let (ca, cb) = (a.client(false), b.client(false));
    let (ra, rb) = tokio::join!(
        join(&ca, &token, csr_pem(&intruder).0),
        join(&cb, &token, csr_pem(&intruder).0)
    );
    match (&ra, &rb) {
        (Ok(_), Err(_)) | (Err(_), Ok(_)) => {}
        other => panic!("a single-use token worked {other:?}"),
    }
    let loser = if ra.is_err() { ra } else { rb };
    assert_eq!(refused_code(loser).1, "token_reused");

    // orders joins through A, frontend through B; traffic flows.
    let (_app, _server, client) = orders_and_frontend(&a, &b, dir.path()).await;
    assert_eq!(
        get(client.outbound[0], "/x", &[])
            .await
            .expect("get")
            .status,
        200
    );

    // Revoked through B, refused by the sidecar that watches A.
    b.cli_ok(&["identities", "revoke", FRONTEND, "--reason", "replica test"]);
    let status = eventually(
        Duration::from_secs(5),
        "the revocation through the other replica",
        || async {
            let r = get(client.outbound[0], "/x", &[]).await.ok()?;
            (r.status != 200).then_some(r.status)
        },
    )
    .await;
    assert_eq!(status, 502);

    // Both replicas show one inventory.
    let list_a: Vec<serde_json::Value> =
        serde_json::from_str(&a.cli_ok(&["identities", "list", "--json"])).expect("json");
    let list_b: Vec<serde_json::Value> =
        serde_json::from_str(&b.cli_ok(&["identities", "list", "--json"])).expect("json");
    let ids = |l: &[serde_json::Value]| -> Vec<(String, String)> {
        l.iter()
            .map(|i| (i["spiffe_id"].to_string(), i["status"].to_string()))
            .collect()
    };
    assert_eq!(ids(&list_a), ids(&list_b));
    assert_eq!(list_a.len(), 3);
}
