//! `GET /app-health/<name>` on the admin server: the app's kubelet
//! probes, which `warden inject` points here so that the app's own ports
//! stay behind mTLS (the kubelet has no SVID). Each named probe runs
//! against the app on loopback: an HTTP GET whose status is passed back
//! (the kubelet counts 200 to 399 as success), or a TCP connect.

use std::time::Duration;

use bytes::Bytes;
use http::{Request, StatusCode, header};
use http_body_util::{BodyExt, Empty};
use hyper_util::rt::TokioIo;
use tokio::net::TcpStream;

use super::config::AppProbe;

/// A probe that takes longer fails; the kubelet's own timeout (1 s by
/// default) is usually shorter and wins.
const PROBE_TIMEOUT: Duration = Duration::from_secs(10);

/// The probe's answer: the app's status, 503 when it cannot be reached or
/// does not answer in time, or 404 for a name no probe has.
pub(crate) async fn run(probes: &[AppProbe], name: &str) -> (StatusCode, String) {
    let Some(probe) = probes.iter().find(|p| p.name == name) else {
        return (StatusCode::NOT_FOUND, format!("no probe named {name:?}\n"));
    };
    match tokio::time::timeout(PROBE_TIMEOUT, check(probe)).await {
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

async fn check(probe: &AppProbe) -> Result<StatusCode, String> {
    let tcp = TcpStream::connect(("127.0.0.1", probe.port))
        .await
        .map_err(|e| format!("cannot connect to 127.0.0.1:{}: {e}", probe.port))?;
    let Some(path) = &probe.path else {
        return Ok(StatusCode::OK);
    };
    let (mut sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(tcp))
        .await
        .map_err(|e| e.to_string())?;
    tokio::spawn(async move {
        let _ = conn.await;
    });
    let request = Request::get(path.as_str())
        .header(header::HOST, format!("127.0.0.1:{}", probe.port))
        .header(header::USER_AGENT, "warden-probe")
        .header(header::CONNECTION, "close")
        .body(Empty::<Bytes>::new())
        .map_err(|e| e.to_string())?;
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
