//! Revocation end to end: a revoked client's live connections are cut
//! within seconds and its new ones refused, and a caller cuts its own
//! connections to a revoked server.

#[macro_use]
mod support;

#[path = "support/control_flows.rs"]
mod control_flows;

use std::time::{Duration, Instant};

use support::control::{Control, Db, any_port};
use support::mesh::{FRONTEND, ORDERS, TestApp, get, inbound_to, read_some, tcp_echo};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

on_both_backends!(
    revocation_cuts_live_connections_within_seconds_and_refuses_new_ones,
    revoking_the_server_cuts_the_callers_connections,
);
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
