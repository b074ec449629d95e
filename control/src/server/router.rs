//! The HTTPS listener: TLS handshakes (a refused client certificate is
//! audited), the caller's identity, and routing to the endpoints.

use super::*;

/// The facts of an mTLS caller.
#[derive(Debug, Clone)]
pub(super) struct Caller {
    pub(super) id: SpiffeId,
    pub(super) serial: String,
    /// When its SVID expires (Unix seconds).
    pub(super) not_after: i64,
}

impl Caller {
    /// Refused once its certificate has expired: a kept-alive connection
    /// (or a long poll) can outlive the handshake that checked it.
    pub(super) fn check_current(&self, state: &State) -> Result<(), Fail> {
        if self.not_after > state.now() {
            return Ok(());
        }
        Err(Fail::new(
            Reason::BadClientCertificate,
            format!(
                "the client certificate (serial {}) expired at {}; connect again with a current SVID",
                self.serial, self.not_after
            ),
        ))
    }
}

pub(super) async fn serve_api(
    listener: TcpListener,
    acceptor: TlsAcceptor,
    state: Arc<State>,
    mut shutdown: watch::Receiver<bool>,
) {
    loop {
        let (stream, remote) = tokio::select! {
            accepted = listener.accept() => match accepted {
                Ok(a) => a,
                Err(e) => {
                    tracing::warn!(error = %e, "accept failed");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                }
            },
            _ = shutdown.changed() => return,
        };
        let acceptor = acceptor.clone();
        let state = state.clone();
        tokio::spawn(async move {
            let _ = stream.set_nodelay(true);
            let tls = match tokio::time::timeout(Duration::from_secs(10), acceptor.accept(stream))
                .await
            {
                Ok(Ok(tls)) => tls,
                Ok(Err(e)) => {
                    handshake_refused(&state, remote, &e);
                    return;
                }
                Err(_) => return,
            };
            let caller = tls.get_ref().1.peer_certificates().and_then(|certs| {
                let leaf = SvidLeaf::parse(
                    certs.first()?,
                    Timestamp::from_system_time(state.clock.now()),
                )
                .ok()?;
                Some(Caller {
                    id: leaf.spiffe_id,
                    serial: leaf.serial,
                    not_after: leaf.not_after.0,
                })
            });
            let service = service_fn(move |req| {
                let state = state.clone();
                let caller = caller.clone();
                async move { Ok::<_, Infallible>(route(&state, caller.as_ref(), remote, req).await) }
            });
            let conn = hyper::server::conn::http1::Builder::new()
                .max_buf_size(64 * 1024)
                .header_read_timeout(Duration::from_secs(10))
                .timer(hyper_util::rt::TokioTimer::new())
                .serve_connection(TokioIo::new(tls), service);
            if let Err(e) = conn.await {
                tracing::debug!(%remote, error = %e, "API connection ended with an error");
            }
        });
    }
}

/// A client that presented a certificate we refuse (expired, revoked,
/// foreign) is audited: it is a workload failing to renew or an intruder.
fn handshake_refused(state: &State, remote: SocketAddr, e: &std::io::Error) {
    let Some(tls) = e.get_ref().and_then(|i| i.downcast_ref::<rustls::Error>()) else {
        return;
    };
    if !matches!(tls, rustls::Error::InvalidCertificate(_)) {
        return;
    }
    let reason = warden_proxy::identity::describe_tls_error(tls);
    state.count(|c| c.handshake_failures += 1);
    if !state.audit_admitted(remote.ip()) {
        return;
    }
    let event = AuditEvent::refused(
        "handshake",
        Reason::BadClientCertificate,
        reason,
        &remote.to_string(),
    );
    let db = state.db.clone();
    tokio::task::spawn_blocking(move || db.audit(&event));
}

async fn route(
    state: &Arc<State>,
    caller: Option<&Caller>,
    remote: SocketAddr,
    req: Request<Incoming>,
) -> Response<Body> {
    let method = req.method().clone();
    let path = req.uri().path().to_owned();
    // Connections are kept alive between calls, so one may outlive the
    // client certificate its handshake checked: every request checks the
    // expiry again, and a connection past it is refused (as the handshake
    // refuses an expired certificate) and closed.
    if let Some(caller) = caller
        && let Err(fail) = caller.check_current(state)
    {
        let fail = refused(
            state,
            "request",
            caller.id.as_str(),
            Some(caller.id.as_str()),
            fail,
        );
        let mut response = answer_refusal(state, remote, fail).await;
        response.headers_mut().insert(
            header::CONNECTION,
            header::HeaderValue::from_static("close"),
        );
        return response;
    }
    let result = match (&method, path.as_str()) {
        (&Method::GET, api::BUNDLE) => Ok(json_response(StatusCode::OK, &state.bundle())),
        (&Method::GET, api::SPIFFE_BUNDLE) => Ok(spiffe_bundle_response(state)),
        (&Method::POST, api::JOIN) => join(state, remote, req).await,
        (&Method::POST, api::ATTEST_K8S) => attest_k8s(state, remote, req).await,
        (&Method::POST, api::RENEW) => renew(state, caller, req).await,
        (&Method::POST, api::JWT) => issue_jwt(state, caller, req).await,
        (&Method::GET, api::WATCH) => watch_changes(state, caller, req).await,
        (&Method::PUT, api::ENDPOINTS) => register_endpoints(state, caller, remote, req).await,
        (&Method::POST, api::USAGE) => usage::report_usage(state, caller, req).await,
        (_, p) if p.starts_with("/v1/admin/") => match admin_auth(state, &req, remote) {
            Ok(()) => admin(state, req).await,
            Err(fail) => Err(fail),
        },
        (
            _,
            api::BUNDLE
            | api::SPIFFE_BUNDLE
            | api::JOIN
            | api::ATTEST_K8S
            | api::RENEW
            | api::JWT
            | api::WATCH
            | api::ENDPOINTS
            | api::USAGE,
        ) => Err(Fail::new(
            Reason::MethodNotAllowed,
            format!("{method} is not allowed on {path}"),
        )),
        _ => Err(Fail::new(Reason::NotFound, format!("no endpoint {path}"))),
    };
    match result {
        Ok(mut response) => {
            response.headers_mut().insert(
                api::VERSION_HEADER,
                header::HeaderValue::from_static(api::VERSION),
            );
            response
        }
        Err(fail) => answer_refusal(state, remote, fail).await,
    }
}

/// The answer to a refused request, once its audit row is written.
async fn answer_refusal(state: &State, remote: SocketAddr, mut fail: Fail) -> Response<Body> {
    if let Some(event) = fail.audit.take()
        && state.audit_admitted(remote.ip())
    {
        let db = state.db.clone();
        let _ = tokio::task::spawn_blocking(move || db.audit(&event)).await;
    }
    let mut response = fail_response(&fail);
    response.headers_mut().insert(
        api::VERSION_HEADER,
        header::HeaderValue::from_static(api::VERSION),
    );
    response
}

/// The SPIFFE bundle endpoint's answer: the document as the standard
/// writes it.
fn spiffe_bundle_response(state: &State) -> Response<Body> {
    let mut response = Response::new(Full::new(Bytes::from(state.spiffe_bundle().to_json())));
    response.headers_mut().insert(
        header::CONTENT_TYPE,
        header::HeaderValue::from_static("application/json"),
    );
    response
}
