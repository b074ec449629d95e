//! The exporter task: sends batches of queued spans to the collector.

use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use super::otlp;
use super::queue::Queue;
use super::settings::Settings;

/// How often a failing collector may log a warning.
const WARN_EVERY: Duration = Duration::from_secs(30);

/// Drains the queue: a batch when one is full, whatever is there every
/// schedule delay, and everything at shutdown. One export at a time; while
/// it is out, spans wait in the bounded queue (past its size they are
/// dropped and counted, never waited for).
pub(super) async fn export_loop(queue: Arc<Queue>, settings: Settings) {
    let resource = otlp::encode_resource(&settings.resource);
    let scope = otlp::encode_scope("warden", env!("CARGO_PKG_VERSION"));
    let mut last_warning: Option<Instant> = None;
    let mut unreported = 0u64;
    loop {
        let stopping = tokio::select! {
            _ = queue.full.notified() => false,
            _ = tokio::time::sleep(settings.schedule_delay) => false,
            _ = queue.stop.notified() => true,
        } || queue.stopping.load(Ordering::Relaxed);
        loop {
            let (spans, count) = queue.take();
            if count == 0 {
                break;
            }
            let mut body = settings
                .sender
                .body(64 + resource.len() + scope.len() + spans.len());
            otlp::encode_request(&mut body, &resource, &scope, &spans);
            drop(spans);
            let count = count as u64;
            let stats = &queue.stats;
            match settings.sender.send(body).await {
                Ok(()) => {
                    stats.exported.fetch_add(count, Ordering::Relaxed);
                    stats.exports_ok.fetch_add(1, Ordering::Relaxed);
                }
                Err(e) => {
                    stats.export_failed.fetch_add(count, Ordering::Relaxed);
                    stats.exports_failed.fetch_add(1, Ordering::Relaxed);
                    unreported += 1;
                    if last_warning.is_none_or(|t| t.elapsed() >= WARN_EVERY) {
                        tracing::warn!(
                            collector = %settings.sender.uri(),
                            error = %e,
                            failed_exports = unreported,
                            "trace export failed; spans dropped (next warning in 30 s at the earliest)"
                        );
                        last_warning = Some(Instant::now());
                        unreported = 0;
                    }
                }
            }
            // A partial batch: wait for the next tick unless shutting down.
            if !stopping && queue.len() < queue.max_batch {
                break;
            }
        }
        if stopping {
            return;
        }
    }
}
