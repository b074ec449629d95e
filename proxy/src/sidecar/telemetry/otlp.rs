//! OTLP trace export: spans encoded straight into the protobuf wire format
//! of `ExportTraceServiceRequest` (opentelemetry-proto's `trace.v1` and
//! `collector/trace/v1` messages, field numbers as published there) and sent
//! over gRPC or HTTP/protobuf with hyper.
//!
//! No intermediate message structs: each span is encoded as it is recorded,
//! its attribute values borrowed from the request, and a batch is the
//! queue's bytes behind a few framing bytes. The tests decode what this
//! writes with opentelemetry-proto's generated (prost) types.

use std::time::Duration;

use bytes::Bytes;
use http::{HeaderMap, HeaderValue, Method, Request, Uri};
use http_body_util::{BodyExt, Full};
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::{TokioExecutor, TokioTimer};

// Protobuf wire types.
const VARINT: u8 = 0;
const FIXED64: u8 = 1;
const LEN: u8 = 2;
const FIXED32: u8 = 5;

fn varint_len(mut v: u64) -> usize {
    let mut n = 1;
    while v >= 0x80 {
        v >>= 7;
        n += 1;
    }
    n
}

fn put_varint(out: &mut Vec<u8>, mut v: u64) {
    while v >= 0x80 {
        out.push((v as u8) | 0x80);
        v >>= 7;
    }
    out.push(v as u8);
}

fn put_tag(out: &mut Vec<u8>, field: u32, wire: u8) {
    put_varint(out, (u64::from(field) << 3) | u64::from(wire));
}

fn tag_len(field: u32) -> usize {
    varint_len(u64::from(field) << 3)
}

/// The encoded size of a length-delimited field holding `len` bytes.
fn field_len(field: u32, len: usize) -> usize {
    tag_len(field) + varint_len(len as u64) + len
}

fn put_bytes(out: &mut Vec<u8>, field: u32, bytes: &[u8]) {
    put_tag(out, field, LEN);
    put_varint(out, bytes.len() as u64);
    out.extend_from_slice(bytes);
}

/// The header of a length-delimited field whose body follows.
fn put_len(out: &mut Vec<u8>, field: u32, len: usize) {
    put_tag(out, field, LEN);
    put_varint(out, len as u64);
}

/// An attribute value, borrowed for as long as it takes to encode it.
#[derive(Clone, Copy)]
enum Any<'a> {
    Str(&'a str),
    Int(i64),
    Strs(&'a [String]),
}

/// `ArrayValue { repeated AnyValue values = 1 }` of strings: its body size.
fn array_len(values: &[String]) -> usize {
    values
        .iter()
        .map(|s| field_len(1, field_len(1, s.len())))
        .sum()
}

/// The body size of `AnyValue` for `v`.
fn any_value_len(v: Any<'_>) -> usize {
    match v {
        Any::Str(s) => field_len(1, s.len()),
        Any::Int(i) => tag_len(3) + varint_len(i as u64),
        Any::Strs(values) => field_len(5, array_len(values)),
    }
}

/// `KeyValue { string key = 1; AnyValue value = 2 }`, as field `field`.
fn put_key_value(out: &mut Vec<u8>, field: u32, key: &str, value: Any<'_>) {
    let value_len = any_value_len(value);
    put_len(
        out,
        field,
        field_len(1, key.len()) + field_len(2, value_len),
    );
    put_bytes(out, 1, key.as_bytes());
    put_len(out, 2, value_len);
    match value {
        Any::Str(s) => put_bytes(out, 1, s.as_bytes()),
        Any::Int(i) => {
            put_tag(out, 3, VARINT);
            // int64: two's complement as a 64-bit varint.
            put_varint(out, i as u64);
        }
        Any::Strs(values) => {
            put_len(out, 5, array_len(values));
            for s in values {
                put_len(out, 1, field_len(1, s.len()));
                put_bytes(out, 1, s.as_bytes());
            }
        }
    }
}

/// A span's attributes (`Span.attributes`), encoded as they are given: the
/// values are borrowed, never copied into intermediate structures.
pub struct Attributes<'a> {
    buf: &'a mut Vec<u8>,
}

/// String attribute values are cut to this many bytes (at a character
/// boundary): a 64 KiB request path must not make a 64 KiB span.
pub const MAX_VALUE_BYTES: usize = 2048;

fn truncated(value: &str) -> &str {
    if value.len() <= MAX_VALUE_BYTES {
        return value;
    }
    let mut end = MAX_VALUE_BYTES;
    while !value.is_char_boundary(end) {
        end -= 1;
    }
    &value[..end]
}

impl Attributes<'_> {
    pub fn str(&mut self, key: &str, value: &str) {
        put_key_value(self.buf, 9, key, Any::Str(truncated(value)));
    }

    pub fn int(&mut self, key: &str, value: i64) {
        put_key_value(self.buf, 9, key, Any::Int(value));
    }

    pub fn strs(&mut self, key: &str, values: &[String]) {
        put_key_value(self.buf, 9, key, Any::Strs(values));
    }
}

/// `Span.SpanKind`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Kind {
    Server = 2,
    Client = 3,
}

/// What a span starts with.
pub struct SpanStart<'a> {
    pub trace_id: &'a [u8; 16],
    pub span_id: &'a [u8; 8],
    pub parent_span_id: Option<&'a [u8; 8]>,
    /// The W3C `tracestate` it carries, when not empty.
    pub trace_state: Option<&'a str>,
    pub name: &'a str,
    pub kind: Kind,
    pub start_unix_nanos: u64,
}

/// Begins a `Span` message body in `buf`: its identity, name, kind and
/// start. Attributes follow (`attributes`), then `end_span`.
pub fn begin_span(buf: &mut Vec<u8>, start: &SpanStart<'_>) {
    put_bytes(buf, 1, start.trace_id);
    put_bytes(buf, 2, start.span_id);
    if let Some(state) = start.trace_state {
        put_bytes(buf, 3, state.as_bytes());
    }
    if let Some(parent) = start.parent_span_id {
        put_bytes(buf, 4, parent);
    }
    put_bytes(buf, 5, start.name.as_bytes());
    put_tag(buf, 6, VARINT);
    put_varint(buf, start.kind as u64);
    put_tag(buf, 7, FIXED64);
    buf.extend_from_slice(&start.start_unix_nanos.to_le_bytes());
}

/// The attribute writer for a span body begun with `begin_span`.
pub fn attributes(buf: &mut Vec<u8>) -> Attributes<'_> {
    Attributes { buf }
}

/// Ends a `Span` message body: end time, status, flags.
pub fn end_span(
    buf: &mut Vec<u8>,
    end_unix_nanos: u64,
    error_status: Option<u16>,
    remote_parent: bool,
) {
    put_tag(buf, 8, FIXED64);
    buf.extend_from_slice(&end_unix_nanos.to_le_bytes());
    if let Some(status) = error_status {
        // Status { string message = 2; StatusCode code = 3 (ERROR = 2) }.
        let message = format!("HTTP {status}");
        put_len(buf, 15, field_len(2, message.len()) + tag_len(3) + 1);
        put_bytes(buf, 2, message.as_bytes());
        put_tag(buf, 3, VARINT);
        put_varint(buf, 2);
    }
    // Flags: the W3C flags (sampled), and whether the parent is remote
    // (bit 8: known, bit 9: remote).
    let flags: u32 = 0x01 | 0x100 | if remote_parent { 0x200 } else { 0 };
    put_tag(buf, 16, FIXED32);
    buf.extend_from_slice(&flags.to_le_bytes());
}

/// Appends a finished span body to `spans` as `ScopeSpans.spans` (field 2).
pub fn put_span(spans: &mut Vec<u8>, body: &[u8]) {
    put_bytes(spans, 2, body);
}

/// A `Resource` message body with `attributes`.
pub fn encode_resource(attributes: &[(String, String)]) -> Vec<u8> {
    let mut out = Vec::new();
    for (k, v) in attributes {
        put_key_value(&mut out, 1, k, Any::Str(v));
    }
    out
}

/// An `InstrumentationScope` message body.
pub fn encode_scope(name: &str, version: &str) -> Vec<u8> {
    let mut out = Vec::new();
    put_bytes(&mut out, 1, name.as_bytes());
    put_bytes(&mut out, 2, version.as_bytes());
    out
}

/// Encodes `ExportTraceServiceRequest { ResourceSpans { resource, ScopeSpans
/// { scope, spans } } }` after whatever `out` already holds (the gRPC frame
/// header, say). `spans` holds spans as `put_span` wrote them.
pub fn encode_request(out: &mut Vec<u8>, resource: &[u8], scope: &[u8], spans: &[u8]) {
    let scope_spans = field_len(1, scope.len()) + spans.len();
    let resource_spans = field_len(1, resource.len()) + field_len(2, scope_spans);
    out.reserve(field_len(1, resource_spans));
    put_len(out, 1, resource_spans);
    put_bytes(out, 1, resource);
    put_len(out, 2, scope_spans);
    put_bytes(out, 1, scope);
    out.extend_from_slice(spans);
}

/// The wire protocol to the collector.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Protocol {
    Grpc,
    HttpProtobuf,
}

/// A gRPC message frame's header: a compression flag, then the length.
const GRPC_FRAME: usize = 5;

const GRPC_EXPORT_PATH: &str = "/opentelemetry.proto.collector.trace.v1.TraceService/Export";

/// Sends encoded batches to one collector.
pub struct Sender {
    client: Client<HttpConnector, Full<Bytes>>,
    uri: Uri,
    protocol: Protocol,
    headers: HeaderMap,
    timeout: Duration,
}

impl Sender {
    /// `endpoint` is the URL to post to for HTTP/protobuf, and the
    /// collector's base URL for gRPC. Only `http://` is supported.
    pub fn new(
        endpoint: &str,
        protocol: Protocol,
        headers: HeaderMap,
        timeout: Duration,
    ) -> Result<Sender, String> {
        let uri: Uri = match protocol {
            Protocol::Grpc => format!("{}{GRPC_EXPORT_PATH}", endpoint.trim_end_matches('/')),
            Protocol::HttpProtobuf => endpoint.to_owned(),
        }
        .parse()
        .map_err(|e| format!("OTLP endpoint {endpoint:?}: {e}"))?;
        match uri.scheme_str() {
            Some("http") => {}
            Some("https") => {
                return Err(format!(
                    "OTLP endpoint {endpoint:?}: https is not supported; send to a collector on the node over http (e.g. http://127.0.0.1:4317)"
                ));
            }
            _ => {
                return Err(format!(
                    "OTLP endpoint {endpoint:?} needs an http:// URL (e.g. http://127.0.0.1:4317)"
                ));
            }
        }
        let mut connector = HttpConnector::new();
        connector.set_nodelay(true);
        connector.set_connect_timeout(Some(timeout));
        let mut builder = Client::builder(TokioExecutor::new());
        builder
            .timer(TokioTimer::new())
            .pool_timer(TokioTimer::new())
            .pool_idle_timeout(Duration::from_secs(60));
        if protocol == Protocol::Grpc {
            // A collector that vanished without a reset is noticed by the
            // pings, not after TCP's own timeout (minutes).
            builder
                .http2_only(true)
                .http2_keep_alive_interval(Duration::from_secs(30))
                .http2_keep_alive_timeout(timeout.min(Duration::from_secs(10)))
                .http2_keep_alive_while_idle(true);
        }
        Ok(Sender {
            client: builder.build(connector),
            uri,
            protocol,
            headers,
            timeout,
        })
    }

    /// Where the batches go, for messages.
    pub fn uri(&self) -> &Uri {
        &self.uri
    }

    /// An empty request body with room for `capacity` message bytes; for
    /// gRPC it starts with the 5-byte frame header that `send` fills in.
    pub fn body(&self, capacity: usize) -> Vec<u8> {
        let mut body = Vec::with_capacity(GRPC_FRAME + capacity);
        if self.protocol == Protocol::Grpc {
            // Not compressed; the length follows once the message is there.
            body.extend_from_slice(&[0; GRPC_FRAME]);
        }
        body
    }

    /// Sends a body made by `body` with the encoded message after it,
    /// bounded by the export timeout.
    pub async fn send(&self, body: Vec<u8>) -> Result<(), String> {
        match tokio::time::timeout(self.timeout, self.send_inner(body)).await {
            Ok(result) => result,
            Err(_) => Err(format!("no answer within {:?}", self.timeout)),
        }
    }

    async fn send_inner(&self, mut body: Vec<u8>) -> Result<(), String> {
        if self.protocol == Protocol::Grpc {
            let len = u32::try_from(body.len() - GRPC_FRAME)
                .map_err(|_| "an export message over 4 GiB".to_owned())?;
            body[1..GRPC_FRAME].copy_from_slice(&len.to_be_bytes());
        }
        let mut request = Request::builder()
            .method(Method::POST)
            .uri(self.uri.clone());
        if let Some(headers) = request.headers_mut() {
            headers.extend(self.headers.clone());
            let (content_type, te) = match self.protocol {
                Protocol::Grpc => ("application/grpc", Some("trailers")),
                Protocol::HttpProtobuf => ("application/x-protobuf", None),
            };
            headers.insert(
                http::header::CONTENT_TYPE,
                HeaderValue::from_static(content_type),
            );
            if let Some(te) = te {
                headers.insert(http::header::TE, HeaderValue::from_static(te));
            }
        }
        let request = request
            .body(Full::new(Bytes::from(body)))
            .map_err(|e| e.to_string())?;
        let response = self
            .client
            .request(request)
            .await
            .map_err(|e| error_chain(&e))?;
        let status = response.status();
        let head_grpc_status = grpc_status(response.headers());
        // An export answer is a few bytes; more is not read.
        let collected = http_body_util::Limited::new(response.into_body(), 64 * 1024)
            .collect()
            .await
            .map_err(|e| error_chain(&*e))?;
        if !status.is_success() {
            return Err(format!("collector answered HTTP {status}"));
        }
        if self.protocol == Protocol::Grpc {
            // A trailers-only answer carries the status in the head.
            let code = head_grpc_status
                .or_else(|| collected.trailers().and_then(grpc_status))
                .ok_or("the collector's answer has no grpc-status")?;
            if code.0 != "0" {
                return Err(format!(
                    "collector answered grpc-status {}{}",
                    code.0, code.1
                ));
            }
        }
        Ok(())
    }
}

/// `grpc-status` and `grpc-message` (as ": message") from a header map.
fn grpc_status(headers: &HeaderMap) -> Option<(String, String)> {
    let code = headers.get("grpc-status")?.to_str().ok()?.to_owned();
    let message = headers
        .get("grpc-message")
        .and_then(|v| v.to_str().ok())
        .map(|m| format!(": {m}"))
        .unwrap_or_default();
    Some((code, message))
}

fn error_chain(e: &dyn std::error::Error) -> String {
    let mut text = e.to_string();
    let mut source = e.source();
    while let Some(s) = source {
        text.push_str(": ");
        text.push_str(&s.to_string());
        source = s.source();
    }
    text
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn long_attribute_values_are_cut_at_a_character_boundary() {
        let mut buf = Vec::new();
        // "a" then two-byte characters: byte 2048 falls inside one.
        let long = format!("a{}", "é".repeat(5000));
        attributes(&mut buf).str("url.path", &long);
        assert!(buf.len() < MAX_VALUE_BYTES + 32, "{}", buf.len());
        let value = format!("a{}", "é".repeat(1023));
        assert!(
            buf.ends_with(value.as_bytes()),
            "cut at 2047 bytes, after a whole character"
        );
    }
}
