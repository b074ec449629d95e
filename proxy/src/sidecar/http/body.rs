//! The caller's request body on its way upstream.

use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::task::{Context, Poll};

use bytes::Bytes;
use http::Request;

/// A caller's request body on its way upstream, remembering whether
/// reading it failed (a malformed chunked encoding, a stream the caller
/// reset): the upstream request then fails, and the fault is the caller's
/// (400), not the upstream's (502).
pub struct CallerBody {
    /// None: no body (a request made again, see [`CallerBody::empty`]).
    inner: Option<hyper::body::Incoming>,
    failed: Arc<AtomicBool>,
}

/// Set once a [`CallerBody`] failed to read.
#[derive(Clone, Default)]
pub struct BodyFault(Arc<AtomicBool>);

impl BodyFault {
    pub fn happened(&self) -> bool {
        self.0.load(Ordering::Acquire)
    }
}

impl CallerBody {
    /// Wraps a request's body; the returned [`BodyFault`] tells later
    /// whether it failed.
    pub fn wrap(req: Request<hyper::body::Incoming>) -> (Request<CallerBody>, BodyFault) {
        let fault = BodyFault::default();
        let failed = fault.0.clone();
        (
            req.map(|inner| CallerBody {
                inner: Some(inner),
                failed,
            }),
            fault,
        )
    }

    /// No body at all: for a bodiless request sent again.
    pub fn empty() -> Self {
        CallerBody {
            inner: None,
            failed: Arc::default(),
        }
    }
}

impl http_body::Body for CallerBody {
    type Data = Bytes;
    type Error = hyper::Error;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<http_body::Frame<Bytes>, hyper::Error>>> {
        let Some(inner) = self.inner.as_mut() else {
            return Poll::Ready(None);
        };
        let polled = Pin::new(inner).poll_frame(cx);
        if let Poll::Ready(Some(Err(_))) = &polled {
            self.failed.store(true, Ordering::Release);
        }
        polled
    }

    fn is_end_stream(&self) -> bool {
        self.inner
            .as_ref()
            .is_none_or(http_body::Body::is_end_stream)
    }

    fn size_hint(&self) -> http_body::SizeHint {
        self.inner.as_ref().map_or_else(
            || http_body::SizeHint::with_exact(0),
            http_body::Body::size_hint,
        )
    }
}
