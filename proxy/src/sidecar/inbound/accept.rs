//! Stage 1 of a connection: the TLS handshake (or, in permissive mode, a
//! plaintext connection recognized by its first byte), and what it proves
//! about the peer, read once into a [`ConnInfo`].

use std::net::SocketAddr;
use std::sync::{Arc, OnceLock};

use http::HeaderValue;
use rustls::ServerConfig;
use tokio::net::TcpStream;
use tokio_rustls::TlsAcceptor;
use tokio_util::either::Either;

use super::identity_headers::{peer_id, xfcc};
use crate::authz::{Peer, PeerAuthorizer, TlsVersion, UnauthenticatedKind};
use crate::identity::PeerIdentity;
use crate::sidecar::admission::source_key;
use crate::sidecar::metrics::{Direction, Handshake, handshake_failure};
use crate::sidecar::shared::Shared;
use crate::sidecar::splice::{Lapse, PeerValidity, lapsed};

/// A peer's connection: plaintext (permissive mode) or TLS.
pub(super) type PeerIo = Either<TcpStream, Box<tokio_rustls::server::TlsStream<TcpStream>>>;

/// The TLS record type of a handshake: the first byte a TLS client sends.
const TLS_HANDSHAKE_RECORD: u8 = 0x16;

/// What is known about one inbound connection, fixed at its handshake.
pub(super) struct ConnInfo {
    pub source: SocketAddr,
    pub tls_version: TlsVersion,
    /// The policy principal.
    pub peer: Peer,
    /// `x-warden-peer-id` for the app; None for unauthenticated peers.
    pub peer_id: Option<HeaderValue>,
    /// `x-forwarded-client-cert` for the app; None for unauthenticated peers.
    pub xfcc: Option<HeaderValue>,
    /// `client.address` for spans, when tracing is on.
    pub client_address: String,
    /// The caller's certificate: the connection's identity is not vouched
    /// for past its expiry or revocation.
    pub validity: Option<PeerValidity>,
    /// Made on the first request once the policy engine exists, then kept.
    authorizer: OnceLock<PeerAuthorizer>,
}

impl ConnInfo {
    pub fn lapsed(&self) -> Option<Lapse> {
        lapsed(self.validity.as_ref())
    }

    /// The connection's authorizer; None until the sidecar has its policy
    /// engine (it needs the sidecar's own identity).
    pub fn authorizer(&self, shared: &Shared) -> Option<&PeerAuthorizer> {
        if let Some(a) = self.authorizer.get() {
            return Some(a);
        }
        let engine = shared.engine()?;
        Some(
            self.authorizer
                .get_or_init(|| engine.for_peer(self.peer.clone())),
        )
    }

    /// The facts of a connection with `identity` (None: unauthenticated,
    /// as `unauthenticated` says).
    fn new(
        shared: &Shared,
        source: SocketAddr,
        tls_version: TlsVersion,
        identity: Result<PeerIdentity, UnauthenticatedKind>,
    ) -> Self {
        let (peer, peer_id, xfcc, validity) = match identity {
            Ok(identity) => {
                let local = shared.store.current();
                let local = local.as_ref().map(|s| s.spiffe_id().as_str());
                let headers = (peer_id(&identity), xfcc(local.unwrap_or(""), &identity));
                let peer = Peer::Workload(identity.spiffe_id.clone());
                let validity = PeerValidity {
                    identity: Arc::new(identity),
                    store: shared.store.clone(),
                };
                (peer, headers.0, headers.1, Some(validity))
            }
            Err(kind) => (Peer::Unauthenticated(kind), None, None, None),
        };
        // Only spans use it: nothing to format when tracing is off.
        let client_address = if shared.traces.is_some() {
            source.ip().to_string()
        } else {
            String::new()
        };
        ConnInfo {
            source,
            tls_version,
            peer,
            peer_id,
            xfcc,
            client_address,
            validity,
            authorizer: OnceLock::new(),
        }
    }
}

/// The TLS handshake (or, when `plaintext_ok`, a plaintext connection
/// recognized by its first byte) and what it says about the peer.
pub(super) async fn accept(
    shared: &Shared,
    tls: &Arc<ServerConfig>,
    stream: TcpStream,
    source: SocketAddr,
    plaintext_ok: bool,
) -> Option<(PeerIo, ConnInfo)> {
    if plaintext_ok && !sniff_tls(shared, &stream, source).await? {
        shared
            .metrics
            .handshake(Direction::Inbound, Handshake::Plaintext);
        let info = ConnInfo::new(
            shared,
            source,
            TlsVersion::Plaintext,
            Err(UnauthenticatedKind::Plaintext),
        );
        return Some((Either::Left(stream), info));
    }
    let tls = handshake(shared, tls, stream, source).await?;
    let conn = tls.get_ref().1;
    let tls_version = TlsVersion::of(conn.protocol_version());
    let identity = match PeerIdentity::of_connection(conn) {
        Ok(Some(identity)) => Ok(identity),
        Ok(None) => Err(UnauthenticatedKind::TlsWithoutCertificate),
        // The verifier already refused such chains; never serve one.
        Err(e) => {
            tracing::warn!(%source, error = %e, "verified peer certificate is not a usable SVID");
            return None;
        }
    };
    let info = ConnInfo::new(shared, source, tls_version, identity);
    Some((Either::Right(Box::new(tls)), info))
}

/// Whether the connection starts a TLS handshake (its first byte), within
/// the handshake timeout; None when it closed or sent nothing in time.
async fn sniff_tls(shared: &Shared, stream: &TcpStream, source: SocketAddr) -> Option<bool> {
    let mut first = [0u8; 1];
    let timeout = shared.config.limits.tls_handshake_timeout;
    match tokio::time::timeout(timeout, stream.peek(&mut first)).await {
        Ok(Ok(1)) => Some(first[0] == TLS_HANDSHAKE_RECORD),
        // Nothing sent within the handshake timeout: counted as a failed
        // handshake, as a silent TLS client would be.
        Err(_) => {
            failed(shared, source, Handshake::Timeout);
            None
        }
        _ => None,
    }
}

/// The TLS handshake within its timeout, counted either way.
async fn handshake(
    shared: &Shared,
    tls: &Arc<ServerConfig>,
    stream: TcpStream,
    source: SocketAddr,
) -> Option<tokio_rustls::server::TlsStream<TcpStream>> {
    let limits = &shared.config.limits;
    let acceptor = TlsAcceptor::from(tls.clone());
    match tokio::time::timeout(limits.tls_handshake_timeout, acceptor.accept(stream)).await {
        Ok(Ok(mut tls)) => {
            // What rustls buffers for a slow reader is bounded too: the
            // response pacing counts bytes handed to it, not sent.
            tls.get_mut()
                .1
                .set_buffer_limit(Some(limits.buffer_window as usize));
            shared.metrics.handshake(Direction::Inbound, Handshake::Ok);
            Some(tls)
        }
        Ok(Err(e)) => {
            failed(shared, source, Handshake::Failed(handshake_failure(&e)));
            tracing::info!(%source, error = %e, "inbound TLS handshake failed");
            None
        }
        Err(_) => {
            failed(shared, source, Handshake::Timeout);
            tracing::info!(%source, "inbound TLS handshake timed out");
            None
        }
    }
}

/// A failed handshake: counted, and held against its source address.
fn failed(shared: &Shared, source: SocketAddr, outcome: Handshake) {
    shared
        .traffic
        .handshake_failures
        .failed(source_key(source.ip()));
    shared.metrics.handshake(Direction::Inbound, outcome);
}
