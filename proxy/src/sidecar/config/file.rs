//! What the configuration says, key for key: the file's sections as serde
//! reads them. Validation (`validate`) turns them into the types the
//! sidecar runs on, which cannot hold a contradiction.

use std::net::{IpAddr, SocketAddr};
use std::path::PathBuf;
use std::time::Duration;

use serde::{Deserialize, Deserializer};

use super::limits::Limits;
use super::sections::{
    AdminConfig, AuthzConfig, ServiceConfig, TelemetryConfig, UsageConfig, WorkloadApiConfig,
};
use super::traffic::{
    AppProtocol, EndpointConfig, InboundMode, OpaqueConfig, PeerHttp1, RouteConfig, ServiceRoute,
    UnknownDestination,
};
use super::{AppAddr, EscapedSlashes};
use crate::authz::Mode;
use crate::identity::SpiffeId;

#[derive(Debug, Clone, Deserialize, Default)]
#[serde(deny_unknown_fields, default)]
pub(super) struct FileConfig {
    pub identity: IdentitySection,
    pub control: ControlSection,
    pub service: ServiceConfig,
    pub authz: AuthzConfig,
    pub inbound: InboundSection,
    pub outbound: OutboundSection,
    pub admin: AdminConfig,
    pub limits: Limits,
    pub telemetry: TelemetryConfig,
    pub rotation: RotationSection,
    pub workload_api: WorkloadApiConfig,
    pub usage: UsageConfig,
}

/// Where the SVID comes from: files (as written by `warden svid issue` or a
/// node agent), watched and hot-swapped when they change.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub(super) struct IdentitySection {
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
    /// Another SPIFFE Workload API (`unix:///path`) to take the SVID and
    /// bundles from: a SPIRE agent, or another Warden sidecar.
    pub workload_api: Option<String>,
}

impl Default for IdentitySection {
    fn default() -> Self {
        IdentitySection {
            workload_api: None,
            dir: None,
            cert: None,
            key: None,
            bundle: None,
            poll_interval: Duration::from_secs(1),
        }
    }
}

/// The control plane as the SVID source: join with a token, renew over
/// mTLS, and watch revocations, the trust bundle and (optionally) policies.
#[derive(Clone, Deserialize, Default)]
#[serde(deny_unknown_fields, default)]
pub(super) struct ControlSection {
    /// The control plane's API, `host:port` (an IP address or a DNS name,
    /// looked up at each connection). Setting it replaces `[identity]` files.
    pub address: Option<crate::control::ControlAddr>,
    /// The control plane's SPIFFE ID (`spiffe://<trust domain>/warden/control`);
    /// it also names the trust domain.
    #[serde(deserialize_with = "opt_spiffe_id")]
    pub server_id: Option<SpiffeId>,
    /// PEM trust bundle that authenticates the control plane before the first SVID.
    pub bundle: Option<PathBuf>,
    /// The same bundle as PEM text (from the environment: an injected pod
    /// carries it this way, as Linkerd's carry their trust anchors).
    pub bundle_pem: Option<String>,
    /// Single-use join token (`warden control token create`).
    pub token: Option<String>,
    /// File holding the join token (read once at start).
    pub token_file: Option<PathBuf>,
    /// A Kubernetes projected service-account token (audience `warden`),
    /// read at each attempt (the kubelet rotates it): attests the pod
    /// instead of a join token.
    pub k8s_token_file: Option<PathBuf>,
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
    /// The workload's addresses, registered for discovery (a list, or one
    /// string of comma-separated addresses, as a pod IP from the
    /// environment is).
    #[serde(deserialize_with = "addresses")]
    pub endpoint_addresses: Vec<IpAddr>,
    /// The ports it serves (none: every port).
    pub endpoint_ports: Vec<u16>,
}

impl std::fmt::Debug for ControlSection {
    // Never print the token.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ControlSection")
            .field("address", &self.address)
            .field("server_id", &self.server_id)
            .field("token", &self.token.as_ref().map(|_| "<redacted>"))
            .field("policies", &self.policies)
            .finish_non_exhaustive()
    }
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub(super) struct InboundSection {
    /// Where peers connect (TLS). Unset: no inbound listener.
    pub listen: Option<SocketAddr>,
    /// The local app, `127.0.0.1:PORT` or `unix:/path`.
    pub app: Option<AppAddr>,
    /// Connections `warden init` redirected go to the app at the port they
    /// were sent to (HTTP or opaque TCP by the caller's ALPN).
    pub transparent: bool,
    /// With `transparent`: the ports that may carry opaque TCP (TLS
    /// without ALPN); every other port takes HTTP only.
    pub opaque_ports: Vec<u16>,
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

impl Default for InboundSection {
    fn default() -> Self {
        InboundSection {
            listen: None,
            app: None,
            transparent: false,
            opaque_ports: Vec::new(),
            app_protocol: AppProtocol::default(),
            mode: InboundMode::default(),
            tls12: false,
            opaque: Vec::new(),
            merge_slashes: true,
            escaped_slashes: EscapedSlashes::default(),
        }
    }
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub(super) struct OutboundSection {
    pub routes: Vec<RouteConfig>,
    /// An explicit HTTP proxy for the app (`http_proxy=http://<this>`):
    /// absolute-form requests and CONNECT, to the destinations in `services`.
    pub proxy_listen: Option<SocketAddr>,
    pub services: Vec<ServiceRoute>,
    /// Where `warden init` redirects the app's outbound TCP.
    pub transparent_listen: Option<SocketAddr>,
    /// A redirected connection to a destination outside the mesh:
    /// `passthrough` or `deny`.
    pub unknown: UnknownDestination,
    /// How long the app's first bytes are awaited to tell HTTP from opaque.
    #[serde(deserialize_with = "duration")]
    pub detect_timeout: Duration,
    /// The mesh's destinations and the identity each must prove.
    pub endpoints: Vec<EndpointConfig>,
    /// An app's HTTP/1.1 to peers: `dedicated` or `multiplexed`.
    pub peer_http1: PeerHttp1,
}

impl Default for OutboundSection {
    fn default() -> Self {
        OutboundSection {
            routes: Vec::new(),
            proxy_listen: None,
            services: Vec::new(),
            transparent_listen: None,
            unknown: UnknownDestination::default(),
            detect_timeout: Duration::from_secs(1),
            endpoints: Vec::new(),
            peer_http1: PeerHttp1::default(),
        }
    }
}

/// `[rotation]`: when SVIDs are renewed and how every retry against the
/// control plane backs off.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub(super) struct RotationSection {
    /// Renew at this fraction of the SVID's lifetime (0.5: half-life).
    pub renew_fraction: f64,
    /// The renewal point moves by up to ± this fraction of the lifetime,
    /// and each retry delay is shortened by up to this fraction of itself,
    /// so a fleet neither renews nor retries in lockstep.
    pub jitter: f64,
    /// The first retry delay after a failure; doubles each further failure.
    #[serde(deserialize_with = "duration")]
    pub backoff_base: Duration,
    /// Retry delays never exceed this.
    #[serde(deserialize_with = "duration")]
    pub backoff_cap: Duration,
}

impl Default for RotationSection {
    fn default() -> Self {
        let policy = crate::identity::RotationPolicy::default();
        RotationSection {
            renew_fraction: policy.refresh_fraction,
            jitter: policy.jitter_fraction,
            backoff_base: policy.initial_backoff,
            backoff_cap: policy.max_backoff,
        }
    }
}

pub(super) fn duration<'de, D: Deserializer<'de>>(d: D) -> Result<Duration, D::Error> {
    let text = String::deserialize(d)?;
    humantime::parse_duration(&text).map_err(|e| {
        serde::de::Error::custom(format!(
            "{text:?} is not a duration ({e}); write e.g. \"10s\" or \"500ms\""
        ))
    })
}

/// A list of IP addresses, or one string of them separated by commas.
pub(super) fn addresses<'de, D: Deserializer<'de>>(d: D) -> Result<Vec<IpAddr>, D::Error> {
    #[derive(Deserialize)]
    #[serde(untagged)]
    enum Said {
        List(Vec<String>),
        One(String),
    }
    let texts = match Said::deserialize(d)? {
        Said::List(list) => list,
        Said::One(text) => text
            .split(',')
            .map(str::trim)
            .filter(|t| !t.is_empty())
            .map(str::to_owned)
            .collect(),
    };
    texts
        .iter()
        .map(|t| {
            t.parse::<IpAddr>()
                .map_err(|_| serde::de::Error::custom(format!("{t:?} is not an IP address")))
        })
        .collect()
}

pub(super) fn opt_duration<'de, D: Deserializer<'de>>(d: D) -> Result<Option<Duration>, D::Error> {
    duration(d).map(Some)
}

pub(super) fn opt_spiffe_id<'de, D: Deserializer<'de>>(d: D) -> Result<Option<SpiffeId>, D::Error> {
    spiffe_id(d).map(Some)
}

pub(super) fn mode<'de, D: Deserializer<'de>>(d: D) -> Result<Mode, D::Error> {
    match String::deserialize(d)?.as_str() {
        "enforce" => Ok(Mode::Enforce),
        "audit" => Ok(Mode::Audit),
        other => Err(serde::de::Error::custom(format!(
            "{other:?} is not a mode; use \"enforce\" or \"audit\""
        ))),
    }
}

pub(super) fn spiffe_id<'de, D: Deserializer<'de>>(d: D) -> Result<SpiffeId, D::Error> {
    let text = String::deserialize(d)?;
    text.parse::<SpiffeId>()
        .map_err(|e| serde::de::Error::custom(format!("{text:?} is not a SPIFFE ID: {e}")))
}
