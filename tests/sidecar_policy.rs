//! Cedar policies in a running sidecar pair: hot reload on file change and
//! on SIGHUP, a bad set refused with the last good one kept, readiness
//! without any good set, and audit mode.

mod support;

use std::time::Duration;

use support::eventually;
use support::mesh::{FRONTEND, Pair, get, read_some};
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
    eventually(
        format_args!("{path} to answer {want}"),
        Duration::from_secs(10),
        async || match status(pair, path).await {
            got if got == want => Ok(()),
            got => Err(format!("{got}; policy: {}", policy(pair).await)),
        },
    )
    .await
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
    let refused = eventually(
        "the broken set refused",
        Duration::from_secs(10),
        async || {
            let now = policy(&pair).await;
            if now["failures"].as_u64() > Some(0) {
                Ok(now)
            } else {
                Err(now)
            }
        },
    )
    .await;
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
    let ready = eventually(
        "a readiness answer naming the broken file",
        Duration::from_secs(5),
        async || {
            let r = get(server.admin, "/ready", &[]).await.expect("ready");
            if r.body.contains("broken.cedar") {
                Ok(r)
            } else {
                Err(format!("{} {}", r.status, r.body))
            }
        },
    )
    .await;
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

/// Whether the stream ends (EOF or reset) within `limit`.
async fn ends_within(stream: &mut tokio::net::TcpStream, limit: Duration) -> bool {
    use tokio::io::AsyncReadExt;
    let mut buf = [0u8; 64];
    matches!(
        tokio::time::timeout(limit, stream.read(&mut buf)).await,
        Ok(Ok(0) | Err(_))
    )
}

async fn websocket(via: std::net::SocketAddr, path: &str) -> tokio::net::TcpStream {
    use tokio::io::AsyncWriteExt;
    let mut stream = tokio::net::TcpStream::connect(via).await.expect("connect");
    stream
        .write_all(format!("GET {path} HTTP/1.1\r\nhost: orders\r\nconnection: Upgrade\r\nupgrade: websocket\r\nsec-websocket-version: 13\r\nsec-websocket-key: dGhlIHNhbXBsZSBub25jZQ==\r\n\r\n").as_bytes())
        .await
        .expect("write");
    let head = String::from_utf8_lossy(&read_some(&mut stream, 1).await).to_lowercase();
    assert!(head.starts_with("http/1.1 101"), "{path}: {head}");
    echoes(&mut stream, b"hello").await;
    stream
}

async fn echoes(stream: &mut tokio::net::TcpStream, message: &[u8]) {
    use tokio::io::AsyncWriteExt;
    stream.write_all(message).await.expect("write");
    assert_eq!(
        read_some(stream, message.len()).await,
        message.to_ascii_uppercase()
    );
}

const FRONTEND_MAY_ALL: &str = "@id(\"frontend-all\")\npermit (principal == Workload::\"spiffe://example.org/ns/shop/sa/frontend\", action, resource == Service::\"orders\");\n";

/// A new policy set is applied to connections already open: a live opaque
/// TCP connection and a live WebSocket it now denies are closed (with a
/// metric and an audit line), and a WebSocket it still allows stays open.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_policy_change_closes_the_live_tunnels_it_now_denies() {
    use support::mesh::{Identities, ORDERS, TestApp, inbound_to, tcp_echo};
    let ids = Identities::new();
    let echo = tcp_echo().await;
    let app = TestApp::start().await;
    let policies = ids.policies(FRONTEND_MAY_ALL);
    let mut settings = inbound_to(app.addr);
    settings.extend([
        format!("inbound.opaque=[{{listen=\"127.0.0.1:0\", app=\"{echo}\"}}]"),
        format!("authz.policies={}", policies.display()),
        "authz.reload_interval=100ms".to_owned(),
    ]);
    let server = ids.start("orders", &settings);
    let (inbound, opaque) = (server.inbound(), server.opaque[0]);
    let client = ids.start(
        "frontend",
        &[format!(
            "outbound.routes=[{{listen=\"127.0.0.1:0\", upstream=\"{inbound}\", identity=\"{ORDERS}\"}}, {{listen=\"127.0.0.1:0\", upstream=\"{opaque}\", identity=\"{ORDERS}\", protocol=\"tcp\"}}]"
        )],
    );
    server.wait_ready().await;
    client.wait_ready().await;

    let mut tcp = tokio::net::TcpStream::connect(client.outbound[1])
        .await
        .expect("connect");
    assert_eq!(read_some(&mut tcp, 6).await, b"hello\n");
    echoes(&mut tcp, b"select 1;").await;
    let mut chat = websocket(client.outbound[0], "/chat").await;
    let mut feed = websocket(client.outbound[0], "/feed").await;

    let before = get(server.admin, "/policy", &[])
        .await
        .expect("policy")
        .body;
    std::fs::write(
        policies.join("policies.cedar"),
        format!(
            "{FRONTEND_MAY_ALL}@id(\"no-tcp\")\nforbid (principal, action == Action::\"connect\", resource);\n\
             @id(\"no-chat\")\nforbid (principal, action in Action::\"read\", resource) when {{ context.path == \"/chat\" }};\n"
        ),
    )
    .expect("write");
    eventually(
        "the new policy set in force",
        Duration::from_secs(5),
        async || {
            let now = get(server.admin, "/policy", &[])
                .await
                .expect("policy")
                .body;
            now != before
        },
    )
    .await;
    // Within 2 s of the new set being in force.
    assert!(
        ends_within(&mut tcp, Duration::from_secs(2)).await,
        "the opaque connection the new set denies is still open"
    );
    assert!(
        ends_within(&mut chat, Duration::from_secs(2)).await,
        "the WebSocket the new set denies is still open"
    );
    echoes(&mut feed, b"still allowed").await;

    let metrics = server.metrics().await;
    for kind in ["tcp", "upgrade"] {
        assert!(
            metrics.contains(&format!(
                "warden_reauthorization_closes_total{{kind=\"{kind}\"}} 1"
            )),
            "{metrics}"
        );
    }
    let logs = server.logs();
    assert!(
        logs.contains("closing an opaque connection the new policy set denies")
            && logs.contains("closing an upgraded connection the new policy set denies")
            && logs.contains("no-tcp")
            && logs.contains("no-chat"),
        "{logs}"
    );
}

/// `/usage` on the server's admin port: each decision aggregated by
/// caller, route template, action, outcome and deciding policies; a flood
/// of unique paths stays within the caller's cap and is counted as overflow.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn usage_aggregates_decisions_by_route_template_within_bounds() {
    let dir = dir_with(&[]);
    std::fs::write(dir.path().join("base.cedar"), ONLY_HEALTHZ).expect("write");
    let settings = vec![format!("authz.policies={}", dir.path().display())];
    let pair = Pair::start(&settings, &[]).await;
    for _ in 0..3 {
        assert_eq!(status(&pair, "/healthz").await, 200);
    }
    assert_eq!(status(&pair, "/orders/1").await, 403);
    assert_eq!(status(&pair, "/orders/2?x=1").await, 403);
    let usage = |pair: &Pair| {
        let admin = pair.server.admin;
        async move {
            let body = get(admin, "/usage", &[]).await.expect("usage").body;
            serde_json::from_str::<serde_json::Value>(&body).expect("json")
        }
    };
    let seen = usage(&pair).await;
    let entries = seen["entries"].as_array().expect("entries");
    let caller = format!("Workload::\"{FRONTEND}\"");
    let find = |route: &str| {
        entries
            .iter()
            .find(|e| e["route"] == route && e["caller"] == caller.as_str())
            .unwrap_or_else(|| panic!("no {route} entry: {seen}"))
    };
    let healthz = find("/healthz");
    assert_eq!(healthz["count"], 3);
    assert_eq!(healthz["decision"], "allow");
    assert_eq!(healthz["policies"], serde_json::json!(["healthz"]));
    let (first, last) = (
        healthz["first_seen"].as_i64().expect("first_seen"),
        healthz["last_seen"].as_i64().expect("last_seen"),
    );
    assert!(first > 0 && first <= last, "{healthz}");
    let orders = find("/orders/{id}");
    assert_eq!(orders["count"], 2);
    assert_eq!(orders["decision"], "deny");
    assert_eq!(orders["policies"], serde_json::json!([]));

    // 300 unique paths: at most 256 route keys for the caller, the rest
    // counted.
    for i in 0..300 {
        assert_eq!(status(&pair, &format!("/flood/p{i}x")).await, 403);
    }
    let seen = usage(&pair).await;
    let kept = seen["entries"]
        .as_array()
        .expect("entries")
        .iter()
        .filter(|e| e["caller"] == caller.as_str())
        .count();
    assert_eq!(kept, 256, "{seen}");
    assert_eq!(
        seen["overflow"],
        serde_json::json!([[caller, 300 + 2 - 256]])
    );
    let metrics = get(pair.server.admin, "/metrics", &[])
        .await
        .expect("metrics")
        .body;
    assert!(
        metrics.contains(&format!("warden_usage_overflow_total {}", 300 + 2 - 256)),
        "{metrics}"
    );
}
