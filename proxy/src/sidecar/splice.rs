//! Splicing two byte streams (opaque TCP, upgrades, CONNECT tunnels), with
//! the limits a tunnel needs: an idle timeout, and the peer's certificate
//! ([`PeerValidity`]), past whose expiry or revocation the connection's
//! identity is not vouched for.

use std::io;
use std::pin::Pin;
use std::sync::atomic::{AtomicU64, Ordering};
use std::task::{Context, Poll};
use std::time::{Duration, Instant, SystemTime};

use std::sync::Arc;

use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};

use crate::authz::{Decision, PeerAuthorizer};
use crate::identity::{PeerIdentity, SvidStore};

/// A tunnel's authorization, decided again whenever the policy set changes
/// (looked at with the tunnel's other limits, at least once a second): the
/// facts it was admitted with, under the new set. A tunnel the new set
/// denies is closed.
pub struct Reauthorize {
    authorizer: PeerAuthorizer,
    /// The version of the set the last decision was made under.
    seen: String,
    decide: Box<dyn Fn(&PeerAuthorizer) -> Decision + Send + Sync>,
    /// Called with the deny before the tunnel closes (audit, metric).
    on_deny: Box<dyn Fn(&Decision) + Send + Sync>,
}

impl Reauthorize {
    /// For a tunnel `admitted` by `authorizer`; `decide` repeats that
    /// decision.
    pub fn new(
        authorizer: &PeerAuthorizer,
        admitted: &Decision,
        decide: impl Fn(&PeerAuthorizer) -> Decision + Send + Sync + 'static,
        on_deny: impl Fn(&Decision) + Send + Sync + 'static,
    ) -> Self {
        Reauthorize {
            authorizer: authorizer.fork(),
            seen: admitted.policy_version.clone(),
            decide: Box::new(decide),
            on_deny: Box::new(on_deny),
        }
    }

    /// The new decision, when the set changed since the last one and now
    /// denies the tunnel.
    fn denied_now(&mut self) -> Option<Decision> {
        if self.authorizer.policy_version_is(&self.seen) {
            return None;
        }
        let decision = (self.decide)(&self.authorizer);
        self.seen.clone_from(&decision.policy_version);
        if decision.allowed {
            None
        } else {
            (self.on_deny)(&decision);
            Some(decision)
        }
    }
}

/// What an authenticated connection's identity rests on: the peer's
/// certificate, vouched for until it expires or the control plane revokes
/// it. Connections check it at least once a second.
#[derive(Debug, Clone)]
pub struct PeerValidity {
    pub identity: Arc<PeerIdentity>,
    pub store: Arc<SvidStore>,
}

/// Why a connection's identity stopped being vouched for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Lapse {
    Expired,
    Revoked,
}

impl PeerValidity {
    pub fn lapse(&self) -> Option<Lapse> {
        let identity = &*self.identity;
        if self
            .store
            .is_revoked(identity.spiffe_id.as_str(), &identity.serial)
        {
            Some(Lapse::Revoked)
        } else if SystemTime::now() >= identity.not_after {
            Some(Lapse::Expired)
        } else {
            None
        }
    }
}

/// `validity`'s lapse, if any.
pub fn lapsed(validity: Option<&PeerValidity>) -> Option<Lapse> {
    validity.and_then(PeerValidity::lapse)
}

/// A stream that records when bytes last moved through it.
struct Watched<'a, T> {
    inner: &'a mut T,
    start: Instant,
    last_ms: &'a AtomicU64,
}

impl<T> Watched<'_, T> {
    fn touch(&self) {
        let ms = u64::try_from(self.start.elapsed().as_millis()).unwrap_or(u64::MAX);
        self.last_ms.store(ms, Ordering::Relaxed);
    }
}

impl<T: AsyncRead + Unpin> AsyncRead for Watched<'_, T> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let before = buf.filled().len();
        let result = Pin::new(&mut *self.inner).poll_read(cx, buf);
        if buf.filled().len() > before {
            self.touch();
        }
        result
    }
}

impl<T: AsyncWrite + Unpin> AsyncWrite for Watched<'_, T> {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        let result = Pin::new(&mut *self.inner).poll_write(cx, buf);
        if matches!(result, Poll::Ready(Ok(n)) if n > 0) {
            self.touch();
        }
        result
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut *self.inner).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut *self.inner).poll_shutdown(cx)
    }
}

/// Copies both ways until either side closes, no byte moves for `idle`, or
/// the peer's certificate expires or is revoked.
pub async fn splice<A, B>(
    a: &mut A,
    b: &mut B,
    idle: Duration,
    validity: Option<&PeerValidity>,
    mut reauthorize: Option<Reauthorize>,
) -> io::Result<()>
where
    A: AsyncRead + AsyncWrite + Unpin,
    B: AsyncRead + AsyncWrite + Unpin,
{
    let start = Instant::now();
    let last_ms = AtomicU64::new(0);
    let mut a = Watched {
        inner: a,
        start,
        last_ms: &last_ms,
    };
    let mut b = Watched {
        inner: b,
        start,
        last_ms: &last_ms,
    };
    let copy = tokio::io::copy_bidirectional(&mut a, &mut b);
    tokio::pin!(copy);
    let mut ticker =
        tokio::time::interval((idle / 4).clamp(Duration::from_millis(10), Duration::from_secs(1)));
    ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            result = &mut copy => return result.map(|_| ()),
            _ = ticker.tick() => {
                let quiet = start.elapsed().saturating_sub(Duration::from_millis(last_ms.load(Ordering::Relaxed)));
                if quiet >= idle {
                    return Err(io::Error::new(io::ErrorKind::TimedOut, format!("idle for {idle:?}")));
                }
                match lapsed(validity) {
                    Some(Lapse::Expired) => return Err(io::Error::new(io::ErrorKind::TimedOut, "the peer's certificate expired")),
                    Some(Lapse::Revoked) => return Err(io::Error::new(io::ErrorKind::PermissionDenied, "the peer's certificate was revoked")),
                    None => {}
                }
                if let Some(decision) = reauthorize.as_mut().and_then(Reauthorize::denied_now) {
                    return Err(io::Error::new(
                        io::ErrorKind::PermissionDenied,
                        format!("policy version {} denies this connection now", decision.policy_version),
                    ));
                }
            }
        }
    }
}
