//! Pacing HTTP/1 responses to what the connection actually writes.
//!
//! hyper pulls response body data into its write buffer for as long as
//! that buffer is below `max_buf_size`, so a client that reads slowly
//! makes the sidecar hold that much of every response, on top of what it
//! has read from the app meanwhile. [`Paced`] hands hyper at most a window
//! of bytes ahead of what the connection has written ([`WriteProgress`]),
//! cutting a larger chunk into window-sized pieces (zero-copy), and does
//! not even ask the app's body for more until that room exists: the app
//! connection then holds its data, and backpressure reaches the app.
//! HTTP/2 streams need none of this: flow control and the send buffer
//! bound them.

use std::pin::Pin;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll, Waker};

use bytes::Bytes;
use http_body::{Frame, SizeHint};

use super::http::{Body, BoxError};

/// Bytes a connection has written so far, and the response body waiting
/// for them to drain.
#[derive(Default)]
pub(crate) struct WriteProgress {
    written: AtomicU64,
    waiting: AtomicBool,
    drained: Mutex<Option<Waker>>,
}

impl WriteProgress {
    /// `n` bytes went to the peer: wakes a body waiting for room.
    pub fn wrote(&self, n: usize) {
        self.written.fetch_add(n as u64, Ordering::SeqCst);
        if self.waiting.swap(false, Ordering::SeqCst) {
            let waker = self
                .drained
                .lock()
                .unwrap_or_else(std::sync::PoisonError::into_inner)
                .take();
            if let Some(waker) = waker {
                waker.wake();
            }
        }
    }

    fn written(&self) -> u64 {
        self.written.load(Ordering::SeqCst)
    }

    /// Runs `cx`'s waker on the next write.
    fn wake_on_write(&self, cx: &Context<'_>) {
        *self
            .drained
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner) = Some(cx.waker().clone());
        // SeqCst here and in `wrote`: a store-then-load on each side, so at
        // least one of them sees the other's write (no lost wakeup), also
        // if a body and its connection's writes ran on different tasks.
        self.waiting.store(true, Ordering::SeqCst);
    }
}

/// A response body on its way out, holding `guard` (the request's
/// in-flight mark) until it ends, and on HTTP/1 paced to the connection.
pub(crate) struct Paced<G> {
    body: Body,
    _guard: G,
    /// HTTP/1: the connection's writes, and how far ahead of them this
    /// body may run.
    pacing: Option<(Arc<WriteProgress>, u64)>,
    /// Body bytes handed over, counted from the connection's `written`
    /// when the response started (its head then counts as room).
    handed: u64,
    /// The rest of a chunk larger than the room there was.
    pending: Option<Bytes>,
}

impl<G> Paced<G> {
    /// `window`: `limits.buffer_window`. Three quarters of it go to the
    /// body, leaving hyper's buffer room for a response head without
    /// growing past the window.
    pub fn new(body: Body, guard: G, progress: Option<Arc<WriteProgress>>, window: u64) -> Self {
        let limit = (window / 4 * 3).max(1024);
        let handed = progress.as_ref().map_or(0, |p| p.written());
        Paced {
            body,
            _guard: guard,
            pacing: progress.map(|p| (p, limit)),
            handed,
            pending: None,
        }
    }

    /// Bytes that may be handed over now (`u64::MAX` unpaced); at 0 the
    /// waker is registered to run when the connection writes.
    fn room(&self, cx: &Context<'_>) -> u64 {
        let Some((progress, limit)) = &self.pacing else {
            return u64::MAX;
        };
        let room = || limit.saturating_sub(self.handed.saturating_sub(progress.written()));
        if room() > 0 {
            return room();
        }
        progress.wake_on_write(cx);
        // A write may have landed between the check and the registration.
        room()
    }

    /// At most `room` bytes of `data`; the rest is kept for later, copied
    /// out: hyper copies what it is handed into its own buffer at once, so
    /// the chunk's allocation (a whole read buffer) is freed instead of
    /// being pinned by a small remainder while the reader is slow.
    fn hand_over(&mut self, mut data: Bytes, room: u64) -> Frame<Bytes> {
        if (data.len() as u64) > room {
            let rest = data.split_off(usize::try_from(room).unwrap_or(usize::MAX));
            self.pending = Some(Bytes::copy_from_slice(&rest));
        }
        self.handed += data.len() as u64;
        Frame::data(data)
    }
}

impl<G: Unpin> http_body::Body for Paced<G> {
    type Data = Bytes;
    type Error = BoxError;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        let room = self.room(cx);
        if room == 0 {
            return Poll::Pending;
        }
        if let Some(data) = self.pending.take() {
            return Poll::Ready(Some(Ok(self.hand_over(data, room))));
        }
        match Pin::new(&mut self.body).poll_frame(cx) {
            Poll::Ready(Some(Ok(frame))) => match frame.into_data() {
                Ok(data) => Poll::Ready(Some(Ok(self.hand_over(data, room)))),
                // Trailers pass as they are.
                Err(frame) => Poll::Ready(Some(Ok(frame))),
            },
            other => other,
        }
    }

    fn is_end_stream(&self) -> bool {
        self.pending.is_none() && self.body.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        let inner = self.body.size_hint();
        let Some(pending) = &self.pending else {
            return inner;
        };
        let n = pending.len() as u64;
        let mut hint = SizeHint::new();
        hint.set_lower(inner.lower().saturating_add(n));
        if let Some(upper) = inner.upper() {
            hint.set_upper(upper.saturating_add(n));
        }
        hint
    }
}
