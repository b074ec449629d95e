//! The control-plane load bench, against a real `warden control serve`
//! process on 127.0.0.1, for each backend (embedded SQLite, then a private
//! PostgreSQL server):
//!
//! 1. issuance: `N` joins (single-use token, CSR with a key made by the
//!    caller, SVID recorded in the inventory) at concurrency `C`;
//! 2. a renewal storm: the same `N` simulated sidecars all renew at once
//!    (mTLS with their SVID, a new key each), at concurrency `C`;
//! 3. JWT-SVIDs: the same `N` sidecars each ask for one (mTLS, one
//!    audience, ES256), at concurrency `C`: read next to the renewals,
//!    the X.509 issuance rate of the same run.
//!
//! For each: throughput, latency percentiles, errors and the control
//! plane's CPU time per issuance (from /proc); then the rate against the
//! baseline's, and where the machine's CPU went per issuance: the control
//! plane, this process (the simulated sidecars, their TLS handshakes and
//! requests) and the database server (every process named `postgres`),
//! with the ceiling that sum sets with every core busy. The baseline, measured in
//! the same run: the CA signing the same kind of CSR in this process, with
//! no TLS, HTTP or database. Keys and CSRs are made before the clock starts.
//!
//! Run: `cargo bench --bench control`. `WARDEN_BENCH_SIDECARS` (default
//! 10000) sets `N`, `WARDEN_BENCH_CONCURRENCY` (default 64) `C`,
//! `WARDEN_BENCH_BACKENDS` (default `sqlite,postgres`) the backends.
//! Results are printed and written to `target/control-bench.json`.

use std::collections::BTreeMap;
use std::io::{BufRead, BufReader};
use std::net::SocketAddr;
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

use serde_json::json;
use warden_control::ca::{CertificateAuthority, InitOptions, SignRequest};
use warden_proxy::control::{ControlClient, api, trust_store};
use warden_proxy::identity::{SpiffeId, Svid, SvidStore, TrustDomain, new_key_and_csr, pem_encode};

#[path = "control/phase.rs"]
mod phase;
#[allow(dead_code)]
#[path = "support/proc.rs"]
mod proc_stat;
#[path = "support/runner.rs"]
mod runner;

use phase::{CpuSplit, run_phase};
use runner::env_or;

// The tests' private PostgreSQL server.
#[allow(dead_code)]
#[path = "../tests/support/postgres.rs"]
mod postgres;
// What postgres.rs waits with.
#[allow(dead_code)]
#[path = "../tests/support/wait.rs"]
mod wait;

type Error = Box<dyn std::error::Error + Send + Sync>;

const TD: &str = "bench.warden";

struct Server {
    child: Child,
    api: SocketAddr,
    /// The database's processes (`postgres`), when there is one outside
    /// the control plane.
    database: Option<&'static str>,
}

impl Server {
    fn start(data: &Path, database: Option<&str>) -> Result<Server, Error> {
        // `WARDEN_BENCH_BIN`: another build's control plane, for a before
        // and after in one sitting.
        let bin = std::env::var_os("WARDEN_BENCH_BIN")
            .unwrap_or_else(|| env!("CARGO_BIN_EXE_warden").into());
        let mut command = Command::new(bin);
        command
            .args(["control", "serve", "--trust-domain", TD, "--data-dir"])
            .arg(data)
            .args(["--listen", "127.0.0.1:0", "--metrics-listen", "127.0.0.1:0"])
            .env("WARDEN_LOG", "error")
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit());
        if let Some(url) = database {
            command.args(["--database", url]);
        }
        let mut child = command.spawn()?;
        let stdout = child.stdout.take().ok_or("no stdout")?;
        let mut lines = BufReader::new(stdout).lines();
        let mut api = None;
        for line in lines.by_ref() {
            let line = line?;
            if let Some(a) = line.strip_prefix("api ") {
                api = Some(a.parse()?);
            }
            if line == "started" {
                break;
            }
        }
        // Audit lines keep coming: drain them so the server never blocks.
        std::thread::spawn(move || for _ in lines.map_while(Result::ok) {});
        let api = api.ok_or("the control plane did not start")?;
        Ok(Server {
            child,
            api,
            database: database.map(|_| "postgres"),
        })
    }

    fn cpu(&self) -> Duration {
        proc_stat::cpu_time(self.child.id())
    }

    /// CPU time so far of the control plane, of this process (the
    /// simulated sidecars) and of the database's processes, and the
    /// machine's busy and total ticks.
    fn cpu_split(&self) -> CpuSplit {
        CpuSplit {
            control: self.cpu(),
            sidecars: proc_stat::cpu_time(std::process::id()),
            database: self.database.map(proc_stat::cpu_time_named),
            machine: proc_stat::machine_ticks(),
        }
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn server_id() -> SpiffeId {
    SpiffeId::parse(&format!("spiffe://{TD}/warden/control")).expect("server id")
}

async fn bench_backend(
    name: &str,
    database: Option<String>,
    n: usize,
    concurrency: usize,
    raw: f64,
) -> Result<serde_json::Value, Error> {
    let dir = tempfile::tempdir()?;
    let data = dir.path().join("control");
    let server = Server::start(&data, database.as_deref())?;
    let admin = warden_control::server::admin_client(&data)?;
    let bundle = std::fs::read(data.join("bundle.pem"))?;
    println!("{name}: {n} simulated sidecars, concurrency {concurrency}");

    // Setup, untimed: one token and one key + CSR per sidecar.
    let ids: Vec<SpiffeId> = (0..n)
        .map(|i| SpiffeId::parse(&format!("spiffe://{TD}/ns/storm/sa/sidecar-{i}")).expect("id"))
        .collect();
    let (created, tokens) = run_phase(&server, ids.clone(), concurrency, {
        let admin = admin.clone();
        move |id: SpiffeId| {
            let admin = admin.clone();
            async move {
                let t: api::TokenResponse = admin
                    .post(
                        api::ADMIN_TOKENS,
                        &api::TokenRequest {
                            spiffe_id: id.to_string(),
                            ttl_secs: Some(3600),
                            labels: BTreeMap::new(),
                        },
                    )
                    .await
                    .map_err(|e| e.to_string())?;
                Ok(t.token)
            }
        }
    })
    .await;
    let tokens_json = created.report("tokens", n, raw);
    // Each simulated sidecar its own client: a join is a new sidecar's
    // first call, on a connection of its own.
    let joins: Vec<(ControlClient, String, String, String)> = tokens
        .into_iter()
        .flatten()
        .map(|token| {
            let kc = warden_proxy::identity::keygen::new_key_and_bare_csr().expect("keygen");
            let client = ControlClient::trusting(server.api, server_id(), &bundle).expect("client");
            (
                client,
                token,
                pem_encode("CERTIFICATE REQUEST", &kc.csr_der),
                kc.key_pem,
            )
        })
        .collect();

    // 1. Issuance: every sidecar joins.
    let (joined, svids) = run_phase(
        &server,
        joins,
        concurrency,
        move |(client, token, csr, key)| async move {
            let svid: api::SvidResponse = client
                .post(
                    api::JOIN,
                    &api::JoinRequest {
                        token,
                        csr,
                        instance: "bench".into(),
                        ttl_secs: None,
                    },
                )
                .await
                .map_err(|e| e.to_string())?;
            Ok((svid, key))
        },
    )
    .await;
    let join_json = joined.report("joins", n, raw);

    // 2. The renewal storm: each sidecar with its own SVID and a new key.
    let storm: Vec<(ControlClient, Arc<SvidStore>, String, String)> = svids
        .into_iter()
        .flatten()
        .map(|(svid, key)| {
            let store = Arc::new(trust_store(&server_id(), &bundle).expect("bundle"));
            let held = Svid::from_pem(svid.chain_pem.as_bytes(), key.as_bytes()).expect("svid");
            store.install(held, None).expect("install");
            let id = SpiffeId::parse(&svid.spiffe_id).expect("id");
            let kc = new_key_and_csr(&id).expect("keygen");
            let client =
                ControlClient::new(server.api, server_id(), store.clone()).expect("client");
            (
                client,
                store,
                pem_encode("CERTIFICATE REQUEST", &kc.csr_der),
                kc.key_pem,
            )
        })
        .collect();
    let renewing = storm.len();
    let jwt_clients: Vec<ControlClient> = storm.iter().map(|(c, ..)| c.clone()).collect();
    let (renewed, renewals) = run_phase(
        &server,
        storm,
        concurrency,
        |(client, store, csr, key)| async move {
            let svid: api::SvidResponse = client
                .post(
                    api::RENEW,
                    &api::RenewRequest {
                        csr,
                        instance: "bench".into(),
                        ttl_secs: None,
                    },
                )
                .await
                .map_err(|e| e.to_string())?;
            Ok((store, svid.chain_pem, key))
        },
    )
    .await;
    let renew_json = renewed.report("renewals", renewing, raw);
    // Untimed: each sidecar installs its renewed SVID, as a sidecar does, so
    // that its next call presents it (on a new connection).
    for (store, chain, key) in renewals.into_iter().flatten() {
        let held = Svid::from_pem(chain.as_bytes(), key.as_bytes()).expect("renewed svid");
        store.install(held, None).expect("install");
    }

    // 3. JWT-SVIDs: each sidecar asks for one over mTLS, with its renewed
    // SVID (so on a new connection).
    let asking = jwt_clients.len();
    let connections = |clients: &[ControlClient]| -> u64 {
        clients.iter().map(ControlClient::connections_made).sum()
    };
    let before_jwt = connections(&jwt_clients);
    let counted = jwt_clients.clone();
    let (issued, _) = run_phase(&server, jwt_clients, concurrency, |client| async move {
        let jwt: api::JwtResponse = client
            .post(
                api::JWT,
                &api::JwtRequest {
                    audiences: vec!["bench".into()],
                    ttl_secs: None,
                },
            )
            .await
            .map_err(|e| e.to_string())?;
        Ok(jwt.expires_at)
    })
    .await;
    let jwt_json = issued.report("JWT-SVIDs", asking, raw);
    let new_connections = connections(&counted) - before_jwt;
    println!(
        "  JWT-SVIDs on {} kept connections, {new_connections} new",
        asking as u64 - new_connections.min(asking as u64)
    );
    let per_second = |p: &serde_json::Value| p["per_second"].as_f64().unwrap_or(0.0);
    let ratio = per_second(&jwt_json) / per_second(&renew_json).max(f64::MIN_POSITIVE);
    println!("{name}: JWT-SVIDs at {ratio:.2}x the rate of X.509 renewals in the same run");
    Ok(json!({
        "tokens": tokens_json,
        "joins": join_json,
        "renewal_storm": renew_json,
        "jwt_svids": jwt_json,
        "jwt_vs_renewals": ratio,
    }))
}

/// The baseline: the CA alone signing `n` CSRs, in this process.
fn raw_signing(n: usize) -> Result<serde_json::Value, Error> {
    let dir = tempfile::tempdir()?;
    let ca = CertificateAuthority::init(dir.path(), &InitOptions::new(TrustDomain::new(TD)?))?;
    let id = SpiffeId::parse(&format!("spiffe://{TD}/ns/storm/sa/raw"))?;
    let csrs: Vec<Vec<u8>> = (0..n)
        .map(|_| new_key_and_csr(&id).map(|kc| kc.csr_der))
        .collect::<Result<_, _>>()?;
    let request = SignRequest {
        bound_id: Some(id),
        ttl: None,
    };
    let started = Instant::now();
    for csr in &csrs {
        ca.sign_csr(csr, &request)?;
    }
    let wall = started.elapsed();
    let each_us = wall.as_secs_f64() * 1e6 / n as f64;
    println!(
        "baseline: the CA alone signs {n} CSRs in {:.2}s = {:.0}/s, {each_us:.0} µs each (one core, no TLS, HTTP or database)",
        wall.as_secs_f64(),
        n as f64 / wall.as_secs_f64()
    );
    Ok(json!({ "signed": n, "per_second": n as f64 / wall.as_secs_f64(), "us_each": each_us }))
}

async fn run() -> Result<(), Error> {
    let n: usize = env_or("WARDEN_BENCH_SIDECARS", 10_000);
    let concurrency: usize = env_or("WARDEN_BENCH_CONCURRENCY", 64);
    let backends: String = env_or("WARDEN_BENCH_BACKENDS", "sqlite,postgres".to_owned());
    let mut results = serde_json::Map::new();
    let baseline = raw_signing(n.min(2000))?;
    let raw = baseline["per_second"].as_f64().unwrap_or(f64::NAN);
    results.insert("baseline_raw_signing".into(), baseline);
    for backend in backends.split(',').map(str::trim) {
        let database = match backend {
            "sqlite" => None,
            "postgres" => Some(tokio::task::spawn_blocking(postgres::fresh_database).await?),
            other => return Err(format!("unknown backend {other:?}").into()),
        };
        results.insert(
            backend.into(),
            bench_backend(backend, database, n, concurrency, raw).await?,
        );
    }
    let out = Path::new(env!("CARGO_MANIFEST_DIR")).join("target/control-bench.json");
    std::fs::write(&out, serde_json::to_string_pretty(&results)?)?;
    println!("written to {}", out.display());
    Ok(())
}

fn main() -> Result<(), Error> {
    runner::main(run())
}
