//! The data plane end to end: an app calls another app through two real
//! `warden proxy` processes, over mTLS with SVIDs from our CA, on 127.0.0.1.

mod support;

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use hyper::Request;
use support::mesh::{
    FRONTEND, INTRUDER, Identities, ORDERS, Pair, Proxy, body, get, h2c_client, http1_client,
    inbound_to, read_some, route_to, send,
};
use support::wait::eventually;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn http1_call_reaches_the_app_with_the_verified_caller_identity() {
    let pair = Pair::start(&[], &[]).await;
    // A spoofed identity from the calling app is dropped on the way.
    let reply = get(
        pair.via(),
        "/orders/42?x=1",
        &[
            ("x-warden-peer-id", "spiffe://example.org/ns/shop/sa/admin"),
            (
                "x-forwarded-client-cert",
                "By=x;URI=spiffe://example.org/ns/shop/sa/admin",
            ),
            ("host", "orders.shop"),
        ],
    )
    .await
    .expect("call");
    assert_eq!(reply.status, 200, "{}", reply.body);
    let echo = reply.echo();
    assert_eq!(echo["path"], "/orders/42");
    assert_eq!(echo["version"], "HTTP/1.1", "HTTP/1.1 restored for the app");
    let headers = &echo["headers"];
    assert_eq!(headers["x-warden-peer-id"], FRONTEND);
    assert_eq!(headers["host"], "orders.shop", "the Host the caller used");
    let xfcc = headers["x-forwarded-client-cert"].as_str().expect("xfcc");
    assert!(xfcc.starts_with(&format!("By={ORDERS};Hash=")), "{xfcc}");
    assert!(xfcc.ends_with(&format!(";URI={FRONTEND}")), "{xfcc}");
    let hash = xfcc
        .split(';')
        .nth(1)
        .expect("hash")
        .trim_start_matches("Hash=");
    assert_eq!(hash.len(), 64, "sha256 hex: {xfcc}");
    assert!(
        headers.get("x-warden-orig-proto").is_none(),
        "internal header leaked"
    );
    assert!(headers.get("x-warden-request-id").is_some());

    let metrics = pair.server.metrics().await;
    assert!(
        metrics.contains(
            "warden_requests_total{direction=\"inbound\",status=\"200\",decision=\"allow\"} 1"
        ),
        "{metrics}"
    );
    assert!(
        metrics.contains(
            "warden_tls_handshakes_total{direction=\"inbound\",outcome=\"ok\",reason=\"\"} 1"
        ),
        "{metrics}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bodies_stream_both_ways_and_requests_share_one_peer_connection() {
    // HTTP/1.1 carried as HTTP/2 streams on the one shared connection.
    let pair = Pair::start(&[], &["outbound.peer_http1=multiplexed".into()]).await;
    let client = http1_client();
    let payload: Vec<u8> = (0..4 * 1024 * 1024).map(|i| (i % 251) as u8).collect();
    for _ in 0..3 {
        let req = Request::post(format!("http://{}/echo", pair.via()))
            .body(body(payload.clone()))
            .expect("request");
        let reply = send(&client, req).await.expect("echo");
        assert_eq!(reply.status, 200);
        assert_eq!(reply.raw.len(), payload.len());
        assert!(reply.raw == payload, "body corrupted");
    }
    // Three requests, three fresh app connections, one mTLS connection.
    for _ in 0..5 {
        get(pair.via(), "/x", &[]).await.expect("call");
    }
    let metrics = pair.server.metrics().await;
    assert!(
        metrics.contains(
            "warden_tls_handshakes_total{direction=\"inbound\",outcome=\"ok\",reason=\"\"} 1\n"
        ),
        "{metrics}"
    );
}

fn inbound_handshakes(n: usize) -> String {
    format!("warden_tls_handshakes_total{{direction=\"inbound\",outcome=\"ok\",reason=\"\"}} {n}\n")
}

/// Waits until the frontend's sidecar has no app connection open: the
/// peer connections they held are back in its idle pool.
async fn app_connections_closed(pair: &Pair) {
    eventually(
        "the app's connections closed",
        Duration::from_secs(10),
        async || {
            pair.client
                .metrics()
                .await
                .contains("warden_open_connections{direction=\"outbound\"} 0\n")
        },
    )
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn http1_app_connections_get_peer_connections_of_their_own_kept_for_the_next() {
    // `outbound.peer_http1 = "dedicated"`, the default.
    let pair = Pair::start(&[], &[]).await;
    let (a, b) = (http1_client(), http1_client());
    for _ in 0..3 {
        for client in [&a, &b] {
            let req = Request::get(format!("http://{}/x", pair.via()))
                .body(body(""))
                .expect("request");
            let reply = send(client, req).await.expect("call");
            assert_eq!(reply.status, 200, "{}", reply.body);
            assert_eq!(reply.echo()["headers"]["x-warden-peer-id"], FRONTEND);
        }
    }
    // Two app connections open side by side: two peer connections, each
    // carrying its app connection's three requests.
    let metrics = pair.server.metrics().await;
    assert!(metrics.contains(&inbound_handshakes(2)), "{metrics}");
    // Once they close, later app connections take the idle ones.
    drop((a, b));
    app_connections_closed(&pair).await;
    for _ in 0..4 {
        let reply = get(pair.via(), "/y", &[]).await.expect("call");
        assert_eq!(reply.status, 200, "{}", reply.body);
        app_connections_closed(&pair).await;
    }
    let metrics = pair.server.metrics().await;
    assert!(metrics.contains(&inbound_handshakes(2)), "{metrics}");
    assert!(
        metrics.contains(
            "warden_requests_total{direction=\"inbound\",status=\"200\",decision=\"allow\"} 10\n"
        ),
        "{metrics}"
    );
}

/// An HTTP/1.1 app that counts its connections, and closes each one once
/// idle after `per_connection` requests (as an app's own keep-alive limit
/// does), without saying so in the response. It answers bodiless requests
/// by hand, so that it can see the other side close: a connection counts
/// as closed once the sidecar has closed its end too.
struct CountingApp {
    addr: SocketAddr,
    accepted: Arc<AtomicUsize>,
    open: Arc<AtomicUsize>,
    closed: Arc<AtomicUsize>,
}

impl CountingApp {
    async fn start(per_connection: usize) -> CountingApp {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind app");
        let addr = listener.local_addr().expect("addr");
        let (accepted, open) = (Arc::new(AtomicUsize::new(0)), Arc::new(AtomicUsize::new(0)));
        let closed = Arc::new(AtomicUsize::new(0));
        let (a, o, c) = (accepted.clone(), open.clone(), closed.clone());
        tokio::spawn(async move {
            while let Ok((stream, _)) = listener.accept().await {
                a.fetch_add(1, Ordering::SeqCst);
                o.fetch_add(1, Ordering::SeqCst);
                let (open, closed) = (o.clone(), c.clone());
                tokio::spawn(async move {
                    serve_counted(stream, per_connection).await;
                    open.fetch_sub(1, Ordering::SeqCst);
                    closed.fetch_add(1, Ordering::SeqCst);
                });
            }
        });
        CountingApp {
            addr,
            accepted,
            open,
            closed,
        }
    }

    fn accepted(&self) -> usize {
        self.accepted.load(Ordering::SeqCst)
    }

    /// Connections closed on both sides so far.
    fn closed(&self) -> usize {
        self.closed.load(Ordering::SeqCst)
    }
}

/// Answers `200 ok` to each request head on `stream` (bodiless requests
/// only); after `per_connection` of them sends its FIN, then waits (at most
/// 10 s) for the other side's. Returns when the connection is closed.
async fn serve_counted(mut stream: tokio::net::TcpStream, per_connection: usize) {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let (mut pending, mut served, mut buf) = (Vec::new(), 0, [0u8; 4096]);
    loop {
        let n = match stream.read(&mut buf).await {
            Ok(0) | Err(_) => return,
            Ok(n) => n,
        };
        pending.extend_from_slice(&buf[..n]);
        while let Some(end) = pending.windows(4).position(|w| w == b"\r\n\r\n") {
            pending.drain(..end + 4);
            let answer = b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\n\r\nok";
            if stream.write_all(answer).await.is_err() {
                return;
            }
            served += 1;
            if served == per_connection {
                let _ = stream.shutdown().await;
                let drained =
                    async { while matches!(stream.read(&mut buf).await, Ok(n) if n > 0) {} };
                let _ = tokio::time::timeout(Duration::from_secs(10), drained).await;
                return;
            }
        }
    }
}

/// `orders` in front of `app` (with `server_extra`), and `frontend` routing
/// to it, both ready.
async fn pair_for(app: &CountingApp, server_extra: &[&str]) -> (Identities, Proxy, Proxy) {
    let ids = Identities::new();
    let mut s = inbound_to(app.addr);
    s.extend(server_extra.iter().map(|x| x.to_string()));
    let server = ids.start("orders", &s);
    let client = ids.start("frontend", &[route_to(server.inbound(), ORDERS)]);
    server.wait_ready().await;
    client.wait_ready().await;
    (ids, server, client)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn app_connections_are_kept_between_requests_and_closed_once_idle_for_the_idle_timeout() {
    let app = CountingApp::start(usize::MAX).await;
    let (_ids, _server, client) = pair_for(&app, &["limits.idle_timeout=\"1s\""]).await;
    for i in 0..5 {
        let reply = get(client.outbound[0], &format!("/k/{i}"), &[])
            .await
            .expect("call");
        assert_eq!(reply.status, 200, "{}", reply.body);
    }
    assert_eq!(app.accepted(), 1, "five requests, one kept app connection");
    // Nothing closes it but the sidecar's idle timeout.
    eventually(
        "the idle app connection closed by the sidecar",
        Duration::from_secs(10),
        async || app.open.load(Ordering::SeqCst) == 0,
    )
    .await;
    let reply = get(client.outbound[0], "/after", &[]).await.expect("call");
    assert_eq!(reply.status, 200, "{}", reply.body);
    assert_eq!(
        app.accepted(),
        2,
        "a new connection after the idle one closed"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn app_connections_the_app_closes_when_idle_are_not_used_again() {
    // The app closes each connection, idle, after three requests, the
    // third's response written (not saying so in it).
    let app = CountingApp::start(3).await;
    let (_ids, server, client) = pair_for(&app, &[]).await;
    for batch in 0..4 {
        let closed_before = app.closed();
        for i in 0..3 {
            let reply = get(client.outbound[0], &format!("/c/{batch}/{i}"), &[])
                .await
                .expect("call");
            assert_eq!(
                reply.status, 200,
                "batch {batch}, request {i}: {}",
                reply.body
            );
        }
        // Closed on both sides: the sidecar has seen the app's close, so
        // the next request must go on a new connection, not on the closed
        // one (no retry needed).
        eventually(
            "the app's connection closed after its third request",
            Duration::from_secs(10),
            async || app.closed() > closed_before,
        )
        .await;
    }
    // Kept while open (not 12), replaced once closed (not 1).
    let accepted = app.accepted();
    assert!((4..=6).contains(&accepted), "{accepted} app connections");
    let metrics = server.metrics().await;
    assert!(
        metrics.contains(
            "warden_requests_total{direction=\"inbound\",status=\"200\",decision=\"allow\"} 12\n"
        ),
        "{metrics}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn past_256_dedicated_peer_connections_app_connections_share_the_multiplexed_one() {
    let pair = Pair::start(&[], &[]).await;
    // Each client keeps its app connection open, and so its peer connection.
    let mut clients = Vec::new();
    for i in 0..258 {
        let client = http1_client();
        let req = Request::get(format!("http://{}/n/{i}", pair.via()))
            .body(body(""))
            .expect("request");
        let reply = send(&client, req).await.expect("call");
        assert_eq!(reply.status, 200, "request {i}: {}", reply.body);
        clients.push(client);
    }
    // 256 HTTP/1.1 connections, then one HTTP/2 connection for the 257th
    // and 258th app connections.
    let metrics = pair.server.metrics().await;
    assert!(metrics.contains(&inbound_handshakes(257)), "{metrics}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn h2_and_grpc_keep_their_trailers() {
    let pair = Pair::start(&[], &[]).await;
    let client = h2c_client();
    let reply = send(
        &client,
        Request::get(format!("http://{}/h2", pair.via()))
            .body(body(""))
            .expect("req"),
    )
    .await
    .expect("h2 call");
    assert_eq!(reply.status, 200);
    assert_eq!(
        reply.echo()["version"],
        "HTTP/1.1",
        "the app is declared HTTP/1.1 (inbound.app_protocol): plain HTTP/2 is translated"
    );
    assert_eq!(reply.echo()["headers"]["x-warden-peer-id"], FRONTEND);
    // gRPC cannot be HTTP/1.1: it stays HTTP/2 end to end.
    let reply = send(
        &client,
        Request::get(format!("http://{}/h2", pair.via()))
            .header("content-type", "application/grpc+json")
            .body(body(""))
            .expect("req"),
    )
    .await
    .expect("gRPC-typed call");
    assert_eq!(reply.echo()["version"], "HTTP/2.0", "h2 end to end");
    let req = Request::get(format!("http://{}/te", pair.via()))
        .header("te", "trailers")
        .body(body(""))
        .expect("req");
    let reply = send(&client, req).await.expect("te call");
    assert_eq!(
        reply.echo()["headers"]["te"],
        "trailers",
        "gRPC servers need te: trailers"
    );

    let message = b"\x00\x00\x00\x00\x05hello".to_vec();
    let req = Request::post(format!("http://{}/grpc.Echo/Say", pair.via()))
        .header("content-type", "application/grpc")
        .header("te", "trailers")
        .body(body(message.clone()))
        .expect("req");
    let reply = send(&client, req).await.expect("grpc call");
    assert_eq!(reply.status, 200);
    assert_eq!(reply.raw, message);
    let trailers = reply.trailers.expect("trailers intact");
    assert_eq!(trailers["grpc-status"], "0");
    assert_eq!(trailers["grpc-message"], "ok");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_caller_the_policy_does_not_allow_gets_403_and_grpc_permission_denied() {
    let pair = Pair::start(&[], &[]).await;
    let intruder = pair
        .ids
        .start("intruder", &[route_to(pair.server.inbound(), ORDERS)]);
    intruder.wait_ready().await;
    let reply = get(intruder.outbound[0], "/orders/42", &[])
        .await
        .expect("call");
    assert_eq!(reply.status, 403, "{}", reply.body);
    let id = reply.headers["x-warden-request-id"]
        .to_str()
        .expect("id")
        .to_owned();
    assert!(
        reply.body.contains(INTRUDER) && reply.body.contains(&id),
        "{}",
        reply.body
    );
    // The built-in policy still lets everyone GET /healthz.
    assert_eq!(
        get(intruder.outbound[0], "/healthz", &[])
            .await
            .expect("healthz")
            .status,
        200
    );

    let req = Request::post(format!("http://{}/grpc.Echo/Say", intruder.outbound[0]))
        .header("content-type", "application/grpc")
        .body(body(""))
        .expect("req");
    let reply = send(&h2c_client(), req).await.expect("grpc");
    assert_eq!(reply.status, 200);
    assert_eq!(reply.headers["grpc-status"], "7", "PERMISSION_DENIED");

    // Both denies count as 403, the gRPC one too (it travels as 200 with grpc-status 7).
    let metrics = pair.server.metrics().await;
    assert!(
        metrics.contains("status=\"403\",decision=\"deny\"} 2"),
        "{metrics}"
    );
    let logs = pair.server.logs();
    assert!(
        logs.contains("warden::audit") && logs.contains(INTRUDER),
        "audit record: {logs}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn admin_reports_readiness_identity_and_policy() {
    let pair = Pair::start(&[], &[]).await;
    let ready = get(pair.server.admin, "/ready", &[]).await.expect("ready");
    assert_eq!(ready.status, 200, "{}", ready.body);
    let identity = get(pair.server.admin, "/identity", &[])
        .await
        .expect("identity");
    let json: serde_json::Value = serde_json::from_str(&identity.body).expect("json");
    assert_eq!(json["spiffe_id"], ORDERS);
    assert!(json["seconds_left"].as_u64().expect("seconds") > 3000);
    assert!(json["serial"].as_str().is_some_and(|s| !s.is_empty()));
    let policy = get(pair.server.admin, "/policy", &[])
        .await
        .expect("policy");
    let json: serde_json::Value = serde_json::from_str(&policy.body).expect("json");
    assert_eq!(json["source"], "built-in default");
    assert!(
        json["version"]
            .as_str()
            .is_some_and(|v| v.starts_with("sha256:")),
        "{json}"
    );
    assert_eq!(
        get(pair.server.admin, "/live", &[])
            .await
            .expect("live")
            .status,
        200
    );
    assert_eq!(
        get(pair.server.admin, "/nope", &[])
            .await
            .expect("404")
            .status,
        404
    );
    let _ = Duration::ZERO;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn websocket_style_upgrades_cross_the_pair() {
    use tokio::io::AsyncWriteExt;
    let pair = Pair::start(&[], &[]).await;
    let mut stream = tokio::net::TcpStream::connect(pair.via())
        .await
        .expect("connect");
    stream
        .write_all(b"GET /chat HTTP/1.1\r\nhost: orders\r\nconnection: Upgrade\r\nupgrade: websocket\r\nsec-websocket-version: 13\r\nsec-websocket-key: dGhlIHNhbXBsZSBub25jZQ==\r\nx-warden-peer-id: spoofed\r\n\r\n")
        .await
        .expect("write");
    let head = read_some(&mut stream, 1).await;
    let head = String::from_utf8_lossy(&head).to_lowercase();
    assert!(head.starts_with("http/1.1 101"), "{head}");
    assert!(head.contains("upgrade: websocket"), "{head}");
    assert!(head.contains(&format!("x-seen-peer: {FRONTEND}")), "{head}");
    for message in [&b"ping"[..], b"through two sidecars"] {
        stream.write_all(message).await.expect("write");
        let echoed = read_some(&mut stream, message.len()).await;
        assert_eq!(echoed, message.to_ascii_uppercase());
    }
    // Other upgrades (h2c, or anything an app might answer 101 to) would
    // make one authorized request an unchecked tunnel: refused.
    let mut h2c = tokio::net::TcpStream::connect(pair.via())
        .await
        .expect("connect");
    h2c.write_all(b"GET / HTTP/1.1\r\nhost: orders\r\nconnection: Upgrade, HTTP2-Settings\r\nupgrade: h2c\r\nhttp2-settings: AAMAAABkAAQAAP__\r\n\r\n")
        .await
        .expect("write");
    let head = String::from_utf8_lossy(&read_some(&mut h2c, 1).await).into_owned();
    assert!(head.starts_with("HTTP/1.1 400"), "{head}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn opaque_tcp_crosses_the_pair_and_a_denied_peer_is_closed() {
    use support::mesh::{Identities, tcp_echo};
    use tokio::io::AsyncWriteExt;
    let ids = Identities::new();
    let echo = tcp_echo().await;
    // Only frontend may connect; the built-in policy has no `connect` permit
    // for another namespace.
    let server = ids.start(
        "orders",
        &[format!(
            "inbound.opaque=[{{listen=\"127.0.0.1:0\", app=\"{echo}\"}}]"
        )],
    );
    let opaque = server.opaque[0];
    let tcp_route = |id: &str| {
        format!(
            "outbound.routes=[{{listen=\"127.0.0.1:0\", upstream=\"{opaque}\", identity=\"{id}\", protocol=\"tcp\"}}]"
        )
    };
    let frontend = ids.start("frontend", &[tcp_route(ORDERS)]);
    let intruder = ids.start("intruder", &[tcp_route(ORDERS)]);
    for p in [&server, &frontend, &intruder] {
        p.wait_ready().await;
    }
    let mut stream = tokio::net::TcpStream::connect(frontend.outbound[0])
        .await
        .expect("connect");
    assert_eq!(
        read_some(&mut stream, 6).await,
        b"hello\n",
        "server speaks first"
    );
    stream.write_all(b"select 1;").await.expect("write");
    assert_eq!(read_some(&mut stream, 9).await, b"SELECT 1;");

    let mut denied = tokio::net::TcpStream::connect(intruder.outbound[0])
        .await
        .expect("connect");
    let _ = denied.write_all(b"select 1;").await;
    assert!(
        read_some(&mut denied, 1).await.is_empty(),
        "denied peer got bytes"
    );
    let metrics = server.metrics().await;
    assert!(
        metrics
            .contains("warden_tcp_connections_total{direction=\"inbound\",decision=\"allow\"} 1"),
        "{metrics}"
    );
    assert!(
        metrics.contains("warden_tcp_connections_total{direction=\"inbound\",decision=\"deny\"} 1"),
        "{metrics}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_http_proxy_mode_serves_declared_services_and_connect_tunnels() {
    use support::mesh::{Identities, TestApp, inbound_to, tcp_echo};
    use tokio::io::AsyncWriteExt;
    let ids = Identities::new();
    let app = TestApp::start().await;
    let echo = tcp_echo().await;
    let mut s = inbound_to(app.addr);
    s.push(format!(
        "inbound.opaque=[{{listen=\"127.0.0.1:0\", app=\"{echo}\"}}]"
    ));
    let server = ids.start("orders", &s);
    let services = format!(
        "outbound.services=[{{authority=\"orders.shop\", upstream=\"{}\", identity=\"{ORDERS}\"}}, {{authority=\"db.shop:5432\", upstream=\"{}\", identity=\"{ORDERS}\", protocol=\"tcp\"}}]",
        server.inbound(),
        server.opaque[0]
    );
    let client = ids.start(
        "frontend",
        &["outbound.proxy_listen=127.0.0.1:0".into(), services],
    );
    server.wait_ready().await;
    client.wait_ready().await;
    let proxy = client.proxy.expect("proxy listener");

    let exchange = |request: &'static str| async move {
        let mut stream = tokio::net::TcpStream::connect(proxy)
            .await
            .expect("connect");
        stream.write_all(request.as_bytes()).await.expect("write");
        String::from_utf8_lossy(&read_some(&mut stream, usize::MAX).await).into_owned()
    };
    let ok = exchange("GET http://orders.shop/orders/1 HTTP/1.1\r\nhost: orders.shop\r\nconnection: close\r\n\r\n").await;
    assert!(ok.starts_with("HTTP/1.1 200"), "{ok}");
    assert!(ok.contains(FRONTEND), "the app saw the caller: {ok}");
    let undeclared = exchange(
        "GET http://evil.example/ HTTP/1.1\r\nhost: evil.example\r\nconnection: close\r\n\r\n",
    )
    .await;
    assert!(undeclared.starts_with("HTTP/1.1 403"), "{undeclared}");
    assert!(undeclared.contains("evil.example:80"), "{undeclared}");
    let origin =
        exchange("GET /orders HTTP/1.1\r\nhost: orders.shop\r\nconnection: close\r\n\r\n").await;
    assert!(origin.starts_with("HTTP/1.1 400"), "{origin}");

    let mut tunnel = tokio::net::TcpStream::connect(proxy)
        .await
        .expect("connect");
    tunnel
        .write_all(b"CONNECT db.shop:5432 HTTP/1.1\r\nhost: db.shop:5432\r\n\r\n")
        .await
        .expect("write");
    let mut seen = String::new();
    while !seen.contains("hello\n") {
        let more = read_some(&mut tunnel, 1).await;
        assert!(!more.is_empty(), "tunnel closed: {seen}");
        seen.push_str(&String::from_utf8_lossy(&more));
    }
    assert!(seen.starts_with("HTTP/1.1 200"), "{seen}");
    tunnel.write_all(b"ping").await.expect("write");
    assert_eq!(read_some(&mut tunnel, 4).await, b"PING");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_app_on_a_unix_socket_is_reached_over_http1_and_h2() {
    use support::mesh::{Identities, TestApp};
    let ids = Identities::new();
    let socket = ids.path("orders-app.sock");
    TestApp::start_unix(&socket);
    let server = ids.start(
        "orders",
        &[
            "inbound.listen=127.0.0.1:0".into(),
            format!("inbound.app=unix:{}", socket.display()),
        ],
    );
    let client = ids.start("frontend", &[route_to(server.inbound(), ORDERS)]);
    server.wait_ready().await;
    client.wait_ready().await;
    let reply = get(client.outbound[0], "/over/unix", &[])
        .await
        .expect("call");
    assert_eq!(reply.status, 200, "{}", reply.body);
    assert_eq!(reply.echo()["headers"]["x-warden-peer-id"], FRONTEND);
    // gRPC goes to the app as HTTP/2 (h2c), over the unix socket too.
    let reply = send(
        &h2c_client(),
        Request::get(format!("http://{}/h2", client.outbound[0]))
            .header("content-type", "application/grpc+json")
            .body(body(""))
            .expect("req"),
    )
    .await
    .expect("h2 call");
    assert_eq!(reply.echo()["version"], "HTTP/2.0");
    assert_eq!(reply.echo()["headers"]["x-warden-peer-id"], FRONTEND);
}
