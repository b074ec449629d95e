//! Kubernetes: what `warden inject` adds to a pod (and takes away with
//! `--uninject`), the manifests it reads and writes, the admission webhook
//! that does the same to pods as they are created, and the manifests
//! `warden install` prints.
//!
//! A pod is injected with:
//! - the `warden-init` init container: `warden init`, root with only
//!   NET_ADMIN and NET_RAW, redirects the pod's TCP through the sidecar and
//!   exits;
//! - the `warden-proxy` native sidecar (an init container with
//!   `restartPolicy: Always`): its startup probe is `/ready`, so the app's
//!   containers start only once it holds its SVID and policies, and the
//!   kubelet stops it after them;
//! - the projected service-account token (audience `warden`) it attests
//!   with, an in-memory state directory, and the downward-API environment;
//! - the app's HTTP and TCP probes pointed at the sidecar's admin port
//!   (`/app-health/<container>-<kind>`), which runs them against the app at
//!   the pod's address: the kubelet has no SVID, and the app's ports stay
//!   behind mTLS;
//! - the `warden.dev/injected` annotation, and the app's original probes in
//!   `warden.dev/original-probes` for `--uninject`.

pub mod install;
pub mod manifest;
mod probes;
pub mod webhook;
mod yaml_in;
mod yaml_out;

use serde_json::{Map, Value, json};

use probes::{AppProbe, PROBES, probed_containers, rewrite_probes};

/// The container names Warden adds; a pod holding either is injected.
pub const INIT_CONTAINER: &str = "warden-init";
pub const PROXY_CONTAINER: &str = "warden-proxy";
const TOKEN_VOLUME: &str = "warden-token";
const STATE_VOLUME: &str = "warden-state";
pub const TOKEN_DIR: &str = "/var/run/secrets/warden.dev/serviceaccount";
const STATE_DIR: &str = "/var/run/warden";

/// Annotations (on the pod template) that configure injection.
pub const ANNOTATION_INJECT: &str = "warden.dev/inject";
pub const ANNOTATION_INJECTED: &str = "warden.dev/injected";
const ANNOTATION_ORIGINAL_PROBES: &str = "warden.dev/original-probes";
/// Labels the control plane's own pods carry: never injected.
pub const PART_OF_LABEL: &str = "app.kubernetes.io/part-of";
pub const PART_OF_VALUE: &str = "warden";

/// The sidecar's ports, as `warden init`'s defaults.
pub const ADMIN_PORT: u16 = 15000;
pub const OUTBOUND_PORT: u16 = 15001;
pub const INBOUND_PORT: u16 = 15006;

/// How pods are injected: the same for `warden inject` and the webhook.
#[derive(Clone, Debug)]
pub struct InjectOptions {
    pub image: String,
    pub image_pull_policy: Option<String>,
    /// The sidecar's uid and gid (`warden init --proxy-uid`).
    pub proxy_uid: u32,
    /// The control plane's API, `host:port` (its Service's DNS name).
    pub control_address: String,
    /// The control plane's SPIFFE ID.
    pub control_server_id: String,
    /// The trust bundle (PEM) the sidecar authenticates the control plane with.
    pub bundle_pem: String,
    /// Lifetime of the projected token.
    pub token_ttl_seconds: u32,
}

/// Why a pod was left as it was.
#[derive(Debug, PartialEq, Eq)]
pub enum Skip {
    /// `warden.dev/inject: disabled`.
    Disabled,
    /// It already has Warden's containers or annotation.
    AlreadyInjected,
    /// A pod of the control plane itself.
    ControlPlane,
    /// Nothing to uninject.
    NotInjected,
}

impl std::fmt::Display for Skip {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Skip::Disabled => "warden.dev/inject is disabled",
            Skip::AlreadyInjected => "already injected",
            Skip::ControlPlane => "a pod of Warden's own control plane",
            Skip::NotInjected => "not injected",
        })
    }
}

/// What happened to one pod template.
#[derive(Debug)]
pub enum Outcome {
    /// Injected (or uninjected).
    Changed,
    /// Left unchanged, on purpose.
    Skipped(Skip),
}

/// A pod that cannot be injected: the input is left unchanged.
#[derive(Debug, thiserror::Error)]
#[error("{0}")]
pub struct Refused(pub String);

fn refused(message: impl Into<String>) -> Refused {
    Refused(message.into())
}

/// The pod template's configuration, from its annotations.
#[derive(Debug, Default)]
struct PodSettings {
    skip_inbound_ports: Vec<u16>,
    skip_outbound_ports: Vec<u16>,
    skip_outbound_cidrs: Vec<String>,
    opaque_ports: Vec<u16>,
    log_level: Option<String>,
    cpu_request: Option<String>,
    memory_request: Option<String>,
    cpu_limit: Option<String>,
    memory_limit: Option<String>,
    drain_timeout: Option<String>,
    service: Option<String>,
    workers: Option<u16>,
}

/// Every annotation Warden reads, with what it sets (a test checks that
/// the README's table names each).
#[cfg_attr(not(test), allow(dead_code))]
pub const ANNOTATIONS: &[(&str, &str)] = &[
    (
        "warden.dev/inject",
        "`enabled` or `disabled`: the webhook injects pods of a labelled namespace unless `disabled`; `warden inject` injects unless `disabled`",
    ),
    (
        "warden.dev/skip-inbound-ports",
        "comma-separated ports `warden init` leaves alone inbound (no mTLS, no policy)",
    ),
    (
        "warden.dev/skip-outbound-ports",
        "comma-separated destination ports left alone outbound",
    ),
    (
        "warden.dev/skip-outbound-cidrs",
        "comma-separated destination CIDRs left alone outbound",
    ),
    (
        "warden.dev/opaque-ports",
        "comma-separated ports that carry opaque TCP inbound (`inbound.opaque_ports`)",
    ),
    (
        "warden.dev/service",
        "the Cedar resource `Service::\"<name>\"` (default: the `app.kubernetes.io/name` or `app` label, else the service account)",
    ),
    (
        "warden.dev/log-level",
        "the sidecar's `WARDEN_LOG` filter (default `warn`)",
    ),
    ("warden.dev/proxy-cpu-request", "default `100m`"),
    ("warden.dev/proxy-memory-request", "default `64Mi`"),
    ("warden.dev/proxy-cpu-limit", "default none"),
    ("warden.dev/proxy-memory-limit", "default `256Mi`"),
    (
        "warden.dev/drain-timeout",
        "how long the sidecar drains after SIGTERM (`limits.drain_timeout`, default `20s`)",
    ),
    (
        "warden.dev/proxy-workers",
        "threads serving traffic (`warden proxy --workers`, 1 to 64; default 1)",
    ),
];

fn annotation<'a>(meta: &'a Value, key: &str) -> Option<&'a str> {
    meta.get("annotations")?.get(key)?.as_str()
}

fn label<'a>(meta: &'a Value, key: &str) -> Option<&'a str> {
    meta.get("labels")?.get(key)?.as_str()
}

fn ports(key: &str, value: &str) -> Result<Vec<u16>, Refused> {
    value
        .split(',')
        .map(str::trim)
        .filter(|p| !p.is_empty())
        .map(|p| {
            p.parse::<u16>().ok().filter(|p| *p != 0).ok_or_else(|| {
                refused(format!(
                    "annotation {key}: {p:?} is not a port (1 to 65535)"
                ))
            })
        })
        .collect()
}

/// A Kubernetes quantity, as far as a resource annotation needs: digits,
/// an optional fraction, an optional suffix.
fn quantity(key: &str, value: &str) -> Result<String, Refused> {
    let digits_end = value
        .find(|c: char| !(c.is_ascii_digit() || c == '.'))
        .unwrap_or(value.len());
    let (number, suffix) = value.split_at(digits_end);
    let number_ok = !number.is_empty()
        && number.matches('.').count() <= 1
        && number.chars().any(|c| c.is_ascii_digit());
    let suffix_ok = [
        "", "m", "k", "M", "G", "T", "P", "E", "Ki", "Mi", "Gi", "Ti", "Pi", "Ei",
    ]
    .contains(&suffix);
    if number_ok && suffix_ok {
        Ok(value.to_owned())
    } else {
        Err(refused(format!(
            "annotation {key}: {value:?} is not a Kubernetes quantity (100m, 64Mi)"
        )))
    }
}

/// A quantity's value (`100m` is 0.1, `64Mi` is 67108864), to compare
/// requests with limits.
fn quantity_value(q: &str) -> f64 {
    let end = q
        .find(|c: char| !(c.is_ascii_digit() || c == '.'))
        .unwrap_or(q.len());
    let (number, suffix) = q.split_at(end);
    let scale = match suffix {
        "m" => 1e-3,
        "k" => 1e3,
        "M" => 1e6,
        "G" => 1e9,
        "T" => 1e12,
        "P" => 1e15,
        "E" => 1e18,
        "Ki" => 1024.0,
        "Mi" => 1024f64.powi(2),
        "Gi" => 1024f64.powi(3),
        "Ti" => 1024f64.powi(4),
        "Pi" => 1024f64.powi(5),
        "Ei" => 1024f64.powi(6),
        _ => 1.0,
    };
    number.parse::<f64>().unwrap_or(0.0) * scale
}

/// The sidecar's requests and limits: the annotations over the defaults
/// (requests 100m CPU and 64Mi, a 256Mi memory limit). A limit below a
/// default request lowers the request to it, and a request above the
/// default limit raises that limit to it (the API server refuses a request
/// above its limit); both annotated, a request above its limit is refused.
fn resolve_resources(s: &mut PodSettings) -> Result<(), Refused> {
    if s.memory_limit.is_none() {
        let raised = s
            .memory_request
            .clone()
            .filter(|r| quantity_value(r) > quantity_value("256Mi"));
        s.memory_limit = Some(raised.unwrap_or_else(|| "256Mi".to_owned()));
    }
    for (resource, request, limit, default) in [
        ("cpu", &mut s.cpu_request, &s.cpu_limit, "100m"),
        ("memory", &mut s.memory_request, &s.memory_limit, "64Mi"),
    ] {
        match (request.as_ref(), limit) {
            (Some(r), Some(l)) if quantity_value(r) > quantity_value(l) => {
                return Err(refused(format!(
                    "the sidecar's {resource} request {r} is above its limit {l} (warden.dev/proxy-{resource}-request and -limit)"
                )));
            }
            (None, Some(l)) if quantity_value(l) < quantity_value(default) => {
                *request = Some(l.clone());
            }
            (None, _) => *request = Some(default.to_owned()),
            _ => {}
        }
    }
    Ok(())
}

fn settings(meta: &Value) -> Result<PodSettings, Refused> {
    let mut s = PodSettings::default();
    let get = |k: &str| annotation(meta, k);
    if let Some(v) = get("warden.dev/skip-inbound-ports") {
        s.skip_inbound_ports = ports("warden.dev/skip-inbound-ports", v)?;
    }
    if let Some(v) = get("warden.dev/skip-outbound-ports") {
        s.skip_outbound_ports = ports("warden.dev/skip-outbound-ports", v)?;
    }
    if let Some(v) = get("warden.dev/opaque-ports") {
        s.opaque_ports = ports("warden.dev/opaque-ports", v)?;
    }
    if let Some(v) = get("warden.dev/skip-outbound-cidrs") {
        for cidr in v.split(',').map(str::trim).filter(|c| !c.is_empty()) {
            cidr.parse::<warden_proxy::intercept::Cidr>()
                .map_err(|e| refused(format!("annotation warden.dev/skip-outbound-cidrs: {e}")))?;
            s.skip_outbound_cidrs.push(cidr.to_owned());
        }
    }
    if let Some(v) = get("warden.dev/log-level") {
        if v.is_empty()
            || !v
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || "_=,:.-".contains(c))
        {
            return Err(refused(format!(
                "annotation warden.dev/log-level: {v:?} is not a log filter (info, warden_proxy=debug)"
            )));
        }
        s.log_level = Some(v.to_owned());
    }
    for (key, slot) in [
        ("warden.dev/proxy-cpu-request", &mut s.cpu_request),
        ("warden.dev/proxy-memory-request", &mut s.memory_request),
        ("warden.dev/proxy-cpu-limit", &mut s.cpu_limit),
        ("warden.dev/proxy-memory-limit", &mut s.memory_limit),
    ] {
        if let Some(v) = get(key) {
            *slot = Some(quantity(key, v)?);
        }
    }
    resolve_resources(&mut s)?;
    if let Some(v) = get("warden.dev/drain-timeout") {
        humantime::parse_duration(v).map_err(|e| {
            refused(format!(
                "annotation warden.dev/drain-timeout: {v:?}: {e} (use 20s, 1m)"
            ))
        })?;
        s.drain_timeout = Some(v.to_owned());
    }
    if let Some(v) = get("warden.dev/proxy-workers") {
        let workers = v.parse::<u16>().ok().filter(|n| (1..=64).contains(n));
        s.workers = Some(workers.ok_or_else(|| {
            refused(format!(
                "annotation warden.dev/proxy-workers: {v:?} is not a number of workers (1 to 64)"
            ))
        })?);
    }
    if let Some(v) = get("warden.dev/service") {
        if v.is_empty() || v.len() > 253 || v.chars().any(|c| c.is_control() || c == '"') {
            return Err(refused(format!(
                "annotation warden.dev/service: {v:?} is not a service name"
            )));
        }
        s.service = Some(v.to_owned());
    }
    if let Some(v) = get(ANNOTATION_INJECT)
        && v != "enabled"
        && v != "disabled"
    {
        return Err(refused(format!(
            "annotation {ANNOTATION_INJECT}: {v:?} is neither enabled nor disabled"
        )));
    }
    Ok(s)
}

/// Whether a pod (its metadata and spec) already carries Warden.
pub fn is_injected(meta: &Value, spec: &Value) -> bool {
    annotation(meta, ANNOTATION_INJECTED).is_some()
        || spec
            .get("initContainers")
            .and_then(Value::as_array)
            .is_some_and(|list| {
                list.iter().any(|c| {
                    matches!(
                        c.get("name").and_then(Value::as_str),
                        Some(INIT_CONTAINER | PROXY_CONTAINER)
                    )
                })
            })
}

/// Whether a pod is one of the control plane's own.
pub fn is_control_plane(meta: &Value) -> bool {
    label(meta, PART_OF_LABEL) == Some(PART_OF_VALUE)
}

/// Injects one pod template: `meta` is its metadata, `spec` its spec
/// (both changed in place only on success).
pub fn inject(
    meta: &mut Value,
    spec: &mut Value,
    options: &InjectOptions,
) -> Result<Outcome, Refused> {
    if !meta.is_object() && !meta.is_null() {
        return Err(refused("metadata is not an object"));
    }
    let Some(spec_map) = spec.as_object() else {
        return Err(refused("the pod has no spec"));
    };
    if annotation(meta, ANNOTATION_INJECT) == Some("disabled") {
        return Ok(Outcome::Skipped(Skip::Disabled));
    }
    if is_control_plane(meta) {
        return Ok(Outcome::Skipped(Skip::ControlPlane));
    }
    if is_injected(meta, spec) {
        return Ok(Outcome::Skipped(Skip::AlreadyInjected));
    }
    if spec_map.get("hostNetwork").and_then(Value::as_bool) == Some(true) {
        return Err(refused(
            "hostNetwork: true: the pod shares the node's network namespace, so `warden init` would redirect the node's traffic; not injected",
        ));
    }
    if spec.pointer("/os/name").and_then(Value::as_str) == Some("windows") {
        return Err(refused(
            "spec.os.name: windows: Warden's containers are Linux containers (iptables, a Unix user); not injected",
        ));
    }
    let settings = settings(meta)?;
    let ours = [ADMIN_PORT, OUTBOUND_PORT, INBOUND_PORT];
    if let Some(port) = settings
        .skip_inbound_ports
        .iter()
        .find(|p| ours.contains(p))
    {
        return Err(refused(format!(
            "annotation warden.dev/skip-inbound-ports: {port} is one of the sidecar's own ports (15000, 15001, 15006)"
        )));
    }
    let containers = spec_map
        .get("containers")
        .and_then(Value::as_array)
        .filter(|c| !c.is_empty())
        .ok_or_else(|| refused("the pod has no containers"))?;
    for c in containers.iter().chain(
        spec_map
            .get("initContainers")
            .and_then(Value::as_array)
            .into_iter()
            .flatten(),
    ) {
        if !c.is_object() || c.get("name").and_then(Value::as_str).is_none() {
            return Err(refused("a container without a name"));
        }
        for port in c
            .get("ports")
            .and_then(Value::as_array)
            .into_iter()
            .flatten()
        {
            if let Some(p) = port.get("containerPort").and_then(Value::as_u64)
                && ours.iter().any(|o| u64::from(*o) == p)
            {
                return Err(refused(format!(
                    "container {}: port {p} is one of the sidecar's own ports (15000, 15001, 15006)",
                    c.get("name").and_then(Value::as_str).unwrap_or_default()
                )));
            }
        }
    }
    let mut new_spec = spec.clone();
    let skip_inbound = settings.skip_inbound_ports.clone();
    let (probes, originals) = rewrite_probes(&mut new_spec, &skip_inbound)?;
    let service = settings
        .service
        .clone()
        .or_else(|| {
            label(meta, "app.kubernetes.io/name")
                .filter(|l| !l.is_empty())
                .map(str::to_owned)
        })
        .or_else(|| {
            label(meta, "app")
                .filter(|l| !l.is_empty())
                .map(str::to_owned)
        })
        .or_else(|| {
            spec_map
                .get("serviceAccountName")
                .and_then(Value::as_str)
                .map(str::to_owned)
        })
        .unwrap_or_else(|| "default".to_owned());

    let spec_obj = new_spec
        .as_object_mut()
        .ok_or_else(|| refused("the pod has no spec"))?;
    let mut inits = vec![
        init_container(options, &settings, &skip_inbound),
        proxy_container(options, &settings, &service, &probes),
    ];
    if let Some(existing) = spec_obj.get("initContainers").and_then(Value::as_array) {
        inits.extend(existing.iter().cloned());
    }
    spec_obj.insert("initContainers".into(), Value::Array(inits));
    let volumes = spec_obj
        .entry("volumes")
        .or_insert_with(|| Value::Array(Vec::new()));
    let Some(volumes) = volumes.as_array_mut() else {
        return Err(refused("spec.volumes is not a list"));
    };
    if volumes.iter().any(|v| {
        matches!(
            v.get("name").and_then(Value::as_str),
            Some(TOKEN_VOLUME | STATE_VOLUME)
        )
    }) {
        return Err(refused(format!(
            "the pod already has a volume named {TOKEN_VOLUME} or {STATE_VOLUME}"
        )));
    }
    volumes.push(json!({
        "name": TOKEN_VOLUME,
        "projected": {
            "sources": [{
                "serviceAccountToken": {
                    "audience": "warden",
                    "expirationSeconds": options.token_ttl_seconds,
                    "path": "token",
                }
            }]
        }
    }));
    volumes.push(json!({
        "name": STATE_VOLUME,
        "emptyDir": {"medium": "Memory", "sizeLimit": "1Mi"}
    }));

    let mut new_meta = if meta.is_null() {
        json!({})
    } else {
        meta.clone()
    };
    let Some(meta_obj) = new_meta.as_object_mut() else {
        return Err(refused("metadata is not an object"));
    };
    let annotations = meta_obj
        .entry("annotations")
        .or_insert_with(|| Value::Object(Map::new()));
    let Some(annotations) = annotations.as_object_mut() else {
        return Err(refused("metadata.annotations is not a map"));
    };
    annotations.insert(
        ANNOTATION_INJECTED.into(),
        Value::String(env!("CARGO_PKG_VERSION").into()),
    );
    if !originals.is_empty() {
        annotations.insert(
            ANNOTATION_ORIGINAL_PROBES.into(),
            Value::String(Value::Object(originals).to_string()),
        );
    }
    *meta = new_meta;
    *spec = new_spec;
    Ok(Outcome::Changed)
}

fn csv(ports: &[u16]) -> String {
    ports
        .iter()
        .map(u16::to_string)
        .collect::<Vec<_>>()
        .join(",")
}

fn init_container(options: &InjectOptions, settings: &PodSettings, skip_inbound: &[u16]) -> Value {
    let mut args = vec![
        "init".to_owned(),
        "--proxy-uid".into(),
        options.proxy_uid.to_string(),
        "--proxy-gid".into(),
        options.proxy_uid.to_string(),
        "--inbound-port".into(),
        INBOUND_PORT.to_string(),
        "--outbound-port".into(),
        OUTBOUND_PORT.to_string(),
        "--admin-port".into(),
        ADMIN_PORT.to_string(),
    ];
    if !skip_inbound.is_empty() {
        args.push("--skip-inbound-ports".into());
        args.push(csv(skip_inbound));
    }
    if !settings.skip_outbound_ports.is_empty() {
        args.push("--skip-outbound-ports".into());
        args.push(csv(&settings.skip_outbound_ports));
    }
    if !settings.skip_outbound_cidrs.is_empty() {
        args.push("--skip-outbound-cidrs".into());
        args.push(settings.skip_outbound_cidrs.join(","));
    }
    let mut container = json!({
        "name": INIT_CONTAINER,
        "image": options.image,
        "args": args,
        "securityContext": {
            "runAsUser": 0,
            "runAsGroup": 0,
            "runAsNonRoot": false,
            "allowPrivilegeEscalation": false,
            // iptables-legacy takes a lock under /run.
            "readOnlyRootFilesystem": false,
            "capabilities": {"drop": ["ALL"], "add": ["NET_ADMIN", "NET_RAW"]},
        },
        "resources": {
            "requests": {"cpu": "10m", "memory": "16Mi"},
            "limits": {"memory": "64Mi"},
        },
    });
    if let Some(policy) = &options.image_pull_policy {
        container["imagePullPolicy"] = Value::String(policy.clone());
    }
    container
}

/// A literal variable: the kubelet expands `$(VAR)` in values and reduces
/// `$$` to `$`, so every `$` is doubled.
fn env(name: &str, value: impl Into<String>) -> Value {
    json!({"name": name, "value": value.into().replace('$', "$$")})
}

/// A variable built from earlier ones by the kubelet's `$(VAR)` expansion.
fn env_expanded(name: &str, value: &str) -> Value {
    json!({"name": name, "value": value})
}

fn field_env(name: &str, path: &str) -> Value {
    json!({"name": name, "valueFrom": {"fieldRef": {"fieldPath": path}}})
}

/// A string as a TOML string, as the sidecar's configuration reads it.
fn toml_string(s: &str) -> String {
    toml::Value::String(s.to_owned()).to_string()
}

fn proxy_container(
    options: &InjectOptions,
    settings: &PodSettings,
    service: &str,
    probes: &[AppProbe],
) -> Value {
    let mut envs = vec![
        field_env("WARDEN_POD_NAME", "metadata.name"),
        field_env("WARDEN_POD_NAMESPACE", "metadata.namespace"),
        // The primary address: the control plane takes, by default, only
        // the address a registration comes from, and a dual-stack pod's
        // second address is not it.
        field_env("WARDEN_CONTROL_ENDPOINT_ADDRESSES", "status.podIP"),
        env_expanded(
            "WARDEN_CONTROL_INSTANCE",
            "$(WARDEN_POD_NAMESPACE)/$(WARDEN_POD_NAME)",
        ),
        env("WARDEN_CONTROL_ADDRESS", &options.control_address),
        env("WARDEN_CONTROL_SERVER_ID", &options.control_server_id),
        env("WARDEN_CONTROL_BUNDLE_PEM", &options.bundle_pem),
        env(
            "WARDEN_CONTROL_K8S_TOKEN_FILE",
            format!("{TOKEN_DIR}/token"),
        ),
        env("WARDEN_CONTROL_STATE_DIR", format!("{STATE_DIR}/state")),
        env("WARDEN_CONTROL_POLICIES", "true"),
        // Quoted for TOML: a service named `2048` or `true` stays a string.
        env("WARDEN_SERVICE_NAME", toml_string(service)),
        env("WARDEN_INBOUND_LISTEN", format!("[::]:{INBOUND_PORT}")),
        env("WARDEN_INBOUND_TRANSPARENT", "true"),
        env(
            "WARDEN_OUTBOUND_TRANSPARENT_LISTEN",
            format!("[::]:{OUTBOUND_PORT}"),
        ),
        env("WARDEN_ADMIN_LISTEN", format!("[::]:{ADMIN_PORT}")),
        env(
            "WARDEN_LOG",
            settings.log_level.as_deref().unwrap_or("warn"),
        ),
        env("WARDEN_LOG_FORMAT", "json"),
    ];
    if !settings.opaque_ports.is_empty() {
        envs.push(env(
            "WARDEN_INBOUND_OPAQUE_PORTS",
            format!("[{}]", csv(&settings.opaque_ports)),
        ));
    }
    if let Some(drain) = &settings.drain_timeout {
        envs.push(env("WARDEN_LIMITS_DRAIN_TIMEOUT", toml_string(drain)));
    }
    if let Some(workers) = settings.workers {
        envs.push(env("WARDEN_WORKERS", workers.to_string()));
    }
    if !probes.is_empty() {
        let list: Vec<String> = probes.iter().map(AppProbe::toml).collect();
        envs.push(env(
            "WARDEN_ADMIN_APP_PROBES",
            format!("[{}]", list.join(", ")),
        ));
    }
    let mut requests = Map::new();
    requests.insert(
        "cpu".into(),
        Value::String(
            settings
                .cpu_request
                .clone()
                .unwrap_or_else(|| "100m".into()),
        ),
    );
    requests.insert(
        "memory".into(),
        Value::String(
            settings
                .memory_request
                .clone()
                .unwrap_or_else(|| "64Mi".into()),
        ),
    );
    let mut limits = Map::new();
    limits.insert(
        "memory".into(),
        Value::String(
            settings
                .memory_limit
                .clone()
                .unwrap_or_else(|| "256Mi".into()),
        ),
    );
    if let Some(cpu) = &settings.cpu_limit {
        limits.insert("cpu".into(), Value::String(cpu.clone()));
    }
    let probe = |path: &str, period: u32, failures: u32| {
        json!({
            "httpGet": {"path": path, "port": ADMIN_PORT, "scheme": "HTTP"},
            "periodSeconds": period,
            "failureThreshold": failures,
            "timeoutSeconds": 1,
        })
    };
    let mut container = json!({
        "name": PROXY_CONTAINER,
        "image": options.image,
        "args": ["proxy"],
        "restartPolicy": "Always",
        "env": envs,
        "ports": [
            {"name": "warden-inbound", "containerPort": INBOUND_PORT, "protocol": "TCP"},
            {"name": "warden-admin", "containerPort": ADMIN_PORT, "protocol": "TCP"},
        ],
        // The app's containers start once this passes: the sidecar holds its
        // SVID, its policies and the discovery registry (5 minutes at most).
        "startupProbe": probe("/ready", 1, 300),
        "readinessProbe": probe("/ready", 5, 3),
        "livenessProbe": probe("/live", 10, 3),
        "resources": {"requests": requests, "limits": limits},
        "securityContext": {
            "runAsUser": options.proxy_uid,
            "runAsGroup": options.proxy_uid,
            "runAsNonRoot": true,
            "allowPrivilegeEscalation": false,
            "readOnlyRootFilesystem": true,
            "capabilities": {"drop": ["ALL"]},
            "seccompProfile": {"type": "RuntimeDefault"},
        },
        "volumeMounts": [
            {"name": TOKEN_VOLUME, "mountPath": TOKEN_DIR, "readOnly": true},
            {"name": STATE_VOLUME, "mountPath": STATE_DIR},
        ],
    });
    if let Some(policy) = &options.image_pull_policy {
        container["imagePullPolicy"] = Value::String(policy.clone());
    }
    container
}

/// Takes Warden out of one pod template: its containers, volumes and
/// annotations, and the app's original probes back.
pub fn uninject(meta: &mut Value, spec: &mut Value) -> Result<Outcome, Refused> {
    if !is_injected(meta, spec) {
        return Ok(Outcome::Skipped(Skip::NotInjected));
    }
    let mut new_spec = spec.clone();
    let mut new_meta = meta.clone();
    let Some(spec_obj) = new_spec.as_object_mut() else {
        return Err(refused("the pod has no spec"));
    };
    let ours = |v: &Value, names: &[&str]| {
        v.get("name")
            .and_then(Value::as_str)
            .is_some_and(|n| names.contains(&n))
    };
    if let Some(Value::Array(inits)) = spec_obj.get_mut("initContainers") {
        inits.retain(|c| !ours(c, &[INIT_CONTAINER, PROXY_CONTAINER]));
        if inits.is_empty() {
            spec_obj.remove("initContainers");
        }
    }
    if let Some(Value::Array(volumes)) = spec_obj.get_mut("volumes") {
        volumes.retain(|v| !ours(v, &[TOKEN_VOLUME, STATE_VOLUME]));
        if volumes.is_empty() {
            spec_obj.remove("volumes");
        }
    }
    let originals: Map<String, Value> = annotation(meta, ANNOTATION_ORIGINAL_PROBES)
        .map(|text| {
            serde_json::from_str(text).map_err(|e| {
                refused(format!(
                    "annotation {ANNOTATION_ORIGINAL_PROBES} is not the JSON Warden wrote: {e}"
                ))
            })
        })
        .transpose()?
        .unwrap_or_default();
    // The app's containers and the pod's own native sidecars, as injected.
    for container in probed_containers(&mut new_spec) {
        let name = container
            .get("name")
            .and_then(Value::as_str)
            .unwrap_or_default()
            .to_owned();
        let Some(container) = container.as_object_mut() else {
            continue;
        };
        for (kind, _) in PROBES {
            if let Some(original) = originals.get(&format!("{name}/{kind}")) {
                container.insert(kind.to_owned(), original.clone());
            }
        }
    }
    if let Some(Value::Object(annotations)) = new_meta.get_mut("annotations") {
        annotations.remove(ANNOTATION_INJECTED);
        annotations.remove(ANNOTATION_ORIGINAL_PROBES);
        if annotations.is_empty()
            && let Some(obj) = new_meta.as_object_mut()
        {
            obj.remove("annotations");
        }
    }
    *meta = new_meta;
    *spec = new_spec;
    Ok(Outcome::Changed)
}

#[cfg(test)]
mod tests;
