//! SVID validation, both directions: what a peer's chain must satisfy
//! ([`verify_peer_svid`]), which the rustls verifiers
//! ([`super::verifiers`]) apply on every handshake.
//!
//! A peer's chain is validated against the bundle of the peer's *own* trust
//! domain only (never a merged bundle), then the X.509-SVID leaf rules apply,
//! then the expected-identity matcher.

use std::collections::BTreeSet;
use std::fmt;
use std::sync::Arc;

use rustls::crypto::WebPkiSupportedAlgorithms;
use rustls::pki_types::{CertificateDer, UnixTime};

use super::bundle::TrustBundleSet;
use super::spiffe_id::{SpiffeId, TrustDomain};
use super::svid::{SvidError, SvidLeaf, Timestamp};
use crate::tls::crypto_provider;

/// Which peers a verifier accepts, once their chain is valid.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ExpectedIdentity {
    /// Any workload of any trust domain whose bundle we hold.
    AnyTrusted,
    /// Any workload of this trust domain.
    TrustDomain(TrustDomain),
    /// One of these IDs exactly.
    OneOf(BTreeSet<SpiffeId>),
}

impl ExpectedIdentity {
    pub fn exactly(id: SpiffeId) -> Self {
        ExpectedIdentity::OneOf(BTreeSet::from([id]))
    }

    pub fn matches(&self, id: &SpiffeId) -> bool {
        match self {
            ExpectedIdentity::AnyTrusted => true,
            ExpectedIdentity::TrustDomain(td) => id.is_member_of(td),
            ExpectedIdentity::OneOf(ids) => ids.contains(id),
        }
    }
}

impl fmt::Display for ExpectedIdentity {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            ExpectedIdentity::AnyTrusted => f.write_str("any trusted workload"),
            ExpectedIdentity::TrustDomain(td) => write!(f, "a workload of trust domain {td}"),
            ExpectedIdentity::OneOf(ids) => {
                let list: Vec<&str> = ids.iter().map(SpiffeId::as_str).collect();
                write!(f, "{}", list.join(" or "))
            }
        }
    }
}

/// Which side of the connection the peer is: decides the EKU required.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PeerRole {
    Client,
    Server,
}

/// Validates a peer's SVID chain and returns its leaf facts.
pub fn verify_peer_svid(
    bundles: &TrustBundleSet,
    end_entity: &CertificateDer<'_>,
    intermediates: &[CertificateDer<'_>],
    now: UnixTime,
    role: PeerRole,
    expected: &ExpectedIdentity,
) -> Result<SvidLeaf, SvidError> {
    let now_ts = Timestamp(i64::try_from(now.as_secs()).unwrap_or(i64::MAX));
    let leaf = SvidLeaf::parse(end_entity, now_ts)?;
    let td = leaf.spiffe_id.trust_domain_name();
    let bundle = bundles
        .get(td)
        .ok_or_else(|| SvidError::UnknownTrustDomain(td.to_owned()))?;
    let untrusted = |reason: String| SvidError::UntrustedChain {
        trust_domain: td.to_owned(),
        reason,
    };
    let cert =
        webpki::EndEntityCert::try_from(end_entity).map_err(|e| untrusted(format!("{e:?}")))?;
    let usage = match role {
        PeerRole::Client => webpki::KeyUsage::client_auth(),
        PeerRole::Server => webpki::KeyUsage::server_auth(),
    };
    cert.verify_for_usage(
        signature_algorithms().all,
        bundle.anchors(),
        intermediates,
        now,
        usage,
        None,
        None,
    )
    .map_err(|e| untrusted(describe_webpki_error(&e)))?;
    if !expected.matches(&leaf.spiffe_id) {
        return Err(SvidError::UnexpectedIdentity {
            actual: leaf.spiffe_id.to_string(),
            expected: expected.to_string(),
        });
    }
    Ok(leaf)
}

fn describe_webpki_error(e: &webpki::Error) -> String {
    match e {
        webpki::Error::UnknownIssuer => "issued by a CA that is not in the bundle".into(),
        webpki::Error::InvalidSignatureForPublicKey => "a signature in the chain is invalid".into(),
        webpki::Error::CaUsedAsEndEntity => "a CA certificate was presented as the leaf".into(),
        other => format!("{other:?}"),
    }
}

pub(super) fn signature_algorithms() -> &'static WebPkiSupportedAlgorithms {
    &crypto_provider().signature_verification_algorithms
}

pub(super) fn to_rustls_error(e: SvidError) -> rustls::Error {
    rustls::Error::InvalidCertificate(rustls::CertificateError::Other(rustls::OtherError(
        Arc::new(e),
    )))
}

/// Explains a TLS failure to an operator: for a refused SVID, the rule it
/// broke in words (rustls alone would print a debug dump).
pub fn describe_tls_error(e: &rustls::Error) -> String {
    if let rustls::Error::InvalidCertificate(rustls::CertificateError::Other(other)) = e
        && let Some(svid) = other.0.downcast_ref::<SvidError>()
    {
        return format!("peer SVID refused: {svid}");
    }
    e.to_string()
}

/// [`describe_tls_error`] for the `io::Error`s that tokio-rustls returns.
pub fn describe_io_error(e: &std::io::Error) -> String {
    match e
        .get_ref()
        .and_then(|inner| inner.downcast_ref::<rustls::Error>())
    {
        Some(tls) => describe_tls_error(tls),
        None => e.to_string(),
    }
}
