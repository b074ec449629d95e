//! Traces of a call through a sidecar pair, received by a real OTLP/gRPC
//! receiver: the client and server spans, their parent/child links, the
//! attributes, and the trace context the destination app saw.

mod support;

use std::net::SocketAddr;
use std::time::Duration;

use opentelemetry_proto::tonic::common::v1::any_value::Value;
use opentelemetry_proto::tonic::trace::v1::Span;
use support::mesh::{
    FRONTEND, INTRUDER, Identities, ORDERS, TestApp, get, inbound_to, route_to, sample,
};
use support::otlp::{Receiver, start_receiver};
use support::{eventually, eventually_every};

fn attr(span: &Span, key: &str) -> Option<String> {
    let value = span
        .attributes
        .iter()
        .find(|kv| kv.key == key)?
        .value
        .as_ref()?;
    match value.value.as_ref()? {
        Value::StringValue(s) => Some(s.clone()),
        Value::IntValue(i) => Some(i.to_string()),
        Value::ArrayValue(a) => Some(
            a.values
                .iter()
                .filter_map(|v| match &v.value {
                    Some(Value::StringValue(s)) => Some(s.clone()),
                    _ => None,
                })
                .collect::<Vec<_>>()
                .join(","),
        ),
        other => Some(format!("{other:?}")),
    }
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// Waits (bounded) until `n` spans of trace `trace_id` arrived.
async fn spans_of(receiver: &Receiver, trace_id: &str, n: usize) -> Vec<(String, Span)> {
    eventually(
        format_args!("{n} spans of trace {trace_id}"),
        Duration::from_secs(10),
        async || {
            let spans: Vec<(String, Span)> = receiver
                .spans
                .lock()
                .expect("lock")
                .iter()
                .filter(|(_, s)| hex(&s.trace_id) == trace_id)
                .cloned()
                .collect();
            if spans.len() >= n {
                Ok(spans)
            } else {
                Err(format!("{} of them", spans.len()))
            }
        },
    )
    .await
}

/// The variables that send spans to `collector`, batched every `delay_ms`.
fn otlp_env(collector: SocketAddr, delay_ms: u32) -> Vec<(String, String)> {
    vec![
        (
            "OTEL_EXPORTER_OTLP_ENDPOINT".to_owned(),
            format!("http://{collector}"),
        ),
        ("OTEL_BSP_SCHEDULE_DELAY".to_owned(), delay_ms.to_string()),
    ]
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_call_leaves_linked_client_and_server_spans() {
    let receiver = Receiver::default();
    let collector = start_receiver(receiver.clone()).await;
    let env = otlp_env(collector, 100);
    let ids = Identities::new();
    let app = TestApp::start().await;
    let server = ids.start_with_env("orders", &inbound_to(app.addr), &env);
    let client = ids.start_with_env("frontend", &[route_to(server.inbound(), ORDERS)], &env);
    let intruder = ids.start_with_env("intruder", &[route_to(server.inbound(), ORDERS)], &env);
    for p in [&server, &client, &intruder] {
        p.wait_ready().await;
    }

    let trace_id = "4bf92f3577b34da6a3ce929d0e0e4736";
    let app_span = "00f067aa0ba902b7";
    let traceparent = format!("00-{trace_id}-{app_span}-01");
    let tracestate = "congo=t61rcWkgMzE,rojo=00f067aa0ba902b7";
    let reply = get(
        client.outbound[0],
        "/orders/7",
        &[("traceparent", &traceparent), ("tracestate", tracestate)],
    )
    .await
    .expect("call");
    assert_eq!(reply.status, 200, "{}", reply.body);
    let seen = reply.echo()["headers"]["traceparent"]
        .as_str()
        .expect("traceparent at the app")
        .to_owned();
    assert_eq!(
        reply.echo()["headers"]["tracestate"].as_str(),
        Some(tracestate),
        "tracestate passed on to the app"
    );

    let spans = spans_of(&receiver, trace_id, 2).await;
    let find = |service: &str| {
        spans
            .iter()
            .find(|(s, _)| s == service)
            .map(|(_, span)| span.clone())
            .unwrap_or_else(|| panic!("no span from {service}: {spans:?}"))
    };
    let client_span = find("warden-frontend");
    let server_span = find("warden-orders");
    // The chain: the app's span -> the client span -> the server span -> the app.
    assert_eq!(hex(&client_span.parent_span_id), app_span);
    assert_eq!(server_span.parent_span_id, client_span.span_id);
    assert_eq!(
        seen,
        format!("00-{trace_id}-{}-01", hex(&server_span.span_id))
    );
    assert_eq!(client_span.kind, 3, "SPAN_KIND_CLIENT");
    assert_eq!(server_span.kind, 2, "SPAN_KIND_SERVER");
    for span in [&client_span, &server_span] {
        assert_eq!(span.trace_state, tracestate);
        // Sampled, and the parent known to be remote (another process).
        assert_eq!(span.flags, 0x301, "{span:?}");
        assert!(
            span.start_time_unix_nano > 0 && span.end_time_unix_nano >= span.start_time_unix_nano
        );
        assert_eq!(span.status.as_ref().map_or(0, |s| s.code), 0, "no error");
    }
    assert!(
        client_span.start_time_unix_nano <= server_span.start_time_unix_nano + 1_000_000
            && server_span.end_time_unix_nano <= client_span.end_time_unix_nano + 1_000_000,
        "the server span inside the client span (1 ms of clock slack)"
    );
    for (key, want) in [
        ("http.request.method", "GET"),
        ("url.path", "/orders/7"),
        ("http.response.status_code", "200"),
        ("warden.peer.id", FRONTEND),
        ("warden.local.id", ORDERS),
        ("warden.authz.decision", "allow"),
        ("warden.authz.policies", "same-namespace"),
        ("tls.protocol.version", "TLSv1_3"),
    ] {
        assert_eq!(
            attr(&server_span, key).as_deref(),
            Some(want),
            "{key}: {server_span:?}"
        );
    }
    assert!(
        attr(&server_span, "warden.authz.policy_version").is_some_and(|v| v.starts_with("sha256:"))
    );
    assert_eq!(
        attr(&client_span, "warden.peer.id").as_deref(),
        Some(ORDERS)
    );
    assert_eq!(
        attr(&client_span, "warden.local.id").as_deref(),
        Some(FRONTEND)
    );

    // A deny: the span says so, and the audit line carries the trace id.
    let denied_trace = "0af7651916cd43dd8448eb211c80319c";
    let reply = get(
        intruder.outbound[0],
        "/orders/7",
        &[(
            "traceparent",
            &format!("00-{denied_trace}-b7ad6b7169203331-01"),
        )],
    )
    .await
    .expect("call");
    assert_eq!(reply.status, 403);
    let spans = spans_of(&receiver, denied_trace, 2).await;
    let (_, denied) = spans
        .iter()
        .find(|(s, _)| s == "warden-orders")
        .expect("server span of the deny");
    assert_eq!(
        attr(denied, "warden.authz.decision").as_deref(),
        Some("deny")
    );
    assert_eq!(attr(denied, "warden.peer.id").as_deref(), Some(INTRUDER));
    assert_eq!(
        attr(denied, "http.response.status_code").as_deref(),
        Some("403")
    );
    // A 403 is an error for the client span only (OTel HTTP conventions).
    assert_eq!(denied.status.as_ref().map_or(0, |s| s.code), 0);
    let (_, denied_client) = spans
        .iter()
        .find(|(s, _)| s == "warden-intruder")
        .expect("client span of the deny");
    let status = denied_client.status.as_ref().expect("status");
    assert_eq!((status.code, status.message.as_str()), (2, "HTTP 403"));
    let logs = server.logs();
    let audit = logs
        .lines()
        .find(|l| l.contains("warden::audit") && l.contains(INTRUDER) && l.contains("trace_id"))
        .unwrap_or_else(|| panic!("no audit line: {logs}"));
    assert!(audit.contains(denied_trace), "{audit}");
}

/// Spans still queued when the sidecar is told to stop leave during the
/// drain: with a 60 s schedule delay, only the shutdown flush sends them.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn queued_spans_are_flushed_at_shutdown() {
    let receiver = Receiver::default();
    let collector = start_receiver(receiver.clone()).await;
    let env = otlp_env(collector, 60_000);
    let ids = Identities::new();
    let app = TestApp::start().await;
    let mut server = ids.start_with_env("orders", &inbound_to(app.addr), &env);
    let client = ids.start("frontend", &[route_to(server.inbound(), ORDERS)]);
    server.wait_ready().await;
    client.wait_ready().await;
    let trace_id = "6bf92f3577b34da6a3ce929d0e0e4736";
    let reply = get(
        client.outbound[0],
        "/bye",
        &[("traceparent", &format!("00-{trace_id}-00f067aa0ba902b7-01"))],
    )
    .await
    .expect("call");
    assert_eq!(reply.status, 200);
    // Nothing says a span is queued: this pause is the window in which an
    // early export (the bug) would show.
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert_eq!(
        receiver.count.load(std::sync::atomic::Ordering::Relaxed),
        0,
        "exported before the delay"
    );
    let status = tokio::task::spawn_blocking(move || server.terminate())
        .await
        .expect("join");
    assert!(status.success(), "{status:?}");
    let spans = spans_of(&receiver, trace_id, 1).await;
    assert_eq!(spans[0].0, "warden-orders");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn spans_also_go_out_over_otlp_http_protobuf() {
    let receiver = Receiver::default();
    let collector = support::otlp::start_http_receiver(receiver.clone()).await;
    let mut env = otlp_env(collector, 100);
    env.push((
        "OTEL_EXPORTER_OTLP_PROTOCOL".to_owned(),
        "http/protobuf".to_owned(),
    ));
    let ids = Identities::new();
    let app = TestApp::start().await;
    let server = ids.start_with_env("orders", &inbound_to(app.addr), &env);
    let client = ids.start_with_env("frontend", &[route_to(server.inbound(), ORDERS)], &env);
    server.wait_ready().await;
    client.wait_ready().await;
    let trace_id = "5bf92f3577b34da6a3ce929d0e0e4736";
    let reply = get(
        client.outbound[0],
        "/h",
        &[("traceparent", &format!("00-{trace_id}-00f067aa0ba902b7-01"))],
    )
    .await
    .expect("call");
    assert_eq!(reply.status, 200);
    let spans = spans_of(&receiver, trace_id, 2).await;
    let services: Vec<&str> = spans.iter().map(|(s, _)| s.as_str()).collect();
    assert!(
        services.contains(&"warden-frontend") && services.contains(&"warden-orders"),
        "{services:?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_collector_that_is_down_changes_nothing_for_traffic() {
    let gone = std::net::TcpListener::bind("127.0.0.1:0").expect("port");
    let gone_addr = gone.local_addr().expect("addr");
    drop(gone);
    traffic_with_collector_at(gone_addr).await;
}

/// Exports that keep failing cost counters and one warning per 30 s.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn failed_exports_are_counted_and_warned_about_once() {
    let gone = std::net::TcpListener::bind("127.0.0.1:0").expect("port");
    let gone_addr = gone.local_addr().expect("addr");
    drop(gone);
    let (server, metrics, _ids) = calls_until_exports_failed(gone_addr, 3.0).await;
    let failed_exports = sample(&metrics, "warden_trace_exports_total{result=\"failed\"}");
    assert!(failed_exports.is_some_and(|n| n >= 3.0), "{metrics}");
    assert!(
        sample(
            &metrics,
            "warden_trace_spans_total{outcome=\"export_failed\"}"
        )
        .is_some_and(|n| n >= 3.0),
        "{metrics}"
    );
    assert_eq!(
        sample(&metrics, "warden_trace_spans_total{outcome=\"exported\"}"),
        Some(0.0)
    );
    if let Err(problems) = support::promtool(&metrics) {
        panic!("promtool on /metrics with tracing on:\n{problems}\n{metrics}");
    }
    let logs = server.logs();
    let warnings = logs
        .lines()
        .filter(|l| l.contains("trace export failed"))
        .count();
    assert_eq!(
        warnings, 1,
        "one warning for several failed exports:\n{logs}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_collector_that_hangs_changes_nothing_for_traffic() {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind");
    let addr = listener.local_addr().expect("addr");
    // Accepts connections and holds them, reading nothing, answering nothing.
    tokio::spawn(async move {
        let mut held = Vec::new();
        while let Ok((stream, _)) = listener.accept().await {
            held.push(stream);
        }
    });
    let metrics = traffic_with_collector_at(addr).await;
    // One export hangs; past the queue's 8 spans the rest are dropped.
    assert!(
        sample(&metrics, "warden_trace_spans_total{outcome=\"queue_full\"}")
            .is_some_and(|n| n >= 30.0),
        "{metrics}"
    );
}

/// With the collector at `collector` (down, or hanging), 50 calls through a
/// pair all succeed. Returns the server sidecar's metrics after them.
async fn traffic_with_collector_at(collector: SocketAddr) -> String {
    let mut env = otlp_env(collector, 50);
    env.push(("OTEL_BSP_MAX_QUEUE_SIZE".to_owned(), "8".to_owned()));
    let ids = Identities::new();
    let app = TestApp::start().await;
    let server = ids.start_with_env("orders", &inbound_to(app.addr), &env);
    let client = ids.start_with_env("frontend", &[route_to(server.inbound(), ORDERS)], &env);
    server.wait_ready().await;
    client.wait_ready().await;
    // Each call well inside the 10 s export timeout: the request path
    // never waits for the exporter.
    for _ in 0..50 {
        let reply =
            tokio::time::timeout(Duration::from_secs(3), get(client.outbound[0], "/x", &[]))
                .await
                .expect("a call waited on the collector")
                .expect("call");
        assert_eq!(reply.status, 200);
    }
    server.metrics().await
}

/// A collector that answers every export with gRPC status UNAVAILABLE
/// (trailers-only): the exports count as failed, the spans as lost.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_collector_refusing_exports_is_counted() {
    let addr = support::otlp::serve(hyper::service::service_fn(|_req| async {
        let response = hyper::Response::builder()
            .header("content-type", "application/grpc")
            .header("grpc-status", "14")
            .header("grpc-message", "overloaded")
            .body(http_body_util::Empty::<bytes::Bytes>::new())
            .expect("response");
        Ok::<_, std::convert::Infallible>(response)
    }))
    .await;
    let (server, metrics, _ids) = calls_until_exports_failed(addr, 2.0).await;
    assert!(
        sample(&metrics, "warden_trace_exports_total{result=\"failed\"}").is_some_and(|n| n >= 2.0),
        "{metrics}"
    );
    assert_eq!(
        sample(&metrics, "warden_trace_exports_total{result=\"ok\"}"),
        Some(0.0),
        "{metrics}"
    );
    let logs = server.logs();
    assert!(logs.contains("grpc-status 14: overloaded"), "{logs}");
}

/// A pair whose server sidecar exports to `collector` every 20 ms; calls
/// through it (bounded) until at least `failed` exports failed. Returns the
/// server sidecar, its last metrics, and the identities (which own the
/// sidecars' files).
async fn calls_until_exports_failed(
    collector: SocketAddr,
    failed: f64,
) -> (support::mesh::Proxy, String, Identities) {
    let env = otlp_env(collector, 20);
    let ids = Identities::new();
    let app = TestApp::start().await;
    let server = ids.start_with_env("orders", &inbound_to(app.addr), &env);
    server.wait_ready().await;
    let client = ids.start("frontend", &[route_to(server.inbound(), ORDERS)]);
    client.wait_ready().await;
    let metrics = eventually_every(
        format_args!("{failed} failed exports"),
        Duration::from_secs(15),
        Duration::from_millis(25),
        async || {
            let reply = get(client.outbound[0], "/x", &[]).await.expect("call");
            assert_eq!(reply.status, 200);
            let metrics = server.metrics().await;
            if sample(&metrics, "warden_trace_exports_total{result=\"failed\"}")
                .is_some_and(|n| n >= failed)
            {
                Ok(metrics)
            } else {
                Err(metrics)
            }
        },
    )
    .await;
    (server, metrics, ids)
}
