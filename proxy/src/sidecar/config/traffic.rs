//! Where traffic goes: the inbound side (the app behind the sidecar, its
//! opaque ports), the outbound routes and the explicit HTTP proxy. The
//! validated forms pair what must come together: an inbound HTTP listener
//! always has its app, the proxy always has its listener, and every proxy
//! destination is one normalized `host:port`.

use std::net::SocketAddr;

use serde::Deserialize;

use super::file::spiffe_id;
use super::{AppAddr, PathRules};
use crate::identity::SpiffeId;
use crate::sidecar::discovery::Endpoints;

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

/// The inbound side, validated.
#[derive(Debug, Clone)]
pub struct InboundConfig {
    /// The HTTP inbound listener and its app; None: no HTTP inbound.
    pub http: Option<InboundHttp>,
    pub app_protocol: AppProtocol,
    pub mode: InboundMode,
    /// Also accept TLS 1.2 (TLS 1.3 only by default).
    pub tls12: bool,
    pub opaque: Vec<OpaqueConfig>,
    /// How request paths are normalized.
    pub path_rules: PathRules,
}

/// Where peers connect (`inbound.listen`) and the app they reach
/// (`inbound.app`, or with `inbound.transparent` the port each connection
/// was redirected from): never one without the other.
#[derive(Debug, Clone)]
pub struct InboundHttp {
    pub listen: SocketAddr,
    pub app: InboundApp,
}

/// Where the inbound listener sends a connection.
#[derive(Debug, Clone)]
pub enum InboundApp {
    /// Every connection to `inbound.app`.
    Fixed(AppAddr),
    /// `inbound.transparent = true`: a connection `warden init` redirected
    /// goes to the app at the address the caller dialled; one that was not
    /// redirected goes to `fallback` (`inbound.app`), or is closed when
    /// there is none (it would loop into the sidecar). Opaque TCP only on
    /// `opaque_ports` (`inbound.opaque_ports`).
    Transparent {
        fallback: Option<AppAddr>,
        opaque_ports: Vec<u16>,
    },
}

/// The outbound side, validated.
#[derive(Debug, Clone, Default)]
pub struct OutboundConfig {
    pub routes: Vec<RouteConfig>,
    /// The explicit HTTP proxy, when `outbound.proxy_listen` is set.
    pub proxy: Option<HttpProxy>,
    /// The transparent listener, when `outbound.transparent_listen` is set.
    pub transparent: Option<TransparentOutbound>,
    /// The mesh's destinations (`[[outbound.endpoints]]`), for the
    /// transparent listener.
    pub endpoints: Endpoints,
    /// How an app's HTTP/1.1 requests travel to peer sidecars.
    pub peer_http1: PeerHttp1,
}

/// `outbound.peer_http1`: how an app's HTTP/1.1 requests reach the peer
/// sidecar. Either way each is checked, decided and traced alike.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Default)]
#[serde(rename_all = "lowercase")]
pub enum PeerHttp1 {
    /// HTTP/1.1 end to end: each app connection gets an mTLS connection of
    /// its own to the peer, taken from (and given back to) a small pool of
    /// idle ones, as nginx and HAProxy do. No HTTP/2 framing, no shared
    /// connection task.
    #[default]
    Dedicated,
    /// As HTTP/2 streams on the one shared mTLS connection to the peer.
    Multiplexed,
}

/// The listener `warden init` redirects the app's outbound TCP to.
#[derive(Debug, Clone)]
pub struct TransparentOutbound {
    pub listen: SocketAddr,
    /// What happens to a destination outside the mesh.
    pub unknown: UnknownDestination,
    /// How long to wait for the app's first bytes to tell HTTP from opaque
    /// TCP; a protocol where the server speaks first waits this long, then
    /// is carried as opaque TCP.
    pub detect_timeout: std::time::Duration,
}

/// `outbound.unknown`: a redirected connection to a destination no
/// endpoint names.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Default)]
#[serde(rename_all = "lowercase")]
pub enum UnknownDestination {
    /// Connected as the app asked, in plaintext (as Linkerd and Istio do).
    #[default]
    Passthrough,
    /// Closed.
    Deny,
}

/// One `[[outbound.endpoints]]` entry as the file says it.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct EndpointConfig {
    /// `ip` (every port of that workload) or `ip:port`.
    pub address: String,
    /// The SPIFFE ID the workload's sidecar must present.
    #[serde(deserialize_with = "spiffe_id")]
    pub identity: SpiffeId,
}

/// The explicit HTTP proxy (`http_proxy=http://<listen>`) and the
/// destinations it knows, each `authority` normalized and declared once.
#[derive(Debug, Clone)]
pub struct HttpProxy {
    pub listen: SocketAddr,
    pub services: Vec<ServiceRoute>,
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
