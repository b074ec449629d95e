//! Federation between two trust domains through their SPIFFE bundle
//! endpoints: two control planes, each fetching the other's bundle; a
//! sidecar in one calls a sidecar in the other under a policy that names
//! the foreign workload; a CA rotation on one side reaches the other with
//! no restart and no failed request; a failing link keeps the last good
//! bundle. And a bundle endpoint that answers garbage, a bundle of another
//! trust domain, or a certificate with another SPIFFE ID: each refused,
//! the last good bundle kept, counted and logged.

#[macro_use]
mod support;

#[path = "support/control_flows.rs"]
mod control_flows;

use std::net::SocketAddr;
use std::path::Path;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use support::control::{Control, Db, any_port, eventually};
use support::mesh::{FRONTEND, INTRUDER, TestApp, get, inbound_to, route_to};
use warden_proxy::control::api;

on_both_backends!(two_trust_domains_federate_through_their_bundle_endpoints,);

const OTHER: &str = "other.org";
const FOREIGN_ORDERS: &str = "spiffe://other.org/ns/shop/sa/orders";
const LIMIT: Duration = Duration::from_secs(40);

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .expect("a free port")
        .port()
}

fn link(td: &str, api: SocketAddr, endpoint: &str, bundle: &Path) -> String {
    format!(
        "{td}=https://{api}/v1/spiffe-bundle,spiffe_id={endpoint},bundle={}",
        bundle.display()
    )
}

async fn listing(control: &Control) -> api::BundleListing {
    control
        .client(true)
        .get(api::ADMIN_BUNDLES)
        .await
        .expect("bundle listing")
}

/// The federated link to `td`, once it holds a bundle.
async fn held(control: &Control, td: &str) -> Option<api::FederationStatus> {
    listing(control)
        .await
        .federated
        .into_iter()
        .find(|l| l.trust_domain == td && l.bundle.is_some())
}

fn x509_keys(bundle: &str) -> usize {
    let doc: serde_json::Value = serde_json::from_str(bundle).expect("json");
    doc["keys"]
        .as_array()
        .expect("keys")
        .iter()
        .filter(|k| k["use"] == "x509-svid")
        .count()
}

async fn metric(control: &Control, prefix: &str) -> f64 {
    let body = get(control.metrics, "/metrics", &[])
        .await
        .expect("metrics")
        .body;
    support::mesh::sample(&body, prefix).unwrap_or(0.0)
}

async fn two_trust_domains_federate_through_their_bundle_endpoints(db: Db) {
    let dir = tempfile::tempdir().expect("tempdir");
    let (a_dir, b_dir) = (dir.path().join("a"), dir.path().join("b"));
    let b_api = SocketAddr::from(([127, 0, 0, 1], free_port()));
    let a = Control::start(
        &a_dir,
        any_port(),
        &db,
        &[
            "--federate-with",
            &link(
                OTHER,
                b_api,
                "spiffe://other.org/warden/control",
                &b_dir.join("bundle.pem"),
            ),
            "--bundle-refresh-hint",
            "1s",
            // The frontend renews under traffic: a renewal must keep the
            // federated bundles.
            "--svid-ttl",
            "8s",
        ],
    );
    let b_db = match &db {
        Db::Sqlite => Db::Sqlite,
        Db::Postgres(_) => Db::postgres(),
    };
    let b = Control::start_in_domain(
        OTHER,
        &b_dir,
        b_api,
        &b_db,
        &[
            "--federate-with",
            &link(
                "example.org",
                a.api,
                "spiffe://example.org/warden/control",
                &a_dir.join("bundle.pem"),
            ),
            "--bundle-refresh-hint",
            "1s",
            "--svid-ttl",
            "8s",
        ],
    );
    // Each holds the other's bundle, X.509 and JWT authorities.
    let b_at_a = eventually(LIMIT, "A holds B's bundle", || held(&a, OTHER)).await;
    eventually(LIMIT, "B holds A's bundle", || held(&b, "example.org")).await;
    let own_b = listing(&b).await;
    assert_eq!(b_at_a.bundle.as_deref(), Some(own_b.bundle.as_str()));
    assert!(
        b_at_a
            .bundle
            .as_deref()
            .is_some_and(|d| d.contains("jwt-svid"))
    );
    let shown = b.cli_ok(&["bundle", "list"]);
    assert!(
        shown.contains("example.org") && shown.contains(" ok"),
        "{shown}"
    );
    let pem = a.cli_ok(&["bundle", "show", "--format", "pem"]);
    assert_eq!(
        pem,
        std::fs::read_to_string(a_dir.join("bundle.pem")).expect("bundle.pem")
    );

    // orders in other.org lets example.org's frontend in, by name.
    let policies = dir.path().join("policies");
    std::fs::create_dir_all(&policies).expect("dir");
    std::fs::write(
        policies.join("federation.cedar"),
        format!(
            "permit (principal == Workload::\"{FRONTEND}\", action, resource == Service::\"orders\");\n"
        ),
    )
    .expect("policy");
    let app = TestApp::start().await;
    let mut orders_settings = inbound_to(app.addr);
    orders_settings.push(format!("authz.policies={}", policies.display()));
    let orders = b.sidecar(dir.path(), "orders", FOREIGN_ORDERS, &orders_settings);
    let socket = dir.path().join("frontend.sock");
    let uid = rustix::process::getuid().as_raw();
    let frontend = a.sidecar(
        dir.path(),
        "frontend",
        FRONTEND,
        &[
            route_to(orders.inbound(), FOREIGN_ORDERS),
            format!("workload_api.socket={}", socket.display()),
            format!("workload_api.allowed_uids=[{uid}]"),
        ],
    );
    let intruder = a.sidecar(
        dir.path(),
        "intruder",
        INTRUDER,
        &[route_to(orders.inbound(), FOREIGN_ORDERS)],
    );
    orders.wait_ready().await;
    frontend.wait_ready().await;
    intruder.wait_ready().await;
    eventually(LIMIT, "a call across trust domains", || async {
        let r = get(frontend.outbound[0], "/orders/1", &[]).await.ok()?;
        (r.status == 200).then_some(())
    })
    .await;
    let denied = get(intruder.outbound[0], "/orders/1", &[])
        .await
        .expect("intruder");
    assert_eq!(denied.status, 403, "the policy names the frontend only");

    // JWT-SVIDs across the federation, in the frontend's Workload API: a
    // token other.org's control plane signed for one of its workloads
    // validates; the same key signing for an example.org subject does not.
    let b_key = jsonwebtoken::EncodingKey::from_ec_pem(
        &std::fs::read(b_dir.join("ca").join("jwt.key")).expect("jwt.key"),
    )
    .expect("key");
    let doc: serde_json::Value = serde_json::from_str(&own_b.bundle).expect("json");
    let b_kid = doc["keys"]
        .as_array()
        .expect("keys")
        .iter()
        .find(|k| k["use"] == "jwt-svid")
        .and_then(|k| k["kid"].as_str())
        .expect("other.org's JWT key")
        .to_owned();
    let token = |sub: &str| {
        let mut header = jsonwebtoken::Header::new(jsonwebtoken::Algorithm::ES256);
        header.kid = Some(b_kid.clone());
        let exp = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .expect("clock")
            .as_secs()
            + 300;
        let claims = serde_json::json!({"sub": sub, "aud": ["frontend"], "exp": exp});
        jsonwebtoken::encode(&header, &claims, &b_key).expect("sign")
    };
    let client = spiffe::WorkloadApiClient::connect_to(format!("unix://{}", socket.display()))
        .await
        .expect("connect");
    let valid = eventually(LIMIT, "other.org's JWT bundle in the sidecar", || async {
        client
            .validate_jwt_token("frontend", &token(FOREIGN_ORDERS))
            .await
            .ok()
    })
    .await;
    assert_eq!(valid.spiffe_id().to_string(), FOREIGN_ORDERS);
    let refused = client
        .validate_jwt_token("frontend", &token(FRONTEND))
        .await
        .expect_err("a key of other.org signing for example.org");
    assert!(
        refused.to_string().contains(
            "belongs to trust domain other.org, not to the subject's trust domain example.org"
        ),
        "{refused}"
    );

    // A CA rotation in other.org reaches example.org's sidecars through
    // the bundle endpoint: the new root is trusted before it signs, so no
    // request fails while orders moves to SVIDs from the new CA.
    let traffic = control_flows::Traffic::start(frontend.outbound[0], 2);
    b.cli_ok(&["ca", "rotate", "--grace", "10s"]);
    eventually(LIMIT, "A holds B's rotated bundle", || async {
        let link = held(&a, OTHER).await?;
        (link.sequence > b_at_a.sequence && x509_keys(link.bundle.as_deref()?) == 2).then_some(())
    })
    .await;
    // Every SVID orders held before has expired (8 s lifetimes): the ones
    // it has now come from the new CA.
    tokio::time::sleep(Duration::from_secs(10)).await;
    control_flows::renewals(&[&orders, &frontend], 2, LIMIT).await;
    let (ok, failed, errors) = traffic.finish().await;
    assert_eq!(
        failed,
        0,
        "failed requests: {errors:?}\n{}",
        frontend.logs()
    );
    assert!(ok > 20, "only {ok} requests");

    // The link failing keeps the last good bundle.
    let last_good = held(&a, OTHER).await.expect("held");
    drop(b);
    let failing = eventually(LIMIT, "A's link to report the failure", || async {
        let link = held(&a, OTHER).await?;
        link.last_error.is_some().then_some(link)
    })
    .await;
    assert_eq!(
        failing.bundle, last_good.bundle,
        "the last good bundle stays"
    );
    assert_eq!(failing.sequence, last_good.sequence);
    assert!(
        metric(
            &a,
            "warden_control_federation_refreshes_total{trust_domain=\"other.org\",outcome=\"failed\"}"
        )
        .await
            >= 1.0
    );
    assert!(
        a.logs()
            .contains("federated bundle refresh failed; keeping the last good bundle"),
        "{}",
        a.logs()
    );
    let shown = a.cli_ok(&["bundle", "list"]);
    assert!(shown.contains("failing"), "{shown}");
}

/// A bundle endpoint under the test's control: it presents `cert` and
/// answers `body`, both changeable.
struct FakeEndpoint {
    addr: SocketAddr,
    body: Arc<Mutex<String>>,
    config: Arc<Mutex<Arc<rustls::ServerConfig>>>,
}

fn server_config(dir: &Path) -> Arc<rustls::ServerConfig> {
    use rustls::pki_types::pem::PemObject;
    let chain = rustls::pki_types::CertificateDer::pem_file_iter(dir.join("svid.pem"))
        .expect("pem")
        .collect::<Result<Vec<_>, _>>()
        .expect("chain");
    let key = rustls::pki_types::PrivateKeyDer::from_pem_file(dir.join("svid.key")).expect("key");
    Arc::new(
        rustls::ServerConfig::builder_with_provider(Arc::new(
            rustls::crypto::ring::default_provider(),
        ))
        .with_safe_default_protocol_versions()
        .expect("versions")
        .with_no_client_auth()
        .with_single_cert(chain, key)
        .expect("config"),
    )
}

impl FakeEndpoint {
    async fn start(cert_dir: &Path, body: String) -> FakeEndpoint {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind");
        let addr = listener.local_addr().expect("addr");
        let endpoint = FakeEndpoint {
            addr,
            body: Arc::new(Mutex::new(body)),
            config: Arc::new(Mutex::new(server_config(cert_dir))),
        };
        let (body, config) = (endpoint.body.clone(), endpoint.config.clone());
        tokio::spawn(async move {
            while let Ok((tcp, _)) = listener.accept().await {
                let acceptor =
                    tokio_rustls::TlsAcceptor::from(config.lock().expect("lock").clone());
                let body = body.lock().expect("lock").clone();
                tokio::spawn(async move {
                    let Ok(tls) = acceptor.accept(tcp).await else {
                        return;
                    };
                    let service = hyper::service::service_fn(move |_req| {
                        let body = body.clone();
                        async move {
                            Ok::<_, std::convert::Infallible>(hyper::Response::new(
                                http_body_util::Full::new(bytes::Bytes::from(body)),
                            ))
                        }
                    });
                    let _ = hyper::server::conn::http1::Builder::new()
                        .serve_connection(hyper_util::rt::TokioIo::new(tls), service)
                        .await;
                });
            }
        });
        endpoint
    }

    fn answer(&self, body: &str) {
        *self.body.lock().expect("lock") = body.to_owned();
    }

    fn present(&self, cert_dir: &Path) {
        *self.config.lock().expect("lock") = server_config(cert_dir);
    }
}

#[tokio::test]
async fn a_bad_bundle_endpoint_is_refused_and_the_last_good_bundle_kept() {
    let dir = tempfile::tempdir().expect("tempdir");
    // other.org's CA, and two SVIDs from it: the endpoint's, and another.
    let ca = dir.path().join("other-ca");
    let out = std::process::Command::new(support::warden_bin())
        .args(["ca", "init", "--trust-domain", OTHER, "--dir"])
        .arg(&ca)
        .output()
        .expect("ca init");
    assert!(out.status.success(), "{out:?}");
    let issue = |id: &str, name: &str| {
        let out_dir = dir.path().join(name);
        let out = std::process::Command::new(support::warden_bin())
            .args(["svid", "issue", "--ca-dir"])
            .arg(&ca)
            .args(["--spiffe-id", id, "--out"])
            .arg(&out_dir)
            .output()
            .expect("svid issue");
        assert!(out.status.success(), "{out:?}");
        out_dir
    };
    let endpoint_svid = issue("spiffe://other.org/bundle-endpoint", "endpoint");
    let other_svid = issue("spiffe://other.org/someone-else", "someone-else");

    // A good document: other.org's bundle in the SPIFFE format, as a
    // control plane of other.org would serve it.
    let roots = std::fs::read(ca.join("bundle.pem")).expect("bundle");
    let td = warden_proxy::identity::TrustDomain::new(OTHER).expect("td");
    let good = warden_proxy::identity::SpiffeBundle {
        x509: warden_proxy::identity::TrustBundle::from_pem(td.clone(), &roots).expect("roots"),
        jwt: warden_proxy::identity::JwtBundle::new(td, Vec::new()).expect("jwt"),
        sequence: 7,
        refresh_hint: Some(1),
    }
    .to_json();
    let fake = FakeEndpoint::start(&endpoint_svid, good.clone()).await;

    let a_dir = dir.path().join("a");
    let a = Control::start(
        &a_dir,
        any_port(),
        &Db::Sqlite,
        &[
            "--federate-with",
            &link(
                OTHER,
                fake.addr,
                "spiffe://other.org/bundle-endpoint",
                &ca.join("bundle.pem"),
            ),
        ],
    );
    let first = eventually(LIMIT, "the good bundle", || held(&a, OTHER)).await;
    assert_eq!(first.sequence, Some(7));
    assert_eq!(first.last_error, None);

    // A sidecar of example.org holds it too (over the watch): it shows in
    // the sidecar's Workload API as a federated bundle.
    let socket = dir.path().join("w.sock");
    let uid = rustix::process::getuid().as_raw().to_string();
    let _sidecar = a.sidecar(
        dir.path(),
        "frontend",
        FRONTEND,
        &[
            format!("workload_api.socket={}", socket.display()),
            format!("workload_api.allowed_uids=[{uid}]"),
        ],
    );
    let client = spiffe::WorkloadApiClient::connect_to(format!("unix://{}", socket.display()))
        .await
        .expect("connect");
    eventually(LIMIT, "other.org's bundle in the sidecar", || async {
        let bundles = client.fetch_x509_bundles().await.ok()?;
        let td = spiffe::TrustDomain::new(OTHER).ok()?;
        bundles.get(&td).map(|_| ())
    })
    .await;

    let failed =
        "warden_control_federation_refreshes_total{trust_domain=\"other.org\",outcome=\"failed\"}";
    type Case<'a> = (&'a str, Box<dyn Fn() + 'a>, &'a str);
    let older = warden_proxy::identity::SpiffeBundle::parse(
        warden_proxy::identity::TrustDomain::new(OTHER).expect("td"),
        good.as_bytes(),
    )
    .map(|mut b| {
        b.sequence = 6;
        b.to_json()
    })
    .expect("good");
    let cases: [Case; 4] = [
        (
            "garbage",
            Box::new(|| fake.answer("<html>not a bundle</html>")),
            "not a bundle",
        ),
        (
            "a bundle of another trust domain",
            Box::new(|| {
                let ours = std::fs::read_to_string(a_dir.join("bundle.pem")).expect("pem");
                let td = warden_proxy::identity::TrustDomain::new("example.org").expect("td");
                fake.answer(
                    &warden_proxy::identity::SpiffeBundle {
                        x509: warden_proxy::identity::TrustBundle::from_pem(
                            td.clone(),
                            ours.as_bytes(),
                        )
                        .expect("roots"),
                        jwt: warden_proxy::identity::JwtBundle::new(td, Vec::new()).expect("jwt"),
                        sequence: 8,
                        refresh_hint: Some(1),
                    }
                    .to_json(),
                );
            }),
            "a CA of trust domain example.org",
        ),
        (
            "a good bundle with an older sequence",
            Box::new(|| fake.answer(&older)),
            "sequence 6, older than the 7 held",
        ),
        (
            "a certificate with another SPIFFE ID",
            Box::new(|| {
                fake.answer(&good);
                fake.present(&other_svid);
            }),
            "spiffe://other.org/someone-else",
        ),
    ];
    for (what, act, reason) in cases {
        let before = metric(&a, failed).await;
        act();
        let link = eventually(LIMIT, what, || async {
            let link = held(&a, OTHER).await?;
            link.last_error
                .as_deref()
                .is_some_and(|e| e.contains(reason))
                .then_some(link)
        })
        .await;
        assert_eq!(
            link.bundle, first.bundle,
            "{what}: the last good bundle stays"
        );
        assert_eq!(link.sequence, Some(7), "{what}");
        assert!(metric(&a, failed).await > before, "{what}: counted");
    }
    assert!(
        a.logs()
            .contains("federated bundle refresh failed; keeping the last good bundle")
    );
    // The sidecar still holds the last good bundle.
    let bundles = client.fetch_x509_bundles().await.expect("bundles");
    assert!(
        bundles
            .get(&spiffe::TrustDomain::new(OTHER).expect("td"))
            .is_some()
    );
}
