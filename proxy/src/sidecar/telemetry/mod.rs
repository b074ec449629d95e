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

mod context;
mod otlp;

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use http::HeaderMap;
use http::header::{HeaderName, HeaderValue};
use tokio::sync::Notify;

pub use context::{Parent, Sampler, format_traceparent, parse_traceparent};
pub use otlp::{Attributes, Kind};
use otlp::{Protocol, Sender};

/// Export settings from the `OTEL_*` variables.
struct Settings {
    sender: Sender,
    sampler: Sampler,
    resource: Vec<(String, String)>,
    schedule_delay: Duration,
    max_queue: usize,
    max_batch: usize,
}

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
const MAX_BATCH_BYTES: usize = 3 << 20;
/// Encoded spans waiting, at most (besides `OTEL_BSP_MAX_QUEUE_SIZE`).
const MAX_QUEUE_BYTES: usize = 16 << 20;

/// Finished spans waiting for the exporter, already encoded: `bytes` holds
/// them as `ScopeSpans.spans` fields, `ends` where each one ends.
#[derive(Default)]
struct Pending {
    bytes: Vec<u8>,
    ends: Vec<usize>,
}

struct Queue {
    pending: Mutex<Pending>,
    max_queue: usize,
    max_batch: usize,
    /// A full batch is waiting.
    full: Notify,
    stop: Notify,
    stopping: AtomicBool,
    stats: TraceStats,
}

impl Queue {
    fn new(max_queue: usize, max_batch: usize) -> Queue {
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
    fn push(&self, body: &[u8]) {
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
    fn take(&self) -> (Vec<u8>, usize) {
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

    fn len(&self) -> usize {
        self.lock().ends.len()
    }
}

/// The sidecar's tracer; present only when traces are exported.
pub struct Tracing {
    sampler: Sampler,
    clock: Clock,
    queue: Arc<Queue>,
    exporter: Mutex<Option<tokio::task::JoinHandle<()>>>,
}

/// Logs a telemetry setting that does not parse; the default applies. As
/// the OpenTelemetry configuration rules ask, a mistake in these variables
/// (often set for a whole pod) never stops the data plane; only an endpoint
/// or protocol that cannot be used does.
fn warn_default(problem: &str) {
    tracing::warn!("{problem}; using the default");
}

/// Whether the environment asks for OTLP trace export.
/// `OTEL_TRACES_EXPORTER` is a list: tracing is on when it names `otlp` (or
/// is unset); other exporters are not available and are ignored.
fn enabled(env: &dyn Fn(&str) -> Option<String>) -> bool {
    let set = |k: &str| env(k).is_some_and(|v| !v.trim().is_empty());
    if env("OTEL_SDK_DISABLED").is_some_and(|v| v.trim().eq_ignore_ascii_case("true")) {
        return false;
    }
    if let Some(list) = env("OTEL_TRACES_EXPORTER").filter(|v| !v.trim().is_empty()) {
        let names: Vec<&str> = list.split(',').map(str::trim).collect();
        let others: Vec<&&str> = names
            .iter()
            .filter(|n| !matches!(**n, "otlp" | "none" | ""))
            .collect();
        if !others.is_empty() {
            tracing::warn!(
                "OTEL_TRACES_EXPORTER names {others:?}: only otlp is available, the rest is ignored"
            );
        }
        if !names.contains(&"otlp") {
            return false;
        }
    }
    set("OTEL_EXPORTER_OTLP_ENDPOINT") || set("OTEL_EXPORTER_OTLP_TRACES_ENDPOINT")
}

/// The `_TRACES_` form of a variable if set and not empty, else the general
/// one (an empty variable counts as unset).
fn traces_var(env: &dyn Fn(&str) -> Option<String>, general: &str) -> Option<(String, String)> {
    let specific = general.replacen("OTEL_EXPORTER_OTLP_", "OTEL_EXPORTER_OTLP_TRACES_", 1);
    let value = |name: &str| {
        env(name)
            .filter(|v| !v.trim().is_empty())
            .map(|v| (name.to_owned(), v))
    };
    value(&specific).or_else(|| value(general))
}

/// A whole number of milliseconds (or items), the default when unset or
/// unparsable.
fn number(name: &str, value: Option<&str>, default: u64) -> u64 {
    match value.map(str::trim).filter(|v| !v.is_empty()) {
        None => default,
        Some(v) => v.parse().unwrap_or_else(|_| {
            warn_default(&format!("{name}={v:?} is not a whole number"));
            default
        }),
    }
}

/// `%XX` escapes of a W3C-baggage-style value (`OTEL_EXPORTER_OTLP_HEADERS`,
/// `OTEL_RESOURCE_ATTRIBUTES`).
/// Strict: every `%` must start an escape of two hex digits, and the result
/// must be UTF-8.
fn percent_decode(text: &str) -> Option<String> {
    let bytes = text.as_bytes();
    let stray = bytes.iter().enumerate().any(|(i, &b)| {
        b == b'%'
            && !bytes
                .get(i + 1..i + 3)
                .is_some_and(|pair| pair.iter().all(u8::is_ascii_hexdigit))
    });
    if stray {
        return None;
    }
    percent_encoding::percent_decode_str(text)
        .decode_utf8()
        .ok()
        .map(std::borrow::Cow::into_owned)
}

/// `k=v,k2=v2` with percent-encoded values; an entry that does not parse
/// is left out, with a warning.
fn key_values(name: &str, text: &str) -> Vec<(String, String)> {
    let mut out = Vec::new();
    for item in text
        .split(',')
        .map(str::trim)
        .filter(|item| !item.is_empty())
    {
        let parsed = item
            .split_once('=')
            .filter(|(k, _)| !k.trim().is_empty())
            .and_then(|(k, v)| Some((k.trim().to_owned(), percent_decode(v.trim())?)));
        match parsed {
            Some(kv) => out.push(kv),
            None => tracing::warn!("{name}: {item:?} is not key=value (percent-encoded); left out"),
        }
    }
    out
}

impl Settings {
    fn from_env(
        env: &dyn Fn(&str) -> Option<String>,
        default_service: &str,
    ) -> Result<Settings, String> {
        let protocol = match traces_var(env, "OTEL_EXPORTER_OTLP_PROTOCOL") {
            None => Protocol::Grpc,
            Some((name, value)) => match value.trim() {
                "grpc" => Protocol::Grpc,
                "http/protobuf" => Protocol::HttpProtobuf,
                other => {
                    return Err(format!(
                        "{name}={other:?} is not supported: use grpc or http/protobuf"
                    ));
                }
            },
        };
        // The traces endpoint is used as given; the general one gets
        // `/v1/traces` appended for HTTP (the OTLP exporter rules).
        let endpoint =
            match env("OTEL_EXPORTER_OTLP_TRACES_ENDPOINT").filter(|v| !v.trim().is_empty()) {
                Some(e) => e.trim().to_owned(),
                None => {
                    let base = env("OTEL_EXPORTER_OTLP_ENDPOINT").unwrap_or_default();
                    let base = base.trim().trim_end_matches('/');
                    match protocol {
                        Protocol::Grpc => base.to_owned(),
                        Protocol::HttpProtobuf => format!("{base}/v1/traces"),
                    }
                }
            };
        let mut headers = HeaderMap::new();
        if let Some((var, text)) = traces_var(env, "OTEL_EXPORTER_OTLP_HEADERS") {
            for (k, v) in key_values(&var, &text) {
                match (
                    HeaderName::from_bytes(k.to_ascii_lowercase().as_bytes()),
                    HeaderValue::from_str(&v),
                ) {
                    (Ok(name), Ok(mut value)) => {
                        // Credentials, often: never HPACK-indexed.
                        value.set_sensitive(true);
                        headers.append(name, value);
                    }
                    _ => tracing::warn!("{var}: {k:?} is not a usable header; left out"),
                }
            }
        }
        let timeout = match traces_var(env, "OTEL_EXPORTER_OTLP_TIMEOUT") {
            Some((name, value)) => number(&name, Some(&value), 10_000),
            None => 10_000,
        };
        let sender = Sender::new(
            &endpoint,
            protocol,
            headers,
            Duration::from_millis(timeout.max(1)),
        )?;
        let name = env("OTEL_TRACES_SAMPLER");
        let arg = env("OTEL_TRACES_SAMPLER_ARG");
        let sampler = Sampler::from_env(name.as_deref(), arg.as_deref()).unwrap_or_else(|e| {
            warn_default(&e);
            // A bad ratio: the named sampler at ratio 1; a bad name: the default.
            Sampler::from_env(name.as_deref(), None)
                .unwrap_or(Sampler::ParentBased(context::Root::AlwaysOn))
        });
        // Resource: the SDK description, then OTEL_RESOURCE_ATTRIBUTES, then
        // the service name (OTEL_SERVICE_NAME over service.name over ours).
        let mut resource = vec![
            ("telemetry.sdk.name".to_owned(), "warden".to_owned()),
            ("telemetry.sdk.language".to_owned(), "rust".to_owned()),
            (
                "telemetry.sdk.version".to_owned(),
                env!("CARGO_PKG_VERSION").to_owned(),
            ),
        ];
        if let Some(text) = env("OTEL_RESOURCE_ATTRIBUTES") {
            for (k, v) in key_values("OTEL_RESOURCE_ATTRIBUTES", &text) {
                resource.retain(|(key, _)| *key != k);
                resource.push((k, v));
            }
        }
        let service = env("OTEL_SERVICE_NAME")
            .map(|s| s.trim().to_owned())
            .filter(|s| !s.is_empty());
        match service {
            Some(name) => {
                resource.retain(|(key, _)| key != "service.name");
                resource.push(("service.name".to_owned(), name));
            }
            None if !resource.iter().any(|(k, _)| k == "service.name") => {
                resource.push(("service.name".to_owned(), default_service.to_owned()));
            }
            None => {}
        }
        let bsp = |name: &str, default: u64| number(name, env(name).as_deref(), default);
        let max_queue = usize::try_from(bsp("OTEL_BSP_MAX_QUEUE_SIZE", 2048))
            .unwrap_or(usize::MAX)
            .max(1);
        let max_batch = usize::try_from(bsp("OTEL_BSP_MAX_EXPORT_BATCH_SIZE", 512))
            .unwrap_or(usize::MAX)
            .clamp(1, max_queue);
        Ok(Settings {
            sender,
            sampler,
            resource,
            schedule_delay: Duration::from_millis(bsp("OTEL_BSP_SCHEDULE_DELAY", 5000).max(1)),
            max_queue,
            max_batch,
        })
    }
}

/// A span from its start to its end. Dropping it ends it (a request whose
/// caller went away still leaves its span, without a status code).
pub struct ActiveSpan {
    trace_id: [u8; 16],
    /// Present only for a recorded (sampled) span.
    recording: Option<Recording>,
}

struct Recording {
    queue: Arc<Queue>,
    started: Instant,
    start_unix_nanos: u64,
    remote_parent: bool,
    error_status: Option<u16>,
    /// The span's protobuf body so far: written as the span goes.
    body: Vec<u8>,
}

impl ActiveSpan {
    /// The trace ID, as in `traceparent` (for audit and access lines).
    pub fn trace_id(&self) -> String {
        let mut out = [0u8; 32];
        context::hex_into(&mut out, &self.trace_id);
        String::from_utf8_lossy(&out).into_owned()
    }

    /// Sets the response status (and, for a sampled span, more attributes),
    /// then ends the span. Server spans are errors at 5xx; client spans at
    /// 4xx and 5xx too (the OTel HTTP conventions).
    pub fn finish(
        mut self,
        status: u16,
        server: bool,
        attributes: impl FnOnce(&mut Attributes<'_>),
    ) {
        if let Some(r) = &mut self.recording {
            let mut list = otlp::attributes(&mut r.body);
            list.int("http.response.status_code", i64::from(status));
            attributes(&mut list);
            if status >= 500 || (!server && status >= 400) {
                r.error_status = Some(status);
            }
        }
    }
}

impl Drop for ActiveSpan {
    fn drop(&mut self) {
        let Some(mut r) = self.recording.take() else {
            return;
        };
        let elapsed = u64::try_from(r.started.elapsed().as_nanos()).unwrap_or(u64::MAX);
        otlp::end_span(
            &mut r.body,
            r.start_unix_nanos.saturating_add(elapsed),
            r.error_status,
            r.remote_parent,
        );
        r.queue.push(&r.body);
    }
}

/// Wall-clock time from the monotonic clock: one clock read per span
/// boundary instead of two, against a base re-read every second (so a
/// stepped wall clock shows up in spans within a second).
struct Clock {
    base: Mutex<(Instant, u64)>,
}

impl Clock {
    fn new() -> Clock {
        Clock {
            base: Mutex::new((Instant::now(), Self::wall())),
        }
    }

    fn wall() -> u64 {
        SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map(|d| u64::try_from(d.as_nanos()).unwrap_or(u64::MAX))
            .unwrap_or(0)
    }

    /// Unix nanoseconds at `now`.
    fn unix_nanos(&self, now: Instant) -> u64 {
        let mut base = match self.base.lock() {
            Ok(base) => base,
            Err(poisoned) => poisoned.into_inner(),
        };
        let since = now.saturating_duration_since(base.0);
        if since >= Duration::from_secs(1) {
            *base = (Instant::now(), Self::wall());
            return base.1;
        }
        base.1
            .saturating_add(u64::try_from(since.as_nanos()).unwrap_or(u64::MAX))
    }
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

/// How often a failing collector may log a warning.
const WARN_EVERY: Duration = Duration::from_secs(30);

/// Drains the queue: a batch when one is full, whatever is there every
/// schedule delay, and everything at shutdown. One export at a time; while
/// it is out, spans wait in the bounded queue (past its size they are
/// dropped and counted, never waited for).
async fn export_loop(queue: Arc<Queue>, settings: Settings) {
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

/// `http.request.method`: the method, or `_OTHER` with the method in
/// `http.request.method_original` for one outside the standard set (the
/// OTel HTTP conventions).
pub fn put_method(list: &mut Attributes<'_>, method: &http::Method) {
    match span_name(method) {
        "HTTP" => {
            list.str("http.request.method", "_OTHER");
            list.str("http.request.method_original", method.as_str());
        }
        name => list.str("http.request.method", name),
    }
}

/// The span name: the method, as the OTel HTTP conventions have it
/// (`HTTP` for methods outside the standard set).
fn span_name(method: &http::Method) -> &'static str {
    use http::Method;
    match *method {
        Method::GET => "GET",
        Method::HEAD => "HEAD",
        Method::POST => "POST",
        Method::PUT => "PUT",
        Method::PATCH => "PATCH",
        Method::DELETE => "DELETE",
        Method::OPTIONS => "OPTIONS",
        Method::CONNECT => "CONNECT",
        Method::TRACE => "TRACE",
        _ => "HTTP",
    }
}

/// One access-log line.
pub struct Access<'a> {
    pub direction: &'static str,
    pub request_id: &'a str,
    pub trace_id: Option<String>,
    pub method: &'a str,
    pub path: &'a str,
    pub status: u16,
    pub duration: std::time::Duration,
    pub peer: &'a str,
    pub decision: &'static str,
}

/// Writes the line to stdout, as one JSON object.
pub fn access_log(entry: &Access<'_>) {
    use std::io::Write;
    let line = serde_json::json!({
        "time": crate::identity::Timestamp::now().to_string(),
        "direction": entry.direction,
        "request_id": entry.request_id,
        "trace_id": entry.trace_id,
        "method": entry.method,
        "path": entry.path,
        "status": entry.status,
        "duration_ms": entry.duration.as_secs_f64() * 1000.0,
        "peer": entry.peer,
        "decision": entry.decision,
    });
    let mut out = std::io::stdout().lock();
    let _ = writeln!(out, "{line}");
}

#[cfg(test)]
mod tests {
    use super::*;

    fn env_of(vars: &[(&str, &str)]) -> impl Fn(&str) -> Option<String> {
        let vars: Vec<(String, String)> = vars
            .iter()
            .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
            .collect();
        move |k: &str| {
            vars.iter()
                .find(|(key, _)| key == k)
                .map(|(_, v)| v.clone())
        }
    }

    #[test]
    fn enabled_only_with_an_endpoint_and_not_disabled() {
        let endpoint = ("OTEL_EXPORTER_OTLP_ENDPOINT", "http://127.0.0.1:4317");
        assert!(!enabled(&env_of(&[])));
        assert!(enabled(&env_of(&[endpoint])));
        assert!(!enabled(&env_of(&[
            endpoint,
            ("OTEL_SDK_DISABLED", "true")
        ])));
        assert!(!enabled(&env_of(&[
            endpoint,
            ("OTEL_TRACES_EXPORTER", "none")
        ])));
        assert!(!enabled(&env_of(&[
            endpoint,
            ("OTEL_TRACES_EXPORTER", "zipkin")
        ])));
        assert!(enabled(&env_of(&[
            endpoint,
            ("OTEL_TRACES_EXPORTER", "otlp, console")
        ])));
    }

    #[tokio::test]
    async fn settings_from_the_standard_variables() {
        let s = Settings::from_env(
            &env_of(&[
                ("OTEL_EXPORTER_OTLP_ENDPOINT", "http://collector:4318/"),
                ("OTEL_EXPORTER_OTLP_PROTOCOL", "http/protobuf"),
                (
                    "OTEL_RESOURCE_ATTRIBUTES",
                    "service.name=from-attrs,deployment.environment=prod%20eu",
                ),
                ("OTEL_BSP_MAX_QUEUE_SIZE", "100"),
                ("OTEL_BSP_MAX_EXPORT_BATCH_SIZE", "500"),
            ]),
            "warden-orders",
        )
        .expect("settings");
        assert_eq!(
            s.sender.uri().to_string(),
            "http://collector:4318/v1/traces"
        );
        assert!(
            s.resource
                .contains(&("service.name".to_owned(), "from-attrs".to_owned()))
        );
        assert!(
            s.resource
                .contains(&("deployment.environment".to_owned(), "prod eu".to_owned()))
        );
        assert_eq!(
            (s.max_queue, s.max_batch),
            (100, 100),
            "batch capped by the queue"
        );
        let named = Settings::from_env(
            &env_of(&[
                (
                    "OTEL_EXPORTER_OTLP_TRACES_ENDPOINT",
                    "http://127.0.0.1:4317",
                ),
                ("OTEL_SERVICE_NAME", "orders"),
                ("OTEL_RESOURCE_ATTRIBUTES", "service.name=ignored"),
            ]),
            "warden-orders",
        )
        .expect("settings");
        assert_eq!(
            named.sender.uri().to_string(),
            "http://127.0.0.1:4317/opentelemetry.proto.collector.trace.v1.TraceService/Export"
        );
        let names: Vec<_> = named
            .resource
            .iter()
            .filter(|(k, _)| k == "service.name")
            .collect();
        assert_eq!(names, [&("service.name".to_owned(), "orders".to_owned())]);
        // What cannot be used stops the sidecar.
        for bad in [
            vec![("OTEL_EXPORTER_OTLP_ENDPOINT", "https://collector:4317")],
            vec![("OTEL_EXPORTER_OTLP_ENDPOINT", "collector:4317")],
            vec![
                ("OTEL_EXPORTER_OTLP_ENDPOINT", "http://c:4317"),
                ("OTEL_EXPORTER_OTLP_PROTOCOL", "http/json"),
            ],
        ] {
            let err = Settings::from_env(&env_of(&bad), "w").err();
            assert!(err.is_some(), "{bad:?} accepted");
        }
        // Mistakes elsewhere fall back to the defaults.
        let lenient = Settings::from_env(
            &env_of(&[
                ("OTEL_EXPORTER_OTLP_ENDPOINT", "http://c:4318"),
                ("OTEL_EXPORTER_OTLP_TRACES_PROTOCOL", " "),
                ("OTEL_EXPORTER_OTLP_PROTOCOL", "http/protobuf"),
                ("OTEL_EXPORTER_OTLP_HEADERS", "novalue,x-token=a%20b,bad%=1"),
                ("OTEL_EXPORTER_OTLP_TIMEOUT", "10s"),
                ("OTEL_TRACES_SAMPLER", "traceidratio"),
                ("OTEL_TRACES_SAMPLER_ARG", "2"),
                ("OTEL_BSP_MAX_QUEUE_SIZE", "lots"),
                ("OTEL_RESOURCE_ATTRIBUTES", "=x,team=payments"),
            ]),
            "w",
        )
        .expect("lenient settings");
        assert_eq!(
            lenient.sender.uri().to_string(),
            "http://c:4318/v1/traces",
            "an empty _TRACES_ variable falls back to the general one"
        );
        assert_eq!(
            lenient.sampler,
            Sampler::from_env(Some("traceidratio"), Some("1")).expect("ratio 1")
        );
        assert_eq!(lenient.max_queue, 2048);
        assert!(
            lenient
                .resource
                .contains(&("team".to_owned(), "payments".to_owned()))
        );
        let unknown = Settings::from_env(
            &env_of(&[
                ("OTEL_EXPORTER_OTLP_ENDPOINT", "http://c:4317"),
                ("OTEL_TRACES_SAMPLER", "jaeger_remote"),
            ]),
            "w",
        )
        .expect("settings");
        assert_eq!(
            unknown.sampler,
            Sampler::ParentBased(context::Root::AlwaysOn)
        );
    }

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
    fn nonstandard_methods_are_other_with_the_original_kept() {
        let encoded = |method: &str| {
            let mut buf = Vec::new();
            let method = http::Method::from_bytes(method.as_bytes()).expect("method");
            put_method(&mut otlp::attributes(&mut buf), &method);
            String::from_utf8_lossy(&buf).into_owned()
        };
        let purge = encoded("PURGE");
        assert!(
            purge.contains("_OTHER")
                && purge.contains("http.request.method_original")
                && purge.contains("PURGE")
        );
        let get = encoded("GET");
        assert!(get.contains("GET") && !get.contains("_OTHER") && !get.contains("original"));
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

    #[test]
    fn long_attribute_values_are_cut_at_a_character_boundary() {
        let mut buf = Vec::new();
        // "a" then two-byte characters: byte 2048 falls inside one.
        let long = format!("a{}", "é".repeat(5000));
        otlp::attributes(&mut buf).str("url.path", &long);
        assert!(buf.len() < otlp::MAX_VALUE_BYTES + 32, "{}", buf.len());
        let value = format!("a{}", "é".repeat(1023));
        assert!(
            buf.ends_with(value.as_bytes()),
            "cut at 2047 bytes, after a whole character"
        );
    }

    #[test]
    fn percent_decoding() {
        assert_eq!(percent_decode("a%20b%2Cc").as_deref(), Some("a b,c"));
        assert_eq!(percent_decode("bad%2"), None);
        assert_eq!(percent_decode("bad%zz"), None);
        assert_eq!(percent_decode("bad%+f"), None);
    }
}
