//! `GET /app-health/<name>` on the admin server: the app's kubelet
//! probes, which `warden inject` points here so that the app's own ports
//! stay behind mTLS (the kubelet has no SVID). Each named probe runs
//! against the app at the pod's address (its first
//! `control.endpoint_addresses`, where transparent inbound delivers too;
//! else 127.0.0.1), as the kubelet would: an HTTP GET whose status is
//! passed back (the kubelet counts 200 to 399 as success), a gRPC health
//! check (`grpc.health.v1.Health/Check`: SERVING is 200, anything else
//! 503), or a TCP connect.

use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::time::Duration;

use bytes::{BufMut, Bytes, BytesMut};
use http::{HeaderName, HeaderValue, Method, Request, StatusCode, header};
use http_body_util::{BodyExt, Empty, Full};
use hyper_util::rt::{TokioExecutor, TokioIo};
use tokio::net::TcpStream;

use super::config::AppProbe;

/// A probe that takes longer fails; the kubelet's own timeout (1 s by
/// default) is usually shorter and wins.
const PROBE_TIMEOUT: Duration = Duration::from_secs(10);

/// The address probes go to: the pod's.
pub(crate) fn probe_host(endpoint_addresses: &[IpAddr]) -> IpAddr {
    endpoint_addresses
        .first()
        .copied()
        .unwrap_or(IpAddr::V4(Ipv4Addr::LOCALHOST))
}

/// The probe's answer: the app's status, 503 when it cannot be reached,
/// does not answer in time or is not serving, or 404 for a name no probe has.
pub(crate) async fn run(probes: &[AppProbe], host: IpAddr, name: &str) -> (StatusCode, String) {
    let Some(probe) = probes.iter().find(|p| p.name == name) else {
        return (StatusCode::NOT_FOUND, format!("no probe named {name:?}\n"));
    };
    let addr = SocketAddr::new(host, probe.port);
    match tokio::time::timeout(PROBE_TIMEOUT, check(probe, addr)).await {
        Ok(Ok(status)) => (status, format!("app answered {}\n", status.as_u16())),
        Ok(Err(reason)) => (
            StatusCode::SERVICE_UNAVAILABLE,
            format!("probe {name}: {reason}\n"),
        ),
        Err(_) => (
            StatusCode::SERVICE_UNAVAILABLE,
            format!("probe {name}: no answer within {PROBE_TIMEOUT:?}\n"),
        ),
    }
}

async fn check(probe: &AppProbe, addr: SocketAddr) -> Result<StatusCode, String> {
    let tcp = TcpStream::connect(addr)
        .await
        .map_err(|e| format!("cannot connect to {addr}: {e}"))?;
    if let Some(service) = &probe.grpc {
        return grpc_health(tcp, addr, service).await;
    }
    let Some(path) = &probe.path else {
        return Ok(StatusCode::OK);
    };
    let (mut sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(tcp))
        .await
        .map_err(|e| e.to_string())?;
    tokio::spawn(async move {
        let _ = conn.await;
    });
    let mut request = Request::get(path.as_str())
        .header(header::HOST, addr.to_string())
        .header(header::USER_AGENT, "warden-probe")
        .header(header::CONNECTION, "close")
        .body(Empty::<Bytes>::new())
        .map_err(|e| e.to_string())?;
    for (name, value) in &probe.headers {
        // Checked when the configuration was loaded.
        if let (Ok(name), Ok(value)) = (
            HeaderName::from_bytes(name.as_bytes()),
            HeaderValue::from_str(value),
        ) {
            request.headers_mut().insert(name, value);
        }
    }
    let response = sender
        .send_request(request)
        .await
        .map_err(|e| format!("HTTP: {e}"))?;
    let status = response.status();
    // Read (and drop) a little of the body so the app sees a clean close.
    let _ = http_body_util::Limited::new(response.into_body(), 64 * 1024)
        .collect()
        .await;
    Ok(status)
}

/// `grpc.health.v1.Health/Check` over h2c, as the kubelet's gRPC probe.
async fn grpc_health(
    tcp: TcpStream,
    addr: SocketAddr,
    service: &str,
) -> Result<StatusCode, String> {
    let (mut sender, conn) =
        hyper::client::conn::http2::handshake(TokioExecutor::new(), TokioIo::new(tcp))
            .await
            .map_err(|e| format!("h2c: {e}"))?;
    tokio::spawn(async move {
        let _ = conn.await;
    });
    // HealthCheckRequest { string service = 1; }, in one gRPC frame.
    let mut message = BytesMut::new();
    if !service.is_empty() {
        message.put_u8(0x0a);
        put_varint(&mut message, service.len() as u64);
        message.put_slice(service.as_bytes());
    }
    let mut frame = BytesMut::with_capacity(5 + message.len());
    frame.put_u8(0);
    frame.put_u32(u32::try_from(message.len()).map_err(|_| "service name too long")?);
    frame.put_slice(&message);
    let request = Request::builder()
        .method(Method::POST)
        .uri(format!("http://{addr}/grpc.health.v1.Health/Check"))
        .header(header::CONTENT_TYPE, "application/grpc")
        .header(header::TE, "trailers")
        .header(header::USER_AGENT, "warden-probe")
        .body(Full::new(frame.freeze()))
        .map_err(|e| e.to_string())?;
    let response = sender
        .send_request(request)
        .await
        .map_err(|e| format!("gRPC: {e}"))?;
    let mut grpc_status = response
        .headers()
        .get("grpc-status")
        .and_then(|v| v.to_str().ok())
        .map(str::to_owned);
    let collected = http_body_util::Limited::new(response.into_body(), 64 * 1024)
        .collect()
        .await
        .map_err(|e| format!("gRPC: {e}"))?;
    if let Some(status) = collected
        .trailers()
        .and_then(|t| t.get("grpc-status"))
        .and_then(|v| v.to_str().ok())
    {
        grpc_status = Some(status.to_owned());
    }
    if grpc_status.as_deref() != Some("0") {
        return Err(format!(
            "gRPC health check failed (grpc-status {})",
            grpc_status.as_deref().unwrap_or("none")
        ));
    }
    // HealthCheckResponse { ServingStatus status = 1; } with SERVING = 1.
    let body = collected.to_bytes();
    let serving = body.len() >= 7 && body[5] == 0x08 && body[6] == 0x01;
    if serving {
        Ok(StatusCode::OK)
    } else {
        Err("not SERVING".into())
    }
}

fn put_varint(out: &mut BytesMut, mut value: u64) {
    while value >= 0x80 {
        out.put_u8((value as u8 & 0x7f) | 0x80);
        value >>= 7;
    }
    out.put_u8(value as u8);
}
