//! The sidecar's configuration: a TOML file, then `WARDEN_<SECTION>_<KEY>`
//! environment variables, then `--set section.key=value` flags, each layer
//! overriding the one before ([`layers`]). What they say ([`file`]) is
//! validated into types that cannot hold a contradiction ([`validate`]):
//! one identity source ([`source`]), an inbound listener always with its
//! app, every listener on its own address ([`traffic`]). Every error names
//! the key it is about.

mod file;
mod layers;
mod limits;
mod sections;
mod source;
mod traffic;
mod validate;

#[cfg(test)]
mod tests;

use std::path::{Path, PathBuf};

pub use super::app::AppAddr;
pub use super::normalize::{EscapedSlashes, PathRules};
pub use limits::{Limits, MAX_BUFFER_WINDOW, MAX_COUNT, MIN_BUFFER_WINDOW, MIN_HEADER_BYTES};
pub use sections::{
    AdminConfig, AppProbe, AuthzConfig, ServiceConfig, TelemetryConfig, UsageConfig,
    WorkloadApiConfig,
};
pub use source::{
    BundleSource, ControlSource, FileIdentity, IdentitySource, JoinToken, WorkloadApiIdentity,
};
pub use traffic::{
    AppProtocol, EndpointConfig, HttpProxy, InboundApp, InboundConfig, InboundHttp, InboundMode,
    OpaqueConfig, OutboundConfig, PeerHttp1, RouteConfig, RouteProtocol, ServiceRoute,
    TransparentOutbound, UnknownDestination, normalize_authority,
};

use crate::identity::RotationPolicy;

/// Sections of the file; `WARDEN_<SECTION>_<KEY>` variables map onto them.
pub const SECTIONS: [&str; 12] = [
    "identity",
    "control",
    "service",
    "authz",
    "inbound",
    "outbound",
    "admin",
    "limits",
    "telemetry",
    "rotation",
    "workload_api",
    "usage",
];

#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("cannot read config file {path}: {source}")]
    Read {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("config file {path}: {message}")]
    Syntax { path: PathBuf, message: String },
    #[error("{origin}: {message}")]
    Override { origin: String, message: String },
    #[error("config key `{key}`: {message}")]
    Key { key: String, message: String },
}

fn key_error(key: impl Into<String>, message: impl Into<String>) -> ConfigError {
    ConfigError::Key {
        key: key.into(),
        message: message.into(),
    }
}

/// A validated configuration: what the sidecar runs on.
#[derive(Debug, Clone)]
pub struct SidecarConfig {
    /// `[identity]` files or `[control]`: exactly one of them.
    pub identity: IdentitySource,
    pub service: ServiceConfig,
    pub authz: AuthzConfig,
    pub inbound: InboundConfig,
    pub outbound: OutboundConfig,
    pub admin: AdminConfig,
    pub limits: Limits,
    pub telemetry: TelemetryConfig,
    /// `[rotation]`: SVID renewal and every retry's backoff.
    pub rotation: RotationPolicy,
    /// `[workload_api]`: the SPIFFE Workload API socket, if any.
    pub workload_api: WorkloadApiConfig,
    /// `[usage]`: reporting what callers used to the control plane.
    pub usage: UsageConfig,
}

impl SidecarConfig {
    /// Builds the configuration from an optional file, the process
    /// environment and `--set` flags, and validates it.
    pub fn load(
        file: Option<&Path>,
        env: impl IntoIterator<Item = (String, String)>,
        sets: &[String],
    ) -> Result<Self, ConfigError> {
        let text = match file {
            Some(path) => {
                Some(
                    std::fs::read_to_string(path).map_err(|source| ConfigError::Read {
                        path: path.to_owned(),
                        source,
                    })?,
                )
            }
            None => None,
        };
        Self::parse(file.zip(text.as_deref()), env, sets)
    }

    /// As [`SidecarConfig::load`], with the file's text already read
    /// (`(path, text)`; the path only names it in errors).
    pub fn parse(
        file: Option<(&Path, &str)>,
        env: impl IntoIterator<Item = (String, String)>,
        sets: &[String],
    ) -> Result<Self, ConfigError> {
        let table = layers::layered(file, env, sets)?;
        let said: file::FileConfig = serde_path_to_error::deserialize(toml::Value::Table(table))
            .map_err(|e| key_error(e.path().to_string(), e.inner().to_string()))?;
        SidecarConfig::try_from(said)
    }

    /// The control plane, when it is the identity source.
    pub fn control(&self) -> Option<&ControlSource> {
        self.identity.control()
    }

    /// Whether policies come from the control plane (`control.policies`).
    pub fn policies_from_control(&self) -> bool {
        self.control().is_some_and(|c| c.policies)
    }
}
