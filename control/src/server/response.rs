//! What the API answers: JSON bodies, and refusals that carry their
//! reason (which decides the status) and, when audited, their audit row.

use super::*;

/// A refusal on its way to the caller: its reason decides the status.
pub(super) struct Fail {
    pub(super) reason: Reason,
    pub(super) message: String,
    /// The audit record to write before answering, for refusals that are audited.
    pub(super) audit: Option<Box<AuditEvent>>,
}

impl Fail {
    pub(super) fn new(reason: Reason, message: impl Into<String>) -> Self {
        Fail {
            reason,
            message: message.into(),
            audit: None,
        }
    }
}

impl From<StoreError> for Fail {
    fn from(e: StoreError) -> Self {
        let reason = e.reason();
        if reason.status().is_server_error() {
            tracing::error!(reason = reason.code(), error = %e, "request failed");
        }
        Fail::new(reason, e.to_string())
    }
}

pub(super) fn csr_refusal(e: CsrError) -> StoreError {
    StoreError::refused(e.reason(), e.to_string())
}

pub(super) type Body = Full<Bytes>;

pub(super) fn json_response<T: Serialize>(status: StatusCode, value: &T) -> Response<Body> {
    let body = serde_json::to_vec(value).unwrap_or_default();
    let mut response = Response::new(Full::new(Bytes::from(body)));
    *response.status_mut() = status;
    response.headers_mut().insert(
        header::CONTENT_TYPE,
        header::HeaderValue::from_static("application/json"),
    );
    response
}

pub(super) fn fail_response(fail: &Fail) -> Response<Body> {
    json_response(
        fail.reason.status(),
        &api::ApiError {
            error: fail.reason.code().to_owned(),
            message: fail.message.clone(),
        },
    )
}

/// Runs a blocking store call off the runtime.
pub(super) async fn blocking<T: Send + 'static>(
    f: impl FnOnce() -> Result<T, StoreError> + Send + 'static,
) -> Result<T, StoreError> {
    tokio::task::spawn_blocking(f)
        .await
        .unwrap_or_else(|e| Err(StoreError::refused(Reason::Internal, e.to_string())))
}

/// Audits and counts a refusal, then hands it on.
pub(super) fn refused(
    state: &State,
    event: &'static str,
    actor: &str,
    id: Option<&str>,
    mut fail: Fail,
) -> Fail {
    let reason = fail.reason;
    state.count(|c| *c.refused.entry((event, reason.code())).or_default() += 1);
    fail.audit = Some(Box::new(
        AuditEvent::refused(event, reason, fail.message.clone(), actor).with_id(id),
    ));
    fail
}
