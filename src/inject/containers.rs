//! The containers injection adds: `warden-init` and the `warden-proxy`
//! native sidecar, with their arguments, environment and resources.

use super::*;

pub(super) fn csv(ports: &[u16]) -> String {
    ports
        .iter()
        .map(u16::to_string)
        .collect::<Vec<_>>()
        .join(",")
}

pub(super) fn init_container(
    options: &InjectOptions,
    settings: &PodSettings,
    skip_inbound: &[u16],
) -> Value {
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
pub(super) fn env(name: &str, value: impl Into<String>) -> Value {
    json!({"name": name, "value": value.into().replace('$', "$$")})
}

/// A variable built from earlier ones by the kubelet's `$(VAR)` expansion.
pub(super) fn env_expanded(name: &str, value: &str) -> Value {
    json!({"name": name, "value": value})
}

pub(super) fn field_env(name: &str, path: &str) -> Value {
    json!({"name": name, "valueFrom": {"fieldRef": {"fieldPath": path}}})
}

/// A string as a TOML string, as the sidecar's configuration reads it.
pub(super) fn toml_string(s: &str) -> String {
    toml::Value::String(s.to_owned()).to_string()
}

pub(super) fn proxy_container(
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
