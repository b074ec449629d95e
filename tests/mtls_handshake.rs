//! Real mTLS handshakes over TCP on 127.0.0.1 between SVIDs issued by
//! `warden ca` / `warden svid issue`, through Warden's rustls verifiers.

mod support;

use std::sync::Arc;
use std::time::{Duration, SystemTime};

use support::*;
use warden_proxy::identity::{ExpectedIdentity, SpiffeId, SvidError, SvidStore, TrustBundleSet};
use warden_proxy::tls::{ClientAuth, TlsVersions, client_config, server_config};

const SERVER_ID: &str = "spiffe://example.org/ns/prod/sa/orders";
const CLIENT_ID: &str = "spiffe://example.org/ns/prod/sa/frontend";

fn id(s: &str) -> SpiffeId {
    SpiffeId::parse(s).expect("valid SPIFFE ID")
}

struct Mesh {
    dir: tempfile::TempDir,
}

impl Mesh {
    /// One CA for example.org with a server and a client SVID.
    fn new() -> Self {
        let dir = tempfile::tempdir().expect("tempdir");
        ca_init(&dir.path().join("ca"), "example.org");
        svid_issue(
            &dir.path().join("ca"),
            SERVER_ID,
            &dir.path().join("server"),
        );
        svid_issue(
            &dir.path().join("ca"),
            CLIENT_ID,
            &dir.path().join("client"),
        );
        Mesh { dir }
    }

    fn path(&self, name: &str) -> std::path::PathBuf {
        self.dir.path().join(name)
    }

    fn server_store(&self) -> Arc<SvidStore> {
        store_from_dir(&self.path("server"), "example.org")
    }

    fn client_store(&self) -> Arc<SvidStore> {
        store_from_dir(&self.path("client"), "example.org")
    }
}

fn strict_server(store: Arc<SvidStore>) -> Arc<rustls::ServerConfig> {
    server_config(
        store,
        ClientAuth::Required,
        ExpectedIdentity::AnyTrusted,
        TlsVersions::default(),
        &[],
    )
    .expect("server config")
}

fn client_expecting(store: Arc<SvidStore>, expected: &str) -> Arc<rustls::ClientConfig> {
    client_config(
        store,
        ExpectedIdentity::exactly(id(expected)),
        TlsVersions::default(),
        &[],
    )
    .expect("client config")
}

/// Connects with `client`, which must fail, and returns why the server
/// refused the handshake.
async fn server_refusal(
    client: Arc<rustls::ClientConfig>,
    addr: std::net::SocketAddr,
    accepted: &mut tokio::sync::mpsc::UnboundedReceiver<Accepted>,
) -> String {
    // TLS 1.3: the client learns of the refusal from the server's alert.
    let refused = connect(client, addr).await;
    assert!(
        matches!(&refused, Err(e) if e == "received fatal alert: CertificateUnknown"),
        "the connection must fail with the server's alert: {:?}",
        refused.map(|c| c.seen_as)
    );
    let outcome = accepted.recv().await.expect("server outcome");
    outcome
        .peer
        .expect_err("the server must refuse the handshake")
}

#[tokio::test]
async fn both_sides_see_each_others_spiffe_id() {
    let mesh = Mesh::new();
    let (addr, mut accepted, _server) =
        spawn_identity_server(strict_server(mesh.server_store())).await;
    let got = connect(client_expecting(mesh.client_store(), SERVER_ID), addr)
        .await
        .expect("mTLS works");
    assert_eq!(
        got.server.spiffe_id,
        id(SERVER_ID),
        "client sees the server's ID"
    );
    assert_eq!(got.seen_as, CLIENT_ID, "server sees the client's ID");
    let server_side = accepted.recv().await.expect("server outcome");
    assert_eq!(server_side.peer, Ok(Some(id(CLIENT_ID))));
}

#[tokio::test]
async fn tls12_is_opt_in() {
    let mesh = Mesh::new();
    let server = server_config(
        mesh.server_store(),
        ClientAuth::Required,
        ExpectedIdentity::AnyTrusted,
        TlsVersions::Tls12And13,
        &[],
    )
    .expect("config");
    let (addr, _rx, _task) = spawn_identity_server(server).await;
    // A TLS 1.2-only client works against a server that opted in ...
    let tls12_client = {
        let store = mesh.client_store();
        let verifier = warden_proxy::identity::SpiffeServerVerifier::new(
            store.clone(),
            ExpectedIdentity::exactly(id(SERVER_ID)),
        );
        let config = rustls::ClientConfig::builder_with_provider(
            warden_proxy::tls::crypto_provider().clone(),
        )
        .with_protocol_versions(&[&rustls::version::TLS12])
        .expect("versions")
        .dangerous()
        .with_custom_certificate_verifier(Arc::new(verifier))
        .with_client_cert_resolver(Arc::new(warden_proxy::identity::SvidResolver::new(store)));
        Arc::new(config)
    };
    assert_eq!(
        connect(tls12_client.clone(), addr)
            .await
            .expect("TLS 1.2")
            .seen_as,
        CLIENT_ID
    );
    // ... and fails against the default (TLS 1.3 only).
    let (addr13, _rx13, _t13) = spawn_identity_server(strict_server(mesh.server_store())).await;
    let refused = connect(tls12_client, addr13).await.map(|c| c.seen_as);
    assert_eq!(
        refused,
        Err("received fatal alert: ProtocolVersion".to_owned())
    );
}

#[tokio::test]
async fn client_refuses_a_server_with_another_identity() {
    let mesh = Mesh::new();
    let (addr, _rx, _task) = spawn_identity_server(strict_server(mesh.server_store())).await;
    let err = connect(
        client_expecting(
            mesh.client_store(),
            "spiffe://example.org/ns/prod/sa/payments",
        ),
        addr,
    )
    .await
    .expect_err("wrong server identity");
    assert!(
        err.contains("is not the expected spiffe://example.org/ns/prod/sa/payments"),
        "{err}"
    );
    // A trust-domain matcher accepts it.
    let td = client_config(
        mesh.client_store(),
        ExpectedIdentity::TrustDomain("example.org".parse().expect("td")),
        TlsVersions::default(),
        &[],
    )
    .expect("config");
    assert!(connect(td, addr).await.is_ok());
}

#[tokio::test]
async fn strict_server_refuses_rogue_ca_expired_and_foreign_clients() {
    let mesh = Mesh::new();
    let (addr, mut accepted, _task) =
        spawn_identity_server(strict_server(mesh.server_store())).await;

    // 1. A client whose SVID comes from another CA of the same trust domain.
    ca_init(&mesh.path("rogue-ca"), "example.org");
    svid_issue(&mesh.path("rogue-ca"), CLIENT_ID, &mesh.path("rogue"));
    let ours = TrustBundleSet::new().with(load_bundle(&mesh.path("client"), "example.org"));
    let rogue_svid = load_svid(&mesh.path("rogue"));
    let rogue_store = SvidStore::new();
    rogue_store.set_bundles(ours.clone());
    let refused = rogue_store.install(rogue_svid, None);
    assert!(
        matches!(refused, Err(SvidError::UntrustedChain { .. })),
        "our store refuses an SVID its bundle does not validate: {refused:?}"
    );
    // Present it anyway, as an attacker would.
    let rogue_key = std::fs::read_to_string(mesh.path("rogue").join("svid.key")).expect("key");
    let rogue_chain = load_svid(&mesh.path("rogue")).chain().to_vec();
    let attacker = client_presenting(
        rogue_chain,
        &rogue_key,
        ours.clone(),
        ExpectedIdentity::exactly(id(SERVER_ID)),
    );
    let outcome = server_refusal(attacker, addr, &mut accepted).await;
    // Same issuer name as our CA (same trust domain), different key.
    assert!(outcome.contains("chain does not validate against the bundle of trust domain \"example.org\": a signature in the chain is invalid"), "{outcome}");

    // 2. An expired SVID from the right CA.
    let raw = RawCa::load(&mesh.path("ca"));
    let mut expired = svid_params(&[CLIENT_ID]);
    expired.not_before = (SystemTime::now() - Duration::from_secs(7200)).into();
    expired.not_after = (SystemTime::now() - Duration::from_secs(3600)).into();
    let (leaf, key) = raw.sign(&expired);
    let bundles = TrustBundleSet::new().with(load_bundle(&mesh.path("client"), "example.org"));
    let client = client_presenting(
        vec![leaf],
        &key,
        bundles.clone(),
        ExpectedIdentity::exactly(id(SERVER_ID)),
    );
    let outcome = server_refusal(client, addr, &mut accepted).await;
    assert!(outcome.contains("expired"), "{outcome}");

    // 3. A client of another trust domain, which this server does not federate with.
    ca_init(&mesh.path("other-ca"), "other.org");
    svid_issue(
        &mesh.path("other-ca"),
        "spiffe://other.org/billing",
        &mesh.path("other"),
    );
    let other_key = std::fs::read_to_string(mesh.path("other").join("svid.key")).expect("key");
    let other = client_presenting(
        load_svid(&mesh.path("other")).chain().to_vec(),
        &other_key,
        ours.clone(),
        ExpectedIdentity::exactly(id(SERVER_ID)),
    );
    let outcome = server_refusal(other, addr, &mut accepted).await;
    assert!(
        outcome.contains("no trust bundle for trust domain \"other.org\""),
        "{outcome}"
    );

    // 4. No client certificate at all.
    let anonymous = Arc::new(SvidStore::new());
    anonymous
        .set_bundles(TrustBundleSet::new().with(load_bundle(&mesh.path("client"), "example.org")));
    let refused = connect(client_expecting(anonymous, SERVER_ID), addr)
        .await
        .map(|c| c.seen_as);
    assert_eq!(
        refused,
        Err("received fatal alert: CertificateRequired".to_owned())
    );
    assert_eq!(
        accepted.recv().await.expect("outcome").peer,
        Err("peer sent no certificates".to_owned())
    );
}

#[tokio::test]
async fn federation_checks_each_peer_against_its_own_trust_domain_only() {
    let mesh = Mesh::new();
    ca_init(&mesh.path("other-ca"), "other.org");
    svid_issue(
        &mesh.path("other-ca"),
        "spiffe://other.org/billing",
        &mesh.path("other"),
    );
    let mut federated =
        TrustBundleSet::new().with(load_bundle(&mesh.path("server"), "example.org"));
    federated.insert(load_bundle(&mesh.path("other"), "other.org"));
    let server_store = mesh.server_store();
    server_store.set_bundles(federated.clone());
    let (addr, mut accepted, _task) = spawn_identity_server(strict_server(server_store)).await;

    // A workload of the federated domain, signed by its own CA: accepted.
    let other_store = store_from_dir(&mesh.path("other"), "other.org");
    other_store.set_bundles(federated.clone());
    let got = connect(client_expecting(other_store, SERVER_ID), addr)
        .await
        .expect("federated peer");
    assert_eq!(got.seen_as, "spiffe://other.org/billing");
    assert!(accepted.recv().await.expect("outcome").peer.is_ok());

    // An other.org identity signed by the example.org CA: a merged bundle
    // would accept it; checking against other.org's bundle refuses it.
    let raw = RawCa::load(&mesh.path("ca"));
    let (leaf, key) = raw.sign(&svid_params(&["spiffe://other.org/billing"]));
    let forged = client_presenting(
        vec![leaf],
        &key,
        federated,
        ExpectedIdentity::exactly(id(SERVER_ID)),
    );
    let outcome = server_refusal(forged, addr, &mut accepted).await;
    assert!(
        outcome.contains("bundle of trust domain \"other.org\""),
        "{outcome}"
    );
}

#[tokio::test]
async fn permissive_server_accepts_clients_without_a_certificate() {
    let mesh = Mesh::new();
    let config = server_config(
        mesh.server_store(),
        ClientAuth::Optional,
        ExpectedIdentity::AnyTrusted,
        TlsVersions::default(),
        &[],
    )
    .expect("config");
    let (addr, mut accepted, _task) = spawn_identity_server(config).await;
    let anonymous = Arc::new(SvidStore::new());
    anonymous
        .set_bundles(TrustBundleSet::new().with(load_bundle(&mesh.path("client"), "example.org")));
    let got = connect(client_expecting(anonymous, SERVER_ID), addr)
        .await
        .expect("no client cert is fine");
    assert_eq!(got.seen_as, "-");
    assert_eq!(accepted.recv().await.expect("outcome").peer, Ok(None));
    // A client that does present a certificate must present a valid one.
    let raw = RawCa::load(&mesh.path("ca"));
    let mut expired = svid_params(&[CLIENT_ID]);
    expired.not_after = (SystemTime::now() - Duration::from_secs(10)).into();
    expired.not_before = (SystemTime::now() - Duration::from_secs(100)).into();
    let (leaf, key) = raw.sign(&expired);
    let bundles = TrustBundleSet::new().with(load_bundle(&mesh.path("client"), "example.org"));
    let refused = connect(
        client_presenting(
            vec![leaf],
            &key,
            bundles,
            ExpectedIdentity::exactly(id(SERVER_ID)),
        ),
        addr,
    )
    .await
    .map(|c| c.seen_as);
    assert_eq!(
        refused,
        Err("received fatal alert: CertificateUnknown".to_owned())
    );
}

#[tokio::test]
async fn client_refuses_a_server_presenting_a_bad_svid() {
    let mesh = Mesh::new();
    let raw = RawCa::load(&mesh.path("ca"));
    let bundles = TrustBundleSet::new().with(load_bundle(&mesh.path("client"), "example.org"));
    // The server's SVID is a CA certificate: refused by the client.
    let mut as_ca = svid_params(&[SERVER_ID]);
    as_ca.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
    let (leaf, key) = raw.sign(&as_ca);
    let (addr, _rx, _task) =
        spawn_identity_server(server_presenting(vec![leaf], &key, bundles)).await;
    let err = connect(client_expecting(mesh.client_store(), SERVER_ID), addr)
        .await
        .expect_err("refused");
    assert!(err.contains("cA=true"), "{err}");
}
