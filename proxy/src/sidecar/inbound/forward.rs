//! Stage 5 of a request: to the app. The request is rewritten for the app
//! (its protocol, the normalized target, the host the policy saw), sent
//! over the pooled connections with the response timeout, and a failure
//! becomes the refusal that says whose fault it was.

use std::time::Duration;

use http::header::{self, HeaderValue};
use http::{Request, Response, Uri, Version};
use hyper::body::Incoming;

use super::Inbound;
use crate::sidecar::app::{App, AppAddr, AppError};
use crate::sidecar::config::AppProtocol;
use crate::sidecar::http::{Body, Refusal, RefusalKind, boxed, malformed_body, strip_response};
use crate::sidecar::normalize::{Host, Target};

impl Inbound {
    pub(super) async fn forward(
        &self,
        app: &App,
        mut req: Request<Incoming>,
        target: &Target,
        grpc: bool,
    ) -> Result<Response<Body>, Refusal> {
        // gRPC needs HTTP/2 (trailers); everything else goes to the app in
        // the protocol it is declared to speak, whatever the caller spoke.
        let h2 = grpc || self.shared.config.inbound.app_protocol == AppProtocol::H2;
        for_app(&mut req, target, h2, &app.authority)?;
        let limits = &self.shared.config.limits;
        let sent =
            tokio::time::timeout(limits.app_response_timeout, app.clients.send(req, h2)).await;
        match sent {
            Ok(Ok(mut response)) => {
                strip_response(&mut response);
                Ok(response.map(boxed))
            }
            Ok(Err(AppError::Connect(e))) => {
                Err(app_unavailable(&app.addr, &e, limits.app_connect_timeout))
            }
            Ok(Err(AppError::CallerBody)) => Err(malformed_body()),
            Ok(Err(AppError::Exchange(e))) => Err(Refusal::new(
                RefusalKind::AppFailed,
                format!("app at {} failed: {e}", app.addr),
            )),
            Err(_) => Err(app_timeout(&app.addr, limits.app_response_timeout)),
        }
    }
}

/// The request as the app gets it: HTTP/2 or HTTP/1.1, the normalized
/// target, and the host the policy saw.
fn for_app<B>(
    req: &mut Request<B>,
    target: &Target,
    h2: bool,
    app_authority: &str,
) -> Result<(), Refusal> {
    *req.uri_mut() = app_uri(target, h2, app_authority)?;
    // `Host` holds the policy's host already (the `target` stage); HTTP/2
    // carries it as `:authority` instead. HTTP/1.1 needs one: without a
    // host to pass on, the app's own.
    if h2 {
        req.headers_mut().remove(header::HOST);
    } else if !req.headers().contains_key(header::HOST) {
        let host = HeaderValue::from_str(app_authority).map_err(|_| unforwardable())?;
        req.headers_mut().insert(header::HOST, host);
    }
    *req.version_mut() = if h2 {
        Version::HTTP_2
    } else {
        Version::HTTP_11
    };
    Ok(())
}

/// HTTP/1.1: the origin form (`/path?query`), as a client sends it to a
/// server. HTTP/2: absolute, naming the caller's host (or the app's when
/// there is none) as `:authority`.
fn app_uri(target: &Target, h2: bool, app_authority: &str) -> Result<Uri, Refusal> {
    if !h2 {
        let mut uri = String::with_capacity(target.path.len() + 16);
        target.push_path_and_query(&mut uri);
        return Uri::try_from(uri).map_err(|_| unforwardable());
    }
    let host = target.host.as_ref().map(Host::authority);
    let authority = host.as_deref().unwrap_or(app_authority);
    let mut uri = String::with_capacity(7 + authority.len() + target.path.len());
    uri.push_str("http://");
    uri.push_str(authority);
    target.push_path_and_query(&mut uri);
    Uri::try_from(uri).map_err(|_| unforwardable())
}

pub(super) fn unforwardable() -> Refusal {
    Refusal::new(
        RefusalKind::BadRequest,
        "request target cannot be forwarded",
    )
}

/// 504 when connecting to the app timed out, 503 when it refused.
pub(super) fn app_unavailable(app: &AppAddr, e: &std::io::Error, timeout: Duration) -> Refusal {
    if e.kind() == std::io::ErrorKind::TimedOut {
        Refusal::new(
            RefusalKind::AppTimeout,
            format!("app at {app} did not accept a connection within {timeout:?}"),
        )
    } else {
        Refusal::new(
            RefusalKind::AppUnavailable,
            format!("app at {app} is unavailable: {e}"),
        )
    }
}

pub(super) fn app_timeout(app: &AppAddr, timeout: Duration) -> Refusal {
    Refusal::new(
        RefusalKind::AppTimeout,
        format!("app at {app} did not respond within {timeout:?}"),
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::sidecar::normalize::Host;

    fn host_header(headers: &http::HeaderMap) -> Option<&str> {
        headers.get(header::HOST).and_then(|v| v.to_str().ok())
    }

    fn target(host: Option<(&str, Option<u16>)>) -> Target {
        Target {
            path: "/api/v1".into(),
            query: Some("q=1".into()),
            host: host.map(|(name, port)| Host {
                name: name.into(),
                port,
            }),
            port: 80,
        }
    }

    fn request() -> Request<()> {
        Request::builder()
            .version(Version::HTTP_2)
            .uri("http://caller-chosen/ignored")
            .header(header::HOST, "svc.example:8080")
            .body(())
            .expect("request")
    }

    #[test]
    fn http1_sends_the_origin_form_and_the_policys_host() {
        let mut req = request();
        for_app(
            &mut req,
            &target(Some(("svc.example", Some(8080)))),
            false,
            "127.0.0.1:9000",
        )
        .expect("rewritten");
        assert_eq!(req.uri(), "/api/v1?q=1");
        assert_eq!(req.version(), Version::HTTP_11);
        assert_eq!(host_header(req.headers()), Some("svc.example:8080"));
    }

    #[test]
    fn http1_without_a_host_names_the_app() {
        let mut req = request();
        req.headers_mut().remove(header::HOST);
        for_app(&mut req, &target(None), false, "127.0.0.1:9000").expect("rewritten");
        assert_eq!(req.uri(), "/api/v1?q=1");
        assert_eq!(host_header(req.headers()), Some("127.0.0.1:9000"));
    }

    #[test]
    fn h2_names_the_host_as_authority() {
        let mut req = request();
        for_app(
            &mut req,
            &target(Some(("svc.example", Some(8080)))),
            true,
            "127.0.0.1:9000",
        )
        .expect("rewritten");
        assert_eq!(req.uri(), "http://svc.example:8080/api/v1?q=1");
        assert_eq!(req.version(), Version::HTTP_2);
        assert_eq!(host_header(req.headers()), None);
    }

    #[test]
    fn h2_without_a_host_uses_the_app_authority() {
        let mut req = request();
        for_app(&mut req, &target(None), true, "localhost").expect("rewritten");
        assert_eq!(req.uri(), "http://localhost/api/v1?q=1");
    }

    #[test]
    fn a_timeout_connecting_is_504_and_a_refusal_503() {
        let app = AppAddr::Tcp("127.0.0.1:1".parse().expect("addr"));
        let timed_out = std::io::Error::from(std::io::ErrorKind::TimedOut);
        let refused = std::io::Error::from(std::io::ErrorKind::ConnectionRefused);
        let t = Duration::from_secs(1);
        assert_eq!(
            app_unavailable(&app, &timed_out, t).kind,
            RefusalKind::AppTimeout
        );
        assert_eq!(
            app_unavailable(&app, &refused, t).kind,
            RefusalKind::AppUnavailable
        );
    }
}
