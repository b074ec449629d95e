//! JWT-SVIDs for the workload: signed by the control plane (`POST /v1/jwt`,
//! over the sidecar's mTLS), cached per audience set until half their
//! lifetime has passed so a chatty app does not reach the control plane on
//! every call.

use std::collections::HashMap;
use std::sync::Mutex;

use tonic::Status;

use super::pb;
use crate::control::api::{self, JwtRequest, JwtResponse};
use crate::control::{ControlClient, ControlError};
use crate::identity::SvidStore;

/// Audience sets cached at most.
const MAX_CACHED: usize = 64;

pub struct JwtSvids {
    control: Option<ControlClient>,
    cache: Mutex<HashMap<Vec<String>, Cached>>,
}

#[derive(Clone)]
struct Cached {
    response: JwtResponse,
    /// Unix seconds after which a fresh token is asked for.
    renew_after: i64,
}

fn unix_now() -> i64 {
    crate::identity::Timestamp::now().0
}

pub fn no_control_plane() -> Status {
    Status::unavailable(
        "JWT-SVIDs and JWT bundles come from the control plane; this sidecar takes its identity from files",
    )
}

impl JwtSvids {
    pub fn new(control: Option<ControlClient>) -> Self {
        JwtSvids {
            control,
            cache: Mutex::new(HashMap::new()),
        }
    }

    fn cache(&self) -> std::sync::MutexGuard<'_, HashMap<Vec<String>, Cached>> {
        self.cache
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// A JWT-SVID of the sidecar's SPIFFE ID for `audiences` (in the order
    /// given, duplicates dropped). `spiffe_id`, when not empty, must be ours.
    pub async fn fetch(
        &self,
        store: &SvidStore,
        audiences: &[String],
        spiffe_id: &str,
    ) -> Result<pb::Jwtsvid, Status> {
        let mut asked: Vec<String> = Vec::with_capacity(audiences.len());
        for audience in audiences {
            if !asked.contains(audience) {
                asked.push(audience.clone());
            }
        }
        if asked.is_empty() {
            return Err(Status::invalid_argument("audience must be specified"));
        }
        api::check_audiences(&asked).map_err(Status::invalid_argument)?;
        let Some(svid) = store.current() else {
            return Err(Status::unavailable("the sidecar holds no SVID yet"));
        };
        let ours = svid.spiffe_id().as_str();
        if !spiffe_id.is_empty() && spiffe_id != ours {
            return Err(Status::permission_denied(format!(
                "this workload is {ours}, not {spiffe_id}"
            )));
        }
        let Some(control) = &self.control else {
            return Err(no_control_plane());
        };
        let mut key = asked.clone();
        key.sort();
        let now = unix_now();
        if let Some(hit) = self.cache().get(&key)
            && hit.response.spiffe_id == ours
            && now < hit.renew_after
        {
            return Ok(svid_message(&hit.response));
        }
        let response: JwtResponse = control
            .post(
                api::JWT,
                &JwtRequest {
                    audiences: asked,
                    ttl_secs: None,
                },
            )
            .await
            .map_err(status_of)?;
        let renew_after = now + (response.expires_at - now) / 2;
        let message = svid_message(&response);
        let mut cache = self.cache();
        cache.retain(|_, c| c.renew_after > now);
        if cache.len() >= MAX_CACHED {
            cache.clear();
        }
        cache.insert(
            key,
            Cached {
                response,
                renew_after,
            },
        );
        Ok(message)
    }
}

fn svid_message(response: &JwtResponse) -> pb::Jwtsvid {
    pb::Jwtsvid {
        spiffe_id: response.spiffe_id.clone(),
        svid: response.token.clone(),
        hint: String::new(),
    }
}

/// The control plane's answer as a gRPC status: its refusals of this
/// workload are `PermissionDenied` (revoked) or `InvalidArgument`; being
/// unreachable is `Unavailable`, which clients retry.
fn status_of(error: ControlError) -> Status {
    match &error {
        ControlError::Refused { status, .. } if status.as_u16() == 400 => {
            Status::invalid_argument(error.to_string())
        }
        ControlError::Refused { status, .. } if matches!(status.as_u16(), 401 | 403) => {
            Status::permission_denied(error.to_string())
        }
        _ => Status::unavailable(error.to_string()),
    }
}
