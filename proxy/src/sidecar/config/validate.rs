//! From what the configuration says to what the sidecar runs on: every
//! check that types alone cannot make, each error naming its key.

use std::collections::{HashMap, HashSet};
use std::net::SocketAddr;
use std::time::Duration;

use super::file::{FileConfig, InboundSection, OutboundSection, RotationSection};
use super::limits::at_least_a_millisecond;
use super::source::IdentitySource;
use super::traffic::{
    HttpProxy, InboundApp, InboundConfig, InboundHttp, OutboundConfig, ServiceRoute,
    TransparentOutbound, normalize_authority,
};
use super::{ConfigError, PathRules, SidecarConfig, key_error};
use crate::identity::RotationPolicy;
use crate::sidecar::discovery::{EndpointAddress, Endpoints};

impl TryFrom<FileConfig> for SidecarConfig {
    type Error = ConfigError;

    fn try_from(file: FileConfig) -> Result<Self, ConfigError> {
        let identity = IdentitySource::from_sections(&file.identity, &file.control)?;
        if file.control.policies && file.authz.policies.is_some() {
            return Err(key_error(
                "authz.policies",
                "cannot be combined with control.policies = true",
            ));
        }
        if file.service.name.is_empty() {
            return Err(key_error("service.name", "must not be empty"));
        }
        let inbound = inbound(file.inbound)?;
        let outbound = outbound(file.outbound)?;
        if inbound.http.is_none()
            && inbound.opaque.is_empty()
            && outbound.routes.is_empty()
            && outbound.proxy.is_none()
            && outbound.transparent.is_none()
            && file.workload_api.socket.is_none()
        {
            return Err(key_error(
                "inbound.listen",
                "nothing to do: set inbound.listen/inbound.app, declare [[inbound.opaque]] or [[outbound.routes]], set outbound.transparent_listen or workload_api.socket",
            ));
        }
        let config = SidecarConfig {
            identity,
            service: file.service,
            authz: file.authz,
            inbound,
            outbound,
            admin: file.admin,
            limits: file.limits,
            telemetry: file.telemetry,
            rotation: rotation(&file.rotation),
            workload_api: file.workload_api,
            usage: file.usage,
        };
        config.check()?;
        Ok(config)
    }
}

impl SidecarConfig {
    /// The bounds of values a caller could change after parsing (the
    /// fields are public): checked again when a sidecar starts.
    pub fn check(&self) -> Result<(), ConfigError> {
        unique_listeners(&self.inbound, &self.outbound, self.admin.listen)?;
        self.limits.check()?;
        if let IdentitySource::Files(files) = &self.identity {
            at_least_a_millisecond("identity.poll_interval", files.poll_interval)?;
        }
        at_least_a_millisecond("authz.reload_interval", self.authz.reload_interval)?;
        check_app_probes(&self.admin.app_probes)?;
        check_workload_api(&self.workload_api)?;
        check_rotation(&self.rotation)
    }
}

/// A Workload API socket serves someone: the uids are required, and root
/// (uid 0) is not listed by accident of an empty default.
fn check_workload_api(config: &super::WorkloadApiConfig) -> Result<(), ConfigError> {
    let Some(socket) = &config.socket else {
        return Ok(());
    };
    if !socket.is_absolute() {
        return Err(key_error(
            "workload_api.socket",
            format!("{} is not an absolute path", socket.display()),
        ));
    }
    if config.allowed_uids.is_empty() {
        return Err(key_error(
            "workload_api.allowed_uids",
            "name the app's user ids: every other caller is refused (PermissionDenied)",
        ));
    }
    Ok(())
}

/// Probe names are path segments (`/app-health/<name>`): lowercase
/// letters, digits and `-`, each once; ports are real; paths are
/// origin-form (`/...`, no spaces or controls).
fn check_app_probes(probes: &[super::AppProbe]) -> Result<(), ConfigError> {
    for (i, probe) in probes.iter().enumerate() {
        let key = "admin.app_probes";
        if probe.name.is_empty()
            || probe.name.len() > 128
            || !probe
                .name
                .bytes()
                .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
        {
            return Err(key_error(
                key,
                format!(
                    "probe name {:?}: 1 to 128 lowercase letters, digits and -",
                    probe.name
                ),
            ));
        }
        if probes[..i].iter().any(|p| p.name == probe.name) {
            return Err(key_error(
                key,
                format!("probe {:?} is listed twice", probe.name),
            ));
        }
        if probe.port == 0 {
            return Err(key_error(key, format!("probe {:?}: port 0", probe.name)));
        }
        if probe.path.is_some() && probe.grpc.is_some() {
            return Err(key_error(
                key,
                format!("probe {:?}: path (HTTP) or grpc, not both", probe.name),
            ));
        }
        if !probe.headers.is_empty() && probe.path.is_none() {
            return Err(key_error(
                key,
                format!("probe {:?}: headers need a path (HTTP)", probe.name),
            ));
        }
        for (name, value) in &probe.headers {
            if http::HeaderName::from_bytes(name.as_bytes()).is_err()
                || http::HeaderValue::from_str(value).is_err()
            {
                return Err(key_error(
                    key,
                    format!("probe {:?}: header {name:?} is not valid", probe.name),
                ));
            }
        }
        if let Some(path) = &probe.path
            && (!path.starts_with('/') || path.parse::<http::uri::PathAndQuery>().is_err())
        {
            return Err(key_error(
                key,
                format!(
                    "probe {:?}: path {path:?} must be /... (a path and query)",
                    probe.name
                ),
            ));
        }
    }
    Ok(())
}

fn inbound(section: InboundSection) -> Result<InboundConfig, ConfigError> {
    if !section.transparent && !section.opaque_ports.is_empty() {
        return Err(key_error(
            "inbound.opaque_ports",
            "only with inbound.transparent = true (declare [[inbound.opaque]] listeners otherwise)",
        ));
    }
    if section.opaque_ports.contains(&0) {
        return Err(key_error("inbound.opaque_ports", "port 0 is no port"));
    }
    let app = match (section.app, section.transparent) {
        (app, true) => Some(InboundApp::Transparent {
            fallback: app,
            opaque_ports: section.opaque_ports,
        }),
        (Some(app), false) => Some(InboundApp::Fixed(app)),
        (None, false) => None,
    };
    let http = match (section.listen, app) {
        (Some(listen), Some(app)) => Some(InboundHttp { listen, app }),
        (Some(_), None) => {
            return Err(key_error(
                "inbound.app",
                "required when inbound.listen is set (or set inbound.transparent = true)",
            ));
        }
        (None, Some(_)) => {
            return Err(key_error(
                "inbound.listen",
                "required when inbound.app or inbound.transparent is set",
            ));
        }
        (None, None) => None,
    };
    Ok(InboundConfig {
        http,
        app_protocol: section.app_protocol,
        mode: section.mode,
        tls12: section.tls12,
        opaque: section.opaque,
        path_rules: PathRules {
            merge_slashes: section.merge_slashes,
            escaped_slashes: section.escaped_slashes,
        },
    })
}

fn outbound(section: OutboundSection) -> Result<OutboundConfig, ConfigError> {
    let mut services = Vec::with_capacity(section.services.len());
    let mut authorities = HashSet::new();
    for (i, service) in section.services.into_iter().enumerate() {
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
        services.push(ServiceRoute {
            authority,
            ..service
        });
    }
    let proxy = match (section.proxy_listen, services.is_empty()) {
        (Some(listen), _) => Some(HttpProxy { listen, services }),
        (None, true) => None,
        (None, false) => {
            return Err(key_error(
                "outbound.proxy_listen",
                "required when outbound.services are declared",
            ));
        }
    };
    let transparent = section
        .transparent_listen
        .map(|listen| TransparentOutbound {
            listen,
            unknown: section.unknown,
            detect_timeout: section.detect_timeout,
        });
    if let Some(t) = &transparent {
        at_least_a_millisecond("outbound.detect_timeout", t.detect_timeout)?;
    }
    let mut entries = Vec::with_capacity(section.endpoints.len());
    for (i, entry) in section.endpoints.into_iter().enumerate() {
        let address = entry
            .address
            .parse::<EndpointAddress>()
            .map_err(|e| key_error(format!("outbound.endpoints[{i}].address"), e))?;
        entries.push((address, entry.identity));
    }
    let endpoints = Endpoints::new(entries)
        .map_err(|(i, e)| key_error(format!("outbound.endpoints[{i}].address"), e.to_string()))?;
    if transparent.is_none() && !endpoints.is_empty() {
        return Err(key_error(
            "outbound.transparent_listen",
            "required when outbound.endpoints are declared (only the transparent listener uses them)",
        ));
    }
    Ok(OutboundConfig {
        routes: section.routes,
        proxy,
        transparent,
        endpoints,
        peer_http1: section.peer_http1,
    })
}

/// Every listener of every section on an address of its own (port 0, "any
/// free port", excepted).
fn unique_listeners(
    inbound: &InboundConfig,
    outbound: &OutboundConfig,
    admin: SocketAddr,
) -> Result<(), ConfigError> {
    let listeners = inbound
        .http
        .iter()
        .map(|h| ("inbound.listen".to_owned(), h.listen))
        .chain(std::iter::once(("admin.listen".to_owned(), admin)))
        .chain(
            inbound
                .opaque
                .iter()
                .enumerate()
                .map(|(i, o)| (format!("inbound.opaque[{i}].listen"), o.listen)),
        )
        .chain(
            outbound
                .routes
                .iter()
                .enumerate()
                .map(|(i, r)| (format!("outbound.routes[{i}].listen"), r.listen)),
        )
        .chain(
            outbound
                .proxy
                .iter()
                .map(|p| ("outbound.proxy_listen".to_owned(), p.listen)),
        )
        .chain(
            outbound
                .transparent
                .iter()
                .map(|t| ("outbound.transparent_listen".to_owned(), t.listen)),
        );
    let mut seen: HashMap<SocketAddr, String> = HashMap::new();
    for (key, addr) in listeners {
        if addr.port() == 0 {
            continue;
        }
        if let Some(first) = seen.get(&addr) {
            return Err(key_error(
                key,
                format!("{addr} is used by another listener ({first})"),
            ));
        }
        seen.insert(addr, key);
    }
    Ok(())
}

fn rotation(section: &RotationSection) -> RotationPolicy {
    RotationPolicy {
        refresh_fraction: section.renew_fraction,
        jitter_fraction: section.jitter,
        initial_backoff: section.backoff_base,
        max_backoff: section.backoff_cap,
    }
}

/// `[rotation]`, bounded so that no setting renews an SVID at its birth or
/// its death, or retries in a busy loop.
fn check_rotation(policy: &RotationPolicy) -> Result<(), ConfigError> {
    let RotationPolicy {
        refresh_fraction: renew_fraction,
        jitter_fraction: jitter,
        initial_backoff: backoff_base,
        max_backoff: backoff_cap,
    } = *policy;
    if !(renew_fraction.is_finite() && (0.1..=0.9).contains(&renew_fraction)) {
        return Err(key_error(
            "rotation.renew_fraction",
            format!("{renew_fraction} is outside 0.1..=0.9"),
        ));
    }
    if !(jitter.is_finite() && (0.0..=0.5).contains(&jitter)) {
        return Err(key_error(
            "rotation.jitter",
            format!("{jitter} is outside 0.0..=0.5"),
        ));
    }
    if renew_fraction - jitter < 0.05 || renew_fraction + jitter > 0.95 {
        return Err(key_error(
            "rotation.jitter",
            format!(
                "renew_fraction ± jitter ({renew_fraction} ± {jitter}) must stay within 0.05..=0.95 of the lifetime"
            ),
        ));
    }
    if backoff_base < Duration::from_millis(100) {
        return Err(key_error("rotation.backoff_base", "must be at least 100ms"));
    }
    if backoff_cap < backoff_base {
        return Err(key_error(
            "rotation.backoff_cap",
            "must be at least rotation.backoff_base",
        ));
    }
    Ok(())
}
