//! The rustls verifiers that apply [`verify_peer_svid`] on every handshake,
//! reading the bundles from the [`SvidStore`] each time, so bundle rotation
//! needs no new config.

use std::sync::Arc;

use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::pki_types::{CertificateDer, ServerName, UnixTime};
use rustls::server::danger::{ClientCertVerified, ClientCertVerifier};
use rustls::{DigitallySignedStruct, DistinguishedName, SignatureScheme};

use super::store::SvidStore;
use super::verify::{
    ExpectedIdentity, PeerRole, signature_algorithms, to_rustls_error, verify_peer_svid,
};

/// Server side: verifies the client's SVID.
#[derive(Debug)]
pub struct SpiffeClientVerifier {
    store: Arc<SvidStore>,
    expected: ExpectedIdentity,
    mandatory: bool,
}

impl SpiffeClientVerifier {
    /// `mandatory = false` lets clients without a certificate complete the
    /// handshake (permissive mode); a certificate that is presented must
    /// still be valid.
    pub fn new(store: Arc<SvidStore>, expected: ExpectedIdentity, mandatory: bool) -> Self {
        Self {
            store,
            expected,
            mandatory,
        }
    }
}

impl ClientCertVerifier for SpiffeClientVerifier {
    fn client_auth_mandatory(&self) -> bool {
        self.mandatory
    }

    fn root_hint_subjects(&self) -> &[DistinguishedName] {
        &[]
    }

    fn verify_client_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        now: UnixTime,
    ) -> Result<ClientCertVerified, rustls::Error> {
        let bundles = self.store.bundles();
        verify_peer_svid(
            &bundles,
            end_entity,
            intermediates,
            now,
            PeerRole::Client,
            &self.expected,
        )
        .and_then(|leaf| self.store.check_revocation(&leaf))
        .map(|()| ClientCertVerified::assertion())
        .map_err(to_rustls_error)
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls12_signature(message, cert, dss, signature_algorithms())
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls13_signature(message, cert, dss, signature_algorithms())
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        signature_algorithms().supported_schemes()
    }
}

/// Client side: verifies the server's SVID against the identity expected for
/// the destination. The TLS server name is not used: the SPIFFE ID is the name.
#[derive(Debug)]
pub struct SpiffeServerVerifier {
    store: Arc<SvidStore>,
    expected: ExpectedIdentity,
}

impl SpiffeServerVerifier {
    pub fn new(store: Arc<SvidStore>, expected: ExpectedIdentity) -> Self {
        Self { store, expected }
    }
}

impl ServerCertVerifier for SpiffeServerVerifier {
    fn verify_server_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        _server_name: &ServerName<'_>,
        _ocsp_response: &[u8],
        now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        let bundles = self.store.bundles();
        verify_peer_svid(
            &bundles,
            end_entity,
            intermediates,
            now,
            PeerRole::Server,
            &self.expected,
        )
        .and_then(|leaf| self.store.check_revocation(&leaf))
        .map(|()| ServerCertVerified::assertion())
        .map_err(to_rustls_error)
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls12_signature(message, cert, dss, signature_algorithms())
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls13_signature(message, cert, dss, signature_algorithms())
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        signature_algorithms().supported_schemes()
    }
}
