//! Connections to peer sidecars: mTLS with our SVID, the server's SPIFFE ID
//! checked against the identity expected for the destination, and one
//! multiplexed HTTP/2 connection per peer, shared by every request to it.
//!
//! When our SVID rotates, the next request opens a fresh connection that
//! presents the new certificate; the old one finishes its streams and closes.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use hyper::client::conn::http2::SendRequest;
use hyper_util::rt::TokioIo;
use rustls::ClientConfig;
use rustls::pki_types::ServerName;
use tokio::net::TcpStream;
use tokio::sync::{Mutex, watch};
use tokio_rustls::TlsConnector;

use super::http::CallerBody;
use super::metrics::{Direction, Handshake, Metrics, handshake_failure};
use super::splice::{Lapse, PeerValidity, lapsed};
use crate::identity::{PeerIdentity, SpiffeId, SvidStore, describe_io_error};

/// Why no connection to the peer could be had; each maps to a status.
#[derive(Debug, thiserror::Error)]
pub enum PeerError {
    #[error("peer sidecar {addr} refused the connection: {reason}")]
    Unreachable { addr: SocketAddr, reason: String },
    #[error("peer sidecar {addr} did not complete the connection within {timeout:?}")]
    Timeout { addr: SocketAddr, timeout: Duration },
    /// The TLS handshake failed: most often the server is not the identity
    /// expected, or its certificate does not chain to our trust bundle.
    #[error("mTLS with peer sidecar {addr} (expected {expected}) failed: {reason}")]
    Handshake {
        addr: SocketAddr,
        expected: String,
        reason: String,
    },
    #[error("peer sidecar {addr} does not speak HTTP/2: {reason}")]
    Protocol { addr: SocketAddr, reason: String },
}

/// What a dedicated connection to the peer will carry (its ALPN).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Carrying {
    /// The shared multiplexed connection.
    H2,
    /// One HTTP/1.1 upgrade (WebSocket and the like).
    Http1,
    /// Opaque bytes to a peer's opaque port.
    Tcp,
}

pub type PeerTls = tokio_rustls::client::TlsStream<TcpStream>;

pub struct PeerChannel {
    addr: SocketAddr,
    expected: SpiffeId,
    tls: TlsConnector,
    tls_http1: TlsConnector,
    tls_opaque: TlsConnector,
    connect_timeout: Duration,
    /// Windows and buffers of the HTTP/2 connection.
    limits: super::config::Limits,
    svid_generation: watch::Receiver<u64>,
    store: Arc<SvidStore>,
    metrics: Arc<Metrics>,
    current: Mutex<Option<Connected>>,
    connections: std::sync::atomic::AtomicU64,
}

struct Connected {
    sender: SendRequest<CallerBody>,
    generation: u64,
    /// Which connection this is, so a request it refused can retire it.
    id: u64,
}

impl PeerChannel {
    pub fn new(
        addr: SocketAddr,
        expected: SpiffeId,
        tls: Arc<ClientConfig>,
        limits: super::config::Limits,
        store: Arc<SvidStore>,
        metrics: Arc<Metrics>,
    ) -> Self {
        let with_alpn = |alpn: &[&[u8]]| {
            let mut config = ClientConfig::clone(&tls);
            config.alpn_protocols = alpn.iter().map(|p| p.to_vec()).collect();
            TlsConnector::from(Arc::new(config))
        };
        PeerChannel {
            addr,
            expected,
            tls_http1: with_alpn(&[b"http/1.1"]),
            tls_opaque: with_alpn(&[]),
            tls: with_alpn(&[b"h2"]),
            connect_timeout: limits.peer_connect_timeout,
            limits,
            svid_generation: store.subscribe(),
            store,
            metrics,
            current: Mutex::new(None),
            connections: std::sync::atomic::AtomicU64::new(0),
        }
    }

    /// A sender on the shared connection, connecting first if there is none,
    /// it has closed, or our SVID has rotated since it was made.
    pub async fn sender(&self) -> Result<(SendRequest<CallerBody>, u64), PeerError> {
        let generation = *self.svid_generation.borrow();
        // Held across the connect: concurrent first requests share one connection.
        let mut current = self.current.lock().await;
        if let Some(c) = current.as_ref()
            && c.generation == generation
            && !c.sender.is_closed()
        {
            return Ok((c.sender.clone(), c.id));
        }
        let sender = tokio::time::timeout(self.connect_timeout, self.connect())
            .await
            .map_err(|_| PeerError::Timeout {
                addr: self.addr,
                timeout: self.connect_timeout,
            })??;
        let id = self
            .connections
            .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        *current = Some(Connected {
            sender: sender.clone(),
            generation,
            id,
        });
        Ok((sender, id))
    }

    /// A new mTLS connection to the peer, bounded by the connect timeout.
    pub async fn connect_tls(&self, carrying: Carrying) -> Result<PeerTls, PeerError> {
        tokio::time::timeout(self.connect_timeout, self.handshake(carrying))
            .await
            .map_err(|_| PeerError::Timeout {
                addr: self.addr,
                timeout: self.connect_timeout,
            })?
    }

    async fn handshake(&self, carrying: Carrying) -> Result<PeerTls, PeerError> {
        let tcp = TcpStream::connect(self.addr)
            .await
            .map_err(|e| PeerError::Unreachable {
                addr: self.addr,
                reason: e.to_string(),
            })?;
        let _ = tcp.set_nodelay(true);
        let name = ServerName::IpAddress(self.addr.ip().into());
        let connector = match carrying {
            Carrying::H2 => &self.tls,
            Carrying::Http1 => &self.tls_http1,
            Carrying::Tcp => &self.tls_opaque,
        };
        match connector.connect(name, tcp).await {
            Ok(tls) => {
                self.metrics.handshake(Direction::Outbound, Handshake::Ok);
                Ok(tls)
            }
            Err(e) => {
                self.metrics.handshake(
                    Direction::Outbound,
                    Handshake::Failed(handshake_failure(&e)),
                );
                Err(PeerError::Handshake {
                    addr: self.addr,
                    expected: self.expected.to_string(),
                    reason: describe_io_error(&e),
                })
            }
        }
    }

    async fn connect(&self) -> Result<SendRequest<CallerBody>, PeerError> {
        let tls = self.handshake(Carrying::H2).await?;
        let validity = self.validity(&tls);
        if tls.get_ref().1.alpn_protocol() != Some(b"h2") {
            return Err(PeerError::Protocol {
                addr: self.addr,
                reason: "ALPN did not select h2".into(),
            });
        }
        let (sender, connection) = super::tuned_h2_client(&self.limits)
            .handshake(TokioIo::new(tls))
            .await
            .map_err(|e| PeerError::Protocol {
                addr: self.addr,
                reason: e.to_string(),
            })?;
        let addr = self.addr;
        let mut revocations = self.store.subscribe_revocations();
        tokio::spawn(async move {
            tokio::pin!(connection);
            loop {
                tokio::select! {
                    result = &mut connection => {
                        if let Err(e) = result {
                            tracing::debug!(%addr, error = %e, "connection to peer sidecar ended");
                        }
                        return;
                    }
                    // A peer revoked while connected is cut off at once; the
                    // next request's handshake refuses it.
                    changed = revocations.changed() => {
                        if changed.is_err() || lapsed(validity.as_ref()) == Some(Lapse::Revoked) {
                            tracing::info!(%addr, "closing the connection to a revoked peer");
                            return;
                        }
                    }
                }
            }
        });
        Ok(sender)
    }

    /// What the server's certificate on `tls` vouches for, to watch for its
    /// expiry or revocation.
    pub fn validity(&self, tls: &PeerTls) -> Option<PeerValidity> {
        let identity = PeerIdentity::of_connection(tls.get_ref().1).ok()??;
        Some(PeerValidity {
            identity: Arc::new(identity),
            store: self.store.clone(),
        })
    }
}

impl PeerChannel {
    /// The identity the peer must prove.
    pub fn expected(&self) -> &SpiffeId {
        &self.expected
    }

    /// Retires connection `id` (it refused a request): the next request
    /// connects anew.
    pub async fn reset(&self, id: u64) {
        let mut current = self.current.lock().await;
        if current.as_ref().is_some_and(|c| c.id == id) {
            *current = None;
        }
    }
}
