//! What several control-plane test files share: a pair of sidecars joined
//! through control planes, traffic through them, waiting for renewals, and
//! the join call and refusal codes of the API.
#![allow(dead_code)]

use std::collections::BTreeSet;
use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use warden_proxy::control::{ControlClient, ControlError, api};

use crate::support::control::Control;
use crate::support::mesh::{FRONTEND, ORDERS, Proxy, TestApp, get, inbound_to, route_to};

pub async fn serial_of(p: &Proxy) -> Option<String> {
    let r = get(p.admin, "/identity", &[]).await.ok()?;
    let json: serde_json::Value = serde_json::from_str(&r.body).ok()?;
    json["serial"].as_str().map(str::to_owned)
}

/// The usual pair, both ready: the test app behind `orders`' sidecar
/// (joined through `server_cp`), and `frontend`'s sidecar (joined through
/// `client_cp`) routing to it.
pub async fn orders_and_frontend(
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
pub struct Traffic {
    stop: Arc<AtomicBool>,
    ok: Arc<AtomicU64>,
    failed: Arc<AtomicU64>,
    errors: Arc<std::sync::Mutex<Vec<String>>>,
    tasks: Vec<tokio::task::JoinHandle<()>>,
}

impl Traffic {
    pub fn start(via: SocketAddr, workers: usize) -> Traffic {
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

    pub async fn finish(self) -> (u64, u64, Vec<String>) {
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
pub async fn renewals(sidecars: &[&Proxy], n: usize, limit: Duration) {
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

pub fn refused_code<T: std::fmt::Debug>(r: Result<T, ControlError>) -> (u16, String) {
    match r {
        Err(ControlError::Refused { status, code, .. }) => (status.as_u16(), code),
        other => panic!("expected a refusal, got {other:?}"),
    }
}

pub async fn join(
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
