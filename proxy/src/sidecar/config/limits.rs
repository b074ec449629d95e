//! `[limits]`: the sidecar's limits and timeouts, and their bounds.

use std::time::Duration;

use serde::Deserialize;

use super::file::duration;
use super::{ConfigError, key_error};

/// Limits and timeouts. Defaults suit a typical service; all are per sidecar.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Limits {
    /// A peer must finish its TLS handshake within this.
    #[serde(deserialize_with = "duration")]
    pub tls_handshake_timeout: Duration,
    /// A connection's first request head must arrive within this of the
    /// connection's start, and each later HTTP/1 head within this of its
    /// first byte (slowloris); past it the connection is closed.
    #[serde(deserialize_with = "duration")]
    pub header_read_timeout: Duration,
    /// Largest request head accepted (431 beyond); at least 8 KiB.
    pub max_header_bytes: usize,
    /// Concurrent streams per HTTP/2 connection.
    pub h2_max_concurrent_streams: u32,
    /// Streams a client may reset before the server answers them, per
    /// connection (HTTP/2 rapid reset); past it the connection is closed.
    pub h2_max_pending_resets: usize,
    /// A connection with no request in flight is closed after this.
    #[serde(deserialize_with = "duration")]
    pub idle_timeout: Duration,
    /// Connecting to the local app: past this, 504.
    #[serde(deserialize_with = "duration")]
    pub app_connect_timeout: Duration,
    /// The app must start its response within this: past it, 504.
    #[serde(deserialize_with = "duration")]
    pub app_response_timeout: Duration,
    /// Connecting (TCP and TLS) to a peer sidecar: past this, 504.
    #[serde(deserialize_with = "duration")]
    pub peer_connect_timeout: Duration,
    /// Bytes of a body the sidecar holds ahead of a slow consumer, per
    /// HTTP/1 connection or HTTP/2 stream: HTTP/1 responses are paced to
    /// what the connection has written, reads from the app and HTTP/2
    /// send buffers stop at it; past it the sender waits (backpressure).
    /// Also the largest response head accepted from the app.
    pub buffer_window: u32,
    /// HTTP/2 flow-control window per stream (the connection's is 16
    /// times it): what a peer may send ahead of a slow consumer.
    pub h2_stream_window: u32,
    /// Open connections per listener. At the cap, the connection idle the
    /// longest is closed to make room; with none idle, the new one is
    /// closed at once.
    pub max_connections: usize,
    /// Open connections per source address on the inbound listeners.
    pub max_connections_per_source: usize,
    /// Failed TLS handshakes a source address may have within 10 s before
    /// its new connections are closed at accept for the rest of the 10 s;
    /// 0 turns this off.
    pub max_handshake_failures: u32,
    /// Requests in flight per sidecar; past it, 503 at once (load shedding).
    pub max_concurrent_requests: usize,
    /// On SIGTERM, in-flight requests get this long to finish.
    #[serde(deserialize_with = "duration")]
    pub drain_timeout: Duration,
}

impl Default for Limits {
    fn default() -> Self {
        Limits {
            tls_handshake_timeout: Duration::from_secs(10),
            header_read_timeout: Duration::from_secs(10),
            max_header_bytes: 64 * 1024,
            h2_max_concurrent_streams: 256,
            h2_max_pending_resets: 20,
            idle_timeout: Duration::from_secs(300),
            app_connect_timeout: Duration::from_secs(2),
            app_response_timeout: Duration::from_secs(60),
            peer_connect_timeout: Duration::from_secs(5),
            // 1,000 slow readers then cost about 64 MiB (pressure bench);
            // 16 KiB gives about 10% more bulk throughput for 60% more.
            buffer_window: 8 * 1024,
            h2_stream_window: 65_535,
            max_connections: 10_000,
            max_connections_per_source: 1_000,
            max_handshake_failures: 20,
            max_concurrent_requests: 10_000,
            drain_timeout: Duration::from_secs(20),
        }
    }
}

/// Ceiling for connection and request counts (tokio's semaphores hold fewer
/// than `usize::MAX >> 3` permits; nothing sensible needs more than this).
pub const MAX_COUNT: usize = 1_000_000;

/// hyper's floor for its read buffer.
pub const MIN_HEADER_BYTES: usize = 8 * 1024;

/// Bounds of `limits.buffer_window` and `limits.h2_stream_window`: hyper's
/// HTTP/1 buffer floor, and a ceiling past which they bound nothing useful.
pub const MIN_BUFFER_WINDOW: u32 = 8 * 1024;
pub const MAX_BUFFER_WINDOW: u32 = 16 * 1024 * 1024;

impl Limits {
    /// Checks the bounds types alone cannot say.
    pub(super) fn check(&self) -> Result<(), ConfigError> {
        if self.max_header_bytes < MIN_HEADER_BYTES {
            return Err(key_error(
                "limits.max_header_bytes",
                format!(
                    "{} is below the minimum of {MIN_HEADER_BYTES}",
                    self.max_header_bytes
                ),
            ));
        }
        for (key, value) in [
            ("limits.buffer_window", self.buffer_window),
            ("limits.h2_stream_window", self.h2_stream_window),
        ] {
            if !(MIN_BUFFER_WINDOW..=MAX_BUFFER_WINDOW).contains(&value) {
                return Err(key_error(
                    key,
                    format!("{value} is outside {MIN_BUFFER_WINDOW}..={MAX_BUFFER_WINDOW}"),
                ));
            }
        }
        for (key, value) in [
            ("limits.max_connections", self.max_connections),
            (
                "limits.max_connections_per_source",
                self.max_connections_per_source,
            ),
            (
                "limits.max_concurrent_requests",
                self.max_concurrent_requests,
            ),
            (
                "limits.h2_max_concurrent_streams",
                self.h2_max_concurrent_streams as usize,
            ),
        ] {
            if value == 0 {
                return Err(key_error(key, "must be at least 1"));
            }
            if value > MAX_COUNT {
                return Err(key_error(key, format!("must be at most {MAX_COUNT}")));
            }
        }
        for (key, value) in [
            ("limits.tls_handshake_timeout", self.tls_handshake_timeout),
            ("limits.header_read_timeout", self.header_read_timeout),
            ("limits.idle_timeout", self.idle_timeout),
            ("limits.app_connect_timeout", self.app_connect_timeout),
            ("limits.app_response_timeout", self.app_response_timeout),
            ("limits.peer_connect_timeout", self.peer_connect_timeout),
        ] {
            at_least_a_millisecond(key, value)?;
        }
        Ok(())
    }
}

/// Durations that drive timers must be at least 1 ms.
pub(super) fn at_least_a_millisecond(key: &str, value: Duration) -> Result<(), ConfigError> {
    if value < Duration::from_millis(1) {
        return Err(key_error(key, "must be at least 1ms"));
    }
    Ok(())
}
