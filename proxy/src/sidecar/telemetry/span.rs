//! A span from start to end: its status and attributes, and its name and
//! method attributes as the OTel HTTP conventions have them.

use std::sync::Arc;
use std::time::Instant;

use super::context;
use super::otlp::{self, Attributes};
use super::queue::Queue;

/// A span from its start to its end. Dropping it ends it (a request whose
/// caller went away still leaves its span, without a status code).
pub struct ActiveSpan {
    pub(super) trace_id: [u8; 16],
    /// Present only for a recorded (sampled) span.
    pub(super) recording: Option<Recording>,
}

pub(super) struct Recording {
    pub(super) queue: Arc<Queue>,
    pub(super) started: Instant,
    pub(super) start_unix_nanos: u64,
    pub(super) remote_parent: bool,
    pub(super) error_status: Option<u16>,
    /// The span's protobuf body so far: written as the span goes.
    pub(super) body: Vec<u8>,
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
pub(super) fn span_name(method: &http::Method) -> &'static str {
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

#[cfg(test)]
mod tests {
    use super::*;

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
}
