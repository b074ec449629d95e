//! Sections read from the file and used as they are: `validate` checks
//! their few bounds (a non-empty `service.name`, intervals of at least
//! 1 ms) in place.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use serde::Deserialize;

use super::file::{duration, mode};
use crate::authz::Mode;

/// Telemetry that is not configured by `OTEL_*` variables.
#[derive(Debug, Clone, Deserialize, Default)]
#[serde(deny_unknown_fields, default)]
pub struct TelemetryConfig {
    /// One JSON line per request on stdout (method, path, status, duration,
    /// peer, decision, request and trace ids).
    pub access_log: bool,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct ServiceConfig {
    /// The service this sidecar protects: the Cedar resource `Service::"<name>"`.
    pub name: String,
}

impl Default for ServiceConfig {
    fn default() -> Self {
        ServiceConfig { name: "app".into() }
    }
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct AuthzConfig {
    /// Directory of `*.cedar` files (and optionally `schema.cedarschema`),
    /// hot-reloaded. Unset: the built-in `policies/default.cedar`.
    pub policies: Option<PathBuf>,
    /// `enforce`, or `audit` (decide and record, but let everything through).
    #[serde(deserialize_with = "mode")]
    pub mode: Mode,
    #[serde(deserialize_with = "duration")]
    pub reload_interval: Duration,
}

impl Default for AuthzConfig {
    fn default() -> Self {
        AuthzConfig {
            policies: None,
            mode: Mode::Enforce,
            reload_interval: Duration::from_secs(2),
        }
    }
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct AdminConfig {
    /// `/live`, `/ready`, `/identity`, `/metrics`. Keep it on loopback.
    pub listen: SocketAddr,
    /// Where the sidecar writes (mode 0600, anew at each start) the bearer
    /// token that mutating admin requests (`PUT /logging`) must carry.
    /// Unset: the admin API is read-only.
    pub token_file: Option<PathBuf>,
    /// The app's kubelet probes, rewritten by `warden inject` to
    /// `/app-health/<name>` on this server: the sidecar runs each against
    /// the app on loopback, so the app's ports stay behind mTLS.
    pub app_probes: Vec<AppProbe>,
}

/// One probe `GET /app-health/<name>` runs against the app's `port`: an
/// HTTP GET of `path` with `headers` (the app's status is the answer), a
/// gRPC health check of service `grpc` (`""`: the server as a whole;
/// SERVING is 200), or with neither a TCP connect.
#[derive(Debug, Clone, Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct AppProbe {
    pub name: String,
    pub port: u16,
    #[serde(default)]
    pub path: Option<String>,
    #[serde(default)]
    pub headers: Vec<(String, String)>,
    #[serde(default)]
    pub grpc: Option<String>,
}

impl Default for AdminConfig {
    fn default() -> Self {
        AdminConfig {
            listen: SocketAddr::from(([127, 0, 0, 1], 15000)),
            token_file: None,
            app_probes: Vec::new(),
        }
    }
}

/// `[usage]`: what this sidecar's callers used, reported to the control
/// plane (with `[control]`) for `warden access report` and `warden policy
/// propose`.
#[derive(Debug, Clone, Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields, default)]
pub struct UsageConfig {
    /// How often the aggregates go to the control plane ("0s": never).
    /// A report that fails is kept and sent with the next one.
    #[serde(deserialize_with = "duration")]
    pub report_interval: Duration,
}

impl Default for UsageConfig {
    fn default() -> Self {
        UsageConfig {
            report_interval: Duration::from_secs(30),
        }
    }
}

/// `[workload_api]`: the SPIFFE Workload API on a unix socket, for apps
/// that take their SVID and bundles from it (go-spiffe, py-spiffe,
/// spiffe-helper, Envoy's SDS bridges).
#[derive(Debug, Clone, Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields, default)]
pub struct WorkloadApiConfig {
    /// The socket's path (created at start, removed at shutdown). Unset:
    /// no Workload API.
    pub socket: Option<PathBuf>,
    /// The socket's permission bits: `"0660"` (a string in octal, or an
    /// integer such as TOML's `0o660`).
    #[serde(deserialize_with = "file_mode")]
    pub mode: u32,
    /// The user ids served (the app's), checked on every call from the
    /// socket's peer credentials; any other caller gets PermissionDenied.
    /// Required with `socket`.
    pub allowed_uids: Vec<u32>,
}

impl Default for WorkloadApiConfig {
    fn default() -> Self {
        WorkloadApiConfig {
            socket: None,
            mode: 0o660,
            allowed_uids: Vec::new(),
        }
    }
}

/// A permission mode: an integer, or a string of octal digits.
fn file_mode<'de, D: serde::Deserializer<'de>>(d: D) -> Result<u32, D::Error> {
    #[derive(Deserialize)]
    #[serde(untagged)]
    enum Said {
        Number(u32),
        Text(String),
    }
    let mode = match Said::deserialize(d)? {
        Said::Number(n) => n,
        Said::Text(t) => {
            let digits = t.trim().trim_start_matches("0o");
            u32::from_str_radix(digits, 8).map_err(|_| {
                serde::de::Error::custom(format!("{t:?} is not an octal mode such as \"0660\""))
            })?
        }
    };
    if mode > 0o777 {
        return Err(serde::de::Error::custom(format!(
            "{mode:o} is not a permission mode (at most 0777)"
        )));
    }
    Ok(mode)
}
