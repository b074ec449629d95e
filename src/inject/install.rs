//! `warden install`: the manifests that run Warden in a cluster.
//!
//! - the namespace, and a service account for each component: neither
//!   calls the Kubernetes API, so neither gets a token or a role;
//! - the CA (made by `warden ca init`) as a Secret, the cluster issuer's
//!   JWKS as a ConfigMap (edit it when the issuer's keys rotate: the
//!   control plane re-reads it), the trust bundle as a ConfigMap;
//! - the control plane: one replica on SQLite on a PersistentVolumeClaim
//!   (`Recreate`, so two never write the file), or several on PostgreSQL
//!   (`--database`, kept in a Secret), and its Service;
//! - the injection webhook: its serving certificate, signed here by the CA
//!   for its Service's DNS names, two replicas, its Service, and the
//!   `MutatingWebhookConfiguration` with the CA as `caBundle` and
//!   `failurePolicy: Fail`.

use std::path::Path;
use std::time::Duration;

use anyhow::Context;
use base64::Engine;
use serde_json::{Value, json};
use warden_control::ca::CertificateAuthority;

use super::{ADMIN_PORT, PART_OF_LABEL, PART_OF_VALUE};

/// The uid the control plane and the injector run as (not the sidecar's).
pub const COMPONENT_UID: u32 = 65532;
/// The control plane's API port, in the pod and on its Service.
pub const CONTROL_PORT: u16 = 7443;
const METRICS_PORT: u16 = 7080;
const WEBHOOK_PORT: u16 = 8443;
/// The webhook's serving certificate lives this long (re-run `warden
/// install` to renew it), at most as long as the CA.
const WEBHOOK_CERT_TTL: Duration = Duration::from_secs(365 * 24 * 3600);

/// What `warden install` is given.
#[derive(Debug, Clone)]
pub struct InstallOptions {
    pub namespace: String,
    pub image: String,
    pub ca_dir: std::path::PathBuf,
    pub replicas: u32,
    pub injector_replicas: u32,
    pub database: Option<String>,
    pub storage: String,
    pub k8s_issuer: String,
    pub k8s_jwks: std::path::PathBuf,
    pub k8s_allow: Vec<String>,
    pub proxy_uid: u32,
}

/// The injector's Service name and the DNS names its certificate carries.
pub fn webhook_dns_names(namespace: &str) -> Vec<String> {
    vec![
        format!("warden-injector.{namespace}.svc"),
        format!("warden-injector.{namespace}.svc.cluster.local"),
    ]
}

fn labels(component: &str) -> Value {
    json!({
        "app.kubernetes.io/name": component,
        PART_OF_LABEL: PART_OF_VALUE,
    })
}

fn read_text(path: &Path) -> anyhow::Result<String> {
    std::fs::read_to_string(path).with_context(|| format!("cannot read {}", path.display()))
}

fn is_dns_label(s: &str) -> bool {
    !s.is_empty()
        && s.len() <= 63
        && s.bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
        && !s.starts_with('-')
        && !s.ends_with('-')
}

/// Every manifest, in the order `kubectl apply` needs them.
pub fn manifests(options: &InstallOptions) -> anyhow::Result<Vec<Value>> {
    let ns = options.namespace.as_str();
    anyhow::ensure!(
        is_dns_label(ns),
        "--namespace {ns:?}: a Kubernetes namespace is a DNS label (a-z, 0-9, -)"
    );
    anyhow::ensure!(options.replicas >= 1, "--replicas must be at least 1");
    anyhow::ensure!(
        options.injector_replicas >= 1,
        "--injector-replicas must be at least 1"
    );
    anyhow::ensure!(
        options.replicas == 1 || options.database.is_some(),
        "--replicas {} needs --database postgres://...: replicas share one PostgreSQL database (SQLite is one file on one volume)",
        options.replicas
    );
    if let Some(url) = &options.database {
        anyhow::ensure!(
            url.starts_with("postgres://") || url.starts_with("postgresql://"),
            "--database must be a postgres:// URL"
        );
    }
    anyhow::ensure!(
        !options.k8s_allow.is_empty(),
        "--k8s-allow names nobody: give NAMESPACE, NAMESPACE/SERVICE_ACCOUNT or '*'"
    );
    let ca = CertificateAuthority::load(&options.ca_dir)
        .with_context(|| format!("--ca-dir {}", options.ca_dir.display()))?;
    let trust_domain = ca.trust_domain().to_string();
    let ca_files: serde_json::Map<String, Value> = warden_control::ca::CA_FILES
        .iter()
        .map(|name| {
            read_text(&options.ca_dir.join(name)).map(|t| ((*name).to_owned(), Value::String(t)))
        })
        .collect::<anyhow::Result<_>>()?;
    let bundle_pem = ca.bundle().to_pem();
    let jwks = read_text(&options.k8s_jwks)?;
    let parsed: Value = serde_json::from_str(&jwks)
        .with_context(|| format!("{}: not JSON", options.k8s_jwks.display()))?;
    anyhow::ensure!(
        parsed.get("keys").and_then(Value::as_array).is_some(),
        "{}: not a JWKS (no \"keys\"); take it from `kubectl get --raw /openid/v1/jwks`",
        options.k8s_jwks.display()
    );
    let server = ca
        .issue_server_certificate(&webhook_dns_names(ns), WEBHOOK_CERT_TTL)
        .context("cannot sign the webhook's certificate")?;

    let mut out = vec![
        json!({
            "apiVersion": "v1",
            "kind": "Namespace",
            "metadata": {"name": ns, "labels": {PART_OF_LABEL: PART_OF_VALUE}},
        }),
        service_account(ns, "warden-control"),
        service_account(ns, "warden-injector"),
        json!({
            "apiVersion": "v1",
            "kind": "Secret",
            "metadata": {"name": "warden-ca", "namespace": ns, "labels": labels("warden-control")},
            "type": "Opaque",
            "stringData": ca_files,
        }),
        json!({
            "apiVersion": "v1",
            "kind": "ConfigMap",
            "metadata": {"name": "warden-trust-bundle", "namespace": ns, "labels": labels("warden")},
            "data": {"bundle.pem": bundle_pem},
        }),
        json!({
            "apiVersion": "v1",
            "kind": "ConfigMap",
            "metadata": {"name": "warden-k8s-jwks", "namespace": ns, "labels": labels("warden-control")},
            "data": {"jwks.json": jwks},
        }),
        json!({
            "apiVersion": "v1",
            "kind": "Secret",
            "metadata": {"name": "warden-injector-tls", "namespace": ns, "labels": labels("warden-injector")},
            "type": "kubernetes.io/tls",
            "stringData": {"tls.crt": server.chain_pem, "tls.key": server.key_pem},
        }),
    ];
    if let Some(url) = &options.database {
        out.push(json!({
            "apiVersion": "v1",
            "kind": "Secret",
            "metadata": {"name": "warden-database", "namespace": ns, "labels": labels("warden-control")},
            "type": "Opaque",
            "stringData": {"url": url},
        }));
    } else {
        out.push(json!({
            "apiVersion": "v1",
            "kind": "PersistentVolumeClaim",
            "metadata": {"name": "warden-control-data", "namespace": ns, "labels": labels("warden-control")},
            "spec": {
                "accessModes": ["ReadWriteOnce"],
                "resources": {"requests": {"storage": options.storage}},
            },
        }));
    }
    out.push(control_deployment(options, ns));
    out.push(service(
        ns,
        "warden-control",
        &[
            ("api", CONTROL_PORT, CONTROL_PORT),
            ("metrics", METRICS_PORT, METRICS_PORT),
        ],
    ));
    out.push(injector_deployment(options, ns, &trust_domain));
    out.push(service(
        ns,
        "warden-injector",
        &[("https", 443, WEBHOOK_PORT)],
    ));
    out.push(json!({
        "apiVersion": "policy/v1",
        "kind": "PodDisruptionBudget",
        "metadata": {"name": "warden-injector", "namespace": ns, "labels": labels("warden-injector")},
        "spec": {
            "maxUnavailable": 1,
            "selector": {"matchLabels": {"app.kubernetes.io/name": "warden-injector"}},
        },
    }));
    out.push(webhook_configuration(ns, &bundle_pem));
    Ok(out)
}

fn service_account(ns: &str, name: &str) -> Value {
    json!({
        "apiVersion": "v1",
        "kind": "ServiceAccount",
        "metadata": {"name": name, "namespace": ns, "labels": labels(name)},
        // Neither component calls the Kubernetes API.
        "automountServiceAccountToken": false,
    })
}

fn service(ns: &str, name: &str, ports: &[(&str, u16, u16)]) -> Value {
    let ports: Vec<Value> = ports
        .iter()
        .map(|(port_name, port, target)| {
            json!({"name": port_name, "port": port, "targetPort": target, "protocol": "TCP"})
        })
        .collect();
    json!({
        "apiVersion": "v1",
        "kind": "Service",
        "metadata": {"name": name, "namespace": ns, "labels": labels(name)},
        "spec": {
            "selector": {"app.kubernetes.io/name": name},
            "ports": ports,
        },
    })
}

fn security_context() -> Value {
    json!({
        "runAsNonRoot": true,
        "allowPrivilegeEscalation": false,
        "readOnlyRootFilesystem": true,
        "capabilities": {"drop": ["ALL"]},
        "seccompProfile": {"type": "RuntimeDefault"},
    })
}

fn pod_security() -> Value {
    json!({
        "runAsUser": COMPONENT_UID,
        "runAsGroup": COMPONENT_UID,
        "fsGroup": COMPONENT_UID,
        "runAsNonRoot": true,
    })
}

fn http_probe(path: &str, port: u16, scheme: &str) -> Value {
    json!({"httpGet": {"path": path, "port": port, "scheme": scheme}, "periodSeconds": 5})
}

fn control_deployment(options: &InstallOptions, ns: &str) -> Value {
    let mut args: Vec<String> = [
        "control",
        "serve",
        "--data-dir",
        "/var/lib/warden-control",
        "--ca-dir",
        "/etc/warden/ca",
        "--listen",
        "[::]:7443",
        "--metrics-listen",
        "[::]:7080",
        "--k8s-issuer",
        &options.k8s_issuer,
        "--k8s-jwks",
        "/etc/warden/k8s/jwks.json",
    ]
    .iter()
    .map(|s| (*s).to_owned())
    .collect();
    for allow in &options.k8s_allow {
        args.push("--k8s-allow".into());
        args.push(allow.clone());
    }
    let mut env = vec![json!({"name": "WARDEN_LOG_FORMAT", "value": "json"})];
    let data_volume = if options.database.is_some() {
        env.push(json!({
            "name": "WARDEN_CONTROL_DATABASE",
            "valueFrom": {"secretKeyRef": {"name": "warden-database", "key": "url"}},
        }));
        json!({"name": "data", "emptyDir": {}})
    } else {
        json!({"name": "data", "persistentVolumeClaim": {"claimName": "warden-control-data"}})
    };
    json!({
        "apiVersion": "apps/v1",
        "kind": "Deployment",
        "metadata": {"name": "warden-control", "namespace": ns, "labels": labels("warden-control")},
        "spec": {
            "replicas": options.replicas,
            // SQLite: the old pod lets go of the volume before the new one starts.
            "strategy": if options.database.is_some() {
                json!({"type": "RollingUpdate"})
            } else {
                json!({"type": "Recreate"})
            },
            "selector": {"matchLabels": {"app.kubernetes.io/name": "warden-control"}},
            "template": {
                "metadata": {"labels": labels("warden-control")},
                "spec": {
                    "serviceAccountName": "warden-control",
                    "automountServiceAccountToken": false,
                    "securityContext": pod_security(),
                    "containers": [{
                        "name": "control",
                        "image": options.image,
                        "args": args,
                        "env": env,
                        "ports": [
                            {"name": "api", "containerPort": CONTROL_PORT},
                            {"name": "metrics", "containerPort": METRICS_PORT},
                        ],
                        "readinessProbe": http_probe("/ready", METRICS_PORT, "HTTP"),
                        "livenessProbe": http_probe("/live", METRICS_PORT, "HTTP"),
                        "resources": {
                            "requests": {"cpu": "100m", "memory": "128Mi"},
                            "limits": {"memory": "512Mi"},
                        },
                        "securityContext": security_context(),
                        "volumeMounts": [
                            {"name": "data", "mountPath": "/var/lib/warden-control"},
                            {"name": "ca", "mountPath": "/etc/warden/ca", "readOnly": true},
                            {"name": "jwks", "mountPath": "/etc/warden/k8s", "readOnly": true},
                        ],
                    }],
                    "volumes": [
                        data_volume,
                        {"name": "ca", "secret": {"secretName": "warden-ca", "defaultMode": 0o440}},
                        {"name": "jwks", "configMap": {"name": "warden-k8s-jwks"}},
                    ],
                },
            },
        },
    })
}

fn injector_deployment(options: &InstallOptions, ns: &str, trust_domain: &str) -> Value {
    let args = json!([
        "inject",
        "serve",
        "--listen",
        format!("[::]:{WEBHOOK_PORT}"),
        "--cert",
        "/etc/warden/tls/tls.crt",
        "--key",
        "/etc/warden/tls/tls.key",
        "--control-namespace",
        ns,
        "--bundle",
        "/etc/warden/bundle/bundle.pem",
        "--control-address",
        format!("warden-control.{ns}.svc:{CONTROL_PORT}"),
        "--trust-domain",
        trust_domain,
        "--image",
        options.image,
        "--proxy-uid",
        options.proxy_uid.to_string(),
    ]);
    json!({
        "apiVersion": "apps/v1",
        "kind": "Deployment",
        "metadata": {"name": "warden-injector", "namespace": ns, "labels": labels("warden-injector")},
        "spec": {
            "replicas": options.injector_replicas,
            "selector": {"matchLabels": {"app.kubernetes.io/name": "warden-injector"}},
            "template": {
                "metadata": {"labels": labels("warden-injector")},
                "spec": {
                    "serviceAccountName": "warden-injector",
                    "automountServiceAccountToken": false,
                    "securityContext": pod_security(),
                    "containers": [{
                        "name": "injector",
                        "image": options.image,
                        "args": args,
                        "env": [{"name": "WARDEN_LOG_FORMAT", "value": "json"}, {"name": "WARDEN_LOG", "value": "info"}],
                        "ports": [{"name": "https", "containerPort": WEBHOOK_PORT}],
                        "readinessProbe": http_probe("/live", WEBHOOK_PORT, "HTTPS"),
                        "livenessProbe": http_probe("/live", WEBHOOK_PORT, "HTTPS"),
                        "resources": {
                            "requests": {"cpu": "50m", "memory": "32Mi"},
                            "limits": {"memory": "128Mi"},
                        },
                        "securityContext": security_context(),
                        "volumeMounts": [
                            {"name": "tls", "mountPath": "/etc/warden/tls", "readOnly": true},
                            {"name": "bundle", "mountPath": "/etc/warden/bundle", "readOnly": true},
                        ],
                    }],
                    "volumes": [
                        {"name": "tls", "secret": {"secretName": "warden-injector-tls", "defaultMode": 0o440}},
                        {"name": "bundle", "configMap": {"name": "warden-trust-bundle"}},
                    ],
                },
            },
        },
    })
}

fn webhook_configuration(ns: &str, bundle_pem: &str) -> Value {
    json!({
        "apiVersion": "admissionregistration.k8s.io/v1",
        "kind": "MutatingWebhookConfiguration",
        "metadata": {"name": "warden-injector", "labels": labels("warden-injector")},
        "webhooks": [{
            "name": "inject.warden.dev",
            "admissionReviewVersions": ["v1"],
            "sideEffects": "None",
            // A pod of a namespace labelled for injection is never started
            // without its sidecar: while the injector is down (a cluster
            // restart) such pods wait, and their controllers retry. The
            // control plane's namespace and kube-system are never sent here,
            // so the injector itself and the cluster's own pods can start.
            "failurePolicy": "Fail",
            "timeoutSeconds": 10,
            "reinvocationPolicy": "Never",
            "matchPolicy": "Equivalent",
            "clientConfig": {
                "service": {"name": "warden-injector", "namespace": ns, "path": "/inject", "port": 443},
                "caBundle": base64::engine::general_purpose::STANDARD.encode(bundle_pem),
            },
            "rules": [{
                "operations": ["CREATE"],
                "apiGroups": [""],
                "apiVersions": ["v1"],
                "resources": ["pods"],
                "scope": "Namespaced",
            }],
            "namespaceSelector": {
                "matchLabels": {"warden.dev/inject": "enabled"},
                "matchExpressions": [{
                    "key": "kubernetes.io/metadata.name",
                    "operator": "NotIn",
                    "values": [ns, "kube-system"],
                }],
            },
        }],
    })
}

/// Printed after the manifests: how to put a namespace in the mesh.
pub fn example(ns: &str) -> String {
    format!(
        "# To mesh a namespace's new pods (its existing pods: restart them):\n\
         #   kubectl label namespace shop warden.dev/inject=enabled\n\
         # A pod opts out with the annotation warden.dev/inject: disabled.\n\
         # The sidecar's admin port ({ADMIN_PORT}) answers the kubelet's probes.\n\
         # Identities: kubectl -n {ns} exec deploy/warden-control -- warden identities list --data-dir /var/lib/warden-control\n"
    )
}
