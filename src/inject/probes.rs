//! The kubelet's probes of an injected pod: pointed at the sidecar's
//! admin port (`/app-health/<container>-<kind>`), which runs each against
//! the app (`admin.app_probes`), so the app's ports stay behind mTLS.

use std::collections::BTreeMap;

use serde_json::{Map, Value, json};

use super::{ADMIN_PORT, Refused, refused, toml_string};

/// The probe kinds, with the short name used in `/app-health/<container>-<short>`.
pub(super) const PROBES: [(&str, &str); 3] = [
    ("livenessProbe", "live"),
    ("readinessProbe", "ready"),
    ("startupProbe", "startup"),
];

/// What the sidecar runs for one rewritten probe (`admin.app_probes`).
#[derive(Debug, Clone, PartialEq, Eq)]
enum Check {
    Http {
        path: String,
        headers: Vec<(String, String)>,
    },
    Tcp,
    Grpc {
        service: String,
    },
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub(super) struct AppProbe {
    name: String,
    port: u16,
    check: Check,
}

impl AppProbe {
    /// The probe as a TOML inline table, for `WARDEN_ADMIN_APP_PROBES`.
    pub(super) fn toml(&self) -> String {
        let mut fields = vec![
            format!("name = {}", toml_string(&self.name)),
            format!("port = {}", self.port),
        ];
        match &self.check {
            Check::Http { path, headers } => {
                fields.push(format!("path = {}", toml_string(path)));
                if !headers.is_empty() {
                    let list: Vec<String> = headers
                        .iter()
                        .map(|(n, v)| format!("[{}, {}]", toml_string(n), toml_string(v)))
                        .collect();
                    fields.push(format!("headers = [{}]", list.join(", ")));
                }
            }
            Check::Tcp => {}
            Check::Grpc { service } => fields.push(format!("grpc = {}", toml_string(service))),
        }
        format!("{{{}}}", fields.join(", "))
    }
}

/// The containers whose probes the kubelet runs while the pod serves: the
/// app's, and native sidecars of the pod's own (init containers with
/// `restartPolicy: Always`).
pub(super) fn probed_containers(spec: &mut Value) -> Vec<&mut Value> {
    let mut out = Vec::new();
    let Some(obj) = spec.as_object_mut() else {
        return out;
    };
    for (key, list) in obj.iter_mut() {
        let Some(list) = list.as_array_mut() else {
            continue;
        };
        match key.as_str() {
            "containers" => out.extend(list.iter_mut()),
            "initContainers" => out.extend(
                list.iter_mut()
                    .filter(|c| c.get("restartPolicy").and_then(Value::as_str) == Some("Always")),
            ),
            _ => {}
        }
    }
    out
}

/// Points the kubelet's HTTP, TCP and gRPC probes of the app's containers
/// (and of its own native sidecars) at the sidecar's admin port, which runs
/// each against the app: the kubelet has no SVID, and the app's ports stay
/// behind mTLS. Probes naming a host go elsewhere than the pod and stay as
/// they are. HTTPS probes and `httpGet` lifecycle hooks cannot be run by
/// the sidecar: the pod is refused unless their port is listed in
/// `warden.dev/skip-inbound-ports` (the operator's explicit choice to
/// leave it unprotected). Returns the probes the sidecar runs and the
/// original probes (by `container/kind`).
pub(super) fn rewrite_probes(
    spec: &mut Value,
    skip_inbound: &[u16],
) -> Result<(Vec<AppProbe>, Map<String, Value>), Refused> {
    let mut probes = Vec::new();
    let mut originals = Map::new();
    for container in probed_containers(spec) {
        let name = container
            .get("name")
            .and_then(Value::as_str)
            .unwrap_or_default()
            .to_owned();
        let named_ports: BTreeMap<String, u16> = container
            .get("ports")
            .and_then(Value::as_array)
            .into_iter()
            .flatten()
            .filter_map(|p| {
                Some((
                    p.get("name")?.as_str()?.to_owned(),
                    u16::try_from(p.get("containerPort")?.as_u64()?).ok()?,
                ))
            })
            .collect();
        let port_of = |what: &str, handler: &Value| -> Result<u16, Refused> {
            match handler.get("port") {
                Some(Value::Number(n)) => n
                    .as_u64()
                    .and_then(|p| u16::try_from(p).ok())
                    .filter(|p| *p != 0)
                    .ok_or_else(|| refused(format!("container {name}: {what}: port {n}"))),
                Some(Value::String(s)) => named_ports.get(s).copied().ok_or_else(|| {
                    refused(format!(
                        "container {name}: {what}: no container port named {s:?}"
                    ))
                }),
                _ => Err(refused(format!("container {name}: {what}: no port"))),
            }
        };
        // The kubelet calls these hooks at the pod's address: through the
        // sidecar they would need an SVID.
        for hook in ["postStart", "preStop"] {
            let Some(http) = container.pointer(&format!("/lifecycle/{hook}/httpGet")) else {
                continue;
            };
            if http.get("host").is_some() {
                continue;
            }
            let port = port_of(hook, http)?;
            if !skip_inbound.contains(&port) {
                return Err(refused(format!(
                    "container {name}: its {hook} httpGet hook calls port {port}, which the kubelet cannot reach through the sidecar; use an exec hook, or list {port} in warden.dev/skip-inbound-ports to leave it unprotected"
                )));
            }
        }
        for (kind, short) in PROBES {
            let Some(probe) = container.get(kind).cloned() else {
                continue;
            };
            let what = kind;
            let (port, check) = if let Some(http) = probe.get("httpGet") {
                if http.get("host").is_some() {
                    continue;
                }
                let port = port_of(what, http)?;
                if http.get("scheme").and_then(Value::as_str) == Some("HTTPS") {
                    if skip_inbound.contains(&port) {
                        continue;
                    }
                    return Err(refused(format!(
                        "container {name}: its {kind} is HTTPS on port {port}, which the sidecar does not run; use HTTP or gRPC, or list {port} in warden.dev/skip-inbound-ports to leave it unprotected"
                    )));
                }
                let path = http.get("path").and_then(Value::as_str).unwrap_or("/");
                let path = if path.starts_with('/') {
                    path.to_owned()
                } else {
                    format!("/{path}")
                };
                if path.parse::<http::uri::PathAndQuery>().is_err() {
                    return Err(refused(format!(
                        "container {name}: {kind}: {path:?} is not an HTTP path"
                    )));
                }
                let mut headers = Vec::new();
                for header in http
                    .get("httpHeaders")
                    .and_then(Value::as_array)
                    .into_iter()
                    .flatten()
                {
                    let (Some(n), Some(v)) = (
                        header.get("name").and_then(Value::as_str),
                        header.get("value").and_then(Value::as_str),
                    ) else {
                        return Err(refused(format!(
                            "container {name}: {kind}: a header without name or value"
                        )));
                    };
                    if http::HeaderName::from_bytes(n.as_bytes()).is_err()
                        || http::HeaderValue::from_str(v).is_err()
                    {
                        return Err(refused(format!(
                            "container {name}: {kind}: header {n:?} is not a valid HTTP header"
                        )));
                    }
                    headers.push((n.to_owned(), v.to_owned()));
                }
                (port, Check::Http { path, headers })
            } else if let Some(tcp) = probe.get("tcpSocket") {
                if tcp.get("host").is_some() {
                    continue;
                }
                (port_of(what, tcp)?, Check::Tcp)
            } else if let Some(grpc) = probe.get("grpc") {
                let port = grpc
                    .get("port")
                    .and_then(Value::as_u64)
                    .and_then(|p| u16::try_from(p).ok())
                    .filter(|p| *p != 0)
                    .ok_or_else(|| refused(format!("container {name}: {kind}: grpc port")))?;
                let service = grpc
                    .get("service")
                    .and_then(Value::as_str)
                    .unwrap_or_default()
                    .to_owned();
                (port, Check::Grpc { service })
            } else {
                // exec probes run in the container: nothing to do.
                continue;
            };
            let probe_name = format!("{name}-{short}");
            originals.insert(format!("{name}/{kind}"), probe.clone());
            let mut rewritten = probe;
            let Some(obj) = rewritten.as_object_mut() else {
                continue;
            };
            obj.remove("tcpSocket");
            obj.remove("grpc");
            obj.insert(
                "httpGet".into(),
                json!({
                    "path": format!("/app-health/{probe_name}"),
                    "port": ADMIN_PORT,
                    "scheme": "HTTP",
                }),
            );
            container[kind] = rewritten;
            probes.push(AppProbe {
                name: probe_name,
                port,
                check,
            });
        }
    }
    Ok((probes, originals))
}
