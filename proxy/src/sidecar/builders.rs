//! hyper's server and client builders, bounded by `[limits]`.

use std::time::Duration;

use hyper_util::rt::{TokioExecutor, TokioTimer};
use hyper_util::server::conn::auto;

use super::config::Limits;

/// The HTTP/2 connection window for a stream window of `window`: room for
/// 16 streams at full speed. Memory per connection is bounded by it.
fn connection_window(window: u32) -> u32 {
    window.saturating_mul(16)
}

/// An HTTP/2 client (to peer sidecars and h2c apps) bounded by `limits`:
/// the peer may send `h2_stream_window` ahead per stream, and at most
/// `buffer_window` waits to be sent per stream.
pub(crate) fn tuned_h2_client(
    limits: &Limits,
) -> hyper::client::conn::http2::Builder<TokioExecutor> {
    let mut builder = hyper::client::conn::http2::Builder::new(TokioExecutor::new());
    builder
        .timer(TokioTimer::new())
        .initial_stream_window_size(limits.h2_stream_window)
        .initial_connection_window_size(connection_window(limits.h2_stream_window))
        .max_send_buf_size(limits.buffer_window as usize)
        .keep_alive_interval(Duration::from_secs(30))
        .keep_alive_timeout(Duration::from_secs(10));
    builder
}

pub(super) fn http_builder(limits: &Limits) -> auto::Builder<TokioExecutor> {
    let mut builder = auto::Builder::new(TokioExecutor::new());
    builder
        .http1()
        .timer(TokioTimer::new())
        // Our own watchdog times request heads (`connections::serve_http`):
        // hyper's timer also runs while a keep-alive connection is idle.
        .header_read_timeout(None)
        .max_buf_size(limits.max_header_bytes)
        // Copy body chunks into one bounded write buffer rather than queue
        // them: a queued chunk pins the whole read buffer it was cut from,
        // which is what a slow reader makes the sidecar hold.
        .writev(false)
        .keep_alive(true);
    builder
        .http2()
        .timer(TokioTimer::new())
        .initial_stream_window_size(limits.h2_stream_window)
        .initial_connection_window_size(connection_window(limits.h2_stream_window))
        .max_send_buf_size(limits.buffer_window as usize)
        .max_concurrent_streams(limits.h2_max_concurrent_streams)
        .max_pending_accept_reset_streams(limits.h2_max_pending_resets)
        .max_header_list_size(u32::try_from(limits.max_header_bytes).unwrap_or(u32::MAX))
        .keep_alive_interval(Some(Duration::from_secs(30)))
        .keep_alive_timeout(Duration::from_secs(10));
    builder
}
