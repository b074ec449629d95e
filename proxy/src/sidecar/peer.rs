//! Connections to peer sidecars: mTLS with our SVID, the server's SPIFFE ID
//! checked against the identity expected for the destination, and one
//! multiplexed HTTP/2 connection per peer, shared by every request to it;
//! with `outbound.peer_http1 = "dedicated"` an app's HTTP/1.1 connection
//! gets an HTTP/1.1 connection of its own instead.
//!
//! When our SVID rotates, the next request opens a fresh connection that
//! presents the new certificate; the old one finishes its streams and closes.

use std::future::Future;
use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use hyper::client::conn::http1;
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
    #[error("peer sidecar {addr} does not speak the protocol asked for: {reason}")]
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
    /// HTTP/1.1 connections left by app connections that ended, for the
    /// next ones.
    idle_h1: std::sync::Mutex<Vec<H1Conn>>,
    /// HTTP/1.1 connections open to the peer (idle ones included).
    open_h1: Arc<AtomicUsize>,
    /// At most this many: [`MAX_H1_PER_PEER`] shared out between the
    /// workers, each of which has a channel of its own to the peer.
    max_h1: usize,
}

/// HTTP/1.1 connections to one peer, at most (all workers together): past
/// them an app connection's requests share the multiplexed connection
/// instead, so a busy app never opens more connections than the peer takes
/// from one source.
pub const MAX_H1_PER_PEER: usize = 256;

/// Idle HTTP/1.1 connections kept per peer for app connections to come.
const MAX_IDLE_H1: usize = 32;

/// An HTTP/1.1 connection to the peer, serving one app connection at a
/// time (`outbound.peer_http1 = "dedicated"`).
pub struct H1Conn {
    pub sender: http1::SendRequest<CallerBody>,
    generation: u64,
    /// When its last request started. It is not reused once quiet for half
    /// the idle timeout, well before the peer closes it as idle: HTTP/1.1
    /// has no way to say a request was not taken, so the race of a request
    /// and an idle close is avoided instead.
    pub last_used: Instant,
    /// Requests sent on it so far.
    pub requests: u64,
}

impl H1Conn {
    fn usable(&self, generation: u64, fresh_for: Duration) -> bool {
        self.generation == generation
            && !self.sender.is_closed()
            && self.last_used.elapsed() < fresh_for
    }
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
        workers: usize,
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
            idle_h1: std::sync::Mutex::new(Vec::new()),
            open_h1: Arc::new(AtomicUsize::new(0)),
            max_h1: (MAX_H1_PER_PEER / workers.max(1)).max(1),
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
        // Boxed: a connect's future (TLS and h2 handshakes) is kilobytes,
        // and every request's future would otherwise carry and copy it.
        let sender = Box::pin(tokio::time::timeout(self.connect_timeout, self.connect()))
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
            .map_err(|e| self.protocol_error(e))?;
        self.drive(connection, validity, None);
        Ok(sender)
    }

    fn protocol_error(&self, e: hyper::Error) -> PeerError {
        PeerError::Protocol {
            addr: self.addr,
            reason: e.to_string(),
        }
    }

    /// Runs a connection to the peer until it ends, or until the peer is
    /// revoked: then it is cut off at once (the next handshake refuses it).
    /// `open` counts it while it runs.
    fn drive<C>(&self, connection: C, validity: Option<PeerValidity>, open: Option<OpenGuard>)
    where
        C: Future<Output = hyper::Result<()>> + Send + 'static,
    {
        let addr = self.addr;
        let mut revocations = self.store.subscribe_revocations();
        tokio::spawn(async move {
            let _open = open;
            tokio::pin!(connection);
            loop {
                tokio::select! {
                    result = &mut connection => {
                        if let Err(e) = result {
                            tracing::debug!(%addr, error = %e, "connection to peer sidecar ended");
                        }
                        return;
                    }
                    changed = revocations.changed() => {
                        if changed.is_err() || lapsed(validity.as_ref()) == Some(Lapse::Revoked) {
                            tracing::info!(%addr, "closing the connection to a revoked peer");
                            return;
                        }
                    }
                }
            }
        });
    }

    /// The HTTP/1.1 connection for an app connection's next request: the
    /// one it `held` while still usable, else an idle one, else a new one.
    /// None when the peer already has its share of [`MAX_H1_PER_PEER`]: the
    /// request goes on the multiplexed connection instead.
    pub async fn h1<'a>(
        &self,
        held: &'a mut Option<H1Conn>,
    ) -> Result<Option<&'a mut H1Conn>, PeerError> {
        let generation = *self.svid_generation.borrow();
        let fresh_for = self.h1_fresh_for();
        let kept = held
            .take()
            .filter(|c| c.usable(generation, fresh_for))
            .or_else(|| self.take_idle_h1(generation, fresh_for));
        let conn = match kept {
            Some(conn) => conn,
            None => {
                // The place is taken before connecting, so that a burst of
                // new app connections cannot overshoot the cap; it is given
                // back if the connection is not made.
                let Some(place) = OpenGuard::take(&self.open_h1, self.max_h1) else {
                    return Ok(None);
                };
                // Boxed, as in `sender`.
                Box::pin(tokio::time::timeout(
                    self.connect_timeout,
                    self.connect_h1(generation, place),
                ))
                .await
                .map_err(|_| PeerError::Timeout {
                    addr: self.addr,
                    timeout: self.connect_timeout,
                })??
            }
        };
        Ok(Some(held.insert(conn)))
    }

    /// How long an HTTP/1.1 connection may stay quiet and still be reused:
    /// half the idle timeout, well before the peer closes it as idle.
    fn h1_fresh_for(&self) -> Duration {
        self.limits.idle_timeout / 2
    }

    fn take_idle_h1(&self, generation: u64, fresh_for: Duration) -> Option<H1Conn> {
        let mut idle = self
            .idle_h1
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        while let Some(conn) = idle.pop() {
            if conn.usable(generation, fresh_for) && conn.sender.is_ready() {
                return Some(conn);
            }
        }
        None
    }

    /// Takes back the connection of an app connection that ended, for the
    /// next one, if it is idle and still presents our current SVID.
    pub fn release_h1(&self, conn: H1Conn) {
        let generation = *self.svid_generation.borrow();
        let fresh_for = self.h1_fresh_for();
        if !conn.sender.is_ready() || !conn.usable(generation, fresh_for) {
            return;
        }
        let mut idle = self
            .idle_h1
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        idle.retain(|c| c.usable(generation, fresh_for));
        if idle.len() < MAX_IDLE_H1 {
            idle.push(conn);
        }
    }

    async fn connect_h1(&self, generation: u64, place: OpenGuard) -> Result<H1Conn, PeerError> {
        let tls = self.handshake(Carrying::Http1).await?;
        if tls.get_ref().1.alpn_protocol() != Some(b"http/1.1") {
            return Err(PeerError::Protocol {
                addr: self.addr,
                reason: "ALPN did not select http/1.1".into(),
            });
        }
        let validity = self.validity(&tls);
        let (sender, connection) = hyper::client::conn::http1::Builder::new()
            // What is read ahead of a slow app is bounded as on every
            // other connection.
            .max_buf_size(self.limits.buffer_window as usize)
            .handshake(TokioIo::new(tls))
            .await
            .map_err(|e| self.protocol_error(e))?;
        self.drive(connection, validity, Some(place));
        Ok(H1Conn {
            sender,
            generation,
            last_used: Instant::now(),
            requests: 0,
        })
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

/// Counts an HTTP/1.1 connection as open until its task ends.
struct OpenGuard(Arc<AtomicUsize>);

impl OpenGuard {
    /// One place of `max`, if one is free.
    fn take(open: &Arc<AtomicUsize>, max: usize) -> Option<OpenGuard> {
        open.fetch_update(Ordering::AcqRel, Ordering::Acquire, |n| {
            (n < max).then_some(n + 1)
        })
        .ok()
        .map(|_| OpenGuard(open.clone()))
    }
}

impl Drop for OpenGuard {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::AcqRel);
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
