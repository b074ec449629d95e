//! Sidecar lifecycle under traffic: SVID rotation with zero failed requests,
//! a graceful drain on SIGTERM, and connections spread over `--workers`.

mod support;

use std::collections::BTreeSet;
use std::path::Path;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, SystemTime};

use support::mesh::{FRONTEND, ORDERS, Pair, body, get, http1_client, send};
use support::{RawCa, eventually, svid_params};

/// Writes a fresh SVID for `id`, valid for `ttl`, into `dir`: key first,
/// then certificate, each replaced atomically (as a node agent would).
fn rotate(ca: &RawCa, id: &str, dir: &Path, ttl: Duration) {
    let mut params = svid_params(&[id]);
    params.not_before = (SystemTime::now() - Duration::from_secs(1)).into();
    params.not_after = (SystemTime::now() + ttl).into();
    let (cert, key) = ca.sign(&params);
    let pem = warden_proxy::identity::pem_encode("CERTIFICATE", &cert);
    for (name, content) in [("svid.key", key.as_bytes()), ("svid.pem", pem.as_bytes())] {
        let tmp = dir.join(format!(".{name}.tmp"));
        std::fs::write(&tmp, content).expect("write");
        std::fs::rename(&tmp, dir.join(name)).expect("rename");
    }
}

async fn serial(admin: std::net::SocketAddr) -> String {
    let identity = get(admin, "/identity", &[]).await.expect("identity");
    let json: serde_json::Value = serde_json::from_str(&identity.body).expect("json");
    json["serial"].as_str().expect("serial").to_owned()
}

/// Waits (bounded) until the sidecar at `admin` presents a serial other
/// than `old`: it picked up the files just written. The new serial.
async fn installed(admin: std::net::SocketAddr, old: &str) -> String {
    eventually(
        "a new SVID installed",
        Duration::from_secs(10),
        async || {
            let now = serial(admin).await;
            if now == old { Err(now) } else { Ok(now) }
        },
    )
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn svids_rotate_under_load_with_zero_failed_requests() {
    let ttl = Duration::from_secs(6);
    let pair = Pair::start(&[], &[]).await;
    let ca = RawCa::load(&pair.ids.ca());
    let (server, client) = (pair.server.admin, pair.client.admin);
    let (mut server_serial, mut client_serial) = (serial(server).await, serial(client).await);
    // Start from short-lived SVIDs, then keep replacing them.
    rotate(&ca, ORDERS, &pair.ids.path("orders"), ttl);
    rotate(&ca, FRONTEND, &pair.ids.path("frontend"), ttl);
    server_serial = installed(server, &server_serial).await;
    client_serial = installed(client, &client_serial).await;

    let stop = Arc::new(AtomicBool::new(false));
    let ok = Arc::new(AtomicU64::new(0));
    let mut workers = Vec::new();
    for worker in 0..4 {
        let (stop, ok, via) = (stop.clone(), ok.clone(), pair.via());
        workers.push(tokio::spawn(async move {
            let client = http1_client();
            let mut failures = Vec::new();
            while !stop.load(Ordering::Relaxed) {
                // Half the workers keep one connection to their sidecar, half open one per request.
                let reply = if worker % 2 == 0 {
                    send(
                        &client,
                        hyper::Request::get(format!("http://{via}/r"))
                            .body(body(""))
                            .expect("req"),
                    )
                    .await
                } else {
                    get(via, "/r", &[]).await
                };
                match reply {
                    Ok(r) if r.status == 200 => {
                        ok.fetch_add(1, Ordering::Relaxed);
                    }
                    Ok(r) => failures.push(format!("{} {}", r.status, r.body)),
                    Err(e) => failures.push(e),
                }
            }
            failures
        }));
    }

    let mut serials = BTreeSet::new();
    let rotations = 12;
    for _ in 0..rotations {
        // Each SVID serves traffic for a while before the next: the pause
        // is the load the rotation happens under, not a wait.
        tokio::time::sleep(Duration::from_secs(2)).await;
        rotate(&ca, ORDERS, &pair.ids.path("orders"), ttl);
        rotate(&ca, FRONTEND, &pair.ids.path("frontend"), ttl);
        server_serial = installed(server, &server_serial).await;
        client_serial = installed(client, &client_serial).await;
        serials.insert(server_serial.clone());
    }
    stop.store(true, Ordering::Relaxed);
    let mut failures = Vec::new();
    for w in workers {
        failures.extend(w.await.expect("worker"));
    }
    let ok = ok.load(Ordering::Relaxed);
    assert!(
        failures.is_empty(),
        "{} of {} requests failed: {:?}\n{}",
        failures.len(),
        ok + failures.len() as u64,
        &failures[..failures.len().min(5)],
        pair.client.logs()
    );
    assert!(ok > 100, "only {ok} requests in 24 s");
    assert!(
        serials.len() >= 10,
        "the server's serial changed only {} times",
        serials.len()
    );
    // The frontend sidecar reconnected with each new SVID: many handshakes, none failed.
    let metrics = pair.client.metrics().await;
    assert!(
        !metrics.contains("warden_tls_handshakes_total{direction=\"outbound\",outcome=\"failed\""),
        "{metrics}"
    );
    eprintln!(
        "rotation under load: {ok} requests, {} serials, 0 failures",
        serials.len()
    );
}

/// `WARDEN_WORKERS=n` for both sidecars of a pair.
fn workers(n: usize) -> Vec<(String, String)> {
    vec![("WARDEN_WORKERS".into(), n.to_string())]
}

/// Starts `requests` slow requests through the pair (both sidecars with
/// `workers` worker threads), SIGTERMs `victim` (the server or the client
/// sidecar), and checks that its listener closes (every worker's socket:
/// one left open would take the connections), the requests complete, and
/// it exits 0.
async fn drain(victim_is_server: bool, workers_each: usize, requests: usize) {
    let mut pair = Pair::start_with_env(
        &["limits.drain_timeout=10s".into()],
        &["limits.drain_timeout=10s".into()],
        &workers(workers_each),
    )
    .await;
    let via = pair.via();
    let in_flight: Vec<_> = (0..requests)
        .map(|_| tokio::spawn(async move { get(via, "/slow/1500", &[]).await }))
        .collect();
    pair.app.slow_in_flight(requests).await;
    if workers_each > 1 {
        // Every worker of both sidecars holds some of them.
        for sidecar in [&pair.client, &pair.server] {
            let counts = per_worker(sidecar, workers_each).await;
            assert!(counts.iter().all(|&n| n > 0.0), "by worker: {counts:?}");
        }
    }
    let (victim, listener) = if victim_is_server {
        let inbound = pair.server.inbound();
        (&mut pair.server, inbound)
    } else {
        (&mut pair.client, via)
    };
    let pid = rustix::process::Pid::from_raw(victim.child.id() as i32).expect("pid");
    rustix::process::kill_process(pid, rustix::process::Signal::TERM).expect("SIGTERM");
    eventually(
        "the draining sidecar to stop accepting connections",
        Duration::from_secs(1),
        async || match tokio::net::TcpStream::connect(listener).await {
            Err(e) if e.kind() == std::io::ErrorKind::ConnectionRefused => Ok(()),
            other => Err(format!("{other:?}")),
        },
    )
    .await;
    for request in in_flight {
        let reply = request.await.expect("join").expect("in-flight request");
        assert_eq!(reply.status, 200, "{}", reply.body);
    }
    let status = victim.wait(Duration::from_secs(15));
    assert_eq!(status.code(), Some(0), "{}", victim.logs());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_drains_the_inbound_side_and_exits_zero() {
    drain(true, 1, 3).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_drains_the_outbound_side_and_exits_zero() {
    drain(false, 1, 3).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_drains_every_worker_of_both_sides() {
    // Thirty connections over three workers: one worker left without any
    // has odds of about 1 in 60,000 per side.
    drain(true, 3, 30).await;
    drain(false, 3, 30).await;
}

/// The `warden_worker_connections_total` samples of a sidecar, by worker.
async fn per_worker(sidecar: &support::mesh::Proxy, workers: usize) -> Vec<f64> {
    let metrics = sidecar.metrics().await;
    (0..workers)
        .map(|w| {
            support::mesh::sample(
                &metrics,
                &format!("warden_worker_connections_total{{worker=\"{w}\"}}"),
            )
            .unwrap_or(0.0)
        })
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn with_three_workers_every_worker_serves_connections_on_both_sides() {
    let pair = Pair::start_with_env(&[], &[], &workers(3)).await;
    let via = pair.via();
    // 48 connections at once, each one slow request: the client sidecar
    // needs a peer connection for each (HTTP/1.1 end to end), so both
    // sidecars accept 48. All on two workers or fewer: odds about 1e-8.
    let requests: Vec<_> = (0..48)
        .map(|_| tokio::spawn(async move { get(via, "/slow/300", &[]).await }))
        .collect();
    for request in requests {
        let reply = request.await.expect("join").expect("request");
        assert_eq!(reply.status, 200, "{}", reply.body);
    }
    for (side, sidecar) in [("client", &pair.client), ("server", &pair.server)] {
        let counts = per_worker(sidecar, 3).await;
        assert!(
            counts.iter().all(|&n| n > 0.0),
            "{side} sidecar: connections by worker {counts:?}\n{}",
            sidecar.logs()
        );
    }
}
