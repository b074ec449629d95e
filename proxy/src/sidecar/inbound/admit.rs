//! Stage 1 of a request: whether the sidecar takes it at all. Refused when
//! too many requests are in flight (load shedding), when the caller's
//! certificate lapsed or was revoked during the connection, and when the
//! sidecar has no identity or policy yet.

use tokio::sync::OwnedSemaphorePermit;

use super::accept::ConnInfo;
use crate::authz::PeerAuthorizer;
use crate::sidecar::http::{Refusal, RefusalKind, overloaded};
use crate::sidecar::shared::Shared;
use crate::sidecar::splice::Lapse;

/// A request the sidecar took: its place among the requests in flight
/// (held until the response head is produced; a streaming body does not
/// hold it), and the connection's authorizer.
pub(super) struct Admitted<'a> {
    pub _permit: OwnedSemaphorePermit,
    pub authorizer: &'a PeerAuthorizer,
}

pub(super) fn admit<'a>(shared: &Shared, conn: &'a ConnInfo) -> Result<Admitted<'a>, Refusal> {
    let Ok(permit) = shared.traffic.inflight.clone().try_acquire_owned() else {
        shared.metrics.shed();
        return Err(overloaded());
    };
    if let Some(lapse) = conn.lapsed() {
        return Err(lapse_refusal(lapse));
    }
    let Some(authorizer) = conn.authorizer(shared) else {
        return Err(Refusal::new(
            RefusalKind::NotReady,
            "sidecar not ready: no identity or policy yet",
        ));
    };
    Ok(Admitted {
        _permit: permit,
        authorizer,
    })
}

/// An expired certificate asks the caller to reconnect (its sidecar has a
/// new one); a revoked one is a deny.
fn lapse_refusal(lapse: Lapse) -> Refusal {
    match lapse {
        Lapse::Expired => Refusal::new(
            RefusalKind::CertificateLapsed,
            "the caller's certificate expired during this connection; reconnect",
        ),
        Lapse::Revoked => Refusal::new(RefusalKind::Revoked, "the caller's certificate is revoked"),
    }
}

#[cfg(test)]
mod tests {
    use http::StatusCode;

    use super::*;

    #[test]
    fn a_lapsed_certificate_is_refused_by_why() {
        let expired = lapse_refusal(Lapse::Expired);
        assert_eq!(expired.kind, RefusalKind::CertificateLapsed);
        assert_eq!(expired.status(), StatusCode::SERVICE_UNAVAILABLE);
        let revoked = lapse_refusal(Lapse::Revoked);
        assert_eq!(revoked.kind, RefusalKind::Revoked);
        assert_eq!(revoked.status(), StatusCode::FORBIDDEN);
    }

    #[test]
    fn shedding_says_retry() {
        let refusal = overloaded();
        assert_eq!(refusal.status(), StatusCode::SERVICE_UNAVAILABLE);
        assert!(refusal.reason.contains("retry later"));
    }
}
