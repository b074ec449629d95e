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

mod containers;
pub mod install;
pub mod manifest;
mod probes;
mod settings;
pub mod webhook;
mod yaml_in;
mod yaml_out;

use serde_json::{Map, Value, json};

use containers::{init_container, proxy_container, toml_string};
use probes::{AppProbe, PROBES, probed_containers, rewrite_probes};
#[cfg(test)]
use settings::ANNOTATIONS;
use settings::{PodSettings, annotation, label, settings};

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
