//! TLS configuration built from the SVID store. Configs are built once and
//! shared; the certificate and the bundles are read from the store on every
//! handshake, so rotation never rebuilds a config.
//!
//! Warden uses one crypto provider, *ring*, passed explicitly to every
//! builder: no process-wide default is needed, so a second provider pulled in
//! by some dependency can never make a builder panic.

use std::sync::{Arc, OnceLock};

use rustls::crypto::CryptoProvider;
use rustls::{ClientConfig, ServerConfig};

use crate::identity::{
    ExpectedIdentity, SpiffeClientVerifier, SpiffeServerVerifier, SvidResolver, SvidStore,
};

/// The process's one crypto provider: *ring*'s defaults (every suite and
/// key exchange group), with TLS 1.3's AES-128-GCM-SHA256 preferred.
///
/// *ring* lists AES-256-GCM-SHA384 first. Its SHA-384 hashes each
/// handshake's transcript and key schedule in software, while SHA-256 runs
/// on the CPU's SHA extensions where present: on the control plane's joins
/// SHA-384 was 4% of the CPU. AES-128-GCM is the suite every TLS 1.3
/// implementation must support, and the one BoringSSL and Go put first;
/// peers that prefer another one still get it.
pub fn crypto_provider() -> &'static Arc<CryptoProvider> {
    static PROVIDER: OnceLock<Arc<CryptoProvider>> = OnceLock::new();
    PROVIDER.get_or_init(|| {
        let mut provider = rustls::crypto::ring::default_provider();
        provider
            .cipher_suites
            .sort_by_key(|s| s.suite() != rustls::CipherSuite::TLS13_AES_128_GCM_SHA256);
        Arc::new(provider)
    })
}

/// Also installs the provider as rustls' process default, for libraries that
/// build their own configs with `ServerConfig::builder()`. Harmless if called
/// twice.
pub fn install_default_provider() {
    let _ = CryptoProvider::install_default(CryptoProvider::clone(crypto_provider()));
}

/// Whether peers must present an SVID.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ClientAuth {
    /// mTLS: a handshake without a valid client SVID fails.
    Required,
    /// A client may connect without a certificate (it is then unauthenticated);
    /// a certificate it does present must be a valid SVID.
    Optional,
}

/// Protocol versions: TLS 1.3 only by default, 1.2 by opt-in.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum TlsVersions {
    #[default]
    Tls13Only,
    Tls12And13,
}

impl TlsVersions {
    fn versions(self) -> &'static [&'static rustls::SupportedProtocolVersion] {
        static TLS13_ONLY: &[&rustls::SupportedProtocolVersion] = &[&rustls::version::TLS13];
        static TLS12_AND_13: &[&rustls::SupportedProtocolVersion] =
            &[&rustls::version::TLS13, &rustls::version::TLS12];
        match self {
            TlsVersions::Tls13Only => TLS13_ONLY,
            TlsVersions::Tls12And13 => TLS12_AND_13,
        }
    }
}

/// Session resumption is off on both sides: a resumed session skips
/// certificate verification, so a peer whose SVID has since expired, been
/// rotated away or revoked could resume under its old identity. Warden's
/// connections between sidecars are long-lived and pooled, so full
/// handshakes are rare and this costs little.
fn disable_server_resumption(config: &mut ServerConfig) {
    config.session_storage = Arc::new(rustls::server::NoServerSessionStorage {});
    config.send_tls13_tickets = 0;
    // rustls' default ticketer never issues TLS 1.2 tickets; keep it.
}

/// A server config presenting the store's SVID and verifying client SVIDs.
pub fn server_config(
    store: Arc<SvidStore>,
    client_auth: ClientAuth,
    expected_clients: ExpectedIdentity,
    versions: TlsVersions,
    alpn: &[&[u8]],
) -> Result<Arc<ServerConfig>, rustls::Error> {
    let verifier = SpiffeClientVerifier::new(
        store.clone(),
        expected_clients,
        client_auth == ClientAuth::Required,
    );
    let mut config = ServerConfig::builder_with_provider(crypto_provider().clone())
        .with_protocol_versions(versions.versions())?
        .with_client_cert_verifier(Arc::new(verifier))
        .with_cert_resolver(Arc::new(SvidResolver::new(store)));
    disable_server_resumption(&mut config);
    config.alpn_protocols = alpn.iter().map(|p| p.to_vec()).collect();
    Ok(Arc::new(config))
}

/// A client config presenting the store's SVID and accepting only a server
/// whose SVID matches `expected_server`.
pub fn client_config(
    store: Arc<SvidStore>,
    expected_server: ExpectedIdentity,
    versions: TlsVersions,
    alpn: &[&[u8]],
) -> Result<Arc<ClientConfig>, rustls::Error> {
    let verifier = SpiffeServerVerifier::new(store.clone(), expected_server);
    let mut config = ClientConfig::builder_with_provider(crypto_provider().clone())
        .with_protocol_versions(versions.versions())?
        .dangerous()
        .with_custom_certificate_verifier(Arc::new(verifier))
        .with_client_cert_resolver(Arc::new(SvidResolver::new(store)));
    config.resumption = rustls::client::Resumption::disabled();
    config.alpn_protocols = alpn.iter().map(|p| p.to_vec()).collect();
    Ok(Arc::new(config))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn aes_128_gcm_sha256_first_and_every_ring_suite_kept() {
        let ours: Vec<_> = crypto_provider()
            .cipher_suites
            .iter()
            .map(|s| s.suite())
            .collect();
        assert_eq!(ours[0], rustls::CipherSuite::TLS13_AES_128_GCM_SHA256);
        let mut theirs: Vec<_> = rustls::crypto::ring::default_provider()
            .cipher_suites
            .iter()
            .map(|s| s.suite())
            .collect();
        let mut sorted = ours.clone();
        sorted.sort_by_key(|s| u16::from(*s));
        theirs.sort_by_key(|s| u16::from(*s));
        assert_eq!(sorted, theirs);
    }
}
