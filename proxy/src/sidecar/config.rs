//! The sidecar's configuration: a TOML file, then `WARDEN_<SECTION>_<KEY>`
//! environment variables, then `--set section.key=value` flags, each layer
//! overriding the one before. The whole thing is validated at start and
//! every error names the key it is about.

use std::collections::HashSet;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::{Deserialize, Deserializer};

pub use super::app::AppAddr;
pub use super::normalize::{EscapedSlashes, PathRules};
use crate::authz::Mode;
use crate::identity::SpiffeId;

/// Sections of the file; `WARDEN_<SECTION>_<KEY>` variables map onto them.
pub const SECTIONS: [&str; 9] = [
    "identity",
    "control",
    "service",
    "authz",
    "inbound",
    "outbound",
    "admin",
    "limits",
    "telemetry",
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

#[derive(Debug, Clone, Deserialize, Default)]
#[serde(deny_unknown_fields, default)]
pub struct SidecarConfig {
    pub identity: IdentityConfig,
    pub control: ControlConfig,
    pub service: ServiceConfig,
    pub authz: AuthzConfig,
    pub inbound: InboundConfig,
    pub outbound: OutboundConfig,
    pub admin: AdminConfig,
    pub limits: Limits,
    pub telemetry: TelemetryConfig,
}

/// Telemetry that is not configured by `OTEL_*` variables.
#[derive(Debug, Clone, Deserialize, Default)]
#[serde(deny_unknown_fields, default)]
pub struct TelemetryConfig {
    /// One JSON line per request on stdout (method, path, status, duration,
    /// peer, decision, request and trace ids).
    pub access_log: bool,
}

/// Where the SVID comes from: files (as written by `warden svid issue` or a
/// node agent), watched and hot-swapped when they change.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct IdentityConfig {
    /// Directory holding `svid.pem`, `svid.key` and `bundle.pem`.
    pub dir: Option<PathBuf>,
    /// Certificate chain, leaf first (default `<dir>/svid.pem`).
    pub cert: Option<PathBuf>,
    /// Private key (default `<dir>/svid.key`).
    pub key: Option<PathBuf>,
    /// Trust bundle of our own trust domain (default `<dir>/bundle.pem`).
    pub bundle: Option<PathBuf>,
    #[serde(deserialize_with = "duration")]
    pub poll_interval: Duration,
}

impl Default for IdentityConfig {
    fn default() -> Self {
        IdentityConfig {
            dir: None,
            cert: None,
            key: None,
            bundle: None,
            poll_interval: Duration::from_secs(1),
        }
    }
}

impl IdentityConfig {
    fn file(
        &self,
        explicit: &Option<PathBuf>,
        name: &str,
        key: &str,
    ) -> Result<PathBuf, ConfigError> {
        match (explicit, &self.dir) {
            (Some(path), _) => Ok(path.clone()),
            (None, Some(dir)) => Ok(dir.join(name)),
            (None, None) => Err(key_error(
                format!("identity.{key}"),
                "required (or set identity.dir)",
            )),
        }
    }

    pub fn cert_path(&self) -> Result<PathBuf, ConfigError> {
        self.file(&self.cert, "svid.pem", "cert")
    }

    pub fn key_path(&self) -> Result<PathBuf, ConfigError> {
        self.file(&self.key, "svid.key", "key")
    }

    pub fn bundle_path(&self) -> Result<PathBuf, ConfigError> {
        self.file(&self.bundle, "bundle.pem", "bundle")
    }
}

/// The control plane as the SVID source: join with a token, renew over
/// mTLS, and watch revocations, the trust bundle and (optionally) policies.
#[derive(Clone, Deserialize, Default)]
#[serde(deny_unknown_fields, default)]
pub struct ControlConfig {
    /// The control plane's API, `host:port`. Setting it replaces `[identity]` files.
    pub address: Option<SocketAddr>,
    /// The control plane's SPIFFE ID (`spiffe://<trust domain>/warden/control`);
    /// it also names the trust domain.
    #[serde(deserialize_with = "opt_spiffe_id")]
    pub server_id: Option<SpiffeId>,
    /// PEM trust bundle that authenticates the control plane before the first SVID.
    pub bundle: Option<PathBuf>,
    /// Single-use join token (`warden control token create`).
    pub token: Option<String>,
    /// File holding the join token (read once at start).
    pub token_file: Option<PathBuf>,
    /// Keeps the SVID (key 0600) here so a restart needs no new token.
    pub state_dir: Option<PathBuf>,
    /// Names this sidecar in the inventory (default: host name and process id).
    pub instance: Option<String>,
    /// Requested SVID lifetime (default: the CA's).
    #[serde(deserialize_with = "opt_duration")]
    pub svid_ttl: Option<Duration>,
    /// Take policies from the control plane (`warden policy push`) instead
    /// of `authz.policies`.
    pub policies: bool,
}

impl std::fmt::Debug for ControlConfig {
    // Never print the token.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ControlConfig")
            .field("address", &self.address)
            .field("server_id", &self.server_id)
            .field("token", &self.token.as_ref().map(|_| "<redacted>"))
            .field("policies", &self.policies)
            .finish_non_exhaustive()
    }
}

impl ControlConfig {
    fn validate(&self, identity: &IdentityConfig, authz: &AuthzConfig) -> Result<(), ConfigError> {
        let Some(_) = self.address else {
            if self.server_id.is_some()
                || self.bundle.is_some()
                || self.token.is_some()
                || self.token_file.is_some()
                || self.policies
            {
                return Err(key_error(
                    "control.address",
                    "required when other control.* keys are set",
                ));
            }
            return Ok(());
        };
        if identity.dir.is_some() || identity.cert.is_some() || identity.key.is_some() {
            return Err(key_error(
                "identity.dir",
                "SVID files cannot be combined with control.address (the control plane issues the SVID)",
            ));
        }
        if self.server_id.is_none() {
            return Err(key_error(
                "control.server_id",
                "required with control.address",
            ));
        }
        if self.bundle.is_none() {
            return Err(key_error(
                "control.bundle",
                "required with control.address: the trust bundle that authenticates the control plane",
            ));
        }
        if self.token.is_some() && self.token_file.is_some() {
            return Err(key_error(
                "control.token",
                "set control.token or control.token_file, not both",
            ));
        }
        if self.token.is_none() && self.token_file.is_none() && self.state_dir.is_none() {
            return Err(key_error(
                "control.token",
                "required with control.address (or control.state_dir holding an SVID from an earlier run)",
            ));
        }
        if let Some(instance) = &self.instance
            && !crate::control::api::is_valid_instance(instance)
        {
            return Err(key_error(
                "control.instance",
                format!(
                    "at most {} bytes of letters, digits and .-_:/@+",
                    crate::control::api::MAX_INSTANCE
                ),
            ));
        }
        if self.policies && authz.policies.is_some() {
            return Err(key_error(
                "authz.policies",
                "cannot be combined with control.policies = true",
            ));
        }
        Ok(())
    }
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

/// How the inbound listener treats peers.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Default)]
#[serde(rename_all = "lowercase")]
pub enum InboundMode {
    /// mTLS required: a handshake without a valid client SVID fails.
    #[default]
    Strict,
    /// Plaintext, or TLS without a client certificate, is accepted as an
    /// unauthenticated principal (for migrations).
    Permissive,
}

/// The protocol the local app speaks.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Default)]
#[serde(rename_all = "lowercase")]
pub enum AppProtocol {
    /// HTTP/1.1; requests that arrived as HTTP/2 from a peer's app (gRPC)
    /// still go to the app as HTTP/2 (prior knowledge, h2c).
    #[default]
    Http1,
    /// HTTP/2 over plaintext (h2c), for every request.
    H2,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct InboundConfig {
    /// Where peers connect (TLS). Unset: no inbound listener.
    pub listen: Option<SocketAddr>,
    /// The local app, `127.0.0.1:PORT` or `unix:/path`.
    pub app: Option<AppAddr>,
    pub app_protocol: AppProtocol,
    pub mode: InboundMode,
    /// Also accept TLS 1.2 (TLS 1.3 only by default).
    pub tls12: bool,
    /// Opaque TCP listeners: each its own port, TLS, one `connect` decision
    /// per connection, then bytes spliced to its `app`.
    pub opaque: Vec<OpaqueConfig>,
    /// Merge repeated slashes in request paths before the policy sees them
    /// (and the app gets them), as Envoy's `merge_slashes`.
    pub merge_slashes: bool,
    /// `%2F`/`%5C` in paths: `reject` (400), `keep` or `decode`.
    pub escaped_slashes: EscapedSlashes,
}

impl Default for InboundConfig {
    fn default() -> Self {
        InboundConfig {
            listen: None,
            app: None,
            app_protocol: AppProtocol::default(),
            mode: InboundMode::default(),
            tls12: false,
            opaque: Vec::new(),
            merge_slashes: true,
            escaped_slashes: EscapedSlashes::default(),
        }
    }
}

impl InboundConfig {
    /// How request paths are normalized.
    pub fn path_rules(&self) -> PathRules {
        PathRules {
            merge_slashes: self.merge_slashes,
            escaped_slashes: self.escaped_slashes,
        }
    }
}

/// An opaque TCP port of the local app, exposed to peers over mTLS.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct OpaqueConfig {
    pub listen: SocketAddr,
    pub app: AppAddr,
}

/// What an outbound route carries.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Default)]
#[serde(rename_all = "lowercase")]
pub enum RouteProtocol {
    /// HTTP/1.1 or h2c from the app, HTTP/2 between sidecars.
    #[default]
    Http,
    /// Opaque bytes, to a peer's `[[inbound.opaque]]` port.
    Tcp,
}

#[derive(Debug, Clone, Deserialize, Default)]
#[serde(deny_unknown_fields, default)]
pub struct OutboundConfig {
    pub routes: Vec<RouteConfig>,
    /// An explicit HTTP proxy for the app (`http_proxy=http://<this>`):
    /// absolute-form requests and CONNECT, to the destinations in `services`.
    pub proxy_listen: Option<SocketAddr>,
    pub services: Vec<ServiceRoute>,
}

/// A destination the HTTP proxy knows: the `host:port` the app names, the
/// peer sidecar that serves it and the identity that sidecar must prove.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ServiceRoute {
    /// `host:port` as the app addresses it (`host` alone means port 80).
    pub authority: String,
    pub upstream: SocketAddr,
    #[serde(deserialize_with = "spiffe_id")]
    pub identity: SpiffeId,
    /// `http`, or `tcp` for CONNECT tunnels to a peer's opaque port.
    #[serde(default)]
    pub protocol: RouteProtocol,
}

/// `host:port`, lowercase, `default_port` when absent.
pub fn normalize_authority(authority: &str, default_port: u16) -> Option<String> {
    let parsed: http::uri::Authority = authority.parse().ok()?;
    if authority.contains('@') {
        return None;
    }
    Some(format!(
        "{}:{}",
        parsed.host().to_ascii_lowercase(),
        parsed.port_u16().unwrap_or(default_port)
    ))
}

/// A per-destination outbound listener: the app sends plain HTTP to
/// `listen`; the sidecar sends it over mTLS to `upstream`, a peer sidecar
/// that must present `identity`.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RouteConfig {
    pub listen: SocketAddr,
    pub upstream: SocketAddr,
    #[serde(deserialize_with = "spiffe_id")]
    pub identity: SpiffeId,
    #[serde(default)]
    pub protocol: RouteProtocol,
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
}

impl Default for AdminConfig {
    fn default() -> Self {
        AdminConfig {
            listen: SocketAddr::from(([127, 0, 0, 1], 15000)),
            token_file: None,
        }
    }
}

/// Limits and timeouts. Defaults suit a typical service; all are per sidecar.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Limits {
    /// A peer must finish its TLS handshake within this.
    #[serde(deserialize_with = "duration")]
    pub tls_handshake_timeout: Duration,
    /// A connection's first request head must arrive within this of the
    /// connection's start, and each later HTTP/1 head within this of its
    /// first byte (slowloris); past it the connection is closed.
    #[serde(deserialize_with = "duration")]
    pub header_read_timeout: Duration,
    /// Largest request head accepted (431 beyond); at least 8 KiB.
    pub max_header_bytes: usize,
    /// Concurrent streams per HTTP/2 connection.
    pub h2_max_concurrent_streams: u32,
    /// Streams a client may reset before the server answers them, per
    /// connection (HTTP/2 rapid reset); past it the connection is closed.
    pub h2_max_pending_resets: usize,
    /// A connection with no request in flight is closed after this.
    #[serde(deserialize_with = "duration")]
    pub idle_timeout: Duration,
    /// Connecting to the local app: past this, 504.
    #[serde(deserialize_with = "duration")]
    pub app_connect_timeout: Duration,
    /// The app must start its response within this: past it, 504.
    #[serde(deserialize_with = "duration")]
    pub app_response_timeout: Duration,
    /// Connecting (TCP and TLS) to a peer sidecar: past this, 504.
    #[serde(deserialize_with = "duration")]
    pub peer_connect_timeout: Duration,
    /// Bytes of a body the sidecar holds ahead of a slow consumer, per
    /// HTTP/1 connection or HTTP/2 stream: HTTP/1 responses are paced to
    /// what the connection has written, reads from the app and HTTP/2
    /// send buffers stop at it; past it the sender waits (backpressure).
    /// Also the largest response head accepted from the app.
    pub buffer_window: u32,
    /// HTTP/2 flow-control window per stream (the connection's is 16
    /// times it): what a peer may send ahead of a slow consumer.
    pub h2_stream_window: u32,
    /// Open connections per listener. At the cap, the connection idle the
    /// longest is closed to make room; with none idle, the new one is
    /// closed at once.
    pub max_connections: usize,
    /// Open connections per source address on the inbound listeners.
    pub max_connections_per_source: usize,
    /// Failed TLS handshakes a source address may have within 10 s before
    /// its new connections are closed at accept for the rest of the 10 s;
    /// 0 turns this off.
    pub max_handshake_failures: u32,
    /// Requests in flight per sidecar; past it, 503 at once (load shedding).
    pub max_concurrent_requests: usize,
    /// On SIGTERM, in-flight requests get this long to finish.
    #[serde(deserialize_with = "duration")]
    pub drain_timeout: Duration,
}

impl Default for Limits {
    fn default() -> Self {
        Limits {
            tls_handshake_timeout: Duration::from_secs(10),
            header_read_timeout: Duration::from_secs(10),
            max_header_bytes: 64 * 1024,
            h2_max_concurrent_streams: 256,
            h2_max_pending_resets: 20,
            idle_timeout: Duration::from_secs(300),
            app_connect_timeout: Duration::from_secs(2),
            app_response_timeout: Duration::from_secs(60),
            peer_connect_timeout: Duration::from_secs(5),
            // 1,000 slow readers then cost about 64 MiB (pressure bench);
            // 16 KiB gives about 10% more bulk throughput for 60% more.
            buffer_window: 8 * 1024,
            h2_stream_window: 65_535,
            max_connections: 10_000,
            max_connections_per_source: 1_000,
            max_handshake_failures: 20,
            max_concurrent_requests: 10_000,
            drain_timeout: Duration::from_secs(20),
        }
    }
}

/// Ceiling for connection and request counts (tokio's semaphores hold fewer
/// than `usize::MAX >> 3` permits; nothing sensible needs more than this).
pub const MAX_COUNT: usize = 1_000_000;

/// hyper's floor for its read buffer.
pub const MIN_HEADER_BYTES: usize = 8 * 1024;

/// Bounds of `limits.buffer_window` and `limits.h2_stream_window`: hyper's
/// HTTP/1 buffer floor, and a ceiling past which they bound nothing useful.
pub const MIN_BUFFER_WINDOW: u32 = 8 * 1024;
pub const MAX_BUFFER_WINDOW: u32 = 16 * 1024 * 1024;

fn duration<'de, D: Deserializer<'de>>(d: D) -> Result<Duration, D::Error> {
    let text = String::deserialize(d)?;
    humantime::parse_duration(&text).map_err(|e| {
        serde::de::Error::custom(format!(
            "{text:?} is not a duration ({e}); write e.g. \"10s\" or \"500ms\""
        ))
    })
}

fn opt_duration<'de, D: Deserializer<'de>>(d: D) -> Result<Option<Duration>, D::Error> {
    duration(d).map(Some)
}

fn opt_spiffe_id<'de, D: Deserializer<'de>>(d: D) -> Result<Option<SpiffeId>, D::Error> {
    spiffe_id(d).map(Some)
}

fn mode<'de, D: Deserializer<'de>>(d: D) -> Result<Mode, D::Error> {
    match String::deserialize(d)?.as_str() {
        "enforce" => Ok(Mode::Enforce),
        "audit" => Ok(Mode::Audit),
        other => Err(serde::de::Error::custom(format!(
            "{other:?} is not a mode; use \"enforce\" or \"audit\""
        ))),
    }
}

fn spiffe_id<'de, D: Deserializer<'de>>(d: D) -> Result<SpiffeId, D::Error> {
    let text = String::deserialize(d)?;
    text.parse::<SpiffeId>()
        .map_err(|e| serde::de::Error::custom(format!("{text:?} is not a SPIFFE ID: {e}")))
}

/// Reads a value the way TOML would, falling back to a plain string, so
/// `WARDEN_LIMITS_MAX_CONNECTIONS=100` is a number and
/// `WARDEN_INBOUND_LISTEN=0.0.0.0:15006` a string.
fn override_value(text: &str) -> toml::Value {
    toml::from_str::<toml::Table>(&format!("v = {text}"))
        .ok()
        .and_then(|mut t| t.remove("v"))
        .unwrap_or_else(|| toml::Value::String(text.to_owned()))
}

fn set_key(
    table: &mut toml::Table,
    key: &str,
    value: toml::Value,
    origin: &str,
) -> Result<(), ConfigError> {
    let (section, field) = key.split_once('.').ok_or_else(|| ConfigError::Override {
        origin: origin.into(),
        message: format!("`{key}` is not of the form section.key"),
    })?;
    if !SECTIONS.contains(&section) {
        return Err(ConfigError::Override {
            origin: origin.into(),
            message: format!(
                "unknown section `{section}` (sections: {})",
                SECTIONS.join(", ")
            ),
        });
    }
    let entry = table
        .entry(section)
        .or_insert_with(|| toml::Value::Table(toml::Table::new()));
    let toml::Value::Table(section_table) = entry else {
        return Err(ConfigError::Override {
            origin: origin.into(),
            message: format!("`{section}` is not a table in the config file"),
        });
    };
    section_table.insert(field.to_owned(), value);
    Ok(())
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
        let mut table = match file {
            Some((path, text)) => {
                toml::from_str::<toml::Table>(text).map_err(|e| ConfigError::Syntax {
                    path: path.to_owned(),
                    message: e.to_string(),
                })?
            }
            None => toml::Table::new(),
        };
        let mut env: Vec<(String, String)> = env
            .into_iter()
            .filter(|(name, _)| name.starts_with("WARDEN_"))
            .collect();
        env.sort();
        for (name, value) in env {
            let rest = name["WARDEN_".len()..].to_ascii_lowercase();
            let Some((section, field)) = rest.split_once('_') else {
                continue;
            };
            // WARDEN_LOG, WARDEN_CONFIG and the like belong to the CLI.
            if !SECTIONS.contains(&section) {
                continue;
            }
            set_key(
                &mut table,
                &format!("{section}.{field}"),
                override_value(&value),
                &name,
            )?;
        }
        for set in sets {
            let (key, value) = set.split_once('=').ok_or_else(|| ConfigError::Override {
                origin: format!("--set {set}"),
                message: "expected section.key=value".into(),
            })?;
            set_key(
                &mut table,
                key.trim(),
                override_value(value.trim()),
                &format!("--set {set}"),
            )?;
        }
        let config: SidecarConfig = serde_path_to_error::deserialize(toml::Value::Table(table))
            .map_err(|e| key_error(e.path().to_string(), e.inner().to_string()))?;
        config.validate()?;
        Ok(config)
    }

    /// Checks what types alone cannot.
    pub fn validate(&self) -> Result<(), ConfigError> {
        self.control.validate(&self.identity, &self.authz)?;
        if self.control.address.is_none() {
            self.identity.cert_path()?;
            self.identity.key_path()?;
            self.identity.bundle_path()?;
        }
        if self.service.name.is_empty() {
            return Err(key_error("service.name", "must not be empty"));
        }
        match (&self.inbound.listen, &self.inbound.app) {
            (Some(_), None) => {
                return Err(key_error(
                    "inbound.app",
                    "required when inbound.listen is set",
                ));
            }
            (None, Some(_)) => {
                return Err(key_error(
                    "inbound.listen",
                    "required when inbound.app is set",
                ));
            }
            _ => {}
        }
        let mut authorities = HashSet::new();
        for (i, service) in self.outbound.services.iter().enumerate() {
            let key = format!("outbound.services[{i}].authority");
            let Some(authority) = normalize_authority(&service.authority, 80) else {
                return Err(key_error(
                    key,
                    format!("{:?} is not host:port", service.authority),
                ));
            };
            if !authorities.insert(authority.clone()) {
                return Err(key_error(key, format!("{authority} is declared twice")));
            }
        }
        if !self.outbound.services.is_empty() && self.outbound.proxy_listen.is_none() {
            return Err(key_error(
                "outbound.proxy_listen",
                "required when outbound.services are declared",
            ));
        }
        if self.inbound.listen.is_none()
            && self.inbound.opaque.is_empty()
            && self.outbound.routes.is_empty()
            && self.outbound.proxy_listen.is_none()
        {
            return Err(key_error(
                "inbound.listen",
                "nothing to do: set inbound.listen/inbound.app, declare [[inbound.opaque]] or [[outbound.routes]]",
            ));
        }
        let mut seen = HashSet::new();
        let listeners = self
            .inbound
            .listen
            .iter()
            .map(|a| ("inbound.listen".to_owned(), *a))
            .chain(std::iter::once((
                "admin.listen".to_owned(),
                self.admin.listen,
            )))
            .chain(
                self.outbound
                    .routes
                    .iter()
                    .enumerate()
                    .map(|(i, r)| (format!("outbound.routes[{i}].listen"), r.listen)),
            );
        for (key, addr) in listeners {
            if addr.port() != 0 && !seen.insert(addr) {
                return Err(key_error(
                    key,
                    format!("{addr} is used by another listener"),
                ));
            }
        }
        let l = &self.limits;
        if l.max_header_bytes < MIN_HEADER_BYTES {
            return Err(key_error(
                "limits.max_header_bytes",
                format!(
                    "{} is below the minimum of {MIN_HEADER_BYTES}",
                    l.max_header_bytes
                ),
            ));
        }
        for (key, value) in [
            ("limits.buffer_window", l.buffer_window),
            ("limits.h2_stream_window", l.h2_stream_window),
        ] {
            if !(MIN_BUFFER_WINDOW..=MAX_BUFFER_WINDOW).contains(&value) {
                return Err(key_error(
                    key,
                    format!("{value} is outside {MIN_BUFFER_WINDOW}..={MAX_BUFFER_WINDOW}"),
                ));
            }
        }
        for (key, value) in [
            ("limits.max_connections", l.max_connections),
            (
                "limits.max_connections_per_source",
                l.max_connections_per_source,
            ),
            ("limits.max_concurrent_requests", l.max_concurrent_requests),
            (
                "limits.h2_max_concurrent_streams",
                l.h2_max_concurrent_streams as usize,
            ),
        ] {
            if value == 0 {
                return Err(key_error(key, "must be at least 1"));
            }
            if value > MAX_COUNT {
                return Err(key_error(key, format!("must be at most {MAX_COUNT}")));
            }
        }
        for (key, value) in [
            ("identity.poll_interval", self.identity.poll_interval),
            ("authz.reload_interval", self.authz.reload_interval),
            ("limits.tls_handshake_timeout", l.tls_handshake_timeout),
            ("limits.header_read_timeout", l.header_read_timeout),
            ("limits.idle_timeout", l.idle_timeout),
            ("limits.app_connect_timeout", l.app_connect_timeout),
            ("limits.app_response_timeout", l.app_response_timeout),
            ("limits.peer_connect_timeout", l.peer_connect_timeout),
        ] {
            if value < Duration::from_millis(1) {
                return Err(key_error(key, "must be at least 1ms"));
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn load(file: &str, env: &[(&str, &str)], sets: &[&str]) -> Result<SidecarConfig, ConfigError> {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("sidecar.toml");
        std::fs::write(&path, file).expect("write");
        SidecarConfig::load(
            Some(&path),
            env.iter().map(|(k, v)| (k.to_string(), v.to_string())),
            &sets.iter().map(|s| s.to_string()).collect::<Vec<_>>(),
        )
    }

    const MINIMAL: &str = "[identity]\ndir = \"/run/svid\"\n[inbound]\nlisten = \"127.0.0.1:15006\"\napp = \"127.0.0.1:8080\"\n";

    #[test]
    fn layers_override_in_order() {
        let c = load(
            MINIMAL,
            &[
                ("WARDEN_LIMITS_MAX_CONNECTIONS", "7"),
                ("WARDEN_INBOUND_MODE", "permissive"),
                ("WARDEN_LOG", "debug"),
            ],
            &["limits.max_connections=9", "limits.drain_timeout=3s"],
        )
        .expect("valid");
        assert_eq!(c.limits.max_connections, 9);
        assert_eq!(c.inbound.mode, InboundMode::Permissive);
        assert_eq!(c.limits.drain_timeout, Duration::from_secs(3));
        assert_eq!(
            c.identity.cert_path().expect("cert"),
            PathBuf::from("/run/svid/svid.pem")
        );
    }

    #[test]
    fn errors_name_the_key() {
        type Case<'a> = (&'a str, &'a [(&'a str, &'a str)], &'a [&'a str], &'a str);
        let cases: &[Case] = &[
            (
                MINIMAL,
                &[("WARDEN_INBOUND_LISTEN", "nowhere")],
                &[],
                "inbound.listen",
            ),
            (
                MINIMAL,
                &[],
                &["limits.idle_timeout=soon"],
                "limits.idle_timeout",
            ),
            (
                MINIMAL,
                &[],
                &["limits.max_header_bytes=100"],
                "limits.max_header_bytes",
            ),
            (MINIMAL, &[], &["inbound.lisen=1"], "lisen"),
            (MINIMAL, &[], &["authz.mode=maybe"], "authz.mode"),
            (
                "[inbound]\nlisten = \"127.0.0.1:1\"\napp = \"127.0.0.1:2\"\n",
                &[],
                &[],
                "identity.cert",
            ),
            (
                "[identity]\ndir = \"/x\"\n[[outbound.routes]]\nlisten = \"127.0.0.1:1\"\nupstream = \"127.0.0.1:2\"\nidentity = \"spiffe://td/a b\"\n",
                &[],
                &[],
                "outbound.routes[0].identity",
            ),
            ("[identity]\ndir = \"/x\"\n", &[], &[], "nothing to do"),
            (
                MINIMAL,
                &[],
                &[
                    "outbound.services=[{authority=\"a b\", upstream=\"127.0.0.1:1\", identity=\"spiffe://td/x\"}]",
                    "outbound.proxy_listen=127.0.0.1:0",
                ],
                "outbound.services[0].authority",
            ),
            (
                MINIMAL,
                &[],
                &[
                    "outbound.services=[{authority=\"a\", upstream=\"127.0.0.1:1\", identity=\"spiffe://td/x\"}]",
                ],
                "outbound.proxy_listen",
            ),
            (
                MINIMAL,
                &[],
                &["admin.listen=127.0.0.1:15006"],
                "admin.listen",
            ),
        ];
        for (file, env, sets, needle) in cases {
            let err = load(file, env, sets).expect_err(needle).to_string();
            assert!(err.contains(needle), "{needle}: {err}");
        }
    }

    #[test]
    fn a_syntax_error_names_the_file() {
        let err = load("[inbound\n", &[], &[])
            .expect_err("syntax")
            .to_string();
        assert!(err.contains("sidecar.toml"), "{err}");
    }
}
