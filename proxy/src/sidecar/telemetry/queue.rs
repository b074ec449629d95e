//! The bounded queue of encoded spans between the request path and the
//! exporter task, with the export counts.

use std::sync::Mutex;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};

use tokio::sync::Notify;

use super::otlp;

/// Counts for `/metrics`.
#[derive(Default)]
pub struct TraceStats {
    pub exported: AtomicU64,
    pub queue_full: AtomicU64,
    pub export_failed: AtomicU64,
    pub exports_ok: AtomicU64,
    pub exports_failed: AtomicU64,
}

/// A batch stays under the 4 MiB message limit collectors apply by default.
pub(super) const MAX_BATCH_BYTES: usize = 3 << 20;
/// Encoded spans waiting, at most (besides `OTEL_BSP_MAX_QUEUE_SIZE`).
const MAX_QUEUE_BYTES: usize = 16 << 20;

/// Finished spans waiting for the exporter, already encoded: `bytes` holds
/// them as `ScopeSpans.spans` fields, `ends` where each one ends.
#[derive(Default)]
struct Pending {
    bytes: Vec<u8>,
    ends: Vec<usize>,
}

pub(super) struct Queue {
    pending: Mutex<Pending>,
    max_queue: usize,
    pub(super) max_batch: usize,
    /// A full batch is waiting.
    pub(super) full: Notify,
    pub(super) stop: Notify,
    pub(super) stopping: AtomicBool,
    pub(super) stats: TraceStats,
}

impl Queue {
    pub(super) fn new(max_queue: usize, max_batch: usize) -> Queue {
        Queue {
            pending: Mutex::new(Pending::default()),
            max_queue,
            max_batch,
            full: Notify::new(),
            stop: Notify::new(),
            stopping: AtomicBool::new(false),
            stats: TraceStats::default(),
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Pending> {
        match self.pending.lock() {
            Ok(pending) => pending,
            Err(poisoned) => poisoned.into_inner(),
        }
    }

    /// Queues one encoded span body, or counts it dropped when full (in
    /// spans, or in bytes).
    pub(super) fn push(&self, body: &[u8]) {
        let mut pending = self.lock();
        if pending.ends.len() >= self.max_queue
            || pending.bytes.len() + body.len() > MAX_QUEUE_BYTES
        {
            drop(pending);
            self.stats.queue_full.fetch_add(1, Ordering::Relaxed);
            return;
        }
        otlp::put_span(&mut pending.bytes, body);
        let end = pending.bytes.len();
        pending.ends.push(end);
        let len = pending.ends.len();
        drop(pending);
        if len == self.max_batch {
            self.full.notify_one();
        }
    }

    /// Up to one batch, oldest first: the encoded spans and their count.
    pub(super) fn take(&self) -> (Vec<u8>, usize) {
        let mut pending = self.lock();
        // At most `max_batch` spans and (past the first) `MAX_BATCH_BYTES`.
        let count = pending.ends[..pending.ends.len().min(self.max_batch)]
            .iter()
            .take_while(|&&end| end <= MAX_BATCH_BYTES)
            .count()
            .max(pending.ends.len().min(1));
        if count == 0 {
            return (Vec::new(), 0);
        }
        if count == pending.ends.len() {
            // The next batch will likely be about as large as this one.
            let capacity = pending.bytes.len();
            pending.ends.clear();
            let bytes = std::mem::replace(&mut pending.bytes, Vec::with_capacity(capacity));
            return (bytes, count);
        }
        let cut = pending.ends[count - 1];
        let rest = pending.bytes.split_off(cut);
        let bytes = std::mem::replace(&mut pending.bytes, rest);
        pending.ends.drain(..count);
        for end in &mut pending.ends {
            *end -= cut;
        }
        (bytes, count)
    }

    pub(super) fn len(&self) -> usize {
        self.lock().ends.len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_queue_hands_out_batches_in_order_and_drops_past_its_size() {
        let queue = Queue::new(5, 2);
        for body in [&b"a"[..], b"bb", b"ccc", b"dddd", b"eeeee", b"ffffff"] {
            queue.push(body);
        }
        assert_eq!(queue.stats.queue_full.load(Ordering::Relaxed), 1);
        // Each span is `ScopeSpans.spans` (tag 0x12), its length, its body.
        let expect = |bodies: &[&[u8]]| {
            let mut out = Vec::new();
            for b in bodies {
                otlp::put_span(&mut out, b);
            }
            out
        };
        assert_eq!(queue.take(), (expect(&[b"a", b"bb"]), 2));
        assert_eq!(queue.take(), (expect(&[b"ccc", b"dddd"]), 2));
        queue.push(b"g");
        assert_eq!(queue.take(), (expect(&[b"eeeee", b"g"]), 2));
        assert_eq!(queue.take(), (Vec::new(), 0));
        assert_eq!(queue.len(), 0);
    }

    #[test]
    fn batches_and_the_queue_are_bounded_in_bytes_too() {
        let queue = Queue::new(100, 100);
        let big = vec![b'x'; 2 << 20];
        for _ in 0..9 {
            queue.push(&big);
        }
        assert_eq!(queue.len(), 7, "16 MiB hold seven 2 MiB spans");
        assert_eq!(queue.stats.queue_full.load(Ordering::Relaxed), 2);
        let (bytes, count) = queue.take();
        assert_eq!(count, 1, "a second 2 MiB span would pass 3 MiB");
        assert!(bytes.len() > 2 << 20 && bytes.len() < MAX_BATCH_BYTES);
        assert_eq!(queue.len(), 6);
    }
}
