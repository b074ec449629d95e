//! The sidecar's metrics (checked by promtool, moving with traffic and
//! rotation), its JSON logs and access log, and the admin API that changes
//! the log filter at run time.

mod support;

use std::time::Duration;

use support::eventually;
use support::mesh::{
    FRONTEND, INTRUDER, Identities, ORDERS, TestApp, get, inbound_to, route_to, sample,
};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn metrics_pass_promtool_and_move_with_traffic_and_rotation() {
    let ids = Identities::new();
    let app = TestApp::start().await;
    let server = ids.start("orders", &inbound_to(app.addr));
    let client = ids.start("frontend", &[route_to(server.inbound(), ORDERS)]);
    let intruder = ids.start("intruder", &[route_to(server.inbound(), ORDERS)]);
    for p in [&server, &client, &intruder] {
        p.wait_ready().await;
    }
    for _ in 0..3 {
        assert_eq!(
            get(client.outbound[0], "/a", &[])
                .await
                .expect("call")
                .status,
            200
        );
    }
    assert_eq!(
        get(intruder.outbound[0], "/a", &[])
            .await
            .expect("call")
            .status,
        403
    );
    // A new SVID for the server: a rotation.
    ids.issue("orders", ORDERS);
    let metrics = eventually("a rotation counted", Duration::from_secs(5), async || {
        let metrics = server.metrics().await;
        if sample(&metrics, "warden_svid_rotations_total").is_some_and(|v| v >= 1.0) {
            Ok(metrics)
        } else {
            Err(metrics)
        }
    })
    .await;
    assert_eq!(
        sample(&metrics, "warden_svid_rotations_total"),
        Some(1.0),
        "{metrics}"
    );
    let inbound = |labels: &str| {
        sample(
            &metrics,
            &format!("warden_requests_total{{direction=\"inbound\",{labels}}}"),
        )
    };
    assert_eq!(
        inbound("status=\"200\",decision=\"allow\""),
        Some(3.0),
        "{metrics}"
    );
    assert_eq!(
        inbound("status=\"403\",decision=\"deny\""),
        Some(1.0),
        "{metrics}"
    );
    assert_eq!(
        sample(
            &metrics,
            "warden_request_duration_seconds_count{direction=\"inbound\",decision=\"allow\",status_class=\"2xx\"}"
        ),
        Some(3.0),
        "{metrics}"
    );
    assert_eq!(
        sample(
            &metrics,
            &format!("warden_peer_requests_total{{direction=\"inbound\",peer=\"{FRONTEND}\"}}")
        ),
        Some(3.0),
        "{metrics}"
    );
    assert!(
        metrics.contains("warden_policy_info{version=\"sha256:"),
        "{metrics}"
    );
    for (name, exposition) in [("server", metrics), ("client", client.metrics().await)] {
        if let Err(problems) = support::promtool(&exposition) {
            panic!("promtool on the {name} sidecar's /metrics:\n{problems}\n{exposition}");
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn json_logs_an_access_log_and_a_log_filter_changed_at_run_time() {
    let ids = Identities::new();
    let app = TestApp::start().await;
    let json = vec![("WARDEN_LOG_FORMAT".to_owned(), "json".to_owned())];
    let mut s = inbound_to(app.addr);
    s.push("telemetry.access_log=true".into());
    let token_file = ids.path("admin.token");
    s.push(format!("admin.token_file={}", token_file.display()));
    let server = ids.start_with_env("orders", &s, &json);
    let intruder = ids.start("intruder", &[route_to(server.inbound(), ORDERS)]);
    server.wait_ready().await;
    intruder.wait_ready().await;
    assert_eq!(
        get(intruder.outbound[0], "/secret", &[])
            .await
            .expect("call")
            .status,
        403
    );

    // The deny's audit record is a JSON line.
    let logs = server.logs();
    let audit: serde_json::Value = logs
        .lines()
        .filter_map(|l| serde_json::from_str::<serde_json::Value>(l).ok())
        .find(|v| v["target"] == "warden::audit" && v["fields"]["path"] == "/secret")
        .unwrap_or_else(|| panic!("no JSON audit line: {logs}"));
    assert_eq!(audit["level"], "WARN");
    // The access log: one JSON line per request on stdout.
    let access = eventually(
        "an access-log line",
        Duration::from_millis(2500),
        async || {
            let stdout = server.stdout.lock().expect("lock");
            stdout
                .iter()
                .filter_map(|l| serde_json::from_str::<serde_json::Value>(l).ok())
                .find(|v| v["path"] == "/secret")
                .ok_or_else(|| stdout.join("\n"))
        },
    )
    .await;
    assert_eq!(access["status"], 403);
    assert_eq!(access["decision"], "deny");
    assert_eq!(access["peer"], INTRUDER);

    // The filter, read and replaced through the admin API, with the token
    // the sidecar wrote (0600) to admin.token_file.
    use std::os::unix::fs::PermissionsExt as _;
    let mode = std::fs::metadata(&token_file)
        .expect("token file")
        .permissions()
        .mode();
    assert_eq!(mode & 0o777, 0o600, "token file mode {mode:o}");
    let token = std::fs::read_to_string(&token_file).expect("token");
    let admin = server.admin;
    let put = |filter: &'static str, authorization: Option<String>| async move {
        let client = support::mesh::http1_client();
        let mut req = hyper::Request::put(format!("http://{admin}/logging"));
        if let Some(a) = authorization {
            req = req.header("authorization", a);
        }
        let req = req.body(support::mesh::body(filter)).expect("req");
        support::mesh::send(&client, req).await.expect("put")
    };
    let bearer = |scheme: &str| Some(format!("{scheme} {}", token.trim()));
    // Without the token, or with a wrong one: refused, nothing changed.
    assert_eq!(put("off", None).await.status, 401);
    assert_eq!(put("off", Some("Bearer nope".into())).await.status, 401);
    assert_eq!(put("off", Some(token.trim().to_owned())).await.status, 401);
    assert_eq!(
        get(admin, "/logging", &[]).await.expect("get").body.trim(),
        "info"
    );
    let replaced = put("debug,h2=warn", bearer("Bearer")).await;
    assert_eq!(replaced.status, 200, "{}", replaced.body);
    assert_eq!(
        get(admin, "/logging", &[]).await.expect("get").body.trim(),
        "debug,h2=warn"
    );
    assert_eq!(put("warden=[", bearer("bearer")).await.status, 400);
    assert_eq!(
        get(admin, "/logging", &[]).await.expect("get").body.trim(),
        "debug,h2=warn"
    );

    // Logging off silences the logs, not the audit records: a deny after
    // it still leaves its line.
    assert_eq!(put("off", bearer("BEARER")).await.status, 200);
    assert_eq!(
        get(intruder.outbound[0], "/after-off", &[])
            .await
            .expect("call")
            .status,
        403
    );
    eventually(
        "an audit line for the deny after `off`",
        Duration::from_millis(2500),
        async || {
            let logs = server.logs();
            let audited = logs.lines().any(|l| {
                serde_json::from_str::<serde_json::Value>(l).is_ok_and(|v| {
                    v["target"] == "warden::audit" && v["fields"]["path"] == "/after-off"
                })
            });
            if audited { Ok(()) } else { Err(logs) }
        },
    )
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn without_a_token_file_the_admin_api_is_read_only() {
    let ids = Identities::new();
    let app = TestApp::start().await;
    let server = ids.start("orders", &inbound_to(app.addr));
    server.wait_ready().await;
    let req = hyper::Request::put(format!("http://{}/logging", server.admin))
        .header("authorization", "Bearer anything")
        .body(support::mesh::body("off"))
        .expect("req");
    let reply = support::mesh::send(&support::mesh::http1_client(), req)
        .await
        .expect("put");
    assert_eq!(reply.status, 403);
    assert!(reply.body.contains("admin.token_file"), "{}", reply.body);
}
