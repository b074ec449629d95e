//! Identity micro-benchmarks: SPIFFE ID parsing, CSR signing, and a full
//! mTLS handshake (session resumption off, in memory, no sockets) through
//! Warden's SPIFFE verifiers. Each group has a baseline measured in the same
//! run, so results read as ratios:
//!
//! - `spiffe_id/parse` vs `spiffe_id/baseline_to_owned` (copying the string);
//! - `ca/sign_csr` (parse, verify, check, sign) vs `ca/baseline_rcgen_sign`
//!   (rcgen signing the same key with no checks);
//! - `mtls/warden_spiffe` vs `mtls/baseline_rustls_webpki` (stock rustls
//!   verifiers on equivalent DNS-named P-256 certificates).
//!
//! Run: `cargo bench --bench identity`

use std::hint::black_box;
use std::sync::Arc;
use std::time::Duration;

use criterion::{Criterion, criterion_group, criterion_main};
use rcgen::{
    CertificateParams, DistinguishedName, ExtendedKeyUsagePurpose, IsCa, Issuer, KeyPair,
    KeyUsagePurpose, SanType,
};
use rustls::pki_types::{CertificateDer, PrivateKeyDer, ServerName};
use rustls::{
    ClientConfig, ClientConnection, Connection, RootCertStore, ServerConfig, ServerConnection,
};
use warden_control::ca::{CertificateAuthority, InitOptions, SignRequest};
use warden_proxy::identity::{
    ExpectedIdentity, SpiffeId, Svid, SvidStore, TrustBundleSet, new_key_and_csr,
};
use warden_proxy::tls::{ClientAuth, TlsVersions, client_config, crypto_provider, server_config};

const SHORT_ID: &str = "spiffe://example.org/ns/prod/sa/api";

fn long_id() -> String {
    let mut id = String::from("spiffe://example.org");
    while id.len() < 2000 {
        id.push_str("/segment-0123456789");
    }
    id
}

fn bench_spiffe_id(c: &mut Criterion) {
    let long = long_id();
    let mut g = c.benchmark_group("spiffe_id");
    g.bench_function("parse_short", |b| {
        b.iter(|| SpiffeId::parse(black_box(SHORT_ID)))
    });
    g.bench_function("baseline_to_owned_short", |b| {
        b.iter(|| black_box(SHORT_ID).to_owned())
    });
    g.bench_function("parse_2000_bytes", |b| {
        b.iter(|| SpiffeId::parse(black_box(&long)))
    });
    g.bench_function("baseline_to_owned_2000_bytes", |b| {
        b.iter(|| black_box(long.as_str()).to_owned())
    });
    g.finish();
}

fn new_ca(dir: &std::path::Path) -> CertificateAuthority {
    CertificateAuthority::init(dir, &InitOptions::new("example.org".parse().expect("td")))
        .expect("CA")
}

fn bench_ca(c: &mut Criterion) {
    let tmp = tempfile::tempdir().expect("tempdir");
    let ca = new_ca(tmp.path());
    let id = SpiffeId::parse(SHORT_ID).expect("id");
    let csr = new_key_and_csr(&id).expect("csr").csr_der;

    // Baseline: rcgen signing a leaf for a key with no CSR handling at all.
    let ca_key =
        KeyPair::from_pem(&std::fs::read_to_string(tmp.path().join("ca.key")).expect("key"))
            .expect("key");
    let ca_cert =
        rustls::pki_types::pem::PemObject::from_pem_file(tmp.path().join("ca.crt")).expect("cert");
    let issuer = Issuer::from_ca_cert_der(&ca_cert, ca_key).expect("issuer");
    let leaf_key = KeyPair::generate().expect("keygen");
    let params = leaf_params(SanType::URI(SHORT_ID.try_into().expect("uri")));

    let mut g = c.benchmark_group("ca");
    g.bench_function("sign_csr", |b| {
        b.iter(|| {
            ca.sign_csr(black_box(&csr), &SignRequest::default())
                .expect("signed")
        })
    });
    g.bench_function("baseline_rcgen_sign", |b| {
        b.iter(|| {
            params
                .signed_by(black_box(&leaf_key), &issuer)
                .expect("signed")
        })
    });
    g.finish();
}

fn leaf_params(san: SanType) -> CertificateParams {
    let mut params = CertificateParams::default();
    params.distinguished_name = DistinguishedName::new();
    params.subject_alt_names = vec![san];
    params.is_ca = IsCa::ExplicitNoCa;
    params.key_usages = vec![KeyUsagePurpose::DigitalSignature];
    params.extended_key_usages = vec![
        ExtendedKeyUsagePurpose::ServerAuth,
        ExtendedKeyUsagePurpose::ClientAuth,
    ];
    params
}

/// Drives a client and a server connection to the end of the handshake.
fn handshake(client: &Arc<ClientConfig>, server: &Arc<ServerConfig>) {
    let name = ServerName::try_from("server.test").expect("name");
    let mut client =
        Connection::Client(ClientConnection::new(client.clone(), name).expect("client"));
    let mut server = Connection::Server(ServerConnection::new(server.clone()).expect("server"));
    let mut buf = Vec::with_capacity(8192);
    for _ in 0..16 {
        if !client.is_handshaking() && !server.is_handshaking() {
            return;
        }
        transfer(&mut client, &mut server, &mut buf);
        transfer(&mut server, &mut client, &mut buf);
    }
    panic!("handshake did not finish");
}

fn transfer(from: &mut Connection, to: &mut Connection, buf: &mut Vec<u8>) {
    buf.clear();
    while from.wants_write() {
        from.write_tls(buf).expect("write_tls");
    }
    let mut rd = &buf[..];
    while !rd.is_empty() {
        to.read_tls(&mut rd).expect("read_tls");
        to.process_new_packets().expect("handshake");
    }
}

fn store_for(ca: &CertificateAuthority, id: &str) -> Arc<SvidStore> {
    let kc = new_key_and_csr(&SpiffeId::parse(id).expect("id")).expect("csr");
    let issued = ca
        .sign_csr(&kc.csr_der, &SignRequest::default())
        .expect("signed");
    let svid = Svid::from_pem(issued.chain_pem().as_bytes(), kc.key_pem.as_bytes()).expect("svid");
    Arc::new(SvidStore::with(svid, TrustBundleSet::new().with(ca.bundle().clone())).expect("store"))
}

fn bench_mtls(c: &mut Criterion) {
    let tmp = tempfile::tempdir().expect("tempdir");
    let ca = new_ca(tmp.path());
    let server_id = "spiffe://example.org/ns/prod/sa/server";
    let server = server_config(
        store_for(&ca, server_id),
        ClientAuth::Required,
        ExpectedIdentity::AnyTrusted,
        TlsVersions::default(),
        &[],
    )
    .expect("server config");
    let client = client_config(
        store_for(&ca, "spiffe://example.org/ns/prod/sa/client"),
        ExpectedIdentity::exactly(SpiffeId::parse(server_id).expect("id")),
        TlsVersions::default(),
        &[],
    )
    .expect("client config");

    // Baseline: stock rustls WebPKI verifiers, DNS-named P-256 leaves from a
    // P-256 root, resumption off too.
    let root_key = KeyPair::generate().expect("keygen");
    let mut root_params = CertificateParams::default();
    root_params.is_ca = IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
    let root_cert = root_params.self_signed(&root_key).expect("root");
    let issuer = Issuer::new(root_params, root_key);
    let mut roots = RootCertStore::empty();
    roots.add(root_cert.der().clone()).expect("root");
    let roots = Arc::new(roots);
    let leaf = |dns: &str| -> (Vec<CertificateDer<'static>>, PrivateKeyDer<'static>) {
        let key = KeyPair::generate().expect("keygen");
        let cert = leaf_params(SanType::DnsName(dns.try_into().expect("dns")))
            .signed_by(&key, &issuer)
            .expect("leaf");
        (
            vec![cert.der().clone()],
            PrivateKeyDer::try_from(key.serialize_der()).expect("key"),
        )
    };
    let (server_chain, server_key) = leaf("server.test");
    let (client_chain, client_key) = leaf("client.test");
    let provider = crypto_provider().clone();
    let client_verifier = rustls::server::WebPkiClientVerifier::builder_with_provider(
        roots.clone(),
        provider.clone(),
    )
    .build()
    .expect("client verifier");
    let mut base_server = ServerConfig::builder_with_provider(provider.clone())
        .with_protocol_versions(&[&rustls::version::TLS13])
        .expect("versions")
        .with_client_cert_verifier(client_verifier)
        .with_single_cert(server_chain, server_key)
        .expect("server");
    base_server.session_storage = Arc::new(rustls::server::NoServerSessionStorage {});
    base_server.send_tls13_tickets = 0;
    let mut base_client = ClientConfig::builder_with_provider(provider)
        .with_protocol_versions(&[&rustls::version::TLS13])
        .expect("versions")
        .with_root_certificates(roots)
        .with_client_auth_cert(client_chain, client_key)
        .expect("client");
    base_client.resumption = rustls::client::Resumption::disabled();
    let (base_server, base_client) = (Arc::new(base_server), Arc::new(base_client));

    let mut g = c.benchmark_group("mtls");
    g.bench_function("warden_spiffe", |b| b.iter(|| handshake(&client, &server)));
    g.bench_function("baseline_rustls_webpki", |b| {
        b.iter(|| handshake(&base_client, &base_server))
    });
    g.finish();
}

criterion_group! {
    name = benches;
    config = Criterion::default().measurement_time(Duration::from_secs(3)).warm_up_time(Duration::from_secs(1));
    targets = bench_spiffe_id, bench_ca, bench_mtls
}
criterion_main!(benches);
