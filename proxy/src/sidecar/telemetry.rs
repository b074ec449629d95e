//! Traces: a client span in the outbound sidecar and a server span in the
//! inbound one for every request, W3C trace context (`traceparent`,
//! `tracestate`) taken from the caller and passed on, exported over OTLP
//! (gRPC) in batches off the request path. Configured only by the standard
//! `OTEL_*` variables; off unless an OTLP endpoint is set.

use http::HeaderMap;
use http::header::{HeaderName, HeaderValue};
use opentelemetry::propagation::{Extractor, TextMapPropagator};
use opentelemetry::trace::{
    Span, SpanKind, Status, TraceContextExt, TraceFlags, Tracer, TracerProvider as _,
};
use opentelemetry::{Context, KeyValue, StringValue, Value};
use opentelemetry_otlp::WithExportConfig as _;
use opentelemetry_sdk::Resource;
use opentelemetry_sdk::error::{OTelSdkError, OTelSdkResult};
use opentelemetry_sdk::propagation::TraceContextPropagator;
use opentelemetry_sdk::trace::{SdkTracer, SdkTracerProvider, SpanData, SpanExporter};

struct Extract<'a>(&'a HeaderMap);

impl Extractor for Extract<'_> {
    fn get(&self, key: &str) -> Option<&str> {
        self.0.get(key).and_then(|v| v.to_str().ok())
    }

    fn keys(&self) -> Vec<&str> {
        self.0.keys().map(HeaderName::as_str).collect()
    }
}

const TRACEPARENT: &str = "traceparent";
const TRACESTATE: &str = "tracestate";

/// Lowercase hex of `bytes` into `out` (twice as long).
fn hex_into(out: &mut [u8], bytes: &[u8]) {
    const HEX: &[u8; 16] = b"0123456789abcdef";
    for (pair, b) in out.chunks_exact_mut(2).zip(bytes) {
        pair[0] = HEX[usize::from(b >> 4)];
        pair[1] = HEX[usize::from(b & 0x0f)];
    }
}

/// Writes `cx`'s span context as `traceparent` (and `tracestate` when it
/// has one) into `headers`. The W3C propagator does the same with string
/// formatting and always sends `tracestate`, even empty; this writes the 55
/// bytes directly and leaves an empty `tracestate` out.
fn inject(cx: &Context, headers: &mut HeaderMap) {
    let span = cx.span();
    let sc = span.span_context();
    if !sc.is_valid() {
        return;
    }
    // version "00", trace id, span id, flags: "00-<32 hex>-<16 hex>-<2 hex>".
    let mut buf = *b"00-00000000000000000000000000000000-0000000000000000-00";
    hex_into(&mut buf[3..35], &sc.trace_id().to_bytes());
    hex_into(&mut buf[36..52], &sc.span_id().to_bytes());
    hex_into(
        &mut buf[53..55],
        &[(sc.trace_flags() & TraceFlags::SAMPLED).to_u8()],
    );
    if let Ok(value) = HeaderValue::from_bytes(&buf) {
        headers.insert(HeaderName::from_static(TRACEPARENT), value);
    }
    let state = sc.trace_state().header();
    match HeaderValue::from_str(&state) {
        Ok(value) if !state.is_empty() => {
            headers.insert(HeaderName::from_static(TRACESTATE), value);
        }
        _ => {
            headers.remove(TRACESTATE);
        }
    }
}

/// Runs an exporter's work on the sidecar's tokio runtime: the SDK's batch
/// processor calls it from a thread of its own, where the HTTP client's
/// timers and sockets would find no runtime.
#[derive(Debug)]
struct OnRuntime<E> {
    inner: std::sync::Arc<E>,
    runtime: tokio::runtime::Handle,
}

impl<E: SpanExporter + 'static> SpanExporter for OnRuntime<E> {
    fn export(
        &self,
        batch: Vec<SpanData>,
    ) -> impl std::future::Future<Output = OTelSdkResult> + Send {
        let inner = self.inner.clone();
        let task = self.runtime.spawn(async move { inner.export(batch).await });
        async move {
            task.await
                .unwrap_or_else(|e| Err(OTelSdkError::InternalFailure(e.to_string())))
        }
    }

    fn shutdown_with_timeout(&self, timeout: std::time::Duration) -> OTelSdkResult {
        self.inner.shutdown_with_timeout(timeout)
    }

    fn force_flush(&self) -> OTelSdkResult {
        self.inner.force_flush()
    }

    fn set_resource(&mut self, resource: &Resource) {
        if let Some(inner) = std::sync::Arc::get_mut(&mut self.inner) {
            inner.set_resource(resource);
        }
    }
}

/// The sidecar's tracer; present only when traces are exported.
pub struct Tracing {
    provider: SdkTracerProvider,
    tracer: SdkTracer,
    propagator: TraceContextPropagator,
}

/// Whether the environment asks for OTLP trace export.
fn enabled(env: &dyn Fn(&str) -> Option<String>) -> bool {
    let set = |k: &str| env(k).is_some_and(|v| !v.trim().is_empty());
    let disabled = env("OTEL_SDK_DISABLED").is_some_and(|v| v.eq_ignore_ascii_case("true"))
        || env("OTEL_TRACES_EXPORTER").is_some_and(|v| v.trim() == "none");
    !disabled && (set("OTEL_EXPORTER_OTLP_ENDPOINT") || set("OTEL_EXPORTER_OTLP_TRACES_ENDPOINT"))
}

impl Tracing {
    /// From `OTEL_*` variables (endpoint, headers, timeout, sampler, service
    /// name, resource attributes). Must run inside the tokio runtime.
    pub fn from_env(default_service: &str) -> Result<Option<Tracing>, String> {
        if !enabled(&|k| std::env::var(k).ok()) {
            return Ok(None);
        }
        let protocol = std::env::var("OTEL_EXPORTER_OTLP_TRACES_PROTOCOL")
            .or_else(|_| std::env::var("OTEL_EXPORTER_OTLP_PROTOCOL"))
            .unwrap_or_else(|_| "grpc".to_owned());
        let builder = opentelemetry_otlp::SpanExporter::builder();
        let exporter = match protocol.trim() {
            "grpc" => builder.with_tonic().build(),
            "http/protobuf" => builder
                .with_http()
                .with_protocol(opentelemetry_otlp::Protocol::HttpBinary)
                .build(),
            other => {
                return Err(format!(
                    "OTEL_EXPORTER_OTLP_PROTOCOL={other:?} is not supported: use grpc or http/protobuf"
                ));
            }
        }
        .map_err(|e| format!("OTLP exporter ({protocol}): {e}"))?;
        let mut resource = Resource::builder();
        if std::env::var_os("OTEL_SERVICE_NAME").is_none() {
            resource = resource.with_service_name(default_service.to_owned());
        }
        let exporter = OnRuntime {
            inner: std::sync::Arc::new(exporter),
            runtime: tokio::runtime::Handle::current(),
        };
        let provider = SdkTracerProvider::builder()
            .with_batch_exporter(exporter)
            .with_resource(resource.build())
            .build();
        let tracer = provider.tracer("warden");
        Ok(Some(Tracing {
            provider,
            tracer,
            propagator: TraceContextPropagator::new(),
        }))
    }

    /// Starts a span of `kind` as the child of the trace context in
    /// `headers` (a new trace if there is none), and writes its own context
    /// back into `headers`, for the next hop.
    /// The attributes are built only for a span that is recorded (sampled).
    pub fn start(
        &self,
        kind: SpanKind,
        method: &http::Method,
        headers: &mut HeaderMap,
        attributes: impl FnOnce() -> Vec<KeyValue>,
    ) -> Context {
        // No `traceparent`: a new trace, without the propagator's parsing.
        let parent = if headers.contains_key(TRACEPARENT) {
            self.propagator
                .extract_with_context(&Context::new(), &Extract(headers))
        } else {
            Context::new()
        };
        let mut span = self
            .tracer
            .span_builder(span_name(method))
            .with_kind(kind)
            .start_with_context(&self.tracer, &parent);
        if span.is_recording() {
            span.set_attributes(attributes());
        }
        let cx = parent.with_span(span);
        inject(&cx, headers);
        cx
    }

    /// Flushes what is queued (bounded by the exporter's timeout).
    pub fn shutdown(&self) {
        let _ = self.provider.shutdown();
    }
}

/// Ends the span in `cx` with the response status and any extra attributes.
pub fn finish(cx: &Context, status: u16, server: bool, attributes: impl FnOnce() -> Vec<KeyValue>) {
    let span = cx.span();
    if !span.is_recording() {
        span.end();
        return;
    }
    span.set_attribute(KeyValue::new(
        "http.response.status_code",
        i64::from(status),
    ));
    for kv in attributes() {
        span.set_attribute(kv);
    }
    // Server spans: 5xx is an error; client spans: 4xx too (OTel HTTP conventions).
    if status >= 500 || (!server && status >= 400) {
        span.set_status(Status::error(format!("HTTP {status}")));
    }
    span.end();
}

/// `http.request.method`: a static string for the standard methods.
pub fn method_value(method: &http::Method) -> Value {
    match span_name(method) {
        "HTTP" => Value::from(method.to_string()),
        name => Value::from(name),
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

pub fn strings(key: &'static str, values: &[String]) -> KeyValue {
    KeyValue::new(
        key,
        Value::Array(opentelemetry::Array::String(
            values
                .iter()
                .map(|v| StringValue::from(v.clone()))
                .collect(),
        )),
    )
}

/// The trace id of a span context, as in `traceparent` (for audit lines).
pub fn trace_id(cx: &Context) -> String {
    cx.span().span_context().trace_id().to_string()
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
    use opentelemetry::trace::{SpanContext, SpanId, TraceId, TraceState};

    #[test]
    fn traceparent_is_written_as_the_w3c_propagator_would() {
        let sc = SpanContext::new(
            TraceId::from_hex("4bf92f3577b34da6a3ce929d0e0e4736").expect("trace id"),
            SpanId::from_hex("00f067aa0ba902b7").expect("span id"),
            TraceFlags::SAMPLED,
            true,
            TraceState::default(),
        );
        let cx = Context::new().with_remote_span_context(sc);
        let mut ours = HeaderMap::new();
        ours.insert(TRACESTATE, HeaderValue::from_static("stale=1"));
        inject(&cx, &mut ours);
        assert_eq!(
            ours[TRACEPARENT],
            "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01"
        );
        assert!(!ours.contains_key(TRACESTATE), "empty state: no header");
        // Round trip through the W3C propagator.
        let back = TraceContextPropagator::new().extract(&Extract(&ours));
        assert_eq!(
            back.span().span_context().trace_id(),
            cx.span().span_context().trace_id()
        );
        assert!(back.span().span_context().is_sampled());

        let state = TraceState::from_key_value([("vendor", "x")]).expect("state");
        let unsampled = SpanContext::new(
            TraceId::from_hex("4bf92f3577b34da6a3ce929d0e0e4736").expect("trace id"),
            SpanId::from_hex("00f067aa0ba902b7").expect("span id"),
            TraceFlags::default(),
            true,
            state,
        );
        let mut headers = HeaderMap::new();
        inject(
            &Context::new().with_remote_span_context(unsampled),
            &mut headers,
        );
        assert!(
            headers[TRACEPARENT]
                .to_str()
                .expect("ascii")
                .ends_with("-00")
        );
        assert_eq!(headers[TRACESTATE], "vendor=x");
    }
}
