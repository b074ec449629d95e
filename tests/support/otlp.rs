//! A real OTLP/gRPC trace receiver (opentelemetry-proto's service over
//! hyper), for the telemetry tests and the mesh bench.

use std::net::SocketAddr;
use std::sync::{Arc, Mutex};

use hyper_util::rt::{TokioExecutor, TokioIo};
use opentelemetry_proto::tonic::collector::trace::v1::trace_service_server::{
    TraceService, TraceServiceServer,
};
use opentelemetry_proto::tonic::collector::trace::v1::{
    ExportTraceServiceRequest, ExportTraceServiceResponse,
};
use opentelemetry_proto::tonic::common::v1::any_value::Value;
use opentelemetry_proto::tonic::trace::v1::Span;

/// Spans received, with the service name of the resource that sent them.
#[derive(Clone, Default)]
pub struct Receiver {
    pub spans: Arc<Mutex<Vec<(String, Span)>>>,
    /// How many spans arrived (kept or not).
    pub count: Arc<std::sync::atomic::AtomicUsize>,
    /// Decode and count only (the load bench: hundreds of thousands of
    /// spans would otherwise pile up in its memory).
    pub count_only: bool,
}

impl Receiver {
    pub fn counting() -> Receiver {
        Receiver {
            count_only: true,
            ..Receiver::default()
        }
    }
}

#[tonic::async_trait]
impl TraceService for Receiver {
    async fn export(
        &self,
        request: tonic::Request<ExportTraceServiceRequest>,
    ) -> Result<tonic::Response<ExportTraceServiceResponse>, tonic::Status> {
        let request = request.into_inner();
        let n: usize = request
            .resource_spans
            .iter()
            .flat_map(|r| &r.scope_spans)
            .map(|s| s.spans.len())
            .sum();
        self.count
            .fetch_add(n, std::sync::atomic::Ordering::Relaxed);
        if self.count_only {
            return Ok(tonic::Response::new(ExportTraceServiceResponse::default()));
        }
        let mut spans = self.spans.lock().expect("lock");
        for resource_spans in request.resource_spans {
            let service = resource_spans
                .resource
                .iter()
                .flat_map(|r| r.attributes.iter())
                .find(|kv| kv.key == "service.name")
                .and_then(|kv| kv.value.as_ref())
                .and_then(|v| match &v.value {
                    Some(Value::StringValue(s)) => Some(s.clone()),
                    _ => None,
                })
                .unwrap_or_default();
            for scope in resource_spans.scope_spans {
                for span in scope.spans {
                    spans.push((service.clone(), span));
                }
            }
        }
        Ok(tonic::Response::new(ExportTraceServiceResponse::default()))
    }
}

/// Serves `service` (a clone per connection) over HTTP/1.1 and h2c on a
/// fresh 127.0.0.1 port, until the test's runtime ends.
pub async fn serve<S, B>(service: S) -> SocketAddr
where
    S: hyper::service::Service<
            hyper::Request<hyper::body::Incoming>,
            Response = hyper::Response<B>,
        > + Clone
        + Send
        + 'static,
    S::Future: Send + 'static,
    S::Error: Into<Box<dyn std::error::Error + Send + Sync>>,
    B: hyper::body::Body + Send + 'static,
    B::Data: Send,
    B::Error: Into<Box<dyn std::error::Error + Send + Sync>>,
{
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind");
    let addr = listener.local_addr().expect("addr");
    tokio::spawn(async move {
        while let Ok((stream, _)) = listener.accept().await {
            let service = service.clone();
            tokio::spawn(async move {
                let _ = hyper_util::server::conn::auto::Builder::new(TokioExecutor::new())
                    .serve_connection(TokioIo::new(stream), service)
                    .await;
            });
        }
    });
    addr
}

pub async fn start_receiver(receiver: Receiver) -> SocketAddr {
    serve(hyper_util::service::TowerToHyperService::new(
        TraceServiceServer::new(receiver),
    ))
    .await
}

/// The same receiver over OTLP/HTTP with protobuf bodies (`POST /v1/traces`).
pub async fn start_http_receiver(receiver: Receiver) -> SocketAddr {
    use http_body_util::{BodyExt, Full};
    use prost::Message;
    serve(hyper::service::service_fn(
        move |req: hyper::Request<hyper::body::Incoming>| {
            let receiver = receiver.clone();
            async move {
                let ok = req.uri().path() == "/v1/traces";
                let body = req
                    .into_body()
                    .collect()
                    .await
                    .map(|c| c.to_bytes())
                    .unwrap_or_default();
                let status = match ExportTraceServiceRequest::decode(body) {
                    Ok(request) if ok => {
                        let _ = receiver.export(tonic::Request::new(request)).await;
                        200
                    }
                    _ => 400,
                };
                let mut response = hyper::Response::new(Full::new(bytes::Bytes::from(
                    ExportTraceServiceResponse::default().encode_to_vec(),
                )));
                *response.status_mut() = hyper::StatusCode::from_u16(status).expect("status");
                response.headers_mut().insert(
                    "content-type",
                    hyper::header::HeaderValue::from_static("application/x-protobuf"),
                );
                Ok::<_, std::convert::Infallible>(response)
            }
        },
    ))
    .await
}
