//! `warden inject serve`: the mutating admission webhook. The API server
//! sends an `AdmissionReview` (`admission.k8s.io/v1`) for each pod created
//! in a namespace labelled `warden.dev/inject=enabled`; the answer carries
//! a JSONPatch that turns the pod into exactly what `warden inject` makes
//! of it. The control plane's namespace is never injected. A review that
//! cannot be read gets HTTP 400 (with `failurePolicy: Fail`, the API server
//! then refuses the pod rather than start it unmeshed); a pod whose
//! annotations are wrong is refused with the reason.

use std::convert::Infallible;
use std::path::Path;
use std::sync::Arc;

use anyhow::Context;
use base64::Engine;
use bytes::Bytes;
use http::{Method, Request, Response, StatusCode, header};
use http_body_util::{BodyExt, Full, Limited};
use hyper::body::Incoming;
use hyper::service::service_fn;
use hyper_util::rt::TokioIo;
use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, PrivateKeyDer};
use serde_json::{Value, json};
use tokio::net::TcpListener;
use tokio_rustls::TlsAcceptor;

use super::{InjectOptions, Outcome, Refused};

/// The largest review read (the API server's own request limit is 3 MiB).
const MAX_REVIEW: usize = 4 * 1024 * 1024;
/// Connections served at once, and from one source address (an API
/// server opens several); more are closed at accept.
const MAX_CONNECTIONS: usize = 512;
const MAX_CONNECTIONS_PER_SOURCE: usize = 64;

/// What the webhook needs besides the injection options.
#[derive(Clone, Debug)]
pub struct WebhookOptions {
    pub inject: InjectOptions,
    /// The control plane's namespace: its pods are never injected.
    pub control_namespace: String,
}

/// The answer to one request body: the HTTP status and the JSON sent back.
pub fn review(body: &[u8], options: &WebhookOptions) -> (StatusCode, Value) {
    match answer(body, options) {
        Ok(response) => (StatusCode::OK, response),
        Err(message) => (
            StatusCode::BAD_REQUEST,
            json!({"error": "bad_admission_review", "message": message}),
        ),
    }
}

fn answer(body: &[u8], options: &WebhookOptions) -> Result<Value, String> {
    let review: Value = serde_json::from_slice(body).map_err(|e| format!("not JSON: {e}"))?;
    if review.get("apiVersion").and_then(Value::as_str) != Some("admission.k8s.io/v1")
        || review.get("kind").and_then(Value::as_str) != Some("AdmissionReview")
    {
        return Err("not an admission.k8s.io/v1 AdmissionReview".into());
    }
    let request = review
        .get("request")
        .filter(|r| r.is_object())
        .ok_or("the review has no request")?;
    let uid = request
        .get("uid")
        .and_then(Value::as_str)
        .filter(|u| !u.is_empty())
        .ok_or("the request has no uid")?;
    let respond = |extra: Value| {
        let mut response = json!({"uid": uid, "allowed": true});
        if let (Some(out), Some(extra)) = (response.as_object_mut(), extra.as_object()) {
            for (k, v) in extra {
                out.insert(k.clone(), v.clone());
            }
        }
        json!({
            "apiVersion": "admission.k8s.io/v1",
            "kind": "AdmissionReview",
            "response": response,
        })
    };
    let deny = |code: u16, message: String| {
        respond(json!({
            "allowed": false,
            "status": {"code": code, "message": message},
        }))
    };
    let kind = request.get("kind");
    let is_pod = kind.and_then(|k| k.get("kind")).and_then(Value::as_str) == Some("Pod")
        && kind.and_then(|k| k.get("group")).and_then(Value::as_str) == Some("")
        && kind.and_then(|k| k.get("version")).and_then(Value::as_str) == Some("v1");
    if !is_pod {
        return Ok(deny(
            400,
            "warden's injector only takes core/v1 Pods: check the MutatingWebhookConfiguration's rules".into(),
        ));
    }
    if request.get("operation").and_then(Value::as_str) != Some("CREATE") {
        return Ok(respond(json!({})));
    }
    let namespace = request
        .get("namespace")
        .and_then(Value::as_str)
        .unwrap_or_default();
    if namespace == options.control_namespace {
        return Ok(respond(json!({})));
    }
    let pod = request
        .get("object")
        .filter(|o| o.is_object())
        .ok_or("the request has no object (the pod)")?;
    let mut meta = pod.get("metadata").cloned().unwrap_or(Value::Null);
    let mut spec = pod.get("spec").cloned().ok_or("the pod has no spec")?;
    let name = meta
        .get("name")
        .or_else(|| meta.get("generateName"))
        .and_then(Value::as_str)
        .unwrap_or_default()
        .to_owned();
    if spec.get("hostNetwork").and_then(Value::as_bool) == Some(true) {
        tracing::warn!(namespace, pod = %name, "hostNetwork pod admitted without a sidecar");
        return Ok(respond(json!({
            "warnings": ["warden: a hostNetwork pod shares the node's network namespace; not injected"],
        })));
    }
    if spec.pointer("/os/name").and_then(Value::as_str) == Some("windows") {
        tracing::warn!(namespace, pod = %name, "Windows pod admitted without a sidecar");
        return Ok(respond(json!({
            "warnings": ["warden: a Windows pod cannot run Warden's Linux containers; not injected"],
        })));
    }
    match super::inject(&mut meta, &mut spec, &options.inject) {
        Ok(Outcome::Changed) => {
            let mut injected = pod.clone();
            if let Some(obj) = injected.as_object_mut() {
                obj.insert("metadata".into(), meta);
                obj.insert("spec".into(), spec);
            }
            let patch = json_patch::diff(pod, &injected);
            let patch = serde_json::to_vec(&patch).map_err(|e| e.to_string())?;
            tracing::info!(namespace, pod = %name, "injected");
            Ok(respond(json!({
                "patchType": "JSONPatch",
                "patch": base64::engine::general_purpose::STANDARD.encode(patch),
            })))
        }
        Ok(Outcome::Skipped(skip)) => {
            tracing::info!(namespace, pod = %name, reason = %skip, "not injected");
            Ok(respond(json!({})))
        }
        Err(Refused(reason)) => {
            tracing::warn!(namespace, pod = %name, %reason, "pod refused");
            Ok(deny(400, format!("warden: {reason}")))
        }
    }
}

fn tls_acceptor(cert: &Path, key: &Path) -> anyhow::Result<TlsAcceptor> {
    let certs = CertificateDer::pem_file_iter(cert)
        .with_context(|| format!("cannot read {}", cert.display()))?
        .collect::<Result<Vec<_>, _>>()
        .with_context(|| format!("{}: not PEM certificates", cert.display()))?;
    anyhow::ensure!(!certs.is_empty(), "{}: no certificate", cert.display());
    let key = PrivateKeyDer::from_pem_file(key)
        .with_context(|| format!("{}: no PEM private key", key.display()))?;
    let mut config =
        rustls::ServerConfig::builder_with_provider(warden_proxy::tls::crypto_provider().clone())
            .with_protocol_versions(&[&rustls::version::TLS13, &rustls::version::TLS12])
            .context("TLS versions")?
            .with_no_client_auth()
            .with_single_cert(certs, key)
            .context("the certificate and key do not make a TLS identity")?;
    config.alpn_protocols = vec![b"http/1.1".to_vec()];
    Ok(TlsAcceptor::from(Arc::new(config)))
}

/// Serves reviews on `listener` (HTTPS, `POST /inject`; `GET /live`) until
/// `shutdown` resolves.
pub async fn serve(
    listener: TcpListener,
    cert: &Path,
    key: &Path,
    options: WebhookOptions,
    shutdown: impl std::future::Future<Output = ()>,
) -> anyhow::Result<()> {
    let acceptor = tls_acceptor(cert, key)?;
    let options = Arc::new(options);
    // Any pod can reach the webhook's Service, and with failurePolicy Fail
    // a wedged webhook stops pod creation in meshed namespaces: connections
    // are capped, and each must send its request head within 10 s and be
    // done within a minute.
    let slots = warden_proxy::sidecar::slots::ConnectionSlots::new(
        MAX_CONNECTIONS,
        MAX_CONNECTIONS_PER_SOURCE,
    );
    tokio::pin!(shutdown);
    loop {
        let (stream, peer) = tokio::select! {
            accepted = listener.accept() => match accepted {
                Ok(a) => a,
                Err(e) => {
                    tracing::warn!(error = %e, "accept failed");
                    tokio::time::sleep(std::time::Duration::from_millis(50)).await;
                    continue;
                }
            },
            () = &mut shutdown => return Ok(()),
        };
        let Some(slot) = slots.take(peer.ip()) else {
            drop(stream);
            continue;
        };
        let acceptor = acceptor.clone();
        let options = options.clone();
        tokio::spawn(async move {
            let _slot = slot;
            let tls = match tokio::time::timeout(
                std::time::Duration::from_secs(5),
                acceptor.accept(stream),
            )
            .await
            {
                Ok(Ok(tls)) => tls,
                _ => return,
            };
            let service = service_fn(move |req: Request<Incoming>| {
                let options = options.clone();
                async move { Ok::<_, Infallible>(handle(req, &options).await) }
            });
            let _ = tokio::time::timeout(
                std::time::Duration::from_secs(60),
                hyper::server::conn::http1::Builder::new()
                    .timer(hyper_util::rt::TokioTimer::new())
                    .header_read_timeout(std::time::Duration::from_secs(10))
                    .serve_connection(TokioIo::new(tls), service),
            )
            .await;
        });
    }
}

async fn handle(req: Request<Incoming>, options: &WebhookOptions) -> Response<Full<Bytes>> {
    let reply = |status: StatusCode, body: Value| {
        let mut response = Response::new(Full::new(Bytes::from(format!("{body}\n"))));
        *response.status_mut() = status;
        response.headers_mut().insert(
            header::CONTENT_TYPE,
            header::HeaderValue::from_static("application/json"),
        );
        response
    };
    match (req.method(), req.uri().path()) {
        (&Method::GET, "/live") => reply(StatusCode::OK, json!({"live": true})),
        (&Method::POST, "/inject") => {
            let body = match Limited::new(req.into_body(), MAX_REVIEW).collect().await {
                Ok(body) => body.to_bytes(),
                Err(e) => {
                    return reply(
                        StatusCode::BAD_REQUEST,
                        json!({"error": "bad_admission_review", "message": format!("cannot read the body: {e}")}),
                    );
                }
            };
            let (status, body) = review(&body, options);
            if status != StatusCode::OK {
                tracing::warn!(%body, "malformed admission review");
            }
            reply(status, body)
        }
        _ => reply(
            StatusCode::NOT_FOUND,
            json!({"error": "not_found", "message": "POST /inject takes AdmissionReviews"}),
        ),
    }
}
