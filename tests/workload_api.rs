//! The SPIFFE Workload API of a sidecar, end to end, with a client we did
//! not write (the `spiffe` crate): the X.509-SVID, its key and bundles, a
//! new SVID on rotation, JWT-SVIDs from the control plane validated by the
//! sidecar and by the client itself; and every refusal: no security
//! header, another uid, no audience, and each kind of bad token.

#[macro_use]
mod support;

#[path = "support/control_flows.rs"]
mod control_flows;

use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use base64::Engine as _;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use rustls::pki_types::{CertificateDer, PrivateKeyDer, PrivatePkcs8KeyDer, UnixTime};
use spiffe::{BundleSource as _, JwtSvid, WorkloadApiClient};
use support::control::{Control, Db, any_port};
use support::mesh::{FRONTEND, ORDERS, Proxy, TestApp, inbound_to, route_to};
use tokio_stream::StreamExt as _;
use warden_proxy::sidecar::workload_api::pb;

on_both_backends!(a_spiffe_client_gets_its_identity_and_jwt_svids,);

const WORKLOAD: &str = "spiffe://example.org/ns/shop/sa/orders";
const LIMIT: Duration = Duration::from_secs(30);

/// A directory others may traverse (a caller under another uid reaches
/// the socket in it).
fn open_dir() -> tempfile::TempDir {
    let dir = tempfile::tempdir().expect("tempdir");
    std::fs::set_permissions(dir.path(), std::fs::Permissions::from_mode(0o755)).expect("chmod");
    dir
}

fn settings(socket: &Path, uids: &[u32], mode: &str) -> Vec<String> {
    let uids: Vec<String> = uids.iter().map(u32::to_string).collect();
    vec![
        format!("workload_api.socket={}", socket.display()),
        format!("workload_api.allowed_uids=[{}]", uids.join(",")),
        format!("workload_api.mode=\"{mode}\""),
    ]
}

fn my_uid() -> u32 {
    rustix::process::getuid().as_raw()
}

async fn client(socket: &Path) -> WorkloadApiClient {
    WorkloadApiClient::connect_to(format!("unix://{}", socket.display()))
        .await
        .expect("connect to the Workload API")
}

async fn within<T>(what: &str, f: impl Future<Output = T>) -> T {
    tokio::time::timeout(LIMIT, f)
        .await
        .unwrap_or_else(|_| panic!("{what}: no answer within {LIMIT:?}"))
}

/// rustls's own verifier (not Warden's) checks the chain against the roots.
fn chain_verifies(chain: &[Vec<u8>], roots: &[Vec<u8>]) -> Result<(), String> {
    let mut store = rustls::RootCertStore::empty();
    for root in roots {
        store
            .add(CertificateDer::from(root.clone()))
            .map_err(|e| e.to_string())?;
    }
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let verifier =
        rustls::server::WebPkiClientVerifier::builder_with_provider(Arc::new(store), provider)
            .build()
            .map_err(|e| e.to_string())?;
    let intermediates: Vec<CertificateDer<'static>> = chain[1..]
        .iter()
        .map(|c| CertificateDer::from(c.clone()))
        .collect();
    verifier
        .verify_client_cert(
            &CertificateDer::from(chain[0].clone()),
            &intermediates,
            UnixTime::now(),
        )
        .map(|_| ())
        .map_err(|e| e.to_string())
}

/// Whether `key` (PKCS#8) is the private key of `leaf`.
fn key_matches(leaf: &[u8], key: &[u8]) -> bool {
    let provider = rustls::crypto::ring::default_provider();
    let Ok(signing) = provider
        .key_provider
        .load_private_key(PrivateKeyDer::Pkcs8(PrivatePkcs8KeyDer::from(key.to_vec())))
    else {
        return false;
    };
    rustls::sign::CertifiedKey::new(vec![CertificateDer::from(leaf.to_vec())], signing)
        .keys_match()
        .is_ok()
}

fn roots_of(control: &Control) -> Vec<Vec<u8>> {
    let pem = std::fs::read(control.dir.join("bundle.pem")).expect("bundle.pem");
    rustls::pki_types::pem::PemObject::pem_slice_iter(&pem)
        .map(|c: Result<CertificateDer<'static>, _>| c.expect("pem").to_vec())
        .collect()
}

async fn a_spiffe_client_gets_its_identity_and_jwt_svids(db: Db) {
    let dir = open_dir();
    let control = Control::start(
        &dir.path().join("control"),
        any_port(),
        &db,
        &["--svid-ttl", "10s"],
    );
    let socket = dir.path().join("workload.sock");
    let mut sidecar = control.sidecar(
        dir.path(),
        "orders",
        WORKLOAD,
        &settings(&socket, &[my_uid()], "0660"),
    );
    let mode = std::fs::metadata(&socket)
        .expect("socket")
        .permissions()
        .mode();
    assert_eq!(mode & 0o777, 0o660, "the socket's mode");
    let client = client(&socket).await;

    // The X.509-SVID: our ID, a chain that verifies against the control
    // plane's bundle, the key that matches the leaf.
    let context = within("FetchX509SVID", client.fetch_x509_context()).await;
    let context = context.expect("X.509 context");
    let svid = context.default_svid().expect("an SVID").clone();
    assert_eq!(svid.spiffe_id().to_string(), WORKLOAD);
    let chain: Vec<Vec<u8>> = svid
        .cert_chain()
        .iter()
        .map(|c| c.as_bytes().to_vec())
        .collect();
    let roots = roots_of(&control);
    chain_verifies(&chain, &roots).expect("the chain verifies against the bundle");
    assert!(
        key_matches(&chain[0], svid.private_key().as_bytes()),
        "the key is the leaf's"
    );
    let bundles = within("FetchX509Bundles", client.fetch_x509_bundles())
        .await
        .expect("bundles");
    let td = spiffe::TrustDomain::new("example.org").expect("td");
    let ours = bundles.get(&td).expect("our trust domain's bundle");
    let got: Vec<Vec<u8>> = ours
        .authorities()
        .iter()
        .map(|c| c.as_bytes().to_vec())
        .collect();
    assert_eq!(got, roots, "the bundle is the control plane's");

    // A new SVID arrives on the stream at rotation (10 s SVIDs, renewed at
    // half their lifetime), without asking.
    let mut stream = within("the SVID stream", client.stream_x509_svids())
        .await
        .expect("stream");
    let first = within("the first message", stream.next())
        .await
        .expect("a message")
        .expect("an SVID");
    let rotated = within("a rotated SVID", async {
        loop {
            let next = stream
                .next()
                .await
                .expect("the stream goes on")
                .expect("an SVID");
            if next.leaf().as_bytes() != first.leaf().as_bytes() {
                return next;
            }
        }
    })
    .await;
    assert_eq!(rotated.spiffe_id().to_string(), WORKLOAD);
    assert!(key_matches(
        rotated.leaf().as_bytes(),
        rotated.private_key().as_bytes()
    ));

    // A JWT-SVID, validated by the sidecar and by the client with the JWT
    // bundle it fetched.
    let jwt = within(
        "FetchJWTSVID",
        client.fetch_jwt_svid(["payments", "audit"], None),
    )
    .await
    .expect("a JWT-SVID");
    assert_eq!(jwt.spiffe_id().to_string(), WORKLOAD);
    assert_eq!(jwt.audience(), ["payments", "audit"]);
    let checked = within(
        "ValidateJWTSVID",
        client.validate_jwt_token("payments", jwt.token()),
    )
    .await
    .expect("the sidecar validates it");
    assert_eq!(checked.spiffe_id().to_string(), WORKLOAD);
    let jwt_bundles = within("FetchJWTBundles", client.fetch_jwt_bundles())
        .await
        .expect("JWT bundles");
    assert!(
        matches!(jwt_bundles.bundle_for_trust_domain(&td), Ok(Some(_))),
        "the JWT bundle of example.org"
    );
    let local = JwtSvid::parse_and_validate(jwt.token(), &jwt_bundles, &["audit"])
        .expect("the client validates it with the bundle it fetched");
    assert_eq!(local.spiffe_id().to_string(), WORKLOAD);
    // The control plane audited the issuance.
    let audit: Vec<serde_json::Value> = control
        .client(true)
        .get(&format!(
            "{}?limit=100",
            warden_proxy::control::api::ADMIN_AUDIT
        ))
        .await
        .expect("audit");
    assert!(
        audit.iter().any(|e| e["event"] == "jwt"
            && e["spiffe_id"] == WORKLOAD
            && e["detail"]
                .as_str()
                .is_some_and(|d| d.contains("JWT-SVID for audiences payments,audit"))),
        "{audit:?}"
    );

    // Shutdown removes the socket.
    let status = sidecar.terminate();
    assert!(status.success(), "{status:?}\n{}", sidecar.logs());
    assert!(!socket.exists(), "the socket is removed at shutdown");
}

/// A gRPC channel over the unix socket at `socket`.
async fn unix_channel(socket: &Path) -> tonic::transport::Channel {
    let path = socket.to_owned();
    tonic::transport::Endpoint::from_static("http://workload.invalid")
        .connect_with_connector(tower::service_fn(move |_| {
            let path = path.clone();
            async move {
                Ok::<_, std::io::Error>(hyper_util::rt::TokioIo::new(
                    tokio::net::UnixStream::connect(path).await?,
                ))
            }
        }))
        .await
        .expect("channel")
}

/// A Workload API client that sends what we choose, header or not.
async fn raw_client(
    socket: &Path,
) -> pb::spiffe_workload_api_client::SpiffeWorkloadApiClient<tonic::transport::Channel> {
    pb::spiffe_workload_api_client::SpiffeWorkloadApiClient::new(unix_channel(socket).await)
}

fn with_header<T>(message: T) -> tonic::Request<T> {
    let mut request = tonic::Request::new(message);
    request
        .metadata_mut()
        .insert("workload.spiffe.io", "true".parse().expect("value"));
    request
}

fn b64(value: &serde_json::Value) -> String {
    URL_SAFE_NO_PAD.encode(value.to_string())
}

fn unix_now() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .expect("clock")
        .as_secs() as i64
}

/// A token signed with `key` (PEM) as `alg` with these header fields.
fn signed(
    alg: jsonwebtoken::Algorithm,
    key: &jsonwebtoken::EncodingKey,
    kid: &str,
    claims: &serde_json::Value,
) -> String {
    let mut header = jsonwebtoken::Header::new(alg);
    header.kid = Some(kid.to_owned());
    jsonwebtoken::encode(&header, claims, key).expect("sign")
}

#[tokio::test]
async fn bad_calls_and_bad_tokens_are_refused_with_the_reason() {
    let dir = open_dir();
    let control = Control::start(&dir.path().join("control"), any_port(), &Db::Sqlite, &[]);
    let socket = dir.path().join("workload.sock");
    let _sidecar = control.sidecar(
        dir.path(),
        "orders",
        WORKLOAD,
        &settings(&socket, &[my_uid()], "0660"),
    );
    let mut raw = raw_client(&socket).await;
    within("the first SVID", client(&socket).await.fetch_x509_svid())
        .await
        .expect("an SVID");

    // No security header: InvalidArgument, on every call.
    let status = raw
        .fetch_jwtsvid(tonic::Request::new(pb::JwtsvidRequest {
            audience: vec!["payments".into()],
            spiffe_id: String::new(),
        }))
        .await
        .expect_err("refused");
    assert_eq!(status.code(), tonic::Code::InvalidArgument, "{status:?}");
    assert!(status.message().contains("security header"), "{status:?}");
    let status = raw
        .fetch_x509svid(tonic::Request::new(pb::X509svidRequest {}))
        .await
        .expect_err("refused");
    assert_eq!(status.code(), tonic::Code::InvalidArgument, "{status:?}");

    // At most 128 open connections: a 129th caller waits until one closes.
    let held: Vec<std::os::unix::net::UnixStream> = (0..128)
        .map(|_| std::os::unix::net::UnixStream::connect(&socket).expect("connect"))
        .collect();
    // Each accepted (the accept loop is ahead of the test by one at most).
    tokio::time::sleep(Duration::from_millis(500)).await;
    let mut waiting = raw_client(&socket).await;
    let call = waiting.fetch_jwtsvid(with_header(pb::JwtsvidRequest {
        audience: vec!["payments".into()],
        spiffe_id: String::new(),
    }));
    tokio::pin!(call);
    assert!(
        tokio::time::timeout(Duration::from_secs(2), &mut call)
            .await
            .is_err(),
        "a 129th connection was served"
    );
    drop(held);
    within("the waiting caller, once a connection closed", call)
        .await
        .expect("served");

    // gRPC reflection lists the service.
    let services = within("reflection", list_services(&socket)).await;
    assert!(
        services.iter().any(|s| s == "SpiffeWorkloadAPI"),
        "{services:?}"
    );

    // No audience: InvalidArgument.
    let status = raw
        .fetch_jwtsvid(with_header(pb::JwtsvidRequest {
            audience: vec![],
            spiffe_id: String::new(),
        }))
        .await
        .expect_err("refused");
    assert_eq!(status.code(), tonic::Code::InvalidArgument, "{status:?}");
    assert!(status.message().contains("audience"), "{status:?}");
    // Another SPIFFE ID than ours: PermissionDenied.
    let status = raw
        .fetch_jwtsvid(with_header(pb::JwtsvidRequest {
            audience: vec!["payments".into()],
            spiffe_id: "spiffe://example.org/ns/shop/sa/admin".into(),
        }))
        .await
        .expect_err("refused");
    assert_eq!(status.code(), tonic::Code::PermissionDenied, "{status:?}");

    // A good token, and the key that signed it.
    let good = within(
        "FetchJWTSVID",
        raw.fetch_jwtsvid(with_header(pb::JwtsvidRequest {
            audience: vec!["payments".into()],
            spiffe_id: String::new(),
        })),
    )
    .await
    .expect("a JWT-SVID")
    .into_inner()
    .svids
    .remove(0)
    .svid;
    let header: serde_json::Value = serde_json::from_slice(
        &URL_SAFE_NO_PAD
            .decode(good.split('.').next().expect("header"))
            .expect("b64"),
    )
    .expect("json");
    let kid = header["kid"].as_str().expect("kid").to_owned();
    assert_eq!(header["alg"], "ES256");
    let ca_key_pem = std::fs::read(control.dir.join("ca").join("jwt.key")).expect("jwt.key");
    let ca_key = jsonwebtoken::EncodingKey::from_ec_pem(&ca_key_pem).expect("key");
    let now = unix_now();
    let claims = |sub: &str, exp: i64| serde_json::json!({"sub": sub, "aud": ["payments"], "exp": exp, "iat": now});
    let stranger = rcgen::KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256).expect("key");
    let stranger_key =
        jsonwebtoken::EncodingKey::from_ec_pem(stranger.serialize_pem().as_bytes()).expect("key");
    // The sidecar's JWT bundle, to take its public key as an HMAC secret.
    let mut bundles = raw
        .fetch_jwt_bundles(with_header(pb::JwtBundlesRequest {}))
        .await
        .expect("JWT bundles")
        .into_inner();
    let jwks = within("the JWT bundle", bundles.next())
        .await
        .expect("a message")
        .expect("bundles")
        .bundles
        .remove("example.org")
        .expect("example.org");
    let es256 = |key: &jsonwebtoken::EncodingKey, kid: &str, sub: &str, exp: i64| {
        signed(jsonwebtoken::Algorithm::ES256, key, kid, &claims(sub, exp))
    };
    let cases: Vec<(&str, String, &str, &str)> = vec![
        ("a good token", good.clone(), "payments", ""),
        (
            "another audience",
            good.clone(),
            "orders",
            "not for audience",
        ),
        (
            "an unknown key",
            es256(&stranger_key, "not-our-key", WORKLOAD, now + 300),
            "payments",
            "not in the JWT bundle",
        ),
        (
            "our kid on a token signed by another key",
            es256(&stranger_key, &kid, WORKLOAD, now + 300),
            "payments",
            "signature does not verify",
        ),
        (
            "expired",
            es256(&ca_key, &kid, WORKLOAD, now - 3600),
            "payments",
            "expired",
        ),
        (
            "alg none",
            format!(
                "{}.{}.",
                b64(&serde_json::json!({"alg": "none", "typ": "JWT", "kid": kid})),
                b64(&claims(WORKLOAD, now + 300))
            ),
            "payments",
            "alg `none`",
        ),
        (
            "HS256, an HMAC keyed with the public JWKS (refused by its algorithm, before any key)",
            signed(
                jsonwebtoken::Algorithm::HS256,
                &jsonwebtoken::EncodingKey::from_secret(&jwks).expect("HMAC key"),
                &kid,
                &claims(WORKLOAD, now + 300),
            ),
            "payments",
            "HS256 is refused",
        ),
        (
            "a subject of a trust domain we hold no JWT bundle of",
            es256(
                &ca_key,
                &kid,
                "spiffe://other.example/ns/shop/sa/orders",
                now + 300,
            ),
            "payments",
            "no JWT bundle for trust domain other.example",
        ),
        (
            "a subject that is no SPIFFE ID",
            es256(&ca_key, &kid, "orders", now + 300),
            "payments",
            "not a SPIFFE ID",
        ),
        ("garbage", "garbage".into(), "payments", "not a JWT"),
        (
            "three parts of garbage",
            "a.b.c".into(),
            "payments",
            "not a JWT",
        ),
    ];
    for (what, token, audience, reason) in cases {
        let answer = raw
            .validate_jwtsvid(with_header(pb::ValidateJwtsvidRequest {
                audience: audience.into(),
                svid: token,
            }))
            .await;
        match (answer, reason) {
            (Ok(valid), "") => {
                let valid = valid.into_inner();
                assert_eq!(valid.spiffe_id, WORKLOAD, "{what}");
                let claims = valid.claims.expect("claims");
                assert!(claims.fields.contains_key("exp"), "{what}: {claims:?}");
            }
            (Ok(valid), _) => panic!("{what}: accepted: {valid:?}"),
            (Err(status), "") => panic!("{what}: refused: {status:?}"),
            (Err(status), reason) => {
                assert_eq!(status.code(), tonic::Code::InvalidArgument, "{what}");
                assert!(
                    status.message().contains(reason),
                    "{what}: {:?} lacks {reason:?}",
                    status.message()
                );
            }
        }
    }
    // No audience to validate for.
    let status = raw
        .validate_jwtsvid(with_header(pb::ValidateJwtsvidRequest {
            audience: String::new(),
            svid: good,
        }))
        .await
        .expect_err("refused");
    assert_eq!(status.code(), tonic::Code::InvalidArgument, "{status:?}");
}

/// The uid a caller that is not the app runs as.
const NOBODY: u32 = 65534;

#[tokio::test]
async fn a_caller_under_another_uid_is_denied_and_learns_nothing() {
    if !support::netns::root_or_skip() {
        return;
    }
    let dir = open_dir();
    let control = Control::start(&dir.path().join("control"), any_port(), &Db::Sqlite, &[]);
    let socket = dir.path().join("workload.sock");
    // 0666: the other uid reaches the socket, so the peer-credential check
    // is what refuses it (with 0660 the kernel would refuse the connect).
    let _sidecar = control.sidecar(
        dir.path(),
        "orders",
        WORKLOAD,
        &settings(&socket, &[my_uid()], "0666"),
    );
    // The app's own uid is served.
    let ours = within("FetchX509SVID", client(&socket).await.fetch_x509_svid()).await;
    assert_eq!(ours.expect("served").spiffe_id().to_string(), WORKLOAD);

    let exe: PathBuf = std::env::current_exe().expect("test binary");
    let output = within("the other uid's client", async {
        let mut command = std::process::Command::new(&exe);
        std::os::unix::process::CommandExt::uid(&mut command, NOBODY);
        std::os::unix::process::CommandExt::gid(&mut command, NOBODY);
        command
            .args([
                "--ignored",
                "--exact",
                "as_another_uid",
                "--nocapture",
                "--test-threads=1",
            ])
            .env("WARDEN_TEST_WORKLOAD_SOCKET", &socket);
        tokio::task::spawn_blocking(move || command.output())
            .await
            .expect("join")
            .expect("run the client as another uid")
    })
    .await;
    let stdout = String::from_utf8_lossy(&output.stdout);
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(output.status.success(), "{stdout}\n{stderr}");
    for call in [
        "FetchX509SVID",
        "FetchX509Bundles",
        "FetchJWTSVID",
        "FetchJWTBundles",
        "ValidateJWTSVID",
    ] {
        assert!(
            stdout.contains(&format!(
                "{call}: PermissionDenied: uid {NOBODY} is not served"
            )),
            "{call}: {stdout}\n{stderr}"
        );
    }
    assert!(!stdout.contains("example.org"), "nothing leaked: {stdout}");
}

/// Run by the test above under another uid: each call's refusal, one line
/// each. Fails if any call is answered.
#[tokio::test]
#[ignore = "run under another uid by a_caller_under_another_uid_is_denied_and_learns_nothing"]
async fn as_another_uid() {
    let socket = std::env::var_os("WARDEN_TEST_WORKLOAD_SOCKET").expect("socket path");
    let mut raw = raw_client(Path::new(&socket)).await;
    let report = |call: &str, status: tonic::Status| {
        println!("{call}: {:?}: {}", status.code(), status.message());
    };
    match raw
        .fetch_x509svid(with_header(pb::X509svidRequest {}))
        .await
    {
        Ok(mut stream) => match stream.get_mut().message().await {
            Err(status) => report("FetchX509SVID", status),
            Ok(message) => panic!("served: {message:?}"),
        },
        Err(status) => report("FetchX509SVID", status),
    }
    match raw
        .fetch_x509_bundles(with_header(pb::X509BundlesRequest {}))
        .await
    {
        Ok(_) => panic!("FetchX509Bundles served"),
        Err(status) => report("FetchX509Bundles", status),
    }
    match raw
        .fetch_jwt_bundles(with_header(pb::JwtBundlesRequest {}))
        .await
    {
        Ok(_) => panic!("FetchJWTBundles served"),
        Err(status) => report("FetchJWTBundles", status),
    }
    let asked = pb::JwtsvidRequest {
        audience: vec!["payments".into()],
        spiffe_id: String::new(),
    };
    match raw.fetch_jwtsvid(with_header(asked)).await {
        Ok(_) => panic!("FetchJWTSVID served"),
        Err(status) => report("FetchJWTSVID", status),
    }
    let asked = pb::ValidateJwtsvidRequest {
        audience: "payments".into(),
        svid: "a.b.c".into(),
    };
    match raw.validate_jwtsvid(with_header(asked)).await {
        Ok(_) => panic!("ValidateJWTSVID served"),
        Err(status) => report("ValidateJWTSVID", status),
    }
}

/// `[identity] workload_api`: a sidecar with no control plane of its own
/// takes its SVID from another sidecar's Workload API (as it would from a
/// SPIRE agent), serves mTLS with it, and swaps each rotated SVID in with
/// no failed request.
#[tokio::test]
async fn a_sidecar_serves_mtls_with_an_svid_from_another_workload_api() {
    let dir = open_dir();
    let control = Control::start(
        &dir.path().join("control"),
        any_port(),
        &Db::Sqlite,
        &["--svid-ttl", "10s"],
    );
    let socket = dir.path().join("workload.sock");
    let _agent = control.sidecar(
        dir.path(),
        "agent",
        ORDERS,
        &settings(&socket, &[my_uid()], "0660"),
    );
    let app = TestApp::start().await;
    let mut orders_settings = inbound_to(app.addr);
    orders_settings.extend([
        format!("identity.workload_api=unix://{}", socket.display()),
        "service.name=orders".to_owned(),
        "admin.listen=127.0.0.1:0".to_owned(),
    ]);
    let orders = Proxy::start(&dir.path().join("orders.log"), &orders_settings);
    orders.wait_ready().await;
    let frontend = control.sidecar(
        dir.path(),
        "frontend",
        FRONTEND,
        &[route_to(orders.inbound(), ORDERS)],
    );
    frontend.wait_ready().await;
    let traffic = control_flows::Traffic::start(frontend.outbound[0], 2);
    // Two SVIDs after the first, each streamed from the agent.
    control_flows::renewals(&[&orders], 2, Duration::from_secs(40)).await;
    let (ok, failed, errors) = traffic.finish().await;
    assert_eq!(failed, 0, "failed requests: {errors:?}\n{}", orders.logs());
    assert!(ok > 20, "only {ok} requests");
    assert!(
        orders
            .logs()
            .contains("SVID from the upstream Workload API installed"),
        "{}",
        orders.logs()
    );
}

/// The services gRPC reflection lists on `socket`, by a reflection client
/// we did not write (tonic-reflection's).
async fn list_services(socket: &Path) -> Vec<String> {
    use tonic_reflection::pb::v1::server_reflection_client::ServerReflectionClient;
    use tonic_reflection::pb::v1::server_reflection_request::MessageRequest;
    use tonic_reflection::pb::v1::server_reflection_response::MessageResponse;
    let channel = unix_channel(socket).await;
    let request = tonic_reflection::pb::v1::ServerReflectionRequest {
        host: String::new(),
        message_request: Some(MessageRequest::ListServices(String::new())),
    };
    let mut answers = ServerReflectionClient::new(channel)
        .server_reflection_info(tokio_stream::iter([request]))
        .await
        .expect("reflection")
        .into_inner();
    let answer = answers
        .message()
        .await
        .expect("an answer")
        .expect("a message");
    match answer.message_response {
        Some(MessageResponse::ListServicesResponse(list)) => {
            list.service.into_iter().map(|s| s.name).collect()
        }
        other => panic!("not a service list: {other:?}"),
    }
}
