//! Warden quickstart: `cargo run --example quickstart`
//!
//! The identity core the sidecar is built on, as a library: a CA created on
//! the spot, two workloads with keys made locally and SVIDs signed by that
//! CA, a real mTLS connection over 127.0.0.1 in which each side sees the
//! other's SPIFFE ID, a hot rotation, and a rogue certificate refused. For
//! the whole mesh (sidecars, apps, policy), run `cargo run -- demo`.

use std::sync::Arc;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use warden_control::ca::{CertificateAuthority, InitOptions, SignRequest};
use warden_proxy::identity::{
    ExpectedIdentity, SpiffeId, Svid, SvidStore, TrustBundleSet, describe_io_error,
    new_key_and_csr, peer_spiffe_id,
};
use warden_proxy::tls::{ClientAuth, TlsVersions, client_config, server_config};

type Error = Box<dyn std::error::Error + Send + Sync>;

const ORDERS: &str = "spiffe://demo.warden/ns/shop/sa/orders";
const FRONTEND: &str = "spiffe://demo.warden/ns/shop/sa/frontend";

/// Key made here, CSR signed by the CA: what a sidecar does with the control plane.
fn issue(ca: &CertificateAuthority, id: &str) -> Result<Svid, Error> {
    let kc = new_key_and_csr(&SpiffeId::parse(id)?)?;
    let issued = ca.sign_csr(&kc.csr_der, &SignRequest::default())?;
    Ok(Svid::from_pem(
        issued.chain_pem().as_bytes(),
        kc.key_pem.as_bytes(),
    )?)
}

#[tokio::main]
async fn main() -> Result<(), Error> {
    let dir = tempfile::tempdir()?;
    let ca = CertificateAuthority::init(
        &dir.path().join("ca"),
        &InitOptions::new("demo.warden".parse()?),
    )?;
    println!(
        "1. CA for trust domain {} created in {}",
        ca.trust_domain(),
        dir.path().join("ca").display()
    );
    let bundles = TrustBundleSet::new().with(ca.bundle().clone());

    let orders = Arc::new(SvidStore::with(issue(&ca, ORDERS)?, bundles.clone())?);
    let frontend = Arc::new(SvidStore::with(issue(&ca, FRONTEND)?, bundles.clone())?);
    println!("2. SVIDs issued: {ORDERS}\n               {FRONTEND}");

    // "orders" accepts mTLS from any workload of the trust domain and tells
    // the caller who it thinks the caller is.
    let server = server_config(
        orders.clone(),
        ClientAuth::Required,
        ExpectedIdentity::AnyTrusted,
        TlsVersions::default(),
        &[],
    )?;
    let listener = TcpListener::bind("127.0.0.1:0").await?;
    let addr = listener.local_addr()?;
    let acceptor = tokio_rustls::TlsAcceptor::from(server);
    tokio::spawn(async move {
        while let Ok((tcp, _)) = listener.accept().await {
            let acceptor = acceptor.clone();
            tokio::spawn(async move {
                match acceptor.accept(tcp).await {
                    Ok(mut tls) => {
                        let peer = tls.get_ref().1.peer_certificates().map(peer_spiffe_id);
                        let line = match peer {
                            Some(Ok(id)) => format!("hello {id}"),
                            _ => "hello stranger".into(),
                        };
                        let _ = tls.write_all(line.as_bytes()).await;
                        let _ = tls.shutdown().await;
                    }
                    Err(e) => println!("   orders refused a handshake: {}", describe_io_error(&e)),
                }
            });
        }
    });

    // "frontend" calls "orders" and insists on talking to exactly that identity.
    let client = client_config(
        frontend.clone(),
        ExpectedIdentity::exactly(SpiffeId::parse(ORDERS)?),
        TlsVersions::default(),
        &[],
    )?;
    let call = |config: Arc<rustls::ClientConfig>| async move {
        let tcp = TcpStream::connect(addr).await?;
        let connector = tokio_rustls::TlsConnector::from(config);
        let mut tls = connector.connect("orders.demo".try_into()?, tcp).await?;
        let server_id = peer_spiffe_id(tls.get_ref().1.peer_certificates().unwrap_or_default())?;
        let mut reply = String::new();
        tls.read_to_string(&mut reply).await?;
        Ok::<_, Error>((server_id, reply))
    };
    let (server_id, reply) = call(client.clone()).await?;
    println!("3. mTLS on {addr}: frontend sees {server_id}; orders says {reply:?}");

    let before = orders
        .current()
        .map(|s| s.serial().to_owned())
        .unwrap_or_default();
    orders.install(issue(&ca, ORDERS)?, None)?;
    let after = orders
        .current()
        .map(|s| s.serial().to_owned())
        .unwrap_or_default();
    call(client.clone()).await?;
    println!(
        "4. hot rotation: orders serial {before} -> {after}; same TLS config, next handshake fine"
    );

    let rogue_dir = dir.path().join("rogue");
    let rogue_ca =
        CertificateAuthority::init(&rogue_dir, &InitOptions::new("demo.warden".parse()?))?;
    let rogue = Arc::new(SvidStore::with(
        issue(&rogue_ca, FRONTEND)?,
        TrustBundleSet::new().with(rogue_ca.bundle().clone()),
    )?);
    rogue.set_bundles(bundles);
    let rogue_client = client_config(
        rogue,
        ExpectedIdentity::exactly(SpiffeId::parse(ORDERS)?),
        TlsVersions::default(),
        &[],
    )?;
    match call(rogue_client).await {
        Ok(_) => println!("5. UNEXPECTED: a certificate from a rogue CA was accepted"),
        Err(_) => println!("5. a frontend SVID from a rogue CA was refused"),
    }
    tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    println!(
        "\nNext: the sidecar data plane, Cedar policies and the control plane (see README.md, Status)."
    );
    Ok(())
}
