//! Cedar policies in a running sidecar pair: hot reload on file change and
//! on SIGHUP, a bad set refused with the last good one kept, readiness
//! without any good set, and audit mode.

mod support;

use std::time::Duration;

use support::mesh::{FRONTEND, Pair, get};
use support::policies::dir_with;

const ONLY_HEALTHZ: &str = "@id(\"healthz\")\npermit (principal, action == Action::\"GET\", resource)\nwhen { context.path == \"/healthz\" };\n";
const FRONTEND_MAY_GET: &str = "@id(\"frontend-get\")\npermit (principal == Workload::\"spiffe://example.org/ns/shop/sa/frontend\", action in Action::\"read\", resource == Service::\"orders\");\n";

async fn status(pair: &Pair, path: &str) -> u16 {
    get(pair.via(), path, &[]).await.expect("call").status
}

async fn policy(pair: &Pair) -> serde_json::Value {
    let body = get(pair.server.admin, "/policy", &[])
        .await
        .expect("policy")
        .body;
    serde_json::from_str(&body).expect("json")
}

/// Polls until `path` answers `want` (bounded).
async fn eventually_status(pair: &Pair, path: &str, want: u16) {
    for _ in 0..100 {
        if status(pair, path).await == want {
            return;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    panic!(
        "{path} never answered {want}; policy: {}",
        policy(pair).await
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn policies_hot_reload_through_a_sidecar_pair() {
    let dir = dir_with(&[]);
    std::fs::write(dir.path().join("base.cedar"), ONLY_HEALTHZ).expect("write");
    let settings = vec![
        format!("authz.policies={}", dir.path().display()),
        "authz.reload_interval=100ms".to_owned(),
    ];
    let pair = Pair::start(&settings, &[]).await;
    assert_eq!(status(&pair, "/healthz").await, 200);
    assert_eq!(status(&pair, "/orders").await, 403);
    let first = policy(&pair).await["version"].clone();

    // A new permit lands without a restart.
    std::fs::write(dir.path().join("frontend.cedar"), FRONTEND_MAY_GET).expect("write");
    eventually_status(&pair, "/orders", 200).await;
    let second = policy(&pair).await;
    assert_ne!(second["version"], first);

    // A broken file is refused: the last good set stays, and says why.
    std::fs::write(
        dir.path().join("broken.cedar"),
        "permit (principal, action, resource) when { context.nope == 1 };",
    )
    .expect("write");
    let mut refused = serde_json::Value::Null;
    for _ in 0..100 {
        refused = policy(&pair).await;
        if refused["failures"].as_u64() > Some(0) {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert!(
        refused["last_error"]
            .as_str()
            .is_some_and(|e| e.contains("broken.cedar")),
        "{refused}"
    );
    assert_eq!(refused["version"], second["version"]);
    assert_eq!(
        status(&pair, "/orders").await,
        200,
        "last good set still active"
    );
    assert_eq!(
        get(pair.server.admin, "/ready", &[])
            .await
            .expect("ready")
            .status,
        200
    );

    // Removing the bad file and the permit: back to healthz only.
    std::fs::remove_file(dir.path().join("broken.cedar")).expect("rm");
    std::fs::remove_file(dir.path().join("frontend.cedar")).expect("rm");
    eventually_status(&pair, "/orders", 403).await;
    let metrics = pair.server.metrics().await;
    assert!(
        metrics.contains("warden_policy_reloads_total{result=\"refused\"}"),
        "{metrics}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn without_a_valid_policy_set_the_sidecar_is_not_ready_and_denies() {
    let dir = dir_with(&[]);
    std::fs::write(
        dir.path().join("broken.cedar"),
        "permit (principal, action, resource",
    )
    .expect("write");
    let settings = vec![format!("authz.policies={}", dir.path().display())];
    let ids = support::mesh::Identities::new();
    let app = support::mesh::TestApp::start().await;
    let mut s = support::mesh::inbound_to(app.addr);
    s.extend(settings);
    let server = ids.start("orders", &s);
    let mut ready = None;
    for _ in 0..100 {
        let r = get(server.admin, "/ready", &[]).await.expect("ready");
        if r.body.contains("broken.cedar") {
            ready = Some(r);
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let ready = ready.expect("a readiness answer naming the broken file");
    assert_eq!(ready.status, 503);
    assert!(ready.body.contains("broken.cedar"), "{}", ready.body);
    let client = ids.start(
        "frontend",
        &[support::mesh::route_to(
            server.inbound(),
            support::mesh::ORDERS,
        )],
    );
    client.wait_ready().await;
    let reply = get(client.outbound[0], "/healthz", &[])
        .await
        .expect("call");
    assert_eq!(
        reply.status, 403,
        "no policy set: everything denied: {}",
        reply.body
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn audit_mode_records_the_deny_and_lets_the_request_through() {
    let dir = dir_with(&[]);
    std::fs::write(dir.path().join("base.cedar"), ONLY_HEALTHZ).expect("write");
    let settings = vec![
        format!("authz.policies={}", dir.path().display()),
        "authz.mode=audit".to_owned(),
    ];
    let pair = Pair::start(&settings, &[]).await;
    let reply = get(pair.via(), "/orders", &[]).await.expect("call");
    assert_eq!(reply.status, 200);
    assert_eq!(reply.echo()["headers"]["x-warden-peer-id"], FRONTEND);
    let metrics = pair.server.metrics().await;
    assert!(
        metrics.contains("status=\"200\",decision=\"deny\"} 1"),
        "{metrics}"
    );
    assert!(
        pair.server.logs().contains("\"decision\":\"deny\""),
        "audit line"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sighup_reloads_policies_at_once() {
    let dir = dir_with(&[]);
    std::fs::write(dir.path().join("base.cedar"), ONLY_HEALTHZ).expect("write");
    let settings = vec![
        format!("authz.policies={}", dir.path().display()),
        // Polling alone would not see the change during this test.
        "authz.reload_interval=1h".to_owned(),
    ];
    let pair = Pair::start(&settings, &[]).await;
    assert_eq!(status(&pair, "/orders").await, 403);
    std::fs::write(dir.path().join("frontend.cedar"), FRONTEND_MAY_GET).expect("write");
    let pid = rustix::process::Pid::from_raw(pair.server.child.id() as i32).expect("pid");
    rustix::process::kill_process(pid, rustix::process::Signal::HUP).expect("SIGHUP");
    eventually_status(&pair, "/orders", 200).await;
}
