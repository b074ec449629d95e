//! What the control plane distributes besides SVIDs, end to end: policy
//! bundles pushed, hot-swapped on sidecars and rolled back, and a CA
//! rotation under traffic that fails no request.

#[macro_use]
mod support;

#[path = "support/control_flows.rs"]
mod control_flows;

use std::collections::BTreeMap;
use std::time::Duration;

use control_flows::{Traffic, orders_and_frontend, refused_code, renewals};
use support::control::{Control, Db, any_port, eventually};
use support::mesh::{FRONTEND, ORDERS, Proxy, TestApp, get, inbound_to, route_to};
use warden_proxy::control::api;

on_both_backends!(
    policies_pushed_to_the_control_plane_are_hot_swapped_and_rolled_back,
    ca_rotation_under_traffic_fails_no_request,
);
fn write_policies(dir: &std::path::Path, text: &str) {
    std::fs::create_dir_all(dir).expect("dir");
    for entry in std::fs::read_dir(dir).expect("read") {
        std::fs::remove_file(entry.expect("entry").path()).expect("rm");
    }
    std::fs::write(dir.join("mesh.cedar"), text).expect("write");
}

async fn policy_version(p: &Proxy) -> Option<String> {
    let r = get(p.admin, "/policy", &[]).await.ok()?;
    let json: serde_json::Value = serde_json::from_str(&r.body).ok()?;
    json["version"].as_str().map(str::to_owned)
}

async fn policies_pushed_to_the_control_plane_are_hot_swapped_and_rolled_back(db: Db) {
    let dir = tempfile::tempdir().expect("tempdir");
    let control = Control::start(&dir.path().join("control"), any_port(), &db, &[]);
    let app = TestApp::start().await;
    let mut s = inbound_to(app.addr);
    s.push("control.policies=true".into());
    let server = control.sidecar(dir.path(), "orders", ORDERS, &s);
    let client = control.sidecar(
        dir.path(),
        "frontend",
        FRONTEND,
        &[route_to(server.inbound(), ORDERS)],
    );
    client.wait_ready().await;
    // No policy pushed yet: not ready, everything denied.
    let ready = get(server.admin, "/ready", &[]).await.expect("ready");
    assert_eq!(ready.status, 503, "{}", ready.body);
    assert_eq!(
        get(client.outbound[0], "/x", &[])
            .await
            .expect("get")
            .status,
        403
    );

    let policies = dir.path().join("policies");
    write_policies(
        &policies,
        "@id(\"reads\")\npermit (principal is Workload, action == Action::\"GET\", resource);\n",
    );
    let out = control.cli_ok(&["policy", "push", policies.to_str().expect("utf-8")]);
    assert!(out.contains("policy version 1"), "{out}");
    server.wait_ready().await;
    let v1 = policy_version(&server).await.expect("version");
    assert!(
        out.contains(&v1),
        "the control plane and the sidecar report one version: {out} vs {v1}"
    );
    assert_eq!(
        get(client.outbound[0], "/x", &[])
            .await
            .expect("get")
            .status,
        200
    );

    write_policies(
        &policies,
        "@id(\"health-only\")\npermit (principal, action == Action::\"GET\", resource) when { context.path == \"/healthz\" };\n",
    );
    let out = control.cli_ok(&["policy", "push", policies.to_str().expect("utf-8")]);
    assert!(out.contains("policy version 2"), "{out}");
    eventually(
        Duration::from_secs(10),
        "version 2 on the sidecar",
        || async { (policy_version(&server).await.as_deref() != Some(v1.as_str())).then_some(()) },
    )
    .await;
    let denied = get(client.outbound[0], "/x", &[]).await.expect("get");
    assert_eq!(denied.status, 403, "{}", denied.body);

    // A bundle that does not validate is refused by the control plane itself
    // (sent raw, past the CLI's own check).
    let broken = control
        .client(true)
        .post::<_, api::PolicyPushResponse>(
            api::ADMIN_POLICIES,
            &api::PolicyPush {
                files: BTreeMap::from([(
                    "bad.cedar".to_owned(),
                    "permit (principal, action, resource) when { nope };".to_owned(),
                )]),
            },
        )
        .await;
    let (status, code) = refused_code(broken);
    assert_eq!((status, code.as_str()), (400, "invalid_policy"));

    let out = control.cli_ok(&["policy", "rollback", "1"]);
    assert!(out.contains("policy version 1"), "{out}");
    eventually(
        Duration::from_secs(10),
        "rollback on the sidecar",
        || async { (policy_version(&server).await.as_deref() == Some(v1.as_str())).then_some(()) },
    )
    .await;
    assert_eq!(
        get(client.outbound[0], "/x", &[])
            .await
            .expect("get")
            .status,
        200
    );
    let versions: serde_json::Value =
        serde_json::from_str(&control.cli_ok(&["policy", "versions"])).expect("json");
    assert_eq!(versions["current"], 1);
    assert_eq!(versions["versions"].as_array().expect("list").len(), 2);
}

async fn ca_status(control: &Control) -> serde_json::Value {
    control
        .client(true)
        .get(api::ADMIN_CA)
        .await
        .expect("CA status")
}

async fn ca_rotation_under_traffic_fails_no_request(db: Db) {
    let dir = tempfile::tempdir().expect("tempdir");
    let data = dir.path().join("control");
    let control = Control::start(&data, any_port(), &db, &["--svid-ttl", "8s"]);
    let (_app, server, client) = orders_and_frontend(&control, &control, dir.path()).await;
    let old_bundle = std::fs::read(data.join("bundle.pem")).expect("bundle");
    let traffic = Traffic::start(client.outbound[0], 2);
    renewals(&[&server, &client], 1, Duration::from_secs(30)).await;

    // The new root is published at once and signs after 2 s.
    let rotated: serde_json::Value =
        serde_json::from_str(&control.cli_ok(&["ca", "rotate", "--grace", "2s"])).expect("json");
    assert_eq!(rotated["bundle_roots"], 2, "{rotated}");
    // A second rotation while this one runs is refused.
    let again = control.cli(&["ca", "rotate"]);
    assert!(!again.status.success());
    assert!(String::from_utf8_lossy(&again.stderr).contains("rotation_refused"));

    // The old root retires once every SVID it signed has expired.
    eventually(
        Duration::from_secs(60),
        "the old root to retire",
        || async {
            let status = ca_status(&control).await;
            status["authorities"][0]["retired_at"]
                .as_i64()
                .map(|_| status)
        },
    )
    .await;
    // Both sidecars renew again with only the new root trusted.
    renewals(&[&server, &client], 2, Duration::from_secs(30)).await;
    let (ok, failed, errors) = traffic.finish().await;
    assert_eq!(failed, 0, "failed requests: {errors:?}\n{}", client.logs());
    assert!(ok > 100, "only {ok} requests");
    let status = ca_status(&control).await;
    assert_eq!(status["bundle_roots"], 1, "{status}");
    let new_bundle = std::fs::read(data.join("bundle.pem")).expect("bundle");
    assert_ne!(new_bundle, old_bundle, "bundle.pem follows the rotation");
    assert_eq!(
        get(client.outbound[0], "/after", &[])
            .await
            .expect("get")
            .status,
        200
    );
    eprintln!("CA rotated under traffic: {ok} requests, 0 failed");
}
