//! The control plane end to end: real `warden control serve` and `warden
//! proxy` processes on 127.0.0.1, sidecars bootstrapped by join tokens,
//! renewal under traffic, an outage, revocation, bad input, restarts and
//! policy distribution.

#[macro_use]
mod support;

use std::collections::{BTreeMap, BTreeSet};
use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use http::Method;
use support::control::{Control, Db, TestClock, any_port, csr_pem, eventually};
use support::mesh::{
    FRONTEND, INTRUDER, ORDERS, Proxy, TestApp, get, inbound_to, read_some, route_to, tcp_echo,
};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use warden_proxy::control::{ControlClient, ControlError, api};
use warden_proxy::identity::{SpiffeId, Svid};

on_both_backends!(
    sidecars_join_by_token_renew_under_traffic_and_ride_out_a_control_plane_outage,
    revocation_cuts_live_connections_within_seconds_and_refuses_new_ones,
    bad_requests_are_refused_precisely_audited_and_change_nothing,
    a_restart_keeps_the_ca_and_inventory_and_kill9_loses_no_committed_issuance,
    policies_pushed_to_the_control_plane_are_hot_swapped_and_rolled_back,
    ca_rotation_under_traffic_fails_no_request,
    revoking_the_server_cuts_the_callers_connections,
);

async fn serial_of(p: &Proxy) -> Option<String> {
    let r = get(p.admin, "/identity", &[]).await.ok()?;
    let json: serde_json::Value = serde_json::from_str(&r.body).ok()?;
    json["serial"].as_str().map(str::to_owned)
}

/// The usual pair, both ready: the test app behind `orders`' sidecar
/// (joined through `server_cp`), and `frontend`'s sidecar (joined through
/// `client_cp`) routing to it.
async fn orders_and_frontend(
    server_cp: &Control,
    client_cp: &Control,
    logs: &std::path::Path,
) -> (TestApp, Proxy, Proxy) {
    let app = TestApp::start().await;
    let server = server_cp.sidecar(logs, "orders", ORDERS, &inbound_to(app.addr));
    let client = client_cp.sidecar(
        logs,
        "frontend",
        FRONTEND,
        &[route_to(server.inbound(), ORDERS)],
    );
    server.wait_ready().await;
    client.wait_ready().await;
    (app, server, client)
}

/// Requests through `via` from `workers` tasks until `stop`; counts
/// successes and failures (and keeps the first failures).
struct Traffic {
    stop: Arc<AtomicBool>,
    ok: Arc<AtomicU64>,
    failed: Arc<AtomicU64>,
    errors: Arc<std::sync::Mutex<Vec<String>>>,
    tasks: Vec<tokio::task::JoinHandle<()>>,
}

impl Traffic {
    fn start(via: SocketAddr, workers: usize) -> Traffic {
        let t = Traffic {
            stop: Arc::default(),
            ok: Arc::default(),
            failed: Arc::default(),
            errors: Arc::default(),
            tasks: Vec::new(),
        };
        let mut tasks = Vec::new();
        for w in 0..workers {
            let (stop, ok, failed, errors) = (
                t.stop.clone(),
                t.ok.clone(),
                t.failed.clone(),
                t.errors.clone(),
            );
            tasks.push(tokio::spawn(async move {
                let mut i = 0u64;
                while !stop.load(Ordering::Relaxed) {
                    i += 1;
                    let path = format!("/orders/{w}/{i}");
                    match tokio::time::timeout(Duration::from_secs(5), get(via, &path, &[])).await {
                        Ok(Ok(r)) if r.status == 200 => {
                            ok.fetch_add(1, Ordering::Relaxed);
                        }
                        other => {
                            failed.fetch_add(1, Ordering::Relaxed);
                            let mut e = errors.lock().expect("lock");
                            if e.len() < 5 {
                                e.push(format!("{other:?}"));
                            }
                        }
                    }
                    // Pacing, not waiting for anything: a steady request rate.
                    tokio::time::sleep(Duration::from_millis(5)).await;
                }
            }));
        }
        Traffic { tasks, ..t }
    }

    async fn finish(self) -> (u64, u64, Vec<String>) {
        self.stop.store(true, Ordering::Relaxed);
        for t in self.tasks {
            t.await.expect("traffic task");
        }
        let errors = self.errors.lock().expect("lock").clone();
        (
            self.ok.load(Ordering::Relaxed),
            self.failed.load(Ordering::Relaxed),
            errors,
        )
    }
}

/// Waits until every sidecar shows `n` more distinct serials on `/identity`.
async fn renewals(sidecars: &[&Proxy], n: usize, limit: Duration) {
    let mut seen: Vec<BTreeSet<String>> = vec![BTreeSet::new(); sidecars.len()];
    let deadline = Instant::now() + limit;
    while !seen.iter().all(|s| s.len() > n) {
        assert!(
            Instant::now() < deadline,
            "fewer than {n} renewals in {limit:?}: {seen:?}"
        );
        for (p, s) in sidecars.iter().zip(seen.iter_mut()) {
            if let Some(serial) = serial_of(p).await {
                s.insert(serial);
            }
        }
        // The poll interval of this wait for new serials.
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

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

/// Keeps using `live` (an echo connection) until it is closed, for at most
/// 15 s; how long after `since` that happened.
async fn cut_after(live: &mut tokio::net::TcpStream, since: Instant) -> Option<Duration> {
    while since.elapsed() < Duration::from_secs(15) {
        // Probe pacing: how soon the cut is seen is what is measured.
        tokio::time::sleep(Duration::from_millis(50)).await;
        let wrote = live.write_all(b"b;").await;
        let mut buf = [0u8; 16];
        let read = tokio::time::timeout(Duration::from_millis(200), live.read(&mut buf)).await;
        if wrote.is_err() || matches!(read, Ok(Ok(0)) | Ok(Err(_))) {
            return Some(since.elapsed());
        }
    }
    None
}

async fn revocation_cuts_live_connections_within_seconds_and_refuses_new_ones(db: Db) {
    let dir = tempfile::tempdir().expect("tempdir");
    let control = Control::start(&dir.path().join("control"), any_port(), &db, &[]);
    let echo = tcp_echo().await;
    let server = control.sidecar(
        dir.path(),
        "orders",
        ORDERS,
        &[format!(
            "inbound.opaque=[{{listen=\"127.0.0.1:0\", app=\"{echo}\"}}]"
        )],
    );
    let route = format!(
        "outbound.routes=[{{listen=\"127.0.0.1:0\", upstream=\"{}\", identity=\"{ORDERS}\", protocol=\"tcp\"}}]",
        server.opaque[0]
    );
    let client = control.sidecar(dir.path(), "frontend", FRONTEND, &[route]);
    server.wait_ready().await;
    client.wait_ready().await;

    let mut live = tokio::net::TcpStream::connect(client.outbound[0])
        .await
        .expect("connect");
    assert_eq!(read_some(&mut live, 6).await, b"hello\n");
    live.write_all(b"a;").await.expect("write");
    assert_eq!(read_some(&mut live, 2).await, b"A;");

    let revoked_at = Instant::now();
    let out = control.cli_ok(&[
        "identities",
        "revoke",
        FRONTEND,
        "--reason",
        "host compromised",
    ]);
    assert!(
        out.contains("revoked spiffe://example.org/ns/shop/sa/frontend"),
        "{out}"
    );

    // The live connection is cut: keep using it until it fails (bounded).
    let cut = cut_after(&mut live, revoked_at).await;
    let Some(cut) = cut else {
        let identity = get(server.admin, "/identity", &[])
            .await
            .expect("identity")
            .body;
        panic!(
            "the revoked peer's connection stayed open\n{identity}\n{}\n{}",
            server.logs(),
            control.logs()
        );
    };
    assert!(
        cut <= Duration::from_secs(5),
        "cut after {cut:?}, the limit is 5 s"
    );

    // A new connection from the revoked identity fails its handshake.
    let mut again = tokio::net::TcpStream::connect(client.outbound[0])
        .await
        .expect("connect");
    assert!(
        read_some(&mut again, 6).await.is_empty(),
        "a revoked peer got through"
    );
    let metrics = server.metrics().await;
    assert!(
        metrics.contains("reason=\"revoked\""),
        "no handshake refused as revoked:\n{metrics}"
    );

    let shown: serde_json::Value =
        serde_json::from_str(&control.cli_ok(&["identities", "show", FRONTEND])).expect("json");
    assert_eq!(shown["status"], "revoked");
    assert_eq!(shown["revoke_reason"], "host compromised");
    assert!(
        shown["svids"]
            .as_array()
            .expect("svids")
            .iter()
            .all(|s| s["revoked"] == true)
    );
    // No new token for a revoked identity.
    let refused = control.cli(&["control", "token", "create", "--spiffe-id", FRONTEND]);
    assert!(!refused.status.success());
    assert!(String::from_utf8_lossy(&refused.stderr).contains("identity_revoked"));
    eprintln!("live connection cut {cut:?} after the revocation");
}

fn csr_from_params(params: rcgen::CertificateParams) -> String {
    let key = rcgen::KeyPair::generate().expect("key");
    params
        .serialize_request(&key)
        .expect("csr")
        .pem()
        .expect("pem")
}

fn refused_code<T: std::fmt::Debug>(r: Result<T, ControlError>) -> (u16, String) {
    match r {
        Err(ControlError::Refused { status, code, .. }) => (status.as_u16(), code),
        other => panic!("expected a refusal, got {other:?}"),
    }
}

async fn join(
    client: &ControlClient,
    token: &str,
    csr: String,
) -> Result<api::SvidResponse, ControlError> {
    client
        .post(
            api::JOIN,
            &api::JoinRequest {
                token: token.to_owned(),
                csr,
                instance: "test".into(),
                ttl_secs: None,
            },
        )
        .await
}

/// A client presenting `svid` (chain PEM and key PEM).
fn mtls_client(control: &Control, chain: &str, key: &str) -> ControlClient {
    let store = control.bundle_store();
    let svid = Svid::from_pem(chain.as_bytes(), key.as_bytes()).expect("svid");
    store.install(svid, None).expect("install");
    ControlClient::new(control.api, support::control::server_id(), Arc::new(store)).expect("client")
}

async fn renew(client: &ControlClient, csr: String) -> Result<api::SvidResponse, ControlError> {
    client
        .post(
            api::RENEW,
            &api::RenewRequest {
                csr,
                instance: "test".into(),
                ttl_secs: None,
            },
        )
        .await
}

async fn bad_requests_are_refused_precisely_audited_and_change_nothing(db: Db) {
    let dir = tempfile::tempdir().expect("tempdir");
    // In process, on a clock the test moves: expiries without sleeping.
    let clock = Arc::new(TestClock::default());
    let control = Control::start_in_process(&dir.path().join("control"), &db, clock.clone()).await;
    let anon = control.client(false);
    let orders = SpiffeId::parse(ORDERS).expect("id");
    let token = control.token(ORDERS);

    // A CSR for another identity than the token's.
    let (other, _) = csr_pem(&SpiffeId::parse(INTRUDER).expect("id"));
    assert_eq!(
        refused_code(join(&anon, &token, other).await),
        (400, "csr_identity_mismatch".into())
    );
    // A CSR asking for CA rights, and one with two URI SANs.
    let mut ca = support::svid_params(&[ORDERS]);
    ca.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
    assert_eq!(
        refused_code(join(&anon, &token, csr_from_params(ca)).await),
        (400, "csr_requests_ca".into())
    );
    let two = support::svid_params(&[ORDERS, FRONTEND]);
    assert_eq!(
        refused_code(join(&anon, &token, csr_from_params(two)).await),
        (400, "csr_multiple_uri_sans".into())
    );
    // Malformed JSON, an unknown field, a huge body.
    let raw = |body: Vec<u8>| {
        anon.call::<api::SvidResponse>(Method::POST, api::JOIN, Some(body), Duration::from_secs(10))
    };
    assert_eq!(
        refused_code(raw(b"{\"token\": ".to_vec()).await),
        (400, "malformed_json".into())
    );
    assert_eq!(
        refused_code(raw(br#"{"token":"x","csr":"y","ca":true}"#.to_vec()).await),
        (400, "malformed_json".into())
    );
    assert_eq!(
        refused_code(raw(vec![b' '; 1 << 20]).await),
        (413, "body_too_large".into())
    );
    assert_eq!(
        refused_code(join(&anon, "wdt_not-a-token", csr_pem(&orders).0).await),
        (403, "unknown_token".into())
    );

    // None of that used the token up.
    let (csr, key) = csr_pem(&orders);
    let first = join(&anon, &token, csr).await.expect("join");
    assert_eq!(first.spiffe_id, ORDERS);
    // A replayed token.
    assert_eq!(
        refused_code(join(&anon, &token, csr_pem(&orders).0).await),
        (403, "token_reused".into())
    );
    // An expired token.
    let short: api::TokenResponse = control
        .client(true)
        .post(
            api::ADMIN_TOKENS,
            &api::TokenRequest {
                spiffe_id: FRONTEND.into(),
                ttl_secs: Some(1),
                labels: BTreeMap::new(),
            },
        )
        .await
        .expect("token");
    // Two seconds later on the control plane's clock, the 1 s token is expired.
    clock.set_offset(2);
    let frontend = SpiffeId::parse(FRONTEND).expect("id");
    assert_eq!(
        refused_code(join(&anon, &short.token, csr_pem(&frontend).0).await),
        (403, "token_expired".into())
    );
    clock.set_offset(0);

    // Renewal: needs mTLS, the same ID only, a new key each time.
    assert_eq!(
        refused_code(renew(&anon, csr_pem(&orders).0).await),
        (401, "mtls_required".into())
    );
    let holder = mtls_client(&control, &first.chain_pem, &key);
    assert_eq!(
        refused_code(renew(&holder, csr_pem(&frontend).0).await),
        (400, "csr_identity_mismatch".into())
    );
    let (csr2, key2) = csr_pem(&orders);
    let second = renew(&holder, csr2).await.expect("renew");
    assert_ne!(second.serial, first.serial);

    // Admin calls without or with a wrong credential.
    let no_admin = control.client(false);
    assert_eq!(
        refused_code(
            no_admin
                .get::<serde_json::Value>(api::ADMIN_IDENTITIES)
                .await
        ),
        (401, "admin_credentials_required".into())
    );
    let wrong = control.client(false).with_bearer("wda_guess".into());
    assert_eq!(
        refused_code(wrong.get::<serde_json::Value>(api::ADMIN_IDENTITIES).await),
        (401, "bad_admin_credentials".into())
    );

    // Revoked: the old and the new SVID can no longer renew.
    control.cli_ok(&[
        "identities",
        "revoke",
        &first.serial,
        "--reason",
        "key leaked",
    ]);
    assert_eq!(
        refused_code(renew(&holder, csr_pem(&orders).0).await),
        (403, "svid_revoked".into())
    );
    control.cli_ok(&["identities", "revoke", ORDERS, "--reason", "decommissioned"]);
    let holder2 = mtls_client(&control, &second.chain_pem, &key2);
    assert_eq!(
        refused_code(renew(&holder2, csr_pem(&orders).0).await),
        (403, "svid_revoked".into())
    );

    // Renewal with an expired SVID: refused at the handshake, and audited.
    let short_id = SpiffeId::parse("spiffe://example.org/ns/shop/sa/short-lived").expect("id");
    let short_token = control.token(short_id.as_str());
    let (csr, key) = csr_pem(&short_id);
    // Signed 3 s in the past: still valid now (it must be, to be presented),
    // expired within about 2 s.
    clock.set_offset(-3);
    let short: api::SvidResponse = anon
        .post(
            api::JOIN,
            &api::JoinRequest {
                token: short_token,
                csr,
                instance: "test".into(),
                ttl_secs: Some(5),
            },
        )
        .await
        .expect("join with a 5 s SVID");
    clock.set_offset(0);
    let expiring = mtls_client(&control, &short.chain_pem, &key);
    // Past its expiry as the server's handshake sees it (the system time;
    // certificate times are whole seconds).
    eventually(
        Duration::from_secs(10),
        "the short SVID to expire",
        || async { (warden_control::store::unix_now() > short.expires_at).then_some(()) },
    )
    .await;
    match renew(&expiring, csr_pem(&short_id).0).await {
        // TLS 1.3: the server's refusal of a client certificate reaches the
        // client as an alert, seen during the handshake or on its first read.
        Err(ControlError::Tls { .. } | ControlError::Http(_)) => {}
        other => panic!("an expired SVID renewed: {other:?}"),
    }

    // Nothing refused changed state: one identity joined, two SVIDs, both revoked.
    let admin = control.client(true);
    let list: Vec<serde_json::Value> = admin.get(api::ADMIN_IDENTITIES).await.expect("list");
    let orders_entry = list
        .iter()
        .find(|i| i["spiffe_id"] == ORDERS)
        .expect("orders");
    assert_eq!(orders_entry["svids_issued"], 2);
    assert_eq!(orders_entry["status"], "revoked");
    let frontend_entry = list
        .iter()
        .find(|i| i["spiffe_id"] == FRONTEND)
        .expect("frontend");
    assert_eq!(
        frontend_entry["status"], "pending",
        "the expired token issued nothing"
    );
    assert!(list.iter().all(|i| i["spiffe_id"] != INTRUDER));

    // Every refusal is an audit row and an audit line.
    let audit: Vec<serde_json::Value> = admin
        .get(&format!("{}?limit=1000", api::ADMIN_AUDIT))
        .await
        .expect("audit");
    let refusals: BTreeSet<String> = audit
        .iter()
        .filter(|e| e["outcome"] == "refused")
        .map(|e| {
            format!(
                "{}:{}",
                e["event"].as_str().unwrap_or(""),
                e["reason"].as_str().unwrap_or("")
            )
        })
        .collect();
    for expected in [
        "join:csr_identity_mismatch",
        "join:csr_requests_ca",
        "join:csr_multiple_uri_sans",
        "join:malformed_json",
        "join:body_too_large",
        "join:unknown_token",
        "join:token_reused",
        "join:token_expired",
        "renew:mtls_required",
        "renew:csr_identity_mismatch",
        "renew:svid_revoked",
        "admin:admin_credentials_required",
        "admin:bad_admin_credentials",
        "handshake:bad_client_certificate",
    ] {
        assert!(
            refusals.contains(expected),
            "no audit record {expected}: {refusals:?}"
        );
    }
    let lines = control.audit_lines();
    assert!(
        lines
            .iter()
            .any(|l| l["event"] == "join" && l["reason"] == "token_reused"),
        "{lines:?}"
    );
    assert!(
        lines
            .iter()
            .any(|l| l["event"] == "revoke" && l["outcome"] == "ok")
    );
    let metrics = get(control.metrics, "/metrics", &[])
        .await
        .expect("metrics")
        .body;
    assert!(
        metrics.contains("warden_control_refusals_total{event=\"join\",reason=\"token_reused\"} 1"),
        "{metrics}"
    );
    assert!(
        metrics.contains("warden_control_identities{status=\"revoked\"} 1"),
        "{metrics}"
    );
    if let Err(problems) = support::promtool(&metrics) {
        panic!("promtool on the control plane's /metrics:\n{problems}\n{metrics}");
    }
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

fn write_policies(dir: &std::path::Path, text: &str) {
    std::fs::create_dir_all(dir).expect("dir");
    for entry in std::fs::read_dir(dir).expect("read") {
        std::fs::remove_file(entry.expect("entry").path()).expect("rm");
    }
    std::fs::write(dir.join("mesh.cedar"), text).expect("write");
}

async fn policy_version(p: &Proxy) -> Option<String> {
    let r = get(p.admin, "/policy", &[]).await.ok()?;
    let json: serde_json::Value = serde_json::from_str(&r.body).ok()?;
    json["version"].as_str().map(str::to_owned)
}

async fn policies_pushed_to_the_control_plane_are_hot_swapped_and_rolled_back(db: Db) {
    let dir = tempfile::tempdir().expect("tempdir");
    let control = Control::start(&dir.path().join("control"), any_port(), &db, &[]);
    let app = TestApp::start().await;
    let mut s = inbound_to(app.addr);
    s.push("control.policies=true".into());
    let server = control.sidecar(dir.path(), "orders", ORDERS, &s);
    let client = control.sidecar(
        dir.path(),
        "frontend",
        FRONTEND,
        &[route_to(server.inbound(), ORDERS)],
    );
    client.wait_ready().await;
    // No policy pushed yet: not ready, everything denied.
    let ready = get(server.admin, "/ready", &[]).await.expect("ready");
    assert_eq!(ready.status, 503, "{}", ready.body);
    assert_eq!(
        get(client.outbound[0], "/x", &[])
            .await
            .expect("get")
            .status,
        403
    );

    let policies = dir.path().join("policies");
    write_policies(
        &policies,
        "@id(\"reads\")\npermit (principal is Workload, action == Action::\"GET\", resource);\n",
    );
    let out = control.cli_ok(&["policy", "push", policies.to_str().expect("utf-8")]);
    assert!(out.contains("policy version 1"), "{out}");
    server.wait_ready().await;
    let v1 = policy_version(&server).await.expect("version");
    assert!(
        out.contains(&v1),
        "the control plane and the sidecar report one version: {out} vs {v1}"
    );
    assert_eq!(
        get(client.outbound[0], "/x", &[])
            .await
            .expect("get")
            .status,
        200
    );

    write_policies(
        &policies,
        "@id(\"health-only\")\npermit (principal, action == Action::\"GET\", resource) when { context.path == \"/healthz\" };\n",
    );
    let out = control.cli_ok(&["policy", "push", policies.to_str().expect("utf-8")]);
    assert!(out.contains("policy version 2"), "{out}");
    eventually(
        Duration::from_secs(10),
        "version 2 on the sidecar",
        || async { (policy_version(&server).await.as_deref() != Some(v1.as_str())).then_some(()) },
    )
    .await;
    let denied = get(client.outbound[0], "/x", &[]).await.expect("get");
    assert_eq!(denied.status, 403, "{}", denied.body);

    // A bundle that does not validate is refused by the control plane itself
    // (sent raw, past the CLI's own check).
    let broken = control
        .client(true)
        .post::<_, api::PolicyPushResponse>(
            api::ADMIN_POLICIES,
            &api::PolicyPush {
                files: BTreeMap::from([(
                    "bad.cedar".to_owned(),
                    "permit (principal, action, resource) when { nope };".to_owned(),
                )]),
            },
        )
        .await;
    let (status, code) = refused_code(broken);
    assert_eq!((status, code.as_str()), (400, "invalid_policy"));

    let out = control.cli_ok(&["policy", "rollback", "1"]);
    assert!(out.contains("policy version 1"), "{out}");
    eventually(
        Duration::from_secs(10),
        "rollback on the sidecar",
        || async { (policy_version(&server).await.as_deref() == Some(v1.as_str())).then_some(()) },
    )
    .await;
    assert_eq!(
        get(client.outbound[0], "/x", &[])
            .await
            .expect("get")
            .status,
        200
    );
    let versions: serde_json::Value =
        serde_json::from_str(&control.cli_ok(&["policy", "versions"])).expect("json");
    assert_eq!(versions["current"], 1);
    assert_eq!(versions["versions"].as_array().expect("list").len(), 2);
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

async fn ca_status(control: &Control) -> serde_json::Value {
    control
        .client(true)
        .get(api::ADMIN_CA)
        .await
        .expect("CA status")
}

async fn ca_rotation_under_traffic_fails_no_request(db: Db) {
    let dir = tempfile::tempdir().expect("tempdir");
    let data = dir.path().join("control");
    let control = Control::start(&data, any_port(), &db, &["--svid-ttl", "8s"]);
    let (_app, server, client) = orders_and_frontend(&control, &control, dir.path()).await;
    let old_bundle = std::fs::read(data.join("bundle.pem")).expect("bundle");
    let traffic = Traffic::start(client.outbound[0], 2);
    renewals(&[&server, &client], 1, Duration::from_secs(30)).await;

    // The new root is published at once and signs after 2 s.
    let rotated: serde_json::Value =
        serde_json::from_str(&control.cli_ok(&["ca", "rotate", "--grace", "2s"])).expect("json");
    assert_eq!(rotated["bundle_roots"], 2, "{rotated}");
    // A second rotation while this one runs is refused.
    let again = control.cli(&["ca", "rotate"]);
    assert!(!again.status.success());
    assert!(String::from_utf8_lossy(&again.stderr).contains("rotation_refused"));

    // The old root retires once every SVID it signed has expired.
    eventually(
        Duration::from_secs(60),
        "the old root to retire",
        || async {
            let status = ca_status(&control).await;
            status["authorities"][0]["retired_at"]
                .as_i64()
                .map(|_| status)
        },
    )
    .await;
    // Both sidecars renew again with only the new root trusted.
    renewals(&[&server, &client], 2, Duration::from_secs(30)).await;
    let (ok, failed, errors) = traffic.finish().await;
    assert_eq!(failed, 0, "failed requests: {errors:?}\n{}", client.logs());
    assert!(ok > 100, "only {ok} requests");
    let status = ca_status(&control).await;
    assert_eq!(status["bundle_roots"], 1, "{status}");
    let new_bundle = std::fs::read(data.join("bundle.pem")).expect("bundle");
    assert_ne!(new_bundle, old_bundle, "bundle.pem follows the rotation");
    assert_eq!(
        get(client.outbound[0], "/after", &[])
            .await
            .expect("get")
            .status,
        200
    );
    eprintln!("CA rotated under traffic: {ok} requests, 0 failed");
}

/// The caller's sidecar cuts its connections to a server that is revoked,
/// and new handshakes to it fail: the outbound side enforces revocation too.
async fn revoking_the_server_cuts_the_callers_connections(db: Db) {
    let dir = tempfile::tempdir().expect("tempdir");
    let control = Control::start(&dir.path().join("control"), any_port(), &db, &[]);
    let echo = tcp_echo().await;
    let app = TestApp::start().await;
    let mut s = inbound_to(app.addr);
    s.push(format!(
        "inbound.opaque=[{{listen=\"127.0.0.1:0\", app=\"{echo}\"}}]"
    ));
    let server = control.sidecar(dir.path(), "orders", ORDERS, &s);
    let routes = format!(
        "outbound.routes=[{{listen=\"127.0.0.1:0\", upstream=\"{}\", identity=\"{ORDERS}\", protocol=\"tcp\"}}, {{listen=\"127.0.0.1:0\", upstream=\"{}\", identity=\"{ORDERS}\"}}]",
        server.opaque[0],
        server.inbound()
    );
    let client = control.sidecar(
        dir.path(),
        "frontend",
        FRONTEND,
        &[
            routes,
            "control.state_dir=".to_owned()
                + dir.path().join("frontend-state").to_str().expect("utf-8"),
        ],
    );
    server.wait_ready().await;
    client.wait_ready().await;
    assert_eq!(
        get(client.outbound[1], "/x", &[])
            .await
            .expect("get")
            .status,
        200
    );
    let mut live = tokio::net::TcpStream::connect(client.outbound[0])
        .await
        .expect("connect");
    assert_eq!(read_some(&mut live, 6).await, b"hello\n");

    let revoked_at = Instant::now();
    control.cli_ok(&[
        "identities",
        "revoke",
        ORDERS,
        "--reason",
        "server key stolen",
    ]);
    let cut = cut_after(&mut live, revoked_at).await;
    let cut = cut.unwrap_or_else(|| {
        panic!(
            "the connection to the revoked server stayed open\n{}",
            client.logs()
        )
    });
    assert!(cut <= Duration::from_secs(5), "cut after {cut:?}");
    // HTTP through the pooled connection: refused now (a new handshake fails).
    let refused = get(client.outbound[1], "/x", &[]).await.expect("get");
    assert_eq!(refused.status, 502, "{}", refused.body);
    // The caller kept the revocation list for its next start.
    let saved = std::fs::read_to_string(dir.path().join("frontend-state/revoked.json"))
        .expect("revoked.json");
    assert!(saved.contains(ORDERS), "{saved}");
}

/// Free text is bounded and plain, filters are known values, bodies are
/// declared JSON: nothing a caller sends can forge an inventory row in an
/// operator's terminal or read as an empty answer.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn free_text_filters_and_media_types_are_checked_at_the_api() {
    let dir = tempfile::tempdir().expect("tempdir");
    let control = Control::start(&dir.path().join("control"), any_port(), &Db::Sqlite, &[]);
    let anon = control.client(false);
    let admin = control.client(true);
    let orders = SpiffeId::parse(ORDERS).expect("id");
    let token = control.token(ORDERS);
    let join_as = |instance: String| {
        let (csr, _) = csr_pem(&orders);
        let anon = anon.clone();
        let token = token.clone();
        async move {
            anon.post::<_, api::SvidResponse>(
                api::JOIN,
                &api::JoinRequest {
                    token,
                    csr,
                    ttl_secs: None,
                    instance,
                },
            )
            .await
        }
    };
    // Terminal escapes and a newline that would forge a second row.
    let forged = "host-1\x1b[2K\rspiffe://example.org/ns/x/sa/admin active".to_owned();
    assert_eq!(
        refused_code(join_as(forged).await),
        (400, "bad_instance".into())
    );
    assert_eq!(
        refused_code(join_as("h".repeat(300)).await),
        (400, "bad_instance".into())
    );
    // Refused before the token was looked at: it still works.
    let joined = join_as("orders-7f9c/pod_1.x:8080".into())
        .await
        .expect("a plain instance joins");
    assert_eq!(joined.spiffe_id, ORDERS);

    // Labels: keys plain, values without controls or bidi overrides, few.
    let token_with = |labels: BTreeMap<String, String>| {
        let admin = admin.clone();
        async move {
            admin
                .post::<_, api::TokenResponse>(
                    api::ADMIN_TOKENS,
                    &api::TokenRequest {
                        spiffe_id: FRONTEND.into(),
                        ttl_secs: Some(60),
                        labels,
                    },
                )
                .await
        }
    };
    for (k, v) in [
        ("team", "pay\u{202e}ments"),
        ("team", "a\x07b"),
        ("a b", "x"),
        ("", "x"),
    ] {
        assert_eq!(
            refused_code(token_with(BTreeMap::from([(k.to_owned(), v.to_owned())])).await),
            (400, "bad_label".into()),
            "{k:?}={v:?}"
        );
    }
    let many: BTreeMap<String, String> = (0..33).map(|i| (format!("k{i}"), "v".into())).collect();
    assert_eq!(
        refused_code(token_with(many).await),
        (400, "bad_label".into())
    );
    token_with(BTreeMap::from([("team".into(), "payments, EU".into())]))
        .await
        .expect("plain labels");

    // A revocation reason is free text too.
    assert_eq!(
        refused_code(
            admin
                .post::<_, api::RevokeResponse>(
                    api::ADMIN_REVOCATIONS,
                    &api::RevokeRequest {
                        target: ORDERS.into(),
                        reason: "key leaked\x1b]0;owned\x07".into(),
                    },
                )
                .await
        ),
        (400, "bad_reason".into())
    );

    // Filters: unknown values and parameters are 400, not an empty list.
    for query in [
        "?status=bogus",
        "?status=Active",
        "?colour=red",
        "?expiring_within_secs=soon",
    ] {
        let path = format!("{}{query}", api::ADMIN_IDENTITIES);
        assert_eq!(
            refused_code(admin.get::<serde_json::Value>(&path).await),
            (400, "bad_query".into()),
            "{query}"
        );
    }
    let active: Vec<serde_json::Value> = admin
        .get(&format!("{}?status=active", api::ADMIN_IDENTITIES))
        .await
        .expect("known filter");
    assert_eq!(active.len(), 1);
    assert_eq!(
        refused_code(
            admin
                .get::<serde_json::Value>(&format!("{}?limit=all", api::ADMIN_AUDIT))
                .await
        ),
        (400, "bad_query".into())
    );

    // Bodies must be declared JSON; the admin scheme is case-insensitive.
    let admin_token =
        std::fs::read_to_string(control.dir.join("admin.token")).expect("admin token");
    let body = format!(r#"{{"spiffe_id":"{FRONTEND}"}}"#);
    let post = |content_type: &str, scheme: &str| {
        let ct = if content_type.is_empty() {
            String::new()
        } else {
            format!("content-type: {content_type}\r\n")
        };
        format!(
            "POST {} HTTP/1.1\r\nhost: warden-control\r\nauthorization: {scheme} {}\r\n{ct}content-length: {}\r\nconnection: close\r\n\r\n{body}",
            api::ADMIN_TOKENS,
            admin_token.trim(),
            body.len()
        )
    };
    for ct in ["text/plain", "", "application/x-www-form-urlencoded"] {
        let reply = control.raw_request(post(ct, "Bearer").as_bytes()).await;
        assert!(reply.starts_with("HTTP/1.1 415"), "{ct:?}: {reply}");
        assert!(reply.contains("unsupported_media_type"), "{reply}");
    }
    for scheme in ["bearer", "BEARER", "Bearer"] {
        let reply = control
            .raw_request(post("Application/JSON; charset=utf-8", scheme).as_bytes())
            .await;
        assert!(reply.starts_with("HTTP/1.1 200"), "{scheme}: {reply}");
    }
}
