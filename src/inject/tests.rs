use serde_json::{Value, json};

use super::manifest::{self, Format};
use super::*;

fn options() -> InjectOptions {
    InjectOptions {
        image: "warden:test".into(),
        image_pull_policy: None,
        proxy_uid: 1337,
        control_address: "warden-control.warden.svc:7443".into(),
        control_server_id: "spiffe://example.org/warden/control".into(),
        bundle_pem: "-----BEGIN CERTIFICATE-----\nMIIB\n-----END CERTIFICATE-----\n".into(),
        token_ttl_seconds: 600,
    }
}

fn pod(spec: Value) -> Value {
    json!({"apiVersion": "v1", "kind": "Pod", "metadata": {"name": "p"}, "spec": spec})
}

fn app() -> Value {
    json!({
        "name": "app",
        "image": "app:1",
        "ports": [{"name": "http", "containerPort": 8080}],
        "livenessProbe": {"httpGet": {"path": "healthz", "port": "http",
            "httpHeaders": [{"name": "X-Probe", "value": "kubelet"}]}, "periodSeconds": 3},
        "readinessProbe": {"tcpSocket": {"port": 8080}},
        "startupProbe": {"grpc": {"port": 9090}},
    })
}

fn run(doc: &Value, uninject: bool) -> (Value, Vec<manifest::Report>) {
    let mut docs = vec![doc.clone()];
    let reports = manifest::transform(&mut docs, &options(), uninject);
    (docs.remove(0), reports)
}

fn env_of(doc: &Value, name: &str) -> Option<String> {
    doc["spec"]["initContainers"][1]["env"]
        .as_array()?
        .iter()
        .find(|e| e["name"] == name)?["value"]
        .as_str()
        .map(str::to_owned)
}

#[test]
fn a_pod_gets_init_then_sidecar_then_its_own_init_containers() {
    let original = pod(json!({
        "initContainers": [{"name": "migrate", "image": "m:1"}],
        "containers": [app()],
        "volumes": [{"name": "data", "emptyDir": {}}],
    }));
    let (injected, reports) = run(&original, false);
    assert!(
        matches!(reports[0].result, Ok(Outcome::Changed)),
        "{reports:?}"
    );
    let inits: Vec<&str> = injected["spec"]["initContainers"]
        .as_array()
        .expect("inits")
        .iter()
        .map(|c| c["name"].as_str().expect("name"))
        .collect();
    assert_eq!(inits, ["warden-init", "warden-proxy", "migrate"]);
    let proxy = &injected["spec"]["initContainers"][1];
    assert_eq!(proxy["restartPolicy"], "Always");
    assert_eq!(proxy["startupProbe"]["httpGet"]["path"], "/ready");
    assert_eq!(proxy["securityContext"]["runAsUser"], 1337);
    let init = &injected["spec"]["initContainers"][0];
    assert_eq!(
        init["securityContext"]["capabilities"]["add"],
        json!(["NET_ADMIN", "NET_RAW"])
    );
    // Every probe the kubelet would send to the app's ports goes through
    // the sidecar's admin port: HTTP (its headers kept), TCP and gRPC; no
    // port is left out of interception.
    assert!(!init["args"].to_string().contains("--skip-inbound-ports"));
    let container = &injected["spec"]["containers"][0];
    assert_eq!(
        container["livenessProbe"]["httpGet"]["path"],
        "/app-health/app-live"
    );
    assert_eq!(container["livenessProbe"]["periodSeconds"], 3);
    assert_eq!(container["readinessProbe"]["httpGet"]["port"], 15000);
    assert!(container["readinessProbe"].get("tcpSocket").is_none());
    assert!(container["startupProbe"].get("grpc").is_none());
    assert_eq!(
        container["startupProbe"]["httpGet"]["path"],
        "/app-health/app-startup"
    );
    assert_eq!(
        env_of(&injected, "WARDEN_ADMIN_APP_PROBES").as_deref(),
        Some(
            r#"[{name = "app-live", port = 8080, path = "/healthz", headers = [["X-Probe", "kubelet"]]}, {name = "app-ready", port = 8080}, {name = "app-startup", port = 9090, grpc = ""}]"#
        )
    );
    let probes: toml::Table = toml::from_str(&format!(
        "p = {}",
        env_of(&injected, "WARDEN_ADMIN_APP_PROBES").expect("probes")
    ))
    .expect("TOML the sidecar reads");
    assert_eq!(probes["p"].as_array().expect("list").len(), 3);
    assert_eq!(
        injected["metadata"]["annotations"][ANNOTATION_INJECTED],
        env!("CARGO_PKG_VERSION")
    );
    let volumes: Vec<&str> = injected["spec"]["volumes"]
        .as_array()
        .expect("volumes")
        .iter()
        .map(|v| v["name"].as_str().expect("name"))
        .collect();
    assert_eq!(volumes, ["data", "warden-token", "warden-state"]);
}

#[test]
fn injecting_twice_changes_nothing_and_uninject_restores_the_original() {
    for original in [
        pod(json!({"containers": [app()]})),
        pod(json!({
            "initContainers": [{"name": "shipper", "image": "s:1", "restartPolicy": "Always",
                "livenessProbe": {"tcpSocket": {"port": 2020}}}],
            "containers": [app()],
        })),
        pod(json!({
            "initContainers": [{"name": "migrate", "image": "m:1"}],
            "containers": [app(), {"name": "side", "image": "s:1"}],
            "volumes": [{"name": "data", "emptyDir": {}}],
        })),
        json!({"apiVersion": "batch/v1", "kind": "CronJob", "metadata": {"name": "c"},
            "spec": {"schedule": "* * * * *", "jobTemplate": {"spec": {"template": {
                "metadata": {"annotations": {"keep": "me"}},
                "spec": {"restartPolicy": "Never", "containers": [{"name": "job", "image": "j:1"}]}}}}}}),
    ] {
        let (once, _) = run(&original, false);
        assert_ne!(once, original);
        let (twice, reports) = run(&once, false);
        assert_eq!(twice, once);
        assert!(matches!(
            reports[0].result,
            Ok(Outcome::Skipped(Skip::AlreadyInjected))
        ));
        let (back, reports) = run(&once, true);
        assert!(
            matches!(reports[0].result, Ok(Outcome::Changed)),
            "{reports:?}"
        );
        assert_eq!(back, original);
        let (again, reports) = run(&back, true);
        assert_eq!(again, original);
        assert!(matches!(
            reports[0].result,
            Ok(Outcome::Skipped(Skip::NotInjected))
        ));
    }
}

#[test]
fn refusals_leave_the_object_as_it_was() {
    let annotated = |key: &str, value: &str| {
        let mut p = pod(json!({"containers": [app()]}));
        p["metadata"]["annotations"] = json!({key: value});
        p
    };
    let cases = [
        (
            pod(json!({"hostNetwork": true, "containers": [app()]})),
            "hostNetwork",
        ),
        (
            annotated("warden.dev/opaque-ports", "5432,http"),
            "not a port",
        ),
        (
            annotated("warden.dev/skip-inbound-ports", "0"),
            "not a port",
        ),
        (
            annotated("warden.dev/skip-outbound-cidrs", "10.0.0.0/33"),
            "address block",
        ),
        (
            annotated("warden.dev/proxy-memory-limit", "lots"),
            "quantity",
        ),
        (
            annotated("warden.dev/drain-timeout", "soon"),
            "drain-timeout",
        ),
        (
            annotated("warden.dev/proxy-workers", "0"),
            "not a number of workers",
        ),
        (
            annotated("warden.dev/proxy-workers", "two"),
            "not a number of workers",
        ),
        (
            annotated("warden.dev/inject", "yes"),
            "neither enabled nor disabled",
        ),
        (annotated("warden.dev/log-level", "info\nx"), "log filter"),
        (pod(json!({"containers": []})), "no containers"),
        (
            pod(
                json!({"containers": [{"name": "a", "image": "a", "livenessProbe": {"httpGet": {"port": "nope"}}}]}),
            ),
            "no container port named",
        ),
        (
            pod(
                json!({"containers": [app()], "volumes": [{"name": "warden-token", "emptyDir": {}}]}),
            ),
            "already has a volume",
        ),
        (
            pod(
                json!({"containers": [{"name": "a", "image": "a", "ports": [{"containerPort": 8443}],
                "readinessProbe": {"httpGet": {"port": 8443, "scheme": "HTTPS"}}}]}),
            ),
            "HTTPS on port 8443",
        ),
        (
            pod(json!({"containers": [{"name": "a", "image": "a",
                "lifecycle": {"preStop": {"httpGet": {"port": 8080, "path": "/drain"}}}}]})),
            "preStop httpGet hook calls port 8080",
        ),
        (
            pod(json!({"containers": [{"name": "a", "image": "a",
                "livenessProbe": {"httpGet": {"port": 8080, "path": "/a b"}}}]})),
            "not an HTTP path",
        ),
        (
            {
                let mut p = pod(json!({"containers": [app()]}));
                p["metadata"]["annotations"] = json!({
                    "warden.dev/proxy-cpu-request": "2", "warden.dev/proxy-cpu-limit": "500m"});
                p
            },
            "request 2 is above its limit 500m",
        ),
        (
            pod(json!({"os": {"name": "windows"}, "containers": [app()]})),
            "windows",
        ),
        (
            pod(
                json!({"containers": [{"name": "a", "image": "a", "ports": [{"containerPort": 15000}]}]}),
            ),
            "port 15000 is one of the sidecar's own ports",
        ),
        (
            annotated("warden.dev/skip-inbound-ports", "8080,15006"),
            "15006 is one of the sidecar's own ports",
        ),
    ];
    for (original, expected) in cases {
        let (after, reports) = run(&original, false);
        assert_eq!(after, original);
        match &reports[0].result {
            Err(Refused(reason)) => assert!(reason.contains(expected), "{reason} lacks {expected}"),
            other => panic!("{expected}: {other:?}"),
        }
        assert!(manifest::is_failure(&reports[0]));
    }
}

#[test]
fn opted_out_control_plane_and_other_kinds_are_left_alone() {
    let mut disabled = pod(json!({"containers": [app()]}));
    disabled["metadata"]["annotations"] = json!({"warden.dev/inject": "disabled"});
    let mut ours = pod(json!({"containers": [app()]}));
    ours["metadata"]["labels"] = json!({PART_OF_LABEL: PART_OF_VALUE});
    let service =
        json!({"apiVersion": "v1", "kind": "Service", "metadata": {"name": "s"}, "spec": {}});
    for (original, skip) in [
        (disabled, Some(Skip::Disabled)),
        (ours, Some(Skip::ControlPlane)),
        (service, None),
    ] {
        let (after, reports) = run(&original, false);
        assert_eq!(after, original);
        match (&reports[0].result, skip) {
            (Ok(Outcome::Skipped(got)), Some(want)) => assert_eq!(*got, want),
            (Err(Refused(reason)), None) => assert!(reason.starts_with("kind Service"), "{reason}"),
            (other, _) => panic!("{other:?}"),
        }
        assert!(!manifest::is_failure(&reports[0]));
    }
}

#[test]
fn lists_and_every_workload_kind_are_injected() {
    let template = json!({"metadata": {}, "spec": {"containers": [{"name": "a", "image": "a"}]}});
    let mut items = Vec::new();
    for kind in [
        "Deployment",
        "StatefulSet",
        "DaemonSet",
        "ReplicaSet",
        "Job",
    ] {
        items.push(json!({"apiVersion": "apps/v1", "kind": kind, "metadata": {"name": "w"}, "spec": {"template": template}}));
    }
    let list = json!({"apiVersion": "v1", "kind": "List", "items": items});
    let (after, reports) = run(&list, false);
    assert_eq!(reports.len(), 5);
    assert!(
        reports
            .iter()
            .all(|r| matches!(r.result, Ok(Outcome::Changed)))
    );
    for item in after["items"].as_array().expect("items") {
        assert_eq!(
            item["spec"]["template"]["spec"]["initContainers"][1]["name"],
            PROXY_CONTAINER
        );
    }
}

#[test]
fn manifests_that_are_not_kubernetes_are_refused() {
    for text in [
        "",
        "---\n",
        "just: [a, map]\n",
        "- a\n- b\n",
        "{\"kind\": \"Pod\"}",
        "a: [\n",
        "apiVersion: v1\nkind: List\n",
    ] {
        assert!(manifest::parse(text).is_err(), "{text:?} accepted");
    }
    let (format, docs) = manifest::parse(
        "apiVersion: v1\nkind: Pod\n---\n# c\n---\napiVersion: v1\nkind: Service\n",
    )
    .expect("yaml");
    assert_eq!((format, docs.len()), (Format::Yaml, 2));
    let (format, docs) =
        manifest::parse("{\"apiVersion\": \"v1\", \"kind\": \"Pod\"}").expect("json");
    assert_eq!((format, docs.len()), (Format::Json, 1));
}

#[test]
fn the_readme_documents_every_annotation() {
    let readme = include_str!("../../README.md");
    for (name, _) in ANNOTATIONS {
        assert!(readme.contains(&format!("`{name}`")), "README lacks {name}");
    }
}

#[test]
fn explicit_skips_kubelet_expansion_types_and_resources() {
    // An HTTPS probe and an httpGet hook pass when their port is explicitly
    // left out of interception; they are then left as they are.
    let mut p = pod(json!({"containers": [{"name": "a", "image": "a",
        "readinessProbe": {"httpGet": {"port": 8443, "scheme": "HTTPS"}},
        "lifecycle": {"postStart": {"httpGet": {"port": 8443}}}},
        {"name": "b", "image": "b", "livenessProbe": {"httpGet": {"port": 80, "host": "example.com"}}}],
        "initContainers": [{"name": "log-shipper", "image": "l", "restartPolicy": "Always",
            "startupProbe": {"tcpSocket": {"port": 2020}}}]}));
    p["metadata"]["annotations"] = json!({
        "warden.dev/skip-inbound-ports": "8443",
        "warden.dev/service": "2048",
        "warden.dev/drain-timeout": "0s",
        "warden.dev/proxy-workers": "2",
        "warden.dev/proxy-memory-limit": "32Mi",
        "warden.dev/proxy-cpu-limit": "50m",
    });
    let (injected, reports) = run(&p, false);
    assert!(
        matches!(reports[0].result, Ok(Outcome::Changed)),
        "{reports:?}"
    );
    let containers = &injected["spec"]["containers"];
    assert_eq!(
        containers[0]["readinessProbe"],
        p["spec"]["containers"][0]["readinessProbe"]
    );
    // A probe naming another host is not the pod's business.
    assert_eq!(
        containers[1]["livenessProbe"],
        p["spec"]["containers"][1]["livenessProbe"]
    );
    // The pod's own native sidecar is probed through Warden's, too.
    let shipper = &injected["spec"]["initContainers"][2];
    assert_eq!(shipper["name"], "log-shipper");
    assert_eq!(
        shipper["startupProbe"]["httpGet"]["path"],
        "/app-health/log-shipper-startup"
    );
    // Values stay strings for the sidecar's TOML reading.
    assert_eq!(
        env_of(&injected, "WARDEN_SERVICE_NAME").as_deref(),
        Some("\"2048\"")
    );
    assert_eq!(
        env_of(&injected, "WARDEN_LIMITS_DRAIN_TIMEOUT").as_deref(),
        Some("\"0s\"")
    );
    assert_eq!(env_of(&injected, "WARDEN_WORKERS").as_deref(), Some("2"));
    // Limits below the default requests lower the requests.
    let resources = &injected["spec"]["initContainers"][1]["resources"];
    assert_eq!(
        resources["requests"],
        json!({"cpu": "50m", "memory": "32Mi"})
    );
    assert_eq!(resources["limits"], json!({"memory": "32Mi", "cpu": "50m"}));
    // A `$` in a literal value is doubled so the kubelet's expansion keeps it.
    let mut dollar = pod(json!({"containers": [app()]}));
    dollar["metadata"]["annotations"] = json!({"warden.dev/service": "$(HOME)x"});
    let (injected, _) = run(&dollar, false);
    assert_eq!(
        env_of(&injected, "WARDEN_SERVICE_NAME").as_deref(),
        Some("\"$$(HOME)x\"")
    );
    // A request above the default memory limit raises the limit.
    let mut big = pod(json!({"containers": [app()]}));
    big["metadata"]["annotations"] = json!({"warden.dev/proxy-memory-request": "1Gi"});
    let (injected, _) = run(&big, false);
    assert_eq!(
        injected["spec"]["initContainers"][1]["resources"]["limits"]["memory"],
        "1Gi"
    );
}

#[test]
fn yaml_merge_keys_are_applied() {
    let (_, docs) = manifest::parse(
        "apiVersion: v1\nkind: Pod\nmetadata: {name: m}\nspec:\n  containers:\n  - &base {name: a, image: a}\n  - <<: *base\n    name: b\n",
    )
    .expect("yaml");
    assert_eq!(
        docs[0]["spec"]["containers"][1],
        json!({"name": "b", "image": "a"})
    );
}
