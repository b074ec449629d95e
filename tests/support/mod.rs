//! Shared helpers for the end-to-end tests: the real `warden` binary, real
//! CAs in temporary directories, real TLS over 127.0.0.1.
#![allow(dead_code)]

/// Runs each `async fn NAME(db: Db)` as two tests, `sqlite::NAME` and
/// `postgres::NAME`: embedded SQLite, and a real PostgreSQL server (a fresh
/// database per test). The invoking module imports `Db`.
#[allow(unused_macros)]
macro_rules! on_both_backends {
    ($($name:ident),* $(,)?) => {
        mod sqlite {
            $(
                #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
                async fn $name() {
                    super::$name(super::Db::Sqlite).await
                }
            )*
        }
        mod postgres {
            $(
                #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
                async fn $name() {
                    super::$name(super::Db::postgres()).await
                }
            )*
        }
    };
}

pub mod control;
pub mod k8s;
pub mod mesh;
pub mod netns;
pub mod nginx;
pub mod otlp;
pub mod pods;
pub mod policies;
pub mod postgres;
pub mod wait;

// Each test binary uses some of these.
#[allow(unused_imports)]
pub use wait::{eventually, eventually_blocking, eventually_every};

use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use rcgen::{
    CertificateParams, DistinguishedName, DnType, ExtendedKeyUsagePurpose, IsCa, Issuer, KeyPair,
    KeyUsagePurpose, SanType,
};
use rustls::pki_types::{CertificateDer, ServerName};
use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};
use tokio::net::{TcpListener, TcpStream};
use warden_proxy::identity::{
    SpiffeId, Svid, SvidLeaf, SvidStore, Timestamp, TrustBundle, TrustBundleSet, peer_spiffe_id,
};

pub fn warden_bin() -> &'static str {
    env!("CARGO_BIN_EXE_warden")
}

/// Runs `warden` with `args`.
pub fn warden(args: &[&str]) -> Output {
    Command::new(warden_bin())
        .args(args)
        .env("WARDEN_LOG", "warn")
        .output()
        .expect("spawn warden")
}

/// Runs `warden` and insists that it succeeds.
pub fn warden_ok(args: &[&str]) -> String {
    let out = warden(args);
    assert!(
        out.status.success(),
        "warden {args:?} failed: {}\n{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

pub fn path_str(p: &Path) -> &str {
    p.to_str().expect("utf-8 path")
}

/// `warden ca init` in `dir`, with `extra` flags.
fn ca_init_with(dir: &Path, trust_domain: &str, extra: &[&str]) {
    let base = [
        "ca",
        "init",
        "--trust-domain",
        trust_domain,
        "--dir",
        path_str(dir),
    ];
    warden_ok(&[&base[..], extra].concat());
}

/// `warden ca init` in `dir`.
pub fn ca_init(dir: &Path, trust_domain: &str) {
    ca_init_with(dir, trust_domain, &[]);
}

/// `warden ca init` of an intermediate in `dir`, under the CA in `root`.
pub fn ca_init_intermediate(dir: &Path, root: &Path, trust_domain: &str) {
    let (cert, key) = (root.join("ca.crt"), root.join("ca.key"));
    ca_init_with(
        dir,
        trust_domain,
        &["--root-cert", path_str(&cert), "--root-key", path_str(&key)],
    );
}

/// `warden svid issue` into `out`; returns the out dir.
pub fn svid_issue(ca_dir: &Path, id: &str, out: &Path) -> PathBuf {
    warden_ok(&[
        "svid",
        "issue",
        "--ca-dir",
        path_str(ca_dir),
        "--spiffe-id",
        id,
        "--out",
        path_str(out),
    ]);
    out.to_owned()
}

pub fn load_svid(dir: &Path) -> Svid {
    Svid::from_pem(
        &std::fs::read(dir.join("svid.pem")).expect("svid.pem"),
        &std::fs::read(dir.join("svid.key")).expect("svid.key"),
    )
    .expect("valid SVID")
}

pub fn load_bundle(dir: &Path, trust_domain: &str) -> TrustBundle {
    TrustBundle::from_pem(
        trust_domain.parse().expect("trust domain"),
        &std::fs::read(dir.join("bundle.pem")).expect("bundle.pem"),
    )
    .expect("bundle")
}

/// A store holding the SVID in `dir` and the bundle beside it.
pub fn store_from_dir(dir: &Path, trust_domain: &str) -> Arc<SvidStore> {
    let bundles = TrustBundleSet::new().with(load_bundle(dir, trust_domain));
    Arc::new(SvidStore::with(load_svid(dir), bundles).expect("store"))
}

/// The CA's own signing key and issuer, for crafting certificates our CA
/// would refuse to issue (so the verifiers can be shown to refuse them).
pub struct RawCa {
    pub issuer: Issuer<'static, KeyPair>,
}

impl RawCa {
    pub fn load(ca_dir: &Path) -> Self {
        let key =
            KeyPair::from_pem(&std::fs::read_to_string(ca_dir.join("ca.key")).expect("ca.key"))
                .expect("key");
        let cert = CertificateDer::from_pem_slice_first(
            &std::fs::read(ca_dir.join("ca.crt")).expect("ca.crt"),
        );
        RawCa {
            issuer: Issuer::from_ca_cert_der(&cert, key).expect("issuer"),
        }
    }

    /// Signs `params` for a fresh P-256 key; returns (leaf DER, key PEM).
    pub fn sign(&self, params: &CertificateParams) -> (CertificateDer<'static>, String) {
        let key = KeyPair::generate().expect("keygen");
        let cert = params.signed_by(&key, &self.issuer).expect("sign");
        (cert.der().clone(), key.serialize_pem())
    }
}

trait FirstPem {
    fn from_pem_slice_first(pem: &[u8]) -> CertificateDer<'static>;
}

impl FirstPem for CertificateDer<'static> {
    fn from_pem_slice_first(pem: &[u8]) -> CertificateDer<'static> {
        use rustls::pki_types::pem::PemObject;
        CertificateDer::pem_slice_iter(pem)
            .next()
            .expect("a certificate")
            .expect("PEM")
    }
}

/// Leaf parameters exactly as the X.509-SVID spec wants them, to be broken
/// one rule at a time by the tests.
pub fn svid_params(uris: &[&str]) -> CertificateParams {
    let mut params = CertificateParams::default();
    params.distinguished_name = DistinguishedName::new();
    params
        .distinguished_name
        .push(DnType::OrganizationName, "test");
    params.subject_alt_names = uris
        .iter()
        .map(|u| SanType::URI((*u).try_into().expect("ia5")))
        .collect();
    params.is_ca = IsCa::ExplicitNoCa;
    params.key_usages = vec![KeyUsagePurpose::DigitalSignature];
    params.extended_key_usages = vec![
        ExtendedKeyUsagePurpose::ServerAuth,
        ExtendedKeyUsagePurpose::ClientAuth,
    ];
    let now = SystemTime::now();
    params.not_before = (now - Duration::from_secs(60)).into();
    params.not_after = (now + Duration::from_secs(3600)).into();
    params
}

/// What the test TLS server learned about one connection.
#[derive(Debug)]
pub struct Accepted {
    pub peer: Result<Option<SpiffeId>, String>,
}

/// An mTLS echo-of-identity server: for each connection it completes the
/// handshake and writes the client's SPIFFE ID (or `-` without one) and a
/// newline. Handshake outcomes are sent to the returned channel.
pub async fn spawn_identity_server(
    config: Arc<rustls::ServerConfig>,
) -> (
    std::net::SocketAddr,
    tokio::sync::mpsc::UnboundedReceiver<Accepted>,
    tokio::task::JoinHandle<()>,
) {
    let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let addr = listener.local_addr().expect("addr");
    let acceptor = tokio_rustls::TlsAcceptor::from(config);
    let (tx, rx) = tokio::sync::mpsc::unbounded_channel();
    let task = tokio::spawn(async move {
        loop {
            let Ok((tcp, _)) = listener.accept().await else {
                return;
            };
            let acceptor = acceptor.clone();
            let tx = tx.clone();
            tokio::spawn(async move {
                let peer = match tokio::time::timeout(Duration::from_secs(10), acceptor.accept(tcp))
                    .await
                {
                    Err(_) => Err("handshake timed out".to_string()),
                    Ok(Err(e)) => Err(warden_proxy::identity::describe_io_error(&e)),
                    Ok(Ok(mut tls)) => {
                        let peer = match tls.get_ref().1.peer_certificates() {
                            None => Ok(None),
                            Some(chain) => {
                                peer_spiffe_id(chain).map(Some).map_err(|e| e.to_string())
                            }
                        };
                        let line = match &peer {
                            Ok(Some(id)) => format!("{id}\n"),
                            _ => "-\n".to_string(),
                        };
                        let _ = tls.write_all(line.as_bytes()).await;
                        let _ = tls.shutdown().await;
                        peer
                    }
                };
                let _ = tx.send(Accepted { peer });
            });
        }
    });
    (addr, rx, task)
}

/// What the client learned from one connection.
#[derive(Debug)]
pub struct Connected {
    /// The server's SVID leaf.
    pub server: SvidLeaf,
    /// What the server says our identity is.
    pub seen_as: String,
}

/// Connects, completes the handshake and reads the server's line. Any
/// failure (handshake, or the server closing on us) is an `Err`.
pub async fn connect(
    config: Arc<rustls::ClientConfig>,
    addr: std::net::SocketAddr,
) -> Result<Connected, String> {
    let tcp = TcpStream::connect(addr).await.map_err(|e| e.to_string())?;
    let connector = tokio_rustls::TlsConnector::from(config);
    let name = ServerName::try_from("warden.test").expect("name");
    let tls = tokio::time::timeout(Duration::from_secs(10), connector.connect(name, tcp))
        .await
        .map_err(|_| "handshake timed out".to_string())?
        .map_err(|e| warden_proxy::identity::describe_io_error(&e))?;
    let server_leaf = tls
        .get_ref()
        .1
        .peer_certificates()
        .and_then(|c| c.first())
        .cloned()
        .ok_or("server sent no certificate")?;
    let server = SvidLeaf::parse(&server_leaf, Timestamp::now()).map_err(|e| e.to_string())?;
    let mut reader = BufReader::new(tls);
    let mut line = String::new();
    let n = tokio::time::timeout(Duration::from_secs(10), reader.read_line(&mut line))
        .await
        .map_err(|_| "read timed out".to_string())?
        .map_err(|e| warden_proxy::identity::describe_io_error(&e))?;
    if n == 0 {
        return Err("server closed the connection".into());
    }
    Ok(Connected {
        server,
        seen_as: line.trim_end().to_owned(),
    })
}

/// Presents a fixed certificate chain, whatever it is: how a misbehaving or
/// misconfigured peer shows up. Our own store would refuse such chains.
#[derive(Debug)]
pub struct FixedCert(pub Arc<rustls::sign::CertifiedKey>);

impl FixedCert {
    pub fn new(chain: Vec<CertificateDer<'static>>, key_pem: &str) -> Self {
        use rustls::pki_types::PrivateKeyDer;
        use rustls::pki_types::pem::PemObject;
        let key = PrivateKeyDer::from_pem_slice(key_pem.as_bytes()).expect("key");
        let signing = warden_proxy::tls::crypto_provider()
            .key_provider
            .load_private_key(key)
            .expect("load key");
        FixedCert(Arc::new(rustls::sign::CertifiedKey::new(chain, signing)))
    }
}

impl rustls::client::ResolvesClientCert for FixedCert {
    fn resolve(
        &self,
        _: &[&[u8]],
        _: &[rustls::SignatureScheme],
    ) -> Option<Arc<rustls::sign::CertifiedKey>> {
        Some(self.0.clone())
    }
    fn has_certs(&self) -> bool {
        true
    }
}

impl rustls::server::ResolvesServerCert for FixedCert {
    fn resolve(
        &self,
        _: rustls::server::ClientHello<'_>,
    ) -> Option<Arc<rustls::sign::CertifiedKey>> {
        Some(self.0.clone())
    }
}

/// TLS 1.3 client configuration that verifies servers with Warden's
/// verifier against `bundles`, expecting `expected`.
fn client_builder(
    bundles: TrustBundleSet,
    expected: warden_proxy::identity::ExpectedIdentity,
) -> rustls::ConfigBuilder<rustls::ClientConfig, rustls::client::WantsClientCert> {
    let store = Arc::new(SvidStore::new());
    store.set_bundles(bundles);
    let verifier = warden_proxy::identity::SpiffeServerVerifier::new(store, expected);
    rustls::ClientConfig::builder_with_provider(warden_proxy::tls::crypto_provider().clone())
        .with_protocol_versions(&[&rustls::version::TLS13])
        .expect("versions")
        .dangerous()
        .with_custom_certificate_verifier(Arc::new(verifier))
}

/// A client presenting `chain` no matter what, verifying the server with
/// Warden's verifier against `bundles`.
pub fn client_presenting(
    chain: Vec<CertificateDer<'static>>,
    key_pem: &str,
    bundles: TrustBundleSet,
    expected: warden_proxy::identity::ExpectedIdentity,
) -> Arc<rustls::ClientConfig> {
    Arc::new(
        client_builder(bundles, expected)
            .with_client_cert_resolver(Arc::new(FixedCert::new(chain, key_pem))),
    )
}

/// A TLS 1.3 client that verifies servers with Warden's verifier against
/// `bundles` and presents no certificate.
pub fn anonymous_client(bundles: TrustBundleSet) -> Arc<rustls::ClientConfig> {
    Arc::new(
        client_builder(
            bundles,
            warden_proxy::identity::ExpectedIdentity::AnyTrusted,
        )
        .with_no_client_auth(),
    )
}

/// A server presenting `chain` no matter what, verifying clients with
/// Warden's verifier against `bundles`.
pub fn server_presenting(
    chain: Vec<CertificateDer<'static>>,
    key_pem: &str,
    bundles: TrustBundleSet,
) -> Arc<rustls::ServerConfig> {
    let store = Arc::new(SvidStore::new());
    store.set_bundles(bundles);
    let verifier = warden_proxy::identity::SpiffeClientVerifier::new(
        store,
        warden_proxy::identity::ExpectedIdentity::AnyTrusted,
        true,
    );
    let config =
        rustls::ServerConfig::builder_with_provider(warden_proxy::tls::crypto_provider().clone())
            .with_protocol_versions(&[&rustls::version::TLS13])
            .expect("versions")
            .with_client_cert_verifier(Arc::new(verifier))
            .with_cert_resolver(Arc::new(FixedCert::new(chain, key_pem)));
    Arc::new(config)
}

/// `promtool check metrics` on an exposition; its complaints, if any.
pub fn promtool(exposition: &str) -> Result<(), String> {
    use std::io::Write;
    let mut child = std::process::Command::new("promtool")
        .args(["check", "metrics"])
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .map_err(|e| format!("promtool (Debian package prometheus, installed by .ci/run): {e}"))?;
    child
        .stdin
        .take()
        .expect("stdin")
        .write_all(exposition.as_bytes())
        .map_err(|e| e.to_string())?;
    let out = child.wait_with_output().map_err(|e| e.to_string())?;
    if out.status.success() {
        Ok(())
    } else {
        Err(format!(
            "{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        ))
    }
}
