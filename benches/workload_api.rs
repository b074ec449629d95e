//! The SPIFFE Workload API, measured through a client we did not write (the
//! `spiffe` crate) against a real sidecar and control plane in this process,
//! on a real unix socket. Each group has a baseline from the same run:
//!
//! - `workload_api/fetch_x509svid` (open the stream, receive and parse the
//!   SVID, chain, key and bundles) and `workload_api/fetch_jwtsvid` (a
//!   cached JWT-SVID for one audience) and `workload_api/validate_jwtsvid`
//!   vs `workload_api/baseline_refused_call`: the same client's gRPC round
//!   trip on the same socket for a call refused at once (no audience);
//! - `jwt/validate` (Warden's JWT-SVID checks, in process) vs
//!   `jwt/baseline_jsonwebtoken` (the signature, `exp` and `aud` alone, by
//!   `jsonwebtoken` with the key already decoded).
//!
//! JWT-SVID issuance on the control plane is measured by the control bench
//! (`cargo bench --bench control`), next to X.509 renewals.
//!
//! Run: `cargo bench --bench workload_api`

use std::hint::black_box;
use std::time::Duration;

use criterion::{Criterion, criterion_group, criterion_main};
use warden_control::server::{EndpointAddresses, ServeOptions};
use warden_proxy::control::api;
use warden_proxy::identity::validate_jwt_svid;
use warden_proxy::sidecar::{Sidecar, SidecarConfig};

const TD: &str = "bench.warden";
const APP: &str = "spiffe://bench.warden/ns/bench/sa/app";

struct Fixture {
    rt: tokio::runtime::Runtime,
    client: spiffe::WorkloadApiClient,
    sidecar: Sidecar,
    _control: warden_control::server::ControlPlane,
    _dir: tempfile::TempDir,
}

fn fixture() -> Fixture {
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .expect("runtime");
    let dir = tempfile::tempdir().expect("tempdir");
    let data = dir.path().join("control");
    let control = rt
        .block_on(warden_control::server::start(ServeOptions {
            data_dir: data.clone(),
            listen: "127.0.0.1:0".parse().expect("addr"),
            metrics_listen: "127.0.0.1:0".parse().expect("addr"),
            ca_dir: None,
            trust_domain: Some(TD.parse().expect("td")),
            svid_ttl: None,
            database: None,
            audit_stdout: false,
            endpoint_addresses: EndpointAddresses::Caller,
            k8s: None,
            federate_with: Vec::new(),
            bundle_refresh_hint: warden_control::server::DEFAULT_REFRESH,
            usage_retention: warden_control::server::DEFAULT_USAGE_RETENTION,
            database_connections: warden_control::store::PG_POOL,
        }))
        .expect("control plane");
    let admin = warden_control::server::admin_client(&data).expect("admin");
    let token: api::TokenResponse = rt
        .block_on(admin.post(
            api::ADMIN_TOKENS,
            &api::TokenRequest {
                spiffe_id: APP.into(),
                ttl_secs: None,
                labels: Default::default(),
            },
        ))
        .expect("token");
    let socket = dir.path().join("workload.sock");
    let uid = rustix::process::getuid().as_raw();
    let sets = [
        format!("control.address={}", control.endpoint.address),
        format!("control.server_id=spiffe://{TD}/warden/control"),
        format!("control.bundle={}", data.join("bundle.pem").display()),
        format!("control.token={}", token.token),
        format!("workload_api.socket={}", socket.display()),
        format!("workload_api.allowed_uids=[{uid}]"),
        "admin.listen=127.0.0.1:0".to_owned(),
        "service.name=bench".to_owned(),
    ];
    let config = SidecarConfig::parse(None, Vec::<(String, String)>::new(), &sets).expect("config");
    let sidecar = rt
        .block_on(async { Sidecar::start(config).await })
        .expect("sidecar");
    let client = rt
        .block_on(spiffe::WorkloadApiClient::connect_to(format!(
            "unix://{}",
            socket.display()
        )))
        .expect("client");
    // Bounded: the sidecar joins within a few seconds.
    rt.block_on(async {
        tokio::time::timeout(Duration::from_secs(30), client.fetch_x509_svid())
            .await
            .expect("the first SVID within 30 s")
            .expect("SVID")
    });
    Fixture {
        rt,
        client,
        sidecar,
        _control: control,
        _dir: dir,
    }
}

fn bench_workload_api(c: &mut Criterion) {
    let f = fixture();
    let (rt, client) = (&f.rt, &f.client);
    let token = rt
        .block_on(client.fetch_jwt_svid(["bench"], None))
        .expect("JWT-SVID")
        .token()
        .to_owned();
    let mut g = c.benchmark_group("workload_api");
    g.bench_function("fetch_x509svid", |b| {
        b.iter(|| rt.block_on(client.fetch_x509_svid()).expect("svid"))
    });
    g.bench_function("fetch_jwtsvid", |b| {
        b.iter(|| {
            rt.block_on(client.fetch_jwt_svid(["bench"], None))
                .expect("jwt")
        })
    });
    g.bench_function("validate_jwtsvid", |b| {
        b.iter(|| {
            rt.block_on(client.validate_jwt_token("bench", black_box(&token)))
                .expect("valid")
        })
    });
    g.bench_function("baseline_refused_call", |b| {
        b.iter(|| {
            rt.block_on(client.validate_jwt_token("", black_box(&token)))
                .expect_err("refused")
        })
    });
    g.finish();

    // In process: the store's JWT bundle, as the sidecar holds it.
    let bundles = rt.block_on(client.fetch_jwt_bundles()).expect("bundles");
    let td = spiffe::TrustDomain::new(TD).expect("td");
    let ours = bundles.get(&td).expect("bundle");
    let keys: Vec<serde_json::Value> = ours
        .jwt_authorities()
        .map(|a| serde_json::from_slice(a.jwk_json()).expect("jwk"))
        .collect();
    let jwks = serde_json::json!({ "keys": keys }).to_string();
    let set = warden_proxy::identity::JwtBundleSet::default().with(
        warden_proxy::identity::JwtBundle::from_jwks(TD.parse().expect("td"), jwks.as_bytes())
            .expect("jwks"),
    );
    let jwk: jsonwebtoken::jwk::Jwk = serde_json::from_value(keys[0].clone()).expect("jwk");
    let key = jsonwebtoken::DecodingKey::from_jwk(&jwk).expect("key");
    let mut validation = jsonwebtoken::Validation::new(jsonwebtoken::Algorithm::ES256);
    validation.set_audience(&["bench"]);
    let mut g = c.benchmark_group("jwt");
    g.bench_function("validate", |b| {
        b.iter(|| validate_jwt_svid(&set, black_box(&token), "bench").expect("valid"))
    });
    g.bench_function("baseline_jsonwebtoken", |b| {
        b.iter(|| {
            jsonwebtoken::decode::<serde_json::Value>(black_box(&token), &key, &validation)
                .expect("valid")
        })
    });
    g.finish();
    let _left = f.rt.block_on(f.sidecar.drain());
}

criterion_group! {
    name = benches;
    config = Criterion::default()
        .sample_size(50)
        .measurement_time(Duration::from_secs(3))
        .warm_up_time(Duration::from_secs(1));
    targets = bench_workload_api
}
criterion_main!(benches);
