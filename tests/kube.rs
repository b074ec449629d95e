//! Kubernetes, tested against real artefacts (there is no cluster here):
//! - every manifest `warden inject` and `warden install` print validates
//!   against the official Kubernetes OpenAPI schemas of 1.29 and 1.37
//!   (`kubernetes-validate`, strict), and reads back the same under YAML
//!   1.1 (PyYAML) as Kubernetes reads it;
//! - the webhook, served over real HTTPS with the certificate and CA
//!   bundle `warden install` made, answers real AdmissionReviews; its
//!   JSONPatch, applied by Python's `jsonpatch`, gives exactly the pod
//!   `warden inject` makes;
//! - a sidecar reaches the control plane by a DNS name;
//! - (root) pods in network namespaces started exactly as their injected
//!   manifests say: the init container's command, the native sidecar with
//!   its environment, volumes and startup probe, then the app; they attest
//!   with service-account tokens, find each other by discovery, talk over
//!   mTLS, and the kubelet's probes reach the app through the sidecar.

mod support;

use std::io::{BufRead, BufReader, Write};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::Duration;

use base64::Engine;
use serde::Deserialize;
use serde_json::{Value, json};
use support::k8s::{ISSUER, Issuer, pod_claims, python_tools};
use support::mesh::{FRONTEND, ORDERS, Proxy};
use support::{eventually_blocking, path_str, warden, warden_bin};

const FIXTURES: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/fixtures/kube");

/// A CA for example.org and a JWKS, in a temporary directory.
struct Setup {
    dir: tempfile::TempDir,
}

impl Setup {
    fn new() -> Self {
        let dir = tempfile::tempdir().expect("tempdir");
        support::ca_init(&dir.path().join("ca"), "example.org");
        std::fs::write(
            dir.path().join("jwks.json"),
            Issuer::new("k1").jwks().to_string(),
        )
        .expect("jwks");
        Setup { dir }
    }

    fn path(&self, name: &str) -> PathBuf {
        self.dir.path().join(name)
    }

    fn mesh_flags(&self) -> Vec<String> {
        vec![
            "--bundle".into(),
            path_str(&self.path("ca/bundle.pem")).into(),
            "--trust-domain".into(),
            "example.org".into(),
        ]
    }

    /// `warden inject` (with the mesh flags) on `files`: exit code, stdout, stderr.
    fn inject(&self, extra: &[&str], files: &[&Path]) -> (i32, String, String) {
        let mut args: Vec<String> = vec!["inject".into()];
        args.extend(self.mesh_flags());
        args.extend(extra.iter().map(|s| (*s).to_owned()));
        args.extend(files.iter().map(|f| path_str(f).to_owned()));
        let args: Vec<&str> = args.iter().map(String::as_str).collect();
        let out = warden(&args);
        (
            out.status.code().unwrap_or(-1),
            String::from_utf8_lossy(&out.stdout).into_owned(),
            String::from_utf8_lossy(&out.stderr).into_owned(),
        )
    }

    fn install(&self, extra: &[&str]) -> String {
        let (ca, jwks) = (self.path("ca"), self.path("jwks.json"));
        let mut args = vec![
            "install",
            "--ca-dir",
            path_str(&ca),
            "--k8s-jwks",
            path_str(&jwks),
        ];
        args.extend_from_slice(extra);
        let out = warden(&args);
        assert!(
            out.status.success(),
            "warden install: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8(out.stdout).expect("utf-8")
    }

    fn write(&self, name: &str, text: &str) -> PathBuf {
        let path = self.path(name);
        std::fs::write(&path, text).expect("write");
        path
    }
}

fn yaml_documents(text: &str) -> Vec<Value> {
    serde_yaml_ng::Deserializer::from_str(text)
        .map(|d| Value::deserialize(d).expect("YAML"))
        .filter(|v| !v.is_null())
        .collect()
}

/// `kubernetes-validate --strict` for Kubernetes `version` on `files`.
fn validate(python: &str, version: &str, files: &[&Path]) -> Result<(), String> {
    let mut command = Command::new(python);
    command.args([
        "-m",
        "kubernetes_validate",
        "--strict",
        "--quiet",
        "-k",
        version,
    ]);
    command.args(files);
    let out = command.output().expect("run kubernetes-validate");
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    if out.status.success() && !text.contains("ERROR") {
        Ok(())
    } else {
        Err(text)
    }
}

/// The documents of a YAML file as PyYAML (YAML 1.1) reads them.
fn pyyaml(python: &str, file: &Path) -> Vec<Value> {
    let out = Command::new(python)
        .args([
            "-c",
            "import json, sys, yaml\nprint(json.dumps([d for d in yaml.safe_load_all(open(sys.argv[1])) if d is not None], default=str))",
        ])
        .arg(file)
        .output()
        .expect("python");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    serde_json::from_slice(&out.stdout).expect("JSON from python")
}

const VERSIONS: [&str; 2] = ["1.29.0", "1.37.0"];

#[test]
fn inject_and_install_print_valid_kubernetes_manifests() {
    let Some(python) = python_tools() else {
        return;
    };
    let setup = Setup::new();
    let workloads = Path::new(FIXTURES).join("workloads.yaml");
    let list = Path::new(FIXTURES).join("list.json");

    // The validator is strict: a field Kubernetes does not know fails.
    let bogus = setup.write(
        "bogus.yaml",
        "apiVersion: v1\nkind: Pod\nmetadata: {name: x}\nspec:\n  initContainers: [{name: a, image: a, restartPolicy: Sometimes}]\n  containers: [{name: b, image: b, bogus: 1}]\n",
    );
    for version in VERSIONS {
        assert!(validate(&python, version, &[&bogus]).is_err());
    }

    let (code, injected, stderr) = setup.inject(&[], &[&workloads]);
    assert_eq!(code, 0, "{stderr}");
    for object in [
        "Deployment/orders: injected",
        "Pod/debug: injected",
        "StatefulSet/ledger: injected",
        "DaemonSet/agent: injected",
        "ReplicaSet/cart: injected",
        "Job/report: injected",
        "CronJob/nightly: injected",
        "Service/orders: kind Service has no pod template",
        "ConfigMap/settings: kind ConfigMap has no pod template",
    ] {
        assert!(stderr.contains(object), "{object}:\n{stderr}");
    }
    let injected_file = setup.write("injected.yaml", &injected);
    let (code, from_list, stderr) = setup.inject(&[], &[&list]);
    assert_eq!(code, 0, "{stderr}");
    assert!(
        stderr.contains("Pod/opted-out: warden.dev/inject is disabled, unchanged"),
        "{stderr}"
    );
    // A List has no schema of its own: its items are validated one by one.
    let items: Value = serde_json::from_str(&from_list).expect("JSON in, JSON out");
    let items_file = setup.write(
        "items.json",
        &items["items"]
            .as_array()
            .expect("items")
            .iter()
            .map(|i| i.to_string())
            .collect::<Vec<_>>()
            .join("\n---\n"),
    );
    let sqlite = setup.write("install.yaml", &setup.install(&[]));
    let postgres = setup.write(
        "install-pg.yaml",
        &setup.install(&[
            "--database",
            "postgres://warden:secret@db.example:5432/warden",
            "--replicas",
            "3",
            "--namespace",
            "mesh-system",
        ]),
    );
    let (code, uninjected, stderr) = setup.inject(&["--uninject"], &[&injected_file]);
    assert_eq!(code, 0, "{stderr}");
    let uninjected_file = setup.write("uninjected.yaml", &uninjected);
    for version in VERSIONS {
        validate(
            &python,
            version,
            &[
                &injected_file,
                &items_file,
                &sqlite,
                &postgres,
                &uninjected_file,
            ],
        )
        .unwrap_or_else(|e| panic!("Kubernetes {version}:\n{e}"));
    }

    // YAML 1.1 (as Kubernetes reads it) and YAML 1.2 read the same values:
    // `on`, `0755`, `1_000` and `2001-12-14` stay strings.
    for file in [&injected_file, &sqlite, &postgres] {
        let text = std::fs::read_to_string(file).expect("read");
        assert_eq!(
            pyyaml(&python, file),
            yaml_documents(&text),
            "{}",
            file.display()
        );
    }
    assert!(
        injected.contains("value: \"on\"") && injected.contains("value: \"1_000\""),
        "{injected}"
    );

    // Idempotent, and --uninject gives back the input (as read).
    let (code, twice, stderr) = setup.inject(&[], &[&injected_file]);
    assert_eq!(code, 0, "{stderr}");
    assert_eq!(twice, injected);
    assert!(
        stderr.contains("Deployment/orders: already injected, unchanged"),
        "{stderr}"
    );
    let (_, as_read, _) = setup.inject(&["--uninject"], &[&workloads]);
    assert_eq!(uninjected, as_read);
    // The input is read as Kubernetes reads it (YAML 1.1, as PyYAML does):
    // `defaultMode: 0440` is 288 and `optional: yes` is true.
    assert_eq!(yaml_documents(&as_read), pyyaml(&python, &workloads));
    assert!(
        injected.contains("defaultMode: 288") && injected.contains("optional: true"),
        "{injected}"
    );

    // The install: the webhook fails closed and never sees the control
    // plane's namespace; nothing gets an API token.
    let docs = yaml_documents(&std::fs::read_to_string(&sqlite).expect("install"));
    let webhook = docs
        .iter()
        .find(|d| d["kind"] == "MutatingWebhookConfiguration")
        .expect("webhook configuration");
    assert_eq!(webhook["webhooks"][0]["failurePolicy"], "Fail");
    assert_eq!(
        webhook["webhooks"][0]["namespaceSelector"]["matchExpressions"][0]["values"],
        json!(["warden", "kube-system"])
    );
    assert!(
        docs.iter()
            .filter(|d| d["kind"] == "ServiceAccount")
            .all(|d| d["automountServiceAccountToken"] == false)
    );
    assert!(
        !docs
            .iter()
            .any(|d| d["kind"].as_str().is_some_and(|k| k.contains("Role")))
    );
    let pg_docs = yaml_documents(&std::fs::read_to_string(&postgres).expect("install"));
    let control = pg_docs
        .iter()
        .find(|d| d["kind"] == "Deployment" && d["metadata"]["name"] == "warden-control")
        .expect("control plane");
    assert_eq!(control["spec"]["replicas"], 3);
    assert!(!pg_docs.iter().any(|d| d["kind"] == "PersistentVolumeClaim"));
}

#[test]
fn bad_input_gets_a_clear_refusal_and_the_input_unchanged() {
    let setup = Setup::new();
    let host = setup.write(
        "host.yaml",
        "apiVersion: v1\nkind: Pod\nmetadata: {name: node-agent}\nspec:\n  hostNetwork: true\n  containers: [{name: a, image: a}]\n",
    );
    let (code, out, stderr) = setup.inject(&[], &[&host]);
    assert_eq!(code, 1);
    assert!(
        stderr.contains("Pod/node-agent: hostNetwork: true"),
        "{stderr}"
    );
    assert_eq!(
        yaml_documents(&out),
        yaml_documents(&std::fs::read_to_string(&host).expect("read"))
    );

    for (text, expected) in [
        ("a: [\n", "not YAML or JSON"),
        ("just: a map\n", "not a Kubernetes object (no apiVersion)"),
        ("{\"kind\": \"Pod\"", "not YAML or JSON"),
        ("", "no Kubernetes object"),
    ] {
        let file = setup.write("bad.yaml", text);
        let (code, out, stderr) = setup.inject(&[], &[&file]);
        assert_eq!(code, 1, "{text:?}");
        assert!(out.is_empty(), "{text:?}: {out}");
        assert!(stderr.contains(expected), "{text:?}: {stderr}");
    }
    let config = setup.write(
        "config.yaml",
        "apiVersion: v1\nkind: ConfigMap\nmetadata: {name: c}\n",
    );
    let (code, out, stderr) = setup.inject(&[], &[&config]);
    assert_eq!(code, 1);
    assert!(
        stderr.contains("no pod or workload in the input"),
        "{stderr}"
    );
    assert_eq!(
        yaml_documents(&out),
        yaml_documents("apiVersion: v1\nkind: ConfigMap\nmetadata: {name: c}\n")
    );

    let pod = Path::new(FIXTURES).join("workloads.yaml");
    let out = warden(&["inject", path_str(&pod)]);
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("--bundle is required"));
    let (code, _, stderr) = setup.inject(&["--control-address", "warden-control"], &[&pod]);
    assert_eq!(code, 1);
    assert!(stderr.contains("--control-address"), "{stderr}");
    let out = warden(&[
        "install",
        "--ca-dir",
        path_str(&setup.path("ca")),
        "--k8s-jwks",
        path_str(&setup.path("ca/ca.json")),
    ]);
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("not a JWKS"));
    let out = warden(&[
        "install",
        "--ca-dir",
        path_str(&setup.path("ca")),
        "--k8s-jwks",
        path_str(&setup.path("jwks.json")),
        "--replicas",
        "2",
    ]);
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("needs --database"));
}

/// The object of `kind` named `name` among `docs`.
fn object(docs: &[Value], kind: &str, name: &str) -> Value {
    docs.iter()
        .find(|d| d["kind"] == kind && d["metadata"]["name"] == name)
        .unwrap_or_else(|| panic!("{kind}/{name}"))
        .clone()
}

/// Starts `warden` with a container's `args` from a manifest, each found
/// in `replace` swapped (the pod's paths and listen addresses for this
/// machine's), and reads what it prints before `started`: the addresses,
/// by what they are (`api`, `metrics`, `webhook`). Its stdout is closed
/// then, as when the log collector reading it is gone: a server must not
/// depend on it (the control plane's audit lines go there).
fn start_container(
    args: &Value,
    replace: &[(&str, &str)],
    log: &Path,
) -> (std::process::Child, Vec<(String, std::net::SocketAddr)>) {
    let args: Vec<&str> = args
        .as_array()
        .expect("args")
        .iter()
        .map(|a| {
            let a = a.as_str().expect("arg");
            replace
                .iter()
                .find(|(from, _)| *from == a)
                .map_or(a, |(_, to)| to)
        })
        .collect();
    let mut child = Command::new(warden_bin())
        .args(&args)
        .env("WARDEN_LOG", "info")
        .stdout(Stdio::piped())
        .stderr(std::fs::File::create(log).expect("log"))
        .spawn()
        .expect("warden");
    let mut addresses = Vec::new();
    let lines = BufReader::new(child.stdout.take().expect("stdout")).lines();
    for line in lines {
        let line = line.expect("line");
        if line == "started" {
            return (child, addresses);
        }
        if let Some((what, addr)) = line.split_once(' ')
            && let Ok(addr) = addr.parse()
        {
            addresses.push((what.to_owned(), addr));
        }
    }
    let _ = child.kill();
    let _ = child.wait();
    panic!(
        "{args:?} did not start: {}",
        std::fs::read_to_string(log).unwrap_or_default()
    );
}

/// The webhook as `warden install` deploys it: its arguments, certificate
/// and the `caBundle` the API server would trust it with.
struct Webhook {
    child: std::process::Child,
    port: u16,
    ca_bundle: PathBuf,
}

impl Drop for Webhook {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn start_webhook(setup: &Setup) -> Webhook {
    let docs = yaml_documents(&setup.install(&[]));
    let find = |kind: &str, name: &str| object(&docs, kind, name);
    let tls = find("Secret", "warden-injector-tls");
    let cert = setup.write(
        "tls.crt",
        tls["stringData"]["tls.crt"].as_str().expect("crt"),
    );
    let key = setup.write(
        "tls.key",
        tls["stringData"]["tls.key"].as_str().expect("key"),
    );
    let bundle = find("ConfigMap", "warden-trust-bundle");
    let bundle = setup.write(
        "cm-bundle.pem",
        bundle["data"]["bundle.pem"].as_str().expect("pem"),
    );
    let config = find("MutatingWebhookConfiguration", "warden-injector");
    let ca = base64::engine::general_purpose::STANDARD
        .decode(
            config["webhooks"][0]["clientConfig"]["caBundle"]
                .as_str()
                .expect("caBundle"),
        )
        .expect("base64");
    let ca_bundle = setup.path("ca-bundle.pem");
    std::fs::write(&ca_bundle, ca).expect("write");
    let deployment = find("Deployment", "warden-injector");
    let (child, addresses) = start_container(
        &deployment["spec"]["template"]["spec"]["containers"][0]["args"],
        &[
            ("[::]:8443", "127.0.0.1:0"),
            ("/etc/warden/tls/tls.crt", path_str(&cert)),
            ("/etc/warden/tls/tls.key", path_str(&key)),
            ("/etc/warden/bundle/bundle.pem", path_str(&bundle)),
        ],
        &setup.path("webhook.log"),
    );
    Webhook {
        child,
        port: addresses[0].1.port(),
        ca_bundle,
    }
}

/// Python's http.client over TLS, verifying the webhook's certificate for
/// its Service name against the caBundle (as the API server does), then
/// `jsonpatch` applying each answer's patch to the review's pod.
const API_SERVER: &str = r#"
import base64, http.client, json, socket, ssl, sys
import jsonpatch
port, ca = int(sys.argv[1]), sys.argv[2]
context = ssl.create_default_context(cafile=ca)
class Conn(http.client.HTTPSConnection):
    def connect(self):
        sock = socket.create_connection(("127.0.0.1", port), timeout=10)
        self.sock = context.wrap_socket(sock, server_hostname="warden-injector.warden.svc")
results = []
for case in json.load(sys.stdin):
    conn = Conn("warden-injector.warden.svc", port, context=context)
    body = case["body"] if isinstance(case["body"], str) else json.dumps(case["body"])
    conn.request(case.get("method", "POST"), case.get("path", "/inject"), body=body.encode(),
                 headers={"Content-Type": "application/json"})
    response = conn.getresponse()
    text = response.read().decode()
    out = {"status": response.status, "body": json.loads(text)}
    review = out["body"].get("response")
    if review and review.get("patch"):
        ops = json.loads(base64.b64decode(review["patch"]))
        out["patched"] = jsonpatch.apply_patch(case["body"]["request"]["object"], ops)
    results.append(out)
print(json.dumps(results))
"#;

fn review(uid: &str, namespace: &str, pod: Value) -> Value {
    json!({
        "apiVersion": "admission.k8s.io/v1",
        "kind": "AdmissionReview",
        "request": {
            "uid": uid,
            "kind": {"group": "", "version": "v1", "kind": "Pod"},
            "resource": {"group": "", "version": "v1", "resource": "pods"},
            "requestKind": {"group": "", "version": "v1", "kind": "Pod"},
            "requestResource": {"group": "", "version": "v1", "resource": "pods"},
            "namespace": namespace,
            "operation": "CREATE",
            "userInfo": {"username": "system:serviceaccount:kube-system:replicaset-controller"},
            "object": pod,
            "oldObject": null,
            "dryRun": false,
            "options": {"apiVersion": "meta.k8s.io/v1", "kind": "CreateOptions"},
        }
    })
}

#[test]
fn the_webhook_patches_pods_into_what_inject_makes() {
    let Some(python) = python_tools() else {
        return;
    };
    let setup = Setup::new();
    let webhook = start_webhook(&setup);

    // The pod the ReplicaSet controller creates from the Deployment in the
    // fixture, and a bare pod.
    let fixture = pyyaml(&python, &Path::new(FIXTURES).join("workloads.yaml"));
    let template = &fixture[0]["spec"]["template"];
    let mut deployment_pod = json!({
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": template["metadata"].clone(),
        "spec": template["spec"].clone(),
    });
    deployment_pod["metadata"]["generateName"] = json!("orders-5d8f9c7b6-");
    deployment_pod["metadata"]["namespace"] = json!("shop");
    deployment_pod["metadata"]["ownerReferences"] = json!([{"apiVersion": "apps/v1", "kind": "ReplicaSet", "name": "orders-5d8f9c7b6", "uid": "8c1f0f6e-0000-4000-8000-000000000001", "controller": true}]);
    let bare_pod = fixture[2].clone();
    let with = |pod: &Value, path: &str, value: Value| {
        let mut pod = pod.clone();
        *pod.pointer_mut(path).expect("path") = value;
        pod
    };
    let opted_out = with(
        &bare_pod,
        "/metadata",
        json!({"name": "o", "annotations": {"warden.dev/inject": "disabled"}}),
    );
    let ours = with(
        &bare_pod,
        "/metadata",
        json!({"name": "c", "labels": {"app.kubernetes.io/part-of": "warden"}}),
    );
    let mut host = bare_pod.clone();
    host["spec"]["hostNetwork"] = json!(true);
    let bad = with(
        &bare_pod,
        "/metadata",
        json!({"name": "b", "annotations": {"warden.dev/opaque-ports": "postgres"}}),
    );
    let mut windows = bare_pod.clone();
    windows["spec"]["os"] = json!({"name": "windows"});
    let mut update = review("u-update", "shop", bare_pod.clone());
    update["request"]["operation"] = json!("UPDATE");
    let mut service = review(
        "u-service",
        "shop",
        json!({"apiVersion": "v1", "kind": "Service", "metadata": {"name": "s"}, "spec": {}}),
    );
    service["request"]["kind"] = json!({"group": "", "version": "v1", "kind": "Service"});
    let mut no_uid = review("", "shop", bare_pod.clone());
    no_uid["request"]["uid"] = json!(null);
    let mut beta = review("u-beta", "shop", bare_pod.clone());
    beta["apiVersion"] = json!("admission.k8s.io/v1beta1");
    let cases = json!([
        {"body": review("u-deploy", "shop", deployment_pod.clone())},
        {"body": review("u-bare", "shop", bare_pod.clone())},
        {"body": review("u-opted-out", "shop", opted_out)},
        {"body": review("u-control", "warden", bare_pod.clone())},
        {"body": review("u-ours", "shop", ours)},
        {"body": review("u-host", "shop", host)},
        {"body": review("u-bad", "shop", bad)},
        {"body": update},
        {"body": service},
        {"body": "this is not JSON"},
        {"body": no_uid},
        {"body": beta},
        {"body": {"apiVersion": "admission.k8s.io/v1", "kind": "AdmissionReview"}},
        {"body": "", "method": "GET"},
        {"body": review("u-windows", "shop", windows)},
    ]);
    let mut child = Command::new(&python)
        .args([
            "-c",
            API_SERVER,
            &webhook.port.to_string(),
            path_str(&webhook.ca_bundle),
        ])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("python");
    child
        .stdin
        .take()
        .expect("stdin")
        .write_all(cases.to_string().as_bytes())
        .expect("write cases");
    let out = child.wait_with_output().expect("python");
    assert!(
        out.status.success(),
        "{}\n{}",
        String::from_utf8_lossy(&out.stderr),
        std::fs::read_to_string(setup.path("webhook.log")).unwrap_or_default()
    );
    let results: Vec<Value> = serde_json::from_slice(&out.stdout).expect("results");

    // What `warden inject` makes of the same pods.
    let injected = |pod: &Value| -> Value {
        let file = setup.write("pod.json", &pod.to_string());
        let (code, out, stderr) = setup.inject(&[], &[&file]);
        assert_eq!(code, 0, "{stderr}");
        serde_json::from_str(&out).expect("JSON")
    };
    for (i, (uid, pod)) in [("u-deploy", &deployment_pod), ("u-bare", &bare_pod)]
        .iter()
        .enumerate()
    {
        let result = &results[i];
        assert_eq!(result["status"], 200);
        assert_eq!(result["body"]["response"]["uid"], *uid);
        assert_eq!(result["body"]["response"]["allowed"], true);
        assert_eq!(result["body"]["response"]["patchType"], "JSONPatch");
        assert_eq!(result["patched"], injected(pod), "{uid}");
    }
    // Allowed, unchanged: opted out, the control plane's namespace, its own
    // pods, a hostNetwork pod (with a warning), an UPDATE.
    for (i, uid) in [
        (2, "u-opted-out"),
        (3, "u-control"),
        (4, "u-ours"),
        (5, "u-host"),
        (7, "u-update"),
    ] {
        let response = &results[i]["body"]["response"];
        assert_eq!(results[i]["status"], 200, "{uid}");
        assert_eq!(response["uid"], uid);
        assert_eq!(response["allowed"], true, "{uid}");
        assert!(response.get("patch").is_none(), "{uid}: {response}");
    }
    assert!(
        results[5]["body"]["response"]["warnings"][0]
            .as_str()
            .is_some_and(|w| w.contains("hostNetwork"))
    );
    // Refused with the reason: a bad annotation, a kind that is not a Pod.
    for (i, needle) in [
        (6, "warden.dev/opaque-ports"),
        (8, "only takes core/v1 Pods"),
    ] {
        let response = &results[i]["body"]["response"];
        assert_eq!(response["allowed"], false, "{response}");
        assert_eq!(response["status"]["code"], 400);
        assert!(
            response["status"]["message"]
                .as_str()
                .is_some_and(|m| m.contains(needle)),
            "{response}"
        );
    }
    // Not a review at all: HTTP 400, which the API server, with
    // failurePolicy Fail, turns into a refused pod.
    for result in &results[9..=12] {
        assert_eq!(result["status"], 400, "{result}");
        assert_eq!(result["body"]["error"], "bad_admission_review");
    }
    assert_eq!(results[13]["status"], 404);
    let response = &results[14]["body"]["response"];
    assert_eq!(response["allowed"], true);
    assert!(response.get("patch").is_none(), "{response}");
    assert!(
        response["warnings"][0]
            .as_str()
            .is_some_and(|w| w.contains("Windows"))
    );
    // Still serving after all of it.
    assert!(webhook_alive(&python, &webhook));
}

fn webhook_alive(python: &str, webhook: &Webhook) -> bool {
    let out = Command::new(python)
        .args([
            "-c",
            "import socket, ssl, sys\nc = ssl.create_default_context(cafile=sys.argv[2])\ns = c.wrap_socket(socket.create_connection(('127.0.0.1', int(sys.argv[1]))), server_hostname='warden-injector.warden.svc')\ns.sendall(b'GET /live HTTP/1.1\\r\\nHost: x\\r\\nConnection: close\\r\\n\\r\\n')\nprint(s.recv(100).decode().split()[1])",
            &webhook.port.to_string(),
            path_str(&webhook.ca_bundle),
        ])
        .output()
        .expect("python");
    String::from_utf8_lossy(&out.stdout).trim() == "200"
}

/// The control plane starts as `warden install`'s Deployment says: its
/// arguments, the CA from the Secret's files (mounted read-only, mode
/// 0440), the JWKS from the ConfigMap; it answers `/ready` where the
/// readiness probe looks, and attests a pod by a token signed with the
/// key of the JWKS given to `warden install`, with nobody reading its
/// stdout (where the audit lines go).
#[test]
fn the_control_plane_starts_as_the_install_manifest_says() {
    use std::os::unix::fs::PermissionsExt;
    let setup = Setup::new();
    let issuer = Issuer::new("install-key");
    std::fs::write(setup.path("jwks.json"), issuer.jwks().to_string()).expect("jwks");
    let docs = yaml_documents(&setup.install(&[]));
    let find = |kind: &str, name: &str| object(&docs, kind, name);
    let secret = setup.path("ca-secret");
    std::fs::create_dir(&secret).expect("dir");
    for (name, text) in find("Secret", "warden-ca")["stringData"]
        .as_object()
        .expect("stringData")
    {
        let path = secret.join(name);
        std::fs::write(&path, text.as_str().expect("text")).expect("write");
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o440)).expect("mode");
    }
    let jwks = setup.path("k8s-jwks.json");
    let configmap = find("ConfigMap", "warden-k8s-jwks");
    std::fs::write(
        &jwks,
        configmap["data"]["jwks.json"].as_str().expect("jwks"),
    )
    .expect("write");
    let data = setup.path("data");
    let deployment = find("Deployment", "warden-control");
    let container = &deployment["spec"]["template"]["spec"]["containers"][0];
    let (child, addresses) = start_container(
        &container["args"],
        &[
            ("[::]:7443", "127.0.0.1:0"),
            ("[::]:7080", "127.0.0.1:0"),
            ("/var/lib/warden-control", path_str(&data)),
            ("/etc/warden/ca", path_str(&secret)),
            ("/etc/warden/k8s/jwks.json", path_str(&jwks)),
        ],
        &setup.path("control.log"),
    );
    let _child = support::netns::Background(child);
    let address = |what: &str| {
        addresses
            .iter()
            .find(|(w, _)| w == what)
            .unwrap_or_else(|| panic!("no {what} address"))
            .1
    };
    let (api, metrics) = (address("api"), address("metrics"));
    let probe = &container["readinessProbe"]["httpGet"];
    assert_eq!(probe["port"], 7080);
    let out = Command::new("curl")
        .args(["-s", "-o", "/dev/null", "-m", "5", "-w", "%{http_code}"])
        .arg(format!(
            "http://{metrics}{}",
            probe["path"].as_str().expect("path")
        ))
        .output()
        .expect("curl");
    assert_eq!(String::from_utf8_lossy(&out.stdout), "200");
    // A pod of any namespace (`--k8s-allow '*'`) attests with a token
    // signed by the key behind the JWKS the install was given.
    let dir = tempfile::tempdir().expect("tempdir");
    let token = dir.path().join("token");
    std::fs::write(
        &token,
        issuer.sign(&pod_claims(
            "shop",
            "orders",
            "orders-1",
            "00000000-0000-4000-8000-000000000001",
        )),
    )
    .expect("token");
    let bundle = find("ConfigMap", "warden-trust-bundle");
    let sidecar = Proxy::start(
        &dir.path().join("sidecar.log"),
        &[
            format!("control.address={api}"),
            "control.server_id=spiffe://example.org/warden/control".into(),
            format!(
                "control.bundle_pem={}",
                bundle["data"]["bundle.pem"].as_str().expect("pem")
            ),
            format!("control.k8s_token_file={}", path_str(&token)),
            "inbound.listen=127.0.0.1:0".into(),
            "inbound.app=127.0.0.1:9".into(),
            "admin.listen=127.0.0.1:0".into(),
        ],
    );
    eventually_blocking("the pod to attest", Duration::from_secs(10), || {
        let out = Command::new("curl")
            .args(["-s", "-m", "5"])
            .arg(format!("http://{}/identity", sidecar.admin))
            .output()
            .expect("curl");
        let body = String::from_utf8_lossy(&out.stdout).into_owned();
        if body.contains(ORDERS) {
            Ok(())
        } else {
            Err(format!("{body}\n{}", sidecar.logs()))
        }
    });
}

/// `control.address` may be a DNS name, looked up at each connection (in
/// a cluster, the control plane's Service).
#[test]
fn a_sidecar_reaches_the_control_plane_by_name() {
    use support::control::{Control, Db, any_port};
    let dir = tempfile::tempdir().expect("tempdir");
    let control = Control::start(&dir.path().join("control"), any_port(), &Db::Sqlite, &[]);
    let mut settings = control.sidecar_settings(
        "orders",
        &control.token(ORDERS),
        &[
            "inbound.listen=127.0.0.1:0".into(),
            "inbound.app=127.0.0.1:9".into(),
        ],
    );
    settings.push(format!("control.address=localhost:{}", control.api.port()));
    let sidecar = Proxy::start(&dir.path().join("orders.log"), &settings);
    eventually_blocking(
        "the sidecar to join by name",
        Duration::from_secs(10),
        || {
            let listed = control.cli_ok(&["identities", "list"]);
            if listed.contains("orders-1") {
                Ok(())
            } else {
                Err(format!("{listed}\n{}", sidecar.logs()))
            }
        },
    );
}

/// An HTTP app that answers 200 only to a request carrying `X-Probe:
/// kubelet`, and a gRPC server (grpcio) whose health service says SERVING
/// for "" and NOT_SERVING for "orders", as the kubelet's gRPC probe would
/// ask it.
const PROBE_APPS: &str = r#"
import grpc, sys, threading
from concurrent import futures
from http.server import ThreadingHTTPServer, BaseHTTPRequestHandler
class App(BaseHTTPRequestHandler):
    def do_GET(self):
        ok = self.headers.get("x-probe") == "kubelet" and self.path == "/healthz?deep=1"
        self.send_response(200 if ok else 500)
        self.send_header("content-length", "0")
        self.end_headers()
    def log_message(self, *args):
        pass
http = ThreadingHTTPServer(("127.0.0.1", 0), App)
threading.Thread(target=http.serve_forever, daemon=True).start()
def check(request, context):
    # HealthCheckRequest: field 1, the service name.
    service = request[2:].decode() if request[:1] == b"\x0a" else ""
    return b"\x08\x01" if service == "" else b"\x08\x02"
handler = grpc.method_handlers_generic_handler("grpc.health.v1.Health", {"Check": grpc.unary_unary_rpc_method_handler(check)})
server = grpc.server(futures.ThreadPoolExecutor(max_workers=2))
server.add_generic_rpc_handlers((handler,))
grpc_port = server.add_insecure_port("127.0.0.1:0")
server.start()
print(http.server_address[1], grpc_port, flush=True)
server.wait_for_termination()
"#;

/// The sidecar runs each kind of rewritten probe as the kubelet would:
/// HTTP with its headers and query, TCP, and gRPC health checks against a
/// grpcio server; a probe of a port where nothing listens fails.
#[test]
fn the_sidecar_runs_http_tcp_and_grpc_probes_for_the_kubelet() {
    let python = support::netns::python();
    let has_grpc = Command::new(python)
        .args(["-c", "import grpc"])
        .output()
        .is_ok_and(|o| o.status.success());
    if !has_grpc {
        assert!(
            std::env::var_os("CI").is_none(),
            "CI installs python3-grpcio"
        );
        eprintln!("skipped: no grpcio");
        return;
    }
    let mut apps = Command::new(python)
        .args(["-c", PROBE_APPS])
        .stdout(Stdio::piped())
        .spawn()
        .expect("python apps");
    let mut line = String::new();
    BufReader::new(apps.stdout.take().expect("stdout"))
        .read_line(&mut line)
        .expect("ports");
    let ports: Vec<u16> = line
        .split_whitespace()
        .map(|p| p.parse().expect("port"))
        .collect();
    let _apps = support::netns::Background(apps);
    let (http, grpc) = (ports[0], ports[1]);
    let closed = std::net::TcpListener::bind("127.0.0.1:0")
        .expect("bind")
        .local_addr()
        .expect("addr")
        .port();
    let dir = tempfile::tempdir().expect("tempdir");
    support::ca_init(&dir.path().join("ca"), "example.org");
    let svid = support::svid_issue(&dir.path().join("ca"), ORDERS, &dir.path().join("svid"));
    let probes = format!(
        "admin.app_probes=[{{name = \"deep\", port = {http}, path = \"/healthz?deep=1\", headers = [[\"X-Probe\", \"kubelet\"]]}}, \
         {{name = \"bare\", port = {http}, path = \"/healthz?deep=1\"}}, \
         {{name = \"tcp\", port = {http}}}, {{name = \"tcp-closed\", port = {closed}}}, \
         {{name = \"grpc\", port = {grpc}, grpc = \"\"}}, {{name = \"grpc-orders\", port = {grpc}, grpc = \"orders\"}}, \
         {{name = \"grpc-closed\", port = {closed}, grpc = \"\"}}]"
    );
    let sidecar = Proxy::start(
        &dir.path().join("sidecar.log"),
        &[
            format!("identity.dir={}", path_str(&svid)),
            "inbound.listen=127.0.0.1:0".into(),
            "inbound.app=127.0.0.1:9".into(),
            "admin.listen=127.0.0.1:0".into(),
            probes,
        ],
    );
    let get = |name: &str| {
        let out = Command::new("curl")
            .args(["-s", "-o", "/dev/null", "-m", "15", "-w", "%{http_code}"])
            .arg(format!("http://{}/app-health/{name}", sidecar.admin))
            .output()
            .expect("curl");
        String::from_utf8_lossy(&out.stdout).into_owned()
    };
    for (name, expected) in [
        ("deep", "200"),
        ("bare", "500"),
        ("tcp", "200"),
        ("tcp-closed", "503"),
        ("grpc", "200"),
        ("grpc-orders", "503"),
        ("grpc-closed", "503"),
        ("nothing-here", "404"),
    ] {
        assert_eq!(get(name), expected, "{name}\n{}", sidecar.logs());
    }
}

// ---------------------------------------------------------------------
// Pods in network namespaces, started as their injected manifests say.

mod pods {
    use super::*;
    use support::control::Control;
    use support::netns::{
        Namespaces, bridge, in_ns, python as system_python, root_or_skip, spawn_ready,
    };
    use support::pods::{APP, APP_UID, admin, curl};

    /// A pod's identity in the "cluster".
    pub struct PodMeta<'a> {
        pub ns: &'a str,
        pub ip: &'a str,
        pub name: &'a str,
        pub namespace: &'a str,
    }

    /// A container's environment as the kubelet makes it: `value` with
    /// `$(VAR)` references to earlier variables expanded, and the
    /// downward API's `fieldRef`s.
    pub fn environment(container: &Value, pod: &PodMeta) -> Vec<(String, String)> {
        let mut env: Vec<(String, String)> = Vec::new();
        for var in container["env"].as_array().into_iter().flatten() {
            let name = var["name"].as_str().expect("env name").to_owned();
            let value = if let Some(value) = var["value"].as_str() {
                expand(value, &env)
            } else {
                match var["valueFrom"]["fieldRef"]["fieldPath"].as_str() {
                    Some("metadata.name") => pod.name.to_owned(),
                    Some("metadata.namespace") => pod.namespace.to_owned(),
                    Some("status.podIPs" | "status.podIP") => pod.ip.to_owned(),
                    other => panic!("unexpected env source {other:?}"),
                }
            };
            env.push((name, value));
        }
        env
    }

    /// The kubelet's expansion of a variable's value: `$(NAME)` of an
    /// earlier variable is its value, `$$` is `$`, anything else stays.
    fn expand(value: &str, env: &[(String, String)]) -> String {
        let mut out = String::new();
        let mut rest = value;
        while let Some(at) = rest.find('$') {
            out.push_str(&rest[..at]);
            rest = &rest[at..];
            if let Some(after) = rest.strip_prefix("$$") {
                out.push('$');
                rest = after;
            } else if let Some((name, after)) = rest
                .strip_prefix("$(")
                .and_then(|r| r.split_once(')'))
                .filter(|(n, _)| env.iter().any(|(k, _)| k == n))
            {
                out.push_str(&env.iter().find(|(k, _)| k == name).expect("defined").1);
                rest = after;
            } else {
                out.push('$');
                rest = &rest[1..];
            }
        }
        out.push_str(rest);
        out
    }

    /// The kubelet's view: an HTTP GET of `path` on the pod's `port` from
    /// outside the pod (the node: here the control plane's namespace).
    pub fn kubelet_get(node: &str, pod: &PodMeta, port: u16, path: &str) -> String {
        let out = in_ns(
            node,
            None,
            &[
                "curl",
                "-s",
                "-o",
                "/dev/null",
                "-m",
                "5",
                "-w",
                "%{http_code}",
                &format!("http://{}:{port}{path}", pod.ip),
            ],
        );
        String::from_utf8_lossy(&out.stdout).trim().to_owned()
    }

    /// Starts one injected pod's Warden containers, in order, as the kubelet
    /// would: `warden-init` runs to completion as root, then the native
    /// sidecar starts, as its `runAsUser`, with its environment, its
    /// volumes mounted at their paths (a private tmpfs under /run holds the
    /// projected token and the in-memory state directory) until its
    /// startup probe passes. The app's own containers start after.
    pub fn start(pod: &PodMeta, spec: &Value, token: &str, node: &str, logs: &Path) -> Proxy {
        let inits = spec["initContainers"].as_array().expect("init containers");
        assert_eq!(inits[0]["name"], "warden-init");
        assert_eq!(inits[1]["name"], "warden-proxy");
        let init = &inits[0];
        assert_eq!(init["securityContext"]["runAsUser"], 0);
        let args: Vec<&str> = init["args"]
            .as_array()
            .expect("args")
            .iter()
            .map(|a| a.as_str().expect("arg"))
            .collect();
        let out = in_ns(pod.ns, None, &[&[warden_bin()][..], &args].concat());
        assert!(
            out.status.success(),
            "warden-init: {}",
            String::from_utf8_lossy(&out.stderr)
        );

        let proxy = &inits[1];
        assert_eq!(proxy["restartPolicy"], "Always");
        let uid = proxy["securityContext"]["runAsUser"].as_u64().expect("uid");
        let mut env = environment(proxy, pod);
        // The kubelet adds service links for each Service of the pod's
        // namespace; one named `warden` gives these.
        env.extend(
            [
                ("WARDEN_SERVICE_HOST", "10.96.0.10"),
                ("WARDEN_SERVICE_PORT", "80"),
                ("WARDEN_PORT", "tcp://10.96.0.10:80"),
                ("WARDEN_PORT_80_TCP_ADDR", "10.96.0.10"),
            ]
            .map(|(k, v)| (k.to_owned(), v.to_owned())),
        );
        let mounts = proxy["volumeMounts"].as_array().expect("mounts");
        let token_dir = mounts
            .iter()
            .find(|m| m["name"] == "warden-token")
            .expect("token mount")["mountPath"]
            .as_str()
            .expect("path");
        let state_dir = mounts
            .iter()
            .find(|m| m["name"] == "warden-state")
            .expect("state mount")["mountPath"]
            .as_str()
            .expect("path");
        assert!(token_dir.starts_with("/var/run/") && state_dir.starts_with("/var/run/"));
        let token_file = logs.join(format!("{}.token", pod.name));
        std::fs::write(&token_file, token).expect("token");
        let script = format!(
            "set -e; mount -t tmpfs -o mode=755 warden-pod /run; \
             mkdir -p {token_dir} {state_dir}; cp {token} {token_dir}/token; chmod 644 {token_dir}/token; \
             chown {uid}:{uid} {state_dir}; \
             exec setpriv --reuid={uid} --regid={uid} --clear-groups -- \"$0\" \"$@\"",
            token = path_str(&token_file),
        );
        let mut command = Command::new("ip");
        command
            .args([
                "netns",
                "exec",
                pod.ns,
                "unshare",
                "--mount",
                "--propagation",
                "private",
                "--",
                "sh",
                "-c",
                &script,
                warden_bin(),
            ])
            .env_clear()
            .env("PATH", "/usr/sbin:/usr/bin:/sbin:/bin")
            .envs(env);
        // The image's entrypoint is `warden`; `start_command` appends the
        // manifest's one argument.
        assert_eq!(proxy["args"], json!(["proxy"]));
        let sidecar = Proxy::start_command(command, &logs.join(format!("{}.log", pod.name)), &[]);
        let probe = &proxy["startupProbe"]["httpGet"];
        let (port, path) = (
            probe["port"].as_u64().expect("port") as u16,
            probe["path"].as_str().expect("path"),
        );
        eventually_blocking(
            format!("{}'s startup probe", pod.name),
            Duration::from_secs(20),
            || match kubelet_get(node, pod, port, path) {
                code if code == "200" => Ok(()),
                code => Err(format!("{code}\n{}", sidecar.logs())),
            },
        );
        sidecar
    }

    #[test]
    fn injected_pods_start_attest_find_each_other_and_pass_their_probes() {
        if !root_or_skip() {
            return;
        }
        let ns = Namespaces::new("kp", 4);
        let (frontend, orders, plane) = (ns.name(0), ns.name(1), ns.name(2));
        let ips = bridge(ns.name(3), &[frontend, orders, plane], 62);
        let dir = tempfile::tempdir().expect("tempdir");
        let issuer = Issuer::new("cluster-key");
        let jwks = dir.path().join("jwks.json");
        std::fs::write(&jwks, issuer.jwks().to_string()).expect("jwks");
        let listen = format!("{}:8443", ips[2]).parse().expect("address");
        let control = Control::start_in_namespace(
            plane,
            &dir.path().join("control"),
            listen,
            &[
                "--k8s-issuer",
                ISSUER,
                "--k8s-jwks",
                path_str(&jwks),
                "--k8s-allow",
                "shop",
            ],
        );
        let policies = dir.path().join("policies");
        std::fs::create_dir(&policies).expect("policies");
        std::fs::write(
            policies.join("default.cedar"),
            include_str!("../policies/default.cedar"),
        )
        .expect("policy");
        control.cli_ok(&["policy", "push", path_str(&policies)]);

        // The manifests, injected.
        let manifest = json!({"apiVersion": "v1", "kind": "List", "items": [
            {"apiVersion": "v1", "kind": "Pod", "metadata": {"name": "orders-7d4b9-xk2p4", "namespace": "shop", "labels": {"app": "orders"}},
             "spec": {"serviceAccountName": "orders", "containers": [{"name": "app", "image": "orders:1",
                "ports": [{"name": "http", "containerPort": 8080}],
                "readinessProbe": {"httpGet": {"path": "/healthz", "port": "http"}},
                "livenessProbe": {"tcpSocket": {"port": 8080}}}]}},
            {"apiVersion": "v1", "kind": "Pod", "metadata": {"name": "frontend-5f6c8-q9w2e", "namespace": "shop", "labels": {"app": "frontend"}},
             "spec": {"serviceAccountName": "frontend", "containers": [{"name": "web", "image": "frontend:1"}]}},
        ]});
        let file = dir.path().join("pods.json");
        std::fs::write(&file, manifest.to_string()).expect("manifest");
        let out = warden(&[
            "inject",
            "--bundle",
            path_str(&control.dir.join("bundle.pem")),
            "--trust-domain",
            "example.org",
            "--control-address",
            &listen.to_string(),
            path_str(&file),
        ]);
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        let injected: Value = serde_json::from_slice(&out.stdout).expect("JSON");
        let (orders_spec, frontend_spec) =
            (&injected["items"][0]["spec"], &injected["items"][1]["spec"]);

        let orders_pod = PodMeta {
            ns: orders,
            ip: &ips[1],
            name: "orders-7d4b9-xk2p4",
            namespace: "shop",
        };
        let frontend_pod = PodMeta {
            ns: frontend,
            ip: &ips[0],
            name: "frontend-5f6c8-q9w2e",
            namespace: "shop",
        };
        let token = |pod: &PodMeta, account: &str| {
            issuer.sign(&pod_claims(
                "shop",
                account,
                pod.name,
                &format!("00000000-0000-4000-8000-{:012}", pod.ip.len()),
            ))
        };
        let orders_sidecar = start(
            &orders_pod,
            orders_spec,
            &token(&orders_pod, "orders"),
            plane,
            dir.path(),
        );
        // The app container starts once the sidecar's startup probe passed.
        let mut orders_app = Some(spawn_ready(
            orders,
            Some(APP_UID),
            &[system_python(), "-c", APP, "8080"],
        ));
        let frontend_sidecar = start(
            &frontend_pod,
            frontend_spec,
            &token(&frontend_pod, "frontend"),
            plane,
            dir.path(),
        );

        // Attested by their tokens, named by their pods in the inventory.
        let listed = control.cli_ok(&["identities", "list"]);
        for expected in [
            ORDERS,
            FRONTEND,
            "orders-7d4b9-xk2p4",
            "frontend-5f6c8-q9w2e",
        ] {
            assert!(listed.contains(expected), "{expected} missing:\n{listed}");
        }
        // frontend learns orders' pod address from discovery, and plain
        // curl from the app goes over mTLS, authorized by the pushed policy.
        let learns = |what: &str, entries: u64| {
            eventually_blocking(
                format!("frontend to learn {what}"),
                Duration::from_secs(10),
                || {
                    let (_, body) = admin(frontend, "/identity");
                    let seen: Value = serde_json::from_str(&body).unwrap_or_default();
                    if seen["control"]["endpoints"].as_u64() >= Some(entries) {
                        Ok(())
                    } else {
                        Err(format!("{seen}\n{}", orders_sidecar.logs()))
                    }
                },
            )
        };
        learns("orders' address", 1);
        let (code, body) = curl(frontend, &format!("http://{}:8080/orders/1", ips[1]), &[]);
        assert_eq!(code, "200", "{body}\n{}", frontend_sidecar.logs());
        assert!(body.contains(&format!("URI={FRONTEND}")), "{body}");

        // A Service: its ClusterIP, 198.19.0.10:80, which kube-proxy sends
        // to orders' pod at 8080 (here one DNAT rule in frontend's
        // namespace after Warden's chain, as kube-proxy's come after the
        // pod's on the node). Until an administrator names its identity,
        // the call goes as an unknown destination: plaintext, which strict
        // orders refuses.
        for command in [
            &["ip", "route", "add", "198.19.0.0/24", "dev", "eth0"][..],
            &[
                "iptables",
                "-t",
                "nat",
                "-A",
                "OUTPUT",
                "-d",
                "198.19.0.10/32",
                "-p",
                "tcp",
                "--dport",
                "80",
                "-j",
                "DNAT",
                "--to-destination",
            ][..],
        ] {
            let mut args = command.to_vec();
            let target = format!("{}:8080", ips[1]);
            if args[0] == "iptables" {
                args.push(&target);
            }
            let out = in_ns(frontend, None, &args);
            assert!(
                out.status.success(),
                "{args:?}: {}",
                String::from_utf8_lossy(&out.stderr)
            );
        }
        let (code, body) = curl(frontend, "http://198.19.0.10/orders/2", &[]);
        assert_eq!(code, "000", "plaintext to strict orders: {body}");
        control.cli_ok(&[
            "endpoints",
            "add",
            "--address",
            "198.19.0.10",
            "--spiffe-id",
            ORDERS,
            "--name",
            "shop/orders",
            "--ports",
            "80",
        ]);
        learns("the Service", 3);
        let (code, body) = curl(frontend, "http://198.19.0.10/orders/2", &[]);
        assert_eq!(code, "200", "{body}\n{}", frontend_sidecar.logs());
        assert!(body.contains(&format!("URI={FRONTEND}")), "{body}");
        let listed = control.cli_ok(&["endpoints", "list"]);
        assert!(
            listed.contains("service:shop/orders") && listed.contains("never"),
            "{listed}"
        );

        // The kubelet's probes, rewritten to the sidecar's admin port, reach
        // the app on loopback; the app's port itself takes no plaintext.
        let app_spec = &orders_spec["containers"][0];
        for kind in ["readinessProbe", "livenessProbe"] {
            let probe = &app_spec[kind]["httpGet"];
            assert_eq!(probe["port"], 15000);
            let path = probe["path"].as_str().expect("path");
            assert_eq!(
                kubelet_get(plane, &orders_pod, 15000, path),
                "200",
                "{kind}\n{}",
                orders_sidecar.logs()
            );
        }
        assert_eq!(kubelet_get(plane, &orders_pod, 8080, "/healthz"), "000");
        // The app stops: the probes fail.
        drop(orders_app.take());
        for kind in ["readinessProbe", "livenessProbe"] {
            let path = app_spec[kind]["httpGet"]["path"].as_str().expect("path");
            eventually_blocking(format!("{kind} to fail"), Duration::from_secs(10), || {
                match kubelet_get(plane, &orders_pod, 15000, path) {
                    code if code == "503" => Ok(()),
                    code => Err(code),
                }
            });
        }
    }
}
