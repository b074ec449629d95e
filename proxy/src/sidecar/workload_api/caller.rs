//! Who may call: the SPIFFE security header, then the caller's uid from
//! the socket's peer credentials (`SO_PEERCRED`, read by tokio when the
//! connection is accepted).

use tonic::transport::server::UdsConnectInfo;
use tonic::{Request, Status};

/// The metadata every Workload API call carries (SPIFFE Workload Endpoint
/// standard): proof that the caller meant to talk to the Workload API, so a
/// server-side request forgery through a plain HTTP client cannot.
pub const SECURITY_HEADER: &str = "workload.spiffe.io";

/// Admits a call, or says why not: `InvalidArgument` without the security
/// header, `PermissionDenied` for a uid not in `allowed`.
pub fn admit<T>(request: &Request<T>, allowed: &[u32], call: &str) -> Result<u32, Status> {
    let header = request
        .metadata()
        .get(SECURITY_HEADER)
        .and_then(|v| v.to_str().ok());
    if header != Some("true") {
        return Err(Status::invalid_argument(format!(
            "security header missing from request: {SECURITY_HEADER}: true"
        )));
    }
    let uid = request
        .extensions()
        .get::<UdsConnectInfo>()
        .and_then(|info| info.peer_cred)
        .map(|cred| cred.uid());
    match uid {
        Some(uid) if allowed.contains(&uid) => Ok(uid),
        Some(uid) => {
            tracing::warn!(
                uid,
                call,
                "Workload API call refused: uid not in workload_api.allowed_uids"
            );
            Err(Status::permission_denied(format!(
                "uid {uid} is not served by this Workload API"
            )))
        }
        None => Err(Status::permission_denied(
            "the caller's credentials are unknown",
        )),
    }
}
