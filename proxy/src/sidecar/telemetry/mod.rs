//! Traces: a client span in the outbound sidecar and a server span in the
//! inbound one for every request, W3C trace context (`traceparent`,
//! `tracestate`) taken from the caller and passed on, exported over OTLP
//! (gRPC or HTTP/protobuf) in batches off the request path. Configured only
//! by the standard `OTEL_*` variables; off unless an OTLP endpoint is set.
//!
//! The span pipeline is Warden's own (IDs and flags as W3C and OTLP define
//! them, `tracestate` checked with the `opentelemetry` crate's `TraceState`):
//! a sampled span is encoded to OTLP protobuf as it is recorded, into a
//! bounded queue that one task on the sidecar's runtime sends from. The OpenTelemetry
//! SDK's pipeline (span objects behind locks, a batch thread, conversion to
//! generated message structs, tonic) cost about 16 CPU-µs per span here;
//! see the README's tracing-cost figures.

mod access_log;
mod clock;
mod context;
mod export;
mod otlp;
mod queue;
mod settings;
mod span;

use std::sync::atomic::Ordering;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use http::HeaderMap;
use http::header::HeaderValue;

pub use access_log::{Access, access_log};
use clock::Clock;
pub use context::{Parent, Sampler, format_traceparent, parse_traceparent};
use export::export_loop;
pub use otlp::{Attributes, Kind};
use queue::Queue;
pub use queue::TraceStats;
use settings::{Settings, enabled};
pub use span::{ActiveSpan, put_method};
use span::{Recording, span_name};

/// The sidecar's tracer; present only when traces are exported.
pub struct Tracing {
    sampler: Sampler,
    clock: Clock,
    queue: Arc<Queue>,
    exporter: Mutex<Option<tokio::task::JoinHandle<()>>>,
}

fn nonzero<const N: usize>() -> [u8; N] {
    loop {
        let id: [u8; N] = rand::random();
        if id != [0; N] {
            return id;
        }
    }
}

impl Tracing {
    /// From `OTEL_*` variables (endpoint, protocol, headers, timeout,
    /// sampler, service name, resource attributes, batching). Must run
    /// inside the tokio runtime: the exporter is a task on it.
    pub fn from_env(default_service: &str) -> Result<Option<Tracing>, String> {
        let env = |k: &str| std::env::var(k).ok();
        if !enabled(&env) {
            return Ok(None);
        }
        let settings = Settings::from_env(&env, default_service)?;
        let queue = Arc::new(Queue::new(settings.max_queue, settings.max_batch));
        let sampler = settings.sampler;
        let exporter = tokio::spawn(export_loop(queue.clone(), settings));
        Ok(Some(Tracing {
            sampler,
            clock: Clock::new(),
            queue,
            exporter: Mutex::new(Some(exporter)),
        }))
    }

    /// Starts a span of `kind` as the child of the trace context in
    /// `headers` (a new trace if there is none), and writes its own context
    /// back into `headers`, for the next hop. `attributes` runs only for a
    /// span that is recorded (sampled).
    pub fn start(
        &self,
        kind: Kind,
        method: &http::Method,
        headers: &mut HeaderMap,
        attributes: impl FnOnce(&mut Attributes<'_>),
    ) -> ActiveSpan {
        // No `traceparent`: a new trace, without any parsing.
        let parent = if headers.contains_key(&context::TRACEPARENT) {
            context::extract(headers)
        } else {
            None
        };
        let trace_id = parent.as_ref().map_or_else(nonzero, |p| p.trace_id);
        let span_id = nonzero();
        let sampled = self.sampler.sampled(parent.as_ref(), &trace_id);
        let traceparent = context::format_traceparent(&trace_id, &span_id, sampled);
        if let Ok(mut value) = HeaderValue::from_bytes(&traceparent) {
            // New on every request: HPACK's table would only churn on it.
            value.set_sensitive(true);
            headers.insert(context::TRACEPARENT, value);
        }
        let state = parent
            .as_ref()
            .and_then(|p| p.state.as_ref())
            .map(|s| s.header());
        // An empty or unparsable `tracestate` is not passed on.
        match state.as_deref().map(HeaderValue::from_str) {
            Some(Ok(value)) => {
                headers.insert(context::TRACESTATE, value);
            }
            _ if parent.is_some() || headers.contains_key(&context::TRACESTATE) => {
                headers.remove(&context::TRACESTATE);
            }
            _ => {}
        }
        let recording = sampled.then(|| {
            let started = Instant::now();
            let start_unix_nanos = self.clock.unix_nanos(started);
            let mut body = Vec::with_capacity(768);
            otlp::begin_span(
                &mut body,
                &otlp::SpanStart {
                    trace_id: &trace_id,
                    span_id: &span_id,
                    parent_span_id: parent.as_ref().map(|p| &p.span_id),
                    trace_state: state.as_deref(),
                    name: span_name(method),
                    kind,
                    start_unix_nanos,
                },
            );
            attributes(&mut otlp::attributes(&mut body));
            Recording {
                queue: self.queue.clone(),
                started,
                start_unix_nanos,
                remote_parent: parent.is_some(),
                error_status: None,
                body,
            }
        });
        ActiveSpan {
            trace_id,
            recording,
        }
    }

    /// Export counts for `/metrics`.
    pub fn stats(&self) -> &TraceStats {
        &self.queue.stats
    }

    /// Sends what is queued, giving it at most `limit`, and stops the
    /// exporter.
    pub async fn shutdown(&self, limit: Duration) {
        self.queue.stopping.store(true, Ordering::Relaxed);
        self.queue.stop.notify_one();
        let task = self.exporter.lock().ok().and_then(|mut t| t.take());
        if let Some(mut task) = task
            && tokio::time::timeout(limit, &mut task).await.is_err()
        {
            task.abort();
            tracing::warn!(
                ?limit,
                "trace export cut off at shutdown; the batch in flight is lost"
            );
        }
        let left = self.queue.len();
        if left > 0 {
            tracing::warn!(spans = left, "spans not exported before shutdown");
        }
    }
}

impl Drop for Tracing {
    fn drop(&mut self) {
        if let Ok(mut task) = self.exporter.lock()
            && let Some(task) = task.take()
        {
            task.abort();
        }
    }
}
