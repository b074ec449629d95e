//! The handshake flood: certificate-less TLS handshakes against a strict
//! sidecar, with the per-source failure limiter off and on.

use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::sync::Arc;
use std::time::Duration;

use serde_json::json;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use warden_control::ca::{CertificateAuthority, InitOptions};
use warden_proxy::identity::SpiffeId;

use crate::clients::{Victim, connect_from, victim};
use crate::target::Sidecar;
use crate::{Error, proc_stat};

const ORDERS: &str = "spiffe://bench.warden/ns/shop/sa/orders";
const FRONTEND: &str = "spiffe://bench.warden/ns/shop/sa/frontend";

/// A CA in `dir` and SVIDs for orders and frontend; orders' directory.
pub fn identity_dir(dir: &std::path::Path) -> Result<std::path::PathBuf, Error> {
    let ca =
        CertificateAuthority::init(&dir.join("ca"), &InitOptions::new("bench.warden".parse()?))?;
    ca.issue_to_dir(&SpiffeId::parse(FRONTEND)?, None, &dir.join("frontend"))?;
    let out = dir.join("orders");
    ca.issue_to_dir(&SpiffeId::parse(ORDERS)?, None, &out)?;
    Ok(out)
}

/// A TLS client that trusts the bench CA and presents no certificate:
/// every handshake with a strict sidecar fails, after the sidecar has done
/// the expensive part (key exchange and signature).
fn certless_client(dir: &std::path::Path) -> Result<Arc<rustls::ClientConfig>, Error> {
    use warden_proxy::identity::{ExpectedIdentity, SpiffeServerVerifier, SvidStore};
    let bundle = warden_proxy::identity::TrustBundle::from_pem(
        "bench.warden".parse()?,
        &std::fs::read(dir.join("orders/bundle.pem"))?,
    )?;
    let store = Arc::new(SvidStore::new());
    store.set_bundles(warden_proxy::identity::TrustBundleSet::new().with(bundle));
    let verifier = SpiffeServerVerifier::new(store, ExpectedIdentity::AnyTrusted);
    let mut config =
        rustls::ClientConfig::builder_with_provider(warden_proxy::tls::crypto_provider().clone())
            .with_protocol_versions(&[&rustls::version::TLS13])?
            .dangerous()
            .with_custom_certificate_verifier(Arc::new(verifier))
            .with_no_client_auth();
    // Every handshake a full one, as a flood's would be.
    config.resumption = rustls::client::Resumption::disabled();
    Ok(Arc::new(config))
}

struct Flood {
    attempts: u64,
    cpu_us_per_attempt: f64,
    victim: Victim,
}

/// `concurrency` loops of certificate-less TLS handshakes from 127.0.0.50
/// against `target` for `length`, with a victim calling through `via`
/// meanwhile; the server sidecar's CPU per attempt.
async fn flood(
    server: &Sidecar,
    target: SocketAddr,
    via: SocketAddr,
    tls: Arc<rustls::ClientConfig>,
    rate: u64,
    length: Duration,
) -> Flood {
    let concurrency = 8;
    let stop = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let attempts = Arc::new(std::sync::atomic::AtomicU64::new(0));
    let cpu_before = proc_stat::cpu_time(server.child.id());
    let mut tasks = Vec::new();
    for _ in 0..concurrency {
        let (stop, attempts, tls) = (stop.clone(), attempts.clone(), tls.clone());
        tasks.push(tokio::spawn(async move {
            while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                attempts.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                let Ok(tcp) = connect_from(IpAddr::V4(Ipv4Addr::new(127, 0, 0, 50)), target).await
                else {
                    continue;
                };
                let name = rustls::pki_types::ServerName::try_from("warden").expect("name");
                if let Ok(Ok(mut tls)) = tokio::time::timeout(
                    Duration::from_secs(5),
                    tokio_rustls::TlsConnector::from(tls.clone()).connect(name, tcp),
                )
                .await
                {
                    // The server's refusal arrives after the client's Finished.
                    let _ = tls.write_all(b"x").await;
                    let mut buf = [0u8; 16];
                    let _ = tokio::time::timeout(Duration::from_secs(5), tls.read(&mut buf)).await;
                }
            }
        }));
    }
    let victim = victim(via, rate, length).await;
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    for t in tasks {
        let _ = t.await;
    }
    let cpu = proc_stat::cpu_time(server.child.id()).saturating_sub(cpu_before);
    let attempts = attempts.load(std::sync::atomic::Ordering::Relaxed);
    Flood {
        attempts,
        cpu_us_per_attempt: cpu.as_secs_f64() * 1e6 / attempts.max(1) as f64,
        victim,
    }
}

/// The handshake flood, without and with the per-source limiter: a strict
/// orders sidecar, a frontend sidecar routing the victim to it.
pub async fn handshake_floods(
    dir: &std::path::Path,
    app: SocketAddr,
    rate: u64,
    length: Duration,
) -> Result<serde_json::Value, Error> {
    let tls = certless_client(dir)?;
    let mut results = serde_json::Map::new();
    for (name, limit) in [("limiter_off", "0"), ("limiter_on", "20")] {
        let server = Sidecar::start(&[
            format!("identity.dir={}", dir.join("orders").display()),
            "admin.listen=127.0.0.1:0".to_owned(),
            "inbound.listen=127.0.0.1:0".to_owned(),
            format!("inbound.app={app}"),
            "service.name=orders".to_owned(),
            format!("limits.max_handshake_failures={limit}"),
        ])?;
        server.ready().await?;
        let client = Sidecar::start(&[
            format!("identity.dir={}", dir.join("frontend").display()),
            "admin.listen=127.0.0.1:0".to_owned(),
            format!(
                "outbound.routes=[{{listen=\"127.0.0.1:0\", upstream=\"{}\", identity=\"{ORDERS}\"}}]",
                server.inbound
            ),
        ])?;
        client.ready().await?;
        let via = client.outbound.ok_or("no route")?;
        // `/healthz`: what the built-in policy lets a same-namespace caller do.
        let _ = victim(via, rate, Duration::from_secs(1)).await;
        let base = victim(via, rate, length).await;
        let flooded = flood(&server, server.inbound, via, tls.clone(), rate, length).await;
        println!(
            "handshake flood, {name}: {} attempts, {:.0} us of sidecar CPU each; victim p99 {:.2} ms -> {:.2} ms ({:.2}x), {} errors",
            flooded.attempts,
            flooded.cpu_us_per_attempt,
            base.p99_ms,
            flooded.victim.p99_ms,
            flooded.victim.p99_ms / base.p99_ms,
            flooded.victim.errors
        );
        results.insert(
            name.to_owned(),
            json!({
                "attempts": flooded.attempts,
                "cpu_us_per_attempt": flooded.cpu_us_per_attempt,
                "victim_p99_ms": {"before": base.p99_ms, "during": flooded.victim.p99_ms},
                "victim_errors": flooded.victim.errors,
            }),
        );
    }
    Ok(serde_json::Value::Object(results))
}
