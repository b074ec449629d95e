//! Bad input at the sidecar: each gets its documented refusal, the sidecar
//! keeps serving everyone else, and nothing panics.

mod support;

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use rustls::pki_types::ServerName;
use support::mesh::{
    FRONTEND, INTRUDER, ORDERS, Pair, TD, TestApp, get, inbound_to, raw_exchange, route_to,
};
use support::*;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use warden_proxy::identity::{ExpectedIdentity, TrustBundleSet};

/// An HTTP/1.1 GET /healthz over TLS with `config`; the response head, or why not.
async fn tls_get(config: Arc<rustls::ClientConfig>, addr: SocketAddr) -> Result<String, String> {
    let tcp = TcpStream::connect(addr).await.map_err(|e| e.to_string())?;
    let name = ServerName::try_from("warden.test").expect("name");
    let mut tls = tokio_rustls::TlsConnector::from(config)
        .connect(name, tcp)
        .await
        .map_err(|e| format!("handshake: {e}"))?;
    tls.write_all(b"GET /healthz HTTP/1.1\r\nhost: x\r\nconnection: close\r\n\r\n")
        .await
        .map_err(|e| format!("write: {e}"))?;
    let mut out = Vec::new();
    match tokio::time::timeout(Duration::from_secs(10), tls.read_to_end(&mut out)).await {
        Err(_) => Err("read timed out".into()),
        Ok(Err(e)) => Err(format!("read: {e}")),
        Ok(Ok(_)) if out.is_empty() => Err("closed without a response".into()),
        Ok(Ok(_)) => Ok(String::from_utf8_lossy(&out).into_owned()),
    }
}

fn our_bundles(pair: &Pair) -> TrustBundleSet {
    TrustBundleSet::new().with(load_bundle(&pair.ids.path("orders"), TD))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn strict_inbound_refuses_every_peer_without_a_valid_svid() {
    let pair = Pair::start(&[], &[]).await;
    let inbound = pair.server.inbound();

    // Plain HTTP to the TLS port: never an HTTP response.
    let reply = raw_exchange(inbound, b"GET /healthz HTTP/1.1\r\nhost: x\r\n\r\n").await;
    assert!(
        !reply.starts_with(b"HTTP/"),
        "{}",
        String::from_utf8_lossy(&reply)
    );

    // The same request with a valid SVID works: the baseline for the rest.
    let svid = load_svid(&pair.ids.path("frontend"));
    let key = std::fs::read_to_string(pair.ids.path("frontend").join("svid.key")).expect("key");
    let good = client_presenting(
        svid.chain().to_vec(),
        &key,
        our_bundles(&pair),
        ExpectedIdentity::AnyTrusted,
    );
    let ok = tls_get(good, inbound).await.expect("valid SVID served");
    assert!(ok.starts_with("HTTP/1.1 200"), "{ok}");

    let raw = RawCa::load(&pair.ids.ca());
    let mut bad: Vec<(
        &str,
        Vec<rustls::pki_types::CertificateDer<'static>>,
        String,
    )> = Vec::new();
    // Another CA claiming our trust domain, and one of another trust domain.
    for (name, td, id) in [
        ("rogue", TD, FRONTEND),
        (
            "other-td",
            "other.org",
            "spiffe://other.org/ns/shop/sa/frontend",
        ),
    ] {
        let ca = pair.ids.path(&format!("{name}-ca"));
        ca_init(&ca, td);
        let dir = svid_issue(&ca, id, &pair.ids.path(name));
        let key = std::fs::read_to_string(dir.join("svid.key")).expect("key");
        bad.push((name, load_svid(&dir).chain().to_vec(), key));
    }
    let mut expired = svid_params(&[FRONTEND]);
    expired.not_before = (SystemTime::now() - Duration::from_secs(7200)).into();
    expired.not_after = (SystemTime::now() - Duration::from_secs(3600)).into();
    let (cert, key) = raw.sign(&expired);
    bad.push(("expired", vec![cert], key));
    let (cert, key) = raw.sign(&svid_params(&[FRONTEND, INTRUDER]));
    bad.push(("two URI SANs", vec![cert], key));
    for (name, chain, key) in bad {
        let config = client_presenting(
            chain,
            &key,
            our_bundles(&pair),
            ExpectedIdentity::AnyTrusted,
        );
        // TLS 1.3: the refusal arrives as an alert after the client's side
        // of the handshake is done.
        let result = tls_get(config, inbound).await;
        assert!(
            matches!(&result, Err(e) if e.ends_with("fatal alert: CertificateUnknown")),
            "{name}: not refused as an unknown certificate: {result:?}"
        );
    }
    // No client certificate at all.
    let anonymous = anonymous_client(our_bundles(&pair));
    let result = tls_get(anonymous, inbound).await;
    assert!(
        matches!(&result, Err(e) if e.ends_with("fatal alert: CertificateRequired")),
        "served without a certificate, or refused otherwise: {result:?}"
    );

    // Everyone else is still served.
    assert_eq!(get(pair.via(), "/x", &[]).await.expect("call").status, 200);
    let metrics = pair.server.metrics().await;
    let failed: u64 = metrics
        .lines()
        .filter(|l| {
            l.starts_with("warden_tls_handshakes_total{direction=\"inbound\",outcome=\"failed\"")
        })
        .filter_map(|l| l.rsplit(' ').next()?.parse::<u64>().ok())
        .sum();
    assert_eq!(failed, 6, "{metrics}");
    assert!(
        metrics.contains("reason=\"no_certificate\"} 1"),
        "{metrics}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn permissive_inbound_serves_plaintext_as_unauthenticated() {
    let ids = support::mesh::Identities::new();
    let app = TestApp::start().await;
    let mut settings = inbound_to(app.addr);
    settings.push("inbound.mode=permissive".into());
    let server = ids.start("orders", &settings);
    server.wait_ready().await;
    // Plaintext: the built-in policy lets anyone GET /healthz, nothing else.
    let health = get(
        server.inbound(),
        "/healthz",
        &[("x-warden-peer-id", FRONTEND)],
    )
    .await
    .expect("healthz");
    assert_eq!(health.status, 200, "{}", health.body);
    let headers = &health.echo()["headers"];
    assert!(
        headers.get("x-warden-peer-id").is_none(),
        "spoofed identity reached the app: {headers}"
    );
    assert!(headers.get("x-forwarded-client-cert").is_none());
    let denied = get(server.inbound(), "/orders", &[]).await.expect("orders");
    assert_eq!(denied.status, 403);
    assert!(
        denied.body.contains("Unauthenticated::\"plaintext\""),
        "{}",
        denied.body
    );
    // mTLS peers are still workloads.
    let client = ids.start("frontend", &[route_to(server.inbound(), ORDERS)]);
    client.wait_ready().await;
    let reply = get(client.outbound[0], "/orders", &[]).await.expect("call");
    assert_eq!(reply.status, 200);
    assert_eq!(reply.echo()["headers"]["x-warden-peer-id"], FRONTEND);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_malformed_chunked_body_is_the_callers_fault() {
    let ids = support::mesh::Identities::new();
    let app = TestApp::start().await;
    let server = ids
        .permissive(app.addr, support::mesh::ALLOW_ALL, &[])
        .await;
    // The app reads the whole body before answering (`/grpc`), so the
    // broken chunk fails the exchange: 400 naming the body, not a 502
    // naming hyper's internals.
    let bad = raw_exchange(
        server.inbound(),
        b"POST /grpc HTTP/1.1\r\nhost: x\r\ntransfer-encoding: chunked\r\n\r\n5\r\nhello\r\nzz\r\nbad\r\n0\r\n\r\n",
    )
    .await;
    let text = String::from_utf8_lossy(&bad);
    assert!(text.starts_with("HTTP/1.1 400"), "{text}");
    assert!(text.contains("request body is malformed"), "{text}");
    assert!(!text.contains("hyper"), "{text}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_server_that_is_not_the_expected_identity_gets_502() {
    let pair = Pair::start(&[], &[]).await;
    let wrong = pair
        .ids
        .start("frontend", &[route_to(pair.server.inbound(), INTRUDER)]);
    wrong.wait_ready().await;
    let reply = get(wrong.outbound[0], "/x", &[]).await.expect("call");
    assert_eq!(reply.status, 502, "{}", reply.body);
    assert!(
        reply.body.contains(INTRUDER),
        "names the expected identity: {}",
        reply.body
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn malformed_oversized_and_slow_requests_are_refused() {
    let limits = vec![
        "limits.max_header_bytes=8192".to_owned(),
        "limits.header_read_timeout=1s".to_owned(),
    ];
    let pair = Pair::start(&limits, &limits).await;
    let via = pair.via();

    let big = "a".repeat(16 * 1024);
    let reply = get(via, "/x", &[("x-big", &big)]).await.expect("oversized");
    assert_eq!(reply.status, 431);

    // Conflicting Content-Length and Transfer-Encoding: read as chunked
    // (RFC 9112 6.3), Content-Length dropped, and the connection closed after
    // the response, so the request hidden behind the body is never served.
    let smuggle = raw_exchange(
        via,
        b"POST /echo HTTP/1.1\r\nhost: x\r\ncontent-length: 40\r\ntransfer-encoding: chunked\r\n\r\n0\r\n\r\nGET /smuggled HTTP/1.1\r\nhost: x\r\n\r\n",
    )
    .await;
    let text = String::from_utf8_lossy(&smuggle);
    assert_eq!(text.matches("HTTP/1.1 ").count(), 1, "{text}");
    assert!(text.contains("connection: close"), "{text}");
    assert!(!text.contains("smuggled"), "{text}");

    // A malformed chunked body from the app: 400, not the peer's 502.
    let bad = raw_exchange(
        via,
        b"POST /grpc HTTP/1.1\r\nhost: x\r\ntransfer-encoding: chunked\r\n\r\n5\r\nhello\r\nnot-hex\r\n\r\n",
    )
    .await;
    let text = String::from_utf8_lossy(&bad);
    assert!(text.starts_with("HTTP/1.1 400"), "{text}");

    // Slowloris: a head that never finishes is cut off after the timeout,
    // unanswered. The drip, a header line every 250 ms, is the attack.
    let mut slow = TcpStream::connect(via).await.expect("connect");
    slow.write_all(b"GET / HTTP/1.1\r\nhost: x\r\n")
        .await
        .expect("write");
    let started = std::time::Instant::now();
    let mut cut = None;
    for _ in 0..40 {
        tokio::time::sleep(Duration::from_millis(250)).await;
        if let Err(e) = slow.write_all(b"x-drip: 1\r\n").await {
            cut = Some(format!("write: {e}"));
            break;
        }
        let mut buf = [0u8; 512];
        match tokio::time::timeout(Duration::from_millis(1), slow.read(&mut buf)).await {
            Ok(Ok(0)) => cut = Some("end of stream".to_owned()),
            Ok(Err(e)) => cut = Some(format!("read: {e}")),
            Ok(Ok(n)) => panic!(
                "an answer to an unfinished head: {}",
                String::from_utf8_lossy(&buf[..n])
            ),
            Err(_) => {}
        }
        if cut.is_some() {
            break;
        }
    }
    assert!(
        cut.is_some(),
        "slowloris connection still open after {:?}",
        started.elapsed()
    );
    // The sidecars kept serving everyone else.
    assert_eq!(get(via, "/x", &[]).await.expect("call").status, 200);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_app_that_is_down_or_hangs_gets_503_or_504() {
    let down = std::net::TcpListener::bind("127.0.0.1:0").expect("port");
    let down_addr = down.local_addr().expect("addr");
    drop(down);
    let ids = support::mesh::Identities::new();
    let mut s = inbound_to(down_addr);
    s.push("limits.app_response_timeout=1s".into());
    let server = ids.start("orders", &s);
    let client = ids.start("frontend", &[route_to(server.inbound(), ORDERS)]);
    server.wait_ready().await;
    client.wait_ready().await;
    let reply = get(client.outbound[0], "/x", &[]).await.expect("call");
    assert_eq!(reply.status, 503, "{}", reply.body);
    assert!(reply.body.contains("unavailable"), "{}", reply.body);

    let app = TestApp::start().await;
    let mut s = inbound_to(app.addr);
    s.push("limits.app_response_timeout=1s".into());
    let hanging = ids.start("orders", &s);
    let client = ids.start("frontend", &[route_to(hanging.inbound(), ORDERS)]);
    hanging.wait_ready().await;
    client.wait_ready().await;
    let reply = get(client.outbound[0], "/slow/5000", &[])
        .await
        .expect("call");
    assert_eq!(reply.status, 504, "{}", reply.body);
    assert_eq!(
        get(client.outbound[0], "/x", &[])
            .await
            .expect("call")
            .status,
        200
    );

    // A peer sidecar that is not there.
    let gone = ids.start("frontend", &[route_to(down_addr, ORDERS)]);
    gone.wait_ready().await;
    let reply = get(gone.outbound[0], "/x", &[]).await.expect("call");
    assert_eq!(reply.status, 503, "{}", reply.body);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn past_the_concurrency_limit_requests_are_shed_with_503() {
    let pair = Pair::start(&["limits.max_concurrent_requests=1".into()], &[]).await;
    let via = pair.via();
    let slow = tokio::spawn(async move { get(via, "/slow/1500", &[]).await });
    // At the app, the slow request holds the only slot.
    pair.app.slow_in_flight(1).await;
    let shed = get(via, "/x", &[]).await.expect("call");
    assert_eq!(shed.status, 503, "{}", shed.body);
    assert!(shed.body.contains("overloaded"));
    assert_eq!(slow.await.expect("join").expect("slow").status, 200);
    assert_eq!(get(via, "/x", &[]).await.expect("call").status, 200);
    assert!(
        pair.server
            .metrics()
            .await
            .contains("warden_requests_shed_total 1")
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_h2_rapid_reset_flood_is_cut_off_and_others_are_served() {
    let pair = Pair::start(&[], &["limits.h2_max_pending_resets=10".into()]).await;
    let tcp = TcpStream::connect(pair.via()).await.expect("connect");
    let (client, connection) = h2::client::handshake(tcp).await.expect("h2 handshake");
    let conn = tokio::spawn(connection);
    let mut client = client;
    let mut sent = 0;
    for _ in 0..5000 {
        let Ok(ready) = client.ready().await else {
            break;
        };
        client = ready;
        let req = http::Request::get(format!("http://{}/slow/1000", pair.via()))
            .body(())
            .expect("req");
        match client.send_request(req, false) {
            Ok((_, mut stream)) => stream.send_reset(h2::Reason::CANCEL),
            Err(_) => break,
        }
        sent += 1;
    }
    let ended = tokio::time::timeout(Duration::from_secs(10), conn).await;
    // The server answers with GOAWAY ENHANCE_YOUR_CALM and closes; the
    // client sees the GOAWAY, or (if it was still writing) a broken pipe or
    // a reset.
    let cut = match &ended {
        Ok(Ok(Err(e))) => {
            e.reason() == Some(h2::Reason::ENHANCE_YOUR_CALM)
                || e.get_io().is_some_and(|io| {
                    matches!(
                        io.kind(),
                        std::io::ErrorKind::BrokenPipe | std::io::ErrorKind::ConnectionReset
                    )
                })
        }
        _ => false,
    };
    assert!(
        cut && sent < 5000,
        "flood of {sent} resets not cut off: {ended:?}"
    );
    // Everyone else is still served.
    assert_eq!(get(pair.via(), "/x", &[]).await.expect("call").status, 200);
}

#[test]
fn invalid_configuration_is_refused_naming_the_key() {
    let out = warden(&[
        "proxy",
        "--set",
        "identity.dir=/nonexistent",
        "--set",
        "inbound.listen=nowhere",
    ]);
    assert_eq!(out.status.code(), Some(1), "{out:?}");
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("inbound.listen"), "{err}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn idle_connections_are_closed_after_the_idle_timeout() {
    let pair = Pair::start(&[], &["limits.idle_timeout=1s".to_owned()]).await;
    let mut stream = TcpStream::connect(pair.via()).await.expect("connect");
    stream
        .write_all(b"GET /x HTTP/1.1\r\nhost: x\r\n\r\n")
        .await
        .expect("write");
    let mut buf = vec![0u8; 64 * 1024];
    let n = tokio::time::timeout(Duration::from_secs(10), stream.read(&mut buf))
        .await
        .expect("response in time")
        .expect("read");
    assert!(
        buf[..n].starts_with(b"HTTP/1.1 200"),
        "{}",
        String::from_utf8_lossy(&buf[..n])
    );
    // Keep-alive, but idle: the sidecar closes it (a clean end of stream),
    // well before the 10 s header read timeout would (bounded wait).
    let end = tokio::time::timeout(Duration::from_secs(5), stream.read(&mut buf)).await;
    assert!(
        matches!(end, Ok(Ok(0))),
        "idle connection not closed within 5 s: {end:?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_connection_is_not_trusted_past_its_certificate() {
    let pair = Pair::start(&[], &[]).await;
    // A client whose certificate expires in a few seconds keeps one HTTP/2
    // connection open across the expiry.
    let raw = RawCa::load(&pair.ids.ca());
    let mut params = svid_params(&[FRONTEND]);
    params.not_before = (SystemTime::now() - Duration::from_secs(1)).into();
    let expires = SystemTime::now() + Duration::from_secs(3);
    params.not_after = expires.into();
    let (cert, key) = raw.sign(&params);
    let config = client_presenting(
        vec![cert],
        &key,
        our_bundles(&pair),
        ExpectedIdentity::AnyTrusted,
    );
    let mut config = Arc::unwrap_or_clone(config);
    config.alpn_protocols = vec![b"h2".to_vec()];
    let tcp = TcpStream::connect(pair.server.inbound())
        .await
        .expect("connect");
    let tls = tokio_rustls::TlsConnector::from(Arc::new(config))
        .connect(ServerName::try_from("warden.test").expect("name"), tcp)
        .await
        .expect("handshake");
    let (mut sender, connection) = hyper::client::conn::http2::handshake(
        hyper_util::rt::TokioExecutor::new(),
        hyper_util::rt::TokioIo::new(tls),
    )
    .await
    .expect("h2");
    let connection = tokio::spawn(connection);
    let request = || {
        http::Request::get("http://orders/x")
            .body(http_body_util::Empty::<bytes::Bytes>::new())
            .expect("req")
    };
    let first = sender.send_request(request()).await.expect("first request");
    assert_eq!(first.status(), 200);
    // Past the expiry the sidecar closes the connection.
    tokio::time::timeout(Duration::from_secs(10), connection)
        .await
        .expect("connection closed within 10 s")
        .expect("join")
        .expect("closed cleanly");
    // Certificates count whole seconds.
    assert!(
        SystemTime::now() + Duration::from_secs(1) >= expires,
        "closed before the expiry"
    );
    let refused = sender
        .send_request(request())
        .await
        .expect_err("served on an expired identity");
    assert!(refused.is_closed() || refused.is_canceled(), "{refused:?}");
}
