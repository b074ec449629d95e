//! Least privilege from observed use, end to end: real sidecars report
//! what their callers used to a real control plane (SQLite and
//! PostgreSQL); the report, the proposal, the replay and the push are
//! checked against that traffic; a new caller is one new-edge audit
//! record; usage made while the control plane is down arrives after it
//! returns; the access graph renders in headless Chromium.

#[macro_use]
mod support;

#[path = "support/control_flows.rs"]
mod control_flows;

use std::collections::BTreeMap;
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use control_flows::{join, refused_code};
use support::control::{Control, Db, any_port, csr_pem, eventually, on_postgres};
use support::mesh::{
    FRONTEND, INTRUDER, ORDERS, Proxy, TestApp, body, get, http1_client, inbound_to, route_to,
    sample, send,
};
use support::path_str;
use warden_proxy::control::api::{self, UsageRecord, UsageReport};
use warden_proxy::control::{ControlClient, ControlError};
use warden_proxy::identity::{SpiffeId, Svid};

on_both_backends!(
    observed_use_becomes_a_report_a_proposal_and_a_checked_push,
    usage_made_while_the_control_plane_is_down_arrives_after_it_returns,
);

const REPORTING: &str = "spiffe://example.org/ns/shop/sa/reporting";
const IDLE: &str = "spiffe://example.org/ns/shop/sa/idle";
const BILLING: &str = "spiffe://example.org/ns/shop/sa/billing";

/// Reads for the whole namespace, writes for the frontend, no admin paths
/// for anyone, and a permit for an identity that never shows up.
const POLICIES: &str = r#"
@id("shop-reads")
permit (principal is Workload, action in Action::"read", resource)
when { principal has namespace && principal.namespace == "shop" };

@id("frontend-writes")
permit (
  principal == Workload::"spiffe://example.org/ns/shop/sa/frontend",
  action == Action::"POST",
  resource
)
when { context.path like "/orders*" };

@id("no-admin")
forbid (principal, action in [Action::"read", Action::"write"], resource)
when { context.path like "/admin*" };

@id("ghost")
permit (principal == Workload::"spiffe://example.org/ns/shop/sa/ghost", action, resource);
"#;

fn write_dir(dir: &Path, files: &[(&str, &str)]) {
    std::fs::create_dir_all(dir).expect("dir");
    for (name, text) in files {
        std::fs::write(dir.join(name), text).expect("write");
    }
}

async fn status(p: &Proxy, method: &str, path: &str) -> u16 {
    let req = http::Request::builder()
        .method(method)
        .uri(format!("http://{}{path}", p.outbound[0]))
        .body(body(""))
        .expect("request");
    send(&http1_client(), req).await.expect("request").status
}

async fn usage_rows(control: &Control) -> Vec<api::UsageRow> {
    let rows: api::UsageRows = control
        .client(true)
        .get(&format!("{}?since_secs=3600", api::ADMIN_USAGE))
        .await
        .expect("usage");
    rows.rows
}

/// Waits until the stored usage holds `want` requests in all.
async fn usage_total(control: &Control, want: u64) -> Vec<api::UsageRow> {
    eventually(
        Duration::from_secs(20),
        &format!("{want} requests in the stored usage"),
        || async {
            let rows = usage_rows(control).await;
            (rows.iter().map(|r| r.count).sum::<u64>() == want).then_some(rows)
        },
    )
    .await
}

async fn policy_version(p: &Proxy) -> Option<String> {
    let r = get(p.admin, "/policy", &[]).await.ok()?;
    let json: serde_json::Value = serde_json::from_str(&r.body).ok()?;
    json["version"].as_str().map(str::to_owned)
}

/// The orders sidecar in front of `app`: the control plane's policies,
/// usage reported every second; ready.
async fn reporting_orders(control: &Control, logs: &Path, app: &TestApp) -> Proxy {
    let mut s = inbound_to(app.addr);
    s.push("control.policies=true".into());
    s.push("usage.report_interval=\"1s\"".into());
    let orders = control.sidecar(logs, "orders", ORDERS, &s);
    orders.wait_ready().await;
    orders
}

/// Under an allow-all policy, the reporting orders sidecar and a frontend
/// routed to it; one request made (`GET /a`) and its usage stored.
async fn one_reported_request(control: &Control, dir: &Path) -> (TestApp, Proxy, Proxy) {
    let policies = dir.join("policies");
    write_dir(&policies, &[("mesh.cedar", support::mesh::ALLOW_ALL)]);
    control.cli_ok(&["policy", "push", path_str(&policies)]);
    let app = TestApp::start().await;
    let orders = reporting_orders(control, dir, &app).await;
    let frontend = control.sidecar(
        dir,
        "frontend",
        FRONTEND,
        &[route_to(orders.inbound(), ORDERS)],
    );
    frontend.wait_ready().await;
    assert_eq!(status(&frontend, "GET", "/a").await, 200);
    usage_total(control, 1).await;
    (app, orders, frontend)
}

fn short(id: &str) -> &str {
    id.rsplit('/').next().unwrap_or(id)
}

fn new_edge_records(control: &Control) -> Vec<serde_json::Value> {
    control
        .audit_lines()
        .into_iter()
        .filter(|a| a["event"] == "new_edge")
        .collect()
}

async fn observed_use_becomes_a_report_a_proposal_and_a_checked_push(db: Db) {
    let dir = tempfile::tempdir().expect("tempdir");
    let control = Control::start(&dir.path().join("control"), any_port(), &db, &[]);
    let v1 = dir.path().join("v1");
    write_dir(&v1, &[("mesh.cedar", POLICIES)]);
    control.cli_ok(&["policy", "push", path_str(&v1)]);

    let t0 = warden_control::store::unix_now();
    let app = TestApp::start().await;
    let orders = reporting_orders(&control, dir.path(), &app).await;
    let to_orders = [route_to(orders.inbound(), ORDERS)];
    let frontend = control.sidecar(dir.path(), "frontend", FRONTEND, &to_orders);
    let reporting = control.sidecar(dir.path(), "reporting", REPORTING, &to_orders);
    let intruder = control.sidecar(dir.path(), "intruder", INTRUDER, &to_orders);
    let idle = control.sidecar(dir.path(), "idle", IDLE, &to_orders);
    for p in [&frontend, &reporting, &intruder, &idle] {
        p.wait_ready().await;
    }
    // Every identity exists from t1 on; every request comes after t1 + 2.
    let t1 = warden_control::store::unix_now();
    assert!(t1 >= t0);
    while warden_control::store::unix_now() < t1 + 2 {
        tokio::time::sleep(Duration::from_millis(100)).await;
    }

    assert_eq!(status(&frontend, "GET", "/orders/1").await, 200);
    assert_eq!(status(&frontend, "GET", "/orders/2").await, 200);
    assert_eq!(status(&frontend, "POST", "/orders").await, 200);
    assert_eq!(status(&frontend, "GET", "/admin").await, 403);
    for n in 11..14 {
        assert_eq!(
            status(&reporting, "GET", &format!("/orders/{n}")).await,
            200
        );
    }
    assert_eq!(status(&intruder, "GET", "/orders/7").await, 403);

    // What the sidecar reported, as stored: ids collapsed into templates.
    let rows = usage_total(&control, 8).await;
    let mut seen: Vec<(&str, &str, &str, &str, String, u64)> = rows
        .iter()
        .map(|r| {
            assert_eq!((r.callee.as_str(), r.service.as_str()), (ORDERS, "orders"));
            (
                short(&r.caller),
                r.action.as_str(),
                r.route.as_str(),
                r.decision.as_str(),
                r.policies.join(","),
                r.count,
            )
        })
        .collect();
    seen.sort();
    assert_eq!(
        seen,
        vec![
            ("frontend", "GET", "/admin", "deny", "no-admin".into(), 1),
            (
                "frontend",
                "GET",
                "/orders/{id}",
                "allow",
                "shop-reads".into(),
                2
            ),
            (
                "frontend",
                "POST",
                "/orders",
                "allow",
                "frontend-writes".into(),
                1
            ),
            ("intruder", "GET", "/orders/{id}", "deny", String::new(), 1),
            (
                "reporting",
                "GET",
                "/orders/{id}",
                "allow",
                "shop-reads".into(),
                3
            ),
        ]
    );

    // One new-edge audit record per caller. The control plane prints it
    // after the commit the rows above were read from, and the test reads
    // its output on another thread: waited for.
    eventually(
        Duration::from_secs(20),
        "three new-edge records",
        || async { (new_edge_records(&control).len() >= 3).then_some(()) },
    )
    .await;
    let edges = new_edge_records(&control);
    let mut callers: Vec<&str> = edges
        .iter()
        .filter_map(|e| e["spiffe_id"].as_str())
        .collect();
    callers.sort();
    assert_eq!(callers, vec![INTRUDER, FRONTEND, REPORTING], "{edges:?}");

    // The inventory shows use, and the one identity that made and served
    // no request though it was there all along.
    let window = warden_control::store::unix_now() - (t1 + 1);
    let unused: Vec<serde_json::Value> = serde_json::from_str(&control.cli_ok(&[
        "identities",
        "list",
        "--unused-for",
        &format!("{window}s"),
        "--json",
    ]))
    .expect("json");
    let unused: Vec<&str> = unused
        .iter()
        .filter_map(|i| i["spiffe_id"].as_str())
        .collect();
    assert_eq!(unused, vec![IDLE]);
    let shown: serde_json::Value =
        serde_json::from_str(&control.cli_ok(&["identities", "show", FRONTEND])).expect("json");
    assert_eq!(shown["called"][0]["spiffe_id"], ORDERS, "{shown}");
    assert_eq!(shown["called"][0]["allowed"], 3);
    assert_eq!(shown["called"][0]["denied"], 1);
    assert!(
        shown["last_seen_as_caller"]
            .as_i64()
            .is_some_and(|t| t >= t1 + 2)
    );
    let served: serde_json::Value =
        serde_json::from_str(&control.cli_ok(&["identities", "show", ORDERS])).expect("json");
    assert_eq!(
        served["callers"].as_array().map(Vec::len),
        Some(3),
        "{served}"
    );

    // The report: what the engine allows each identity, against its use.
    let report: api::AccessReport =
        serde_json::from_str(&control.cli_ok(&["access", "report", "--since", "1h", "--json"]))
            .expect("report json");
    let of = |id: &str| {
        report
            .identities
            .iter()
            .find(|i| i.identity == id)
            .unwrap_or_else(|| panic!("{id} in the report"))
    };
    let grants = |id: &str| {
        let mut g: Vec<(String, String, u64)> = of(id)
            .granted
            .iter()
            .map(|g| (g.action.clone(), g.route.clone(), g.count))
            .collect();
        g.sort();
        g
    };
    let g = |a: &str, r: &str, n: u64| (a.to_owned(), r.to_owned(), n);
    assert_eq!(
        grants(FRONTEND),
        vec![
            g("GET", "/orders", 0),
            g("GET", "/orders/{id}", 2),
            g("POST", "/orders", 1),
            g("POST", "/orders/{id}", 0),
        ]
    );
    assert_eq!(
        grants(REPORTING),
        vec![g("GET", "/orders", 0), g("GET", "/orders/{id}", 3)]
    );
    assert!(grants(INTRUDER).is_empty());
    assert_eq!((of(INTRUDER).denied, of(INTRUDER).requests), (1, 0));
    assert_eq!(of(FRONTEND).used, 2);
    assert!(
        of(IDLE)
            .summary
            .contains("made and served no request in the window"),
        "{}",
        of(IDLE).summary
    );
    assert!(
        of(FRONTEND).summary.contains("2 of 4 grants used"),
        "{}",
        of(FRONTEND).summary
    );
    assert!(
        of(ORDERS)
            .summary
            .contains("made no request, served 8 requests"),
        "{}",
        of(ORDERS).summary
    );
    assert_eq!(report.idle_policies, vec!["ghost".to_owned()]);
    assert_eq!(
        report
            .broad_policies
            .iter()
            .map(|b| (b.policy.as_str(), b.covers, b.used_by))
            .collect::<Vec<_>>(),
        vec![("shop-reads", 4, 2)]
    );
    let text = control.cli_ok(&["access", "report", "--identity", REPORTING]);
    assert!(
        text.contains("reporting: 1 of 2 grants used; never used: GET orders /orders"),
        "{text}"
    );

    // The graph, rendered in Chromium: every identity a node, the
    // frontend's calls, the intruder's attempt in red, the grants nobody
    // used (the frontend's two, all of idle's) dashed.
    let page = dir.path().join("graph.html");
    control.cli_ok(&["access", "graph", "--since", "1h", "--out", path_str(&page)]);
    let dom = render_in_chromium(&page, &dir.path().join("graph.png"));
    for id in [FRONTEND, REPORTING, INTRUDER, ORDERS, IDLE] {
        assert!(
            dom.contains(&format!("class=\"node\" data-id=\"{id}\"")),
            "{id} is a node"
        );
    }
    let edge = |kind: &str, from: &str| {
        format!("class=\"edge {kind}\" data-from=\"{from}\" data-to=\"{ORDERS}\"")
    };
    for (kind, from, count) in [
        ("allowed", FRONTEND, 3),
        ("denied", FRONTEND, 1),
        ("allowed", REPORTING, 3),
        ("unused", REPORTING, 1),
        ("denied", INTRUDER, 1),
        ("unused", FRONTEND, 2),
        ("unused", IDLE, 2),
    ] {
        let want = format!("{} data-count=\"{count}\"", edge(kind, from));
        assert!(dom.contains(&want), "{want}");
    }
    assert!(
        !dom.contains(&edge("allowed", INTRUDER)),
        "intruder never got through"
    );

    // The proposal: a permit per (caller, service, action) observed, the
    // forbid kept; it replays with no change.
    let proposed = dir.path().join("proposed");
    control.cli_ok(&[
        "policy",
        "propose",
        "--since",
        "1h",
        "--out",
        path_str(&proposed),
    ]);
    let permits = std::fs::read_to_string(proposed.join("observed.cedar")).expect("permits");
    assert_eq!(permits.matches("permit (").count(), 3, "{permits}");
    assert!(
        permits.contains("context.path like \"/orders/*\""),
        "{permits}"
    );
    assert!(permits.contains("3 requests on 1 route"), "{permits}");
    let forbids = std::fs::read_to_string(proposed.join("forbids.cedar")).expect("forbids");
    assert!(forbids.contains("@id(\"no-admin\")"), "{forbids}");
    support::warden_ok(&["policy", "check", path_str(&proposed)]);
    let replayed = control.cli(&["policy", "replay", path_str(&proposed), "--since", "1h"]);
    assert!(replayed.status.success(), "{replayed:?}");

    // The proposal without reporting's permit: exactly its calls change,
    // and a push of it is not made without a yes.
    let narrowed = dir.path().join("narrowed");
    let kept: Vec<&str> = permits
        .split("\n// spiffe://")
        .filter(|block| !block.starts_with("example.org/ns/shop/sa/reporting ->"))
        .collect();
    assert_eq!(kept.len(), 3, "a header and two permits");
    write_dir(
        &narrowed,
        &[
            ("observed.cedar", &kept.join("\n// spiffe://")),
            ("forbids.cedar", &forbids),
        ],
    );
    let out = control.cli(&[
        "policy",
        "replay",
        path_str(&narrowed),
        "--since",
        "1h",
        "--json",
    ]);
    assert!(!out.status.success(), "a change exits 1");
    let replay: api::ReplayReport = serde_json::from_slice(&out.stdout).expect("replay json");
    let changes: Vec<_> = replay
        .changes
        .iter()
        .map(|c| {
            (
                c.caller.as_str(),
                c.action.as_str(),
                c.route.as_str(),
                c.was.as_str(),
                c.now.as_str(),
                c.count,
            )
        })
        .collect();
    assert_eq!(
        changes,
        vec![(REPORTING, "GET", "/orders/{id}", "allow", "deny", 3)]
    );
    let out = control.cli(&["policy", "push", path_str(&narrowed)]);
    let printed = String::from_utf8_lossy(&out.stdout);
    assert!(!out.status.success(), "pushed without a yes: {printed}");
    assert!(
        printed.contains("1 would be denied (3 requests), 0 newly allowed"),
        "{printed}"
    );
    let versions = control.cli_ok(&["policy", "versions"]);
    let versions: serde_json::Value = serde_json::from_str(&versions).expect("json");
    assert_eq!(versions["current"], 1, "nothing was pushed");

    // The proposal pushed: every observed allowed call still works,
    // everything else (used or not before) is denied.
    let before = policy_version(&orders).await;
    let out = control.cli_ok(&["policy", "push", path_str(&proposed)]);
    assert!(
        out.contains("0 would be denied") && out.contains("policy version 2"),
        "{out}"
    );
    eventually(
        Duration::from_secs(10),
        "the proposal on the sidecar",
        || async { (policy_version(&orders).await != before).then_some(()) },
    )
    .await;
    assert_eq!(status(&frontend, "GET", "/orders/5").await, 200);
    assert_eq!(status(&frontend, "POST", "/orders").await, 200);
    assert_eq!(status(&reporting, "GET", "/orders/9").await, 200);
    assert_eq!(
        status(&frontend, "GET", "/orders").await,
        403,
        "granted, never used"
    );
    assert_eq!(status(&frontend, "POST", "/orders/5").await, 403);
    assert_eq!(status(&reporting, "POST", "/orders").await, 403);
    assert_eq!(status(&idle, "GET", "/orders/1").await, 403);
    assert_eq!(status(&intruder, "GET", "/orders/7").await, 403);
    assert_eq!(status(&frontend, "GET", "/admin").await, 403);

    // A new caller: one new-edge record, in `access edges` and the metric.
    let billing = control.sidecar(dir.path(), "billing", BILLING, &to_orders);
    billing.wait_ready().await;
    assert_eq!(status(&billing, "GET", "/orders/3").await, 403);
    eventually(Duration::from_secs(20), "billing's new edge", || async {
        (new_edge_records(&control).len() == 5).then_some(())
    })
    .await;
    let records = new_edge_records(&control);
    let billing_records: Vec<_> = records
        .iter()
        .filter(|e| e["spiffe_id"] == BILLING)
        .collect();
    assert_eq!(billing_records.len(), 1, "{records:?}");
    assert!(
        records.iter().any(|e| e["spiffe_id"] == IDLE),
        "idle's first (denied) call is an edge too: {records:?}"
    );
    let listed: api::EdgeList =
        serde_json::from_str(&control.cli_ok(&["access", "edges", "--new-since", "1h", "--json"]))
            .expect("edges json");
    assert!(
        listed
            .edges
            .iter()
            .any(|e| e.caller == BILLING && e.callee == ORDERS && e.kind == "call"),
        "{listed:?}"
    );
    let metrics = get(control.metrics, "/metrics", &[])
        .await
        .expect("metrics");
    assert_eq!(
        sample(&metrics.body, "warden_control_new_edges_total "),
        Some(5.0),
        "{}",
        metrics.body
    );

    // The graph as the admin API serves it: billing's attempt in red.
    let from_api = control
        .client(true)
        .call_raw(
            http::Method::GET,
            &format!("{}?since_secs=3600", api::ADMIN_ACCESS_GRAPH),
            None,
            Duration::from_secs(30),
        )
        .await
        .expect("graph from the admin API");
    let from_api = String::from_utf8_lossy(&from_api);
    assert!(
        from_api.contains(&format!(
            "class=\"edge denied\" data-from=\"{BILLING}\" data-to=\"{ORDERS}\""
        )),
        "{from_api}"
    );
}

/// Renders `page` in headless Chromium: a screenshot (checked to be a
/// PNG), and the DOM Chromium built from it.
fn render_in_chromium(page: &Path, screenshot: &Path) -> String {
    let profile = tempfile::tempdir().expect("profile");
    let url = format!("file://{}", page.display());
    let chromium = |extra: &[&str]| {
        let out = std::process::Command::new("chromium")
            .args([
                "--headless",
                "--no-sandbox",
                "--disable-gpu",
                "--disable-dev-shm-usage",
                "--no-first-run",
                "--disable-background-networking",
                "--disable-component-update",
                "--window-size=1400,1400",
            ])
            .arg(format!("--user-data-dir={}", profile.path().display()))
            .args(extra)
            .arg(&url)
            .output()
            .expect("run chromium (Debian package `chromium`; .ci/run installs it)");
        assert!(
            out.status.success(),
            "chromium failed: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        out
    };
    chromium(&[&format!("--screenshot={}", screenshot.display())]);
    let png = std::fs::read(screenshot).expect("the screenshot");
    assert!(png.starts_with(b"\x89PNG\r\n\x1a\n"), "a PNG");
    assert!(png.len() > 5_000, "a blank page? {} bytes", png.len());
    let dom = chromium(&["--dump-dom"]);
    String::from_utf8_lossy(&dom.stdout).into_owned()
}

async fn usage_made_while_the_control_plane_is_down_arrives_after_it_returns(db: Db) {
    let dir = tempfile::tempdir().expect("tempdir");
    let data = dir.path().join("control");
    let mut control = Control::start(&data, any_port(), &db, &[]);
    let (_app, orders, frontend) = one_reported_request(&control, dir.path()).await;

    let api_addr = control.api;
    control.kill9();
    for _ in 0..5 {
        assert_eq!(status(&frontend, "GET", "/b/1").await, 200);
    }
    eventually(Duration::from_secs(20), "a failed usage report", || async {
        let m = orders.metrics().await;
        sample(&m, "warden_usage_reports_total{outcome=\"failed\"}")
            .is_some_and(|n| n >= 2.0)
            .then_some(())
    })
    .await;
    let back = Control::start(&data, api_addr, &db, &[]);
    let rows = usage_total(&back, 6).await;
    let kept = rows
        .iter()
        .find(|r| r.route == "/b/{id}")
        .expect("the requests made during the outage");
    assert_eq!(kept.count, 5);
}

/// The control plane stores a report but its answer never reaches the
/// sidecar: the sidecar sends the same report again, and it is not counted
/// twice. Forced on PostgreSQL, where the test can hold a lock on the usage
/// table: the report's transaction waits on it past the sidecar's 10 s
/// timeout and commits once the lock goes, to a sidecar that has given up.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_report_stored_after_its_sidecar_gave_up_is_not_counted_twice() {
    let dir = tempfile::tempdir().expect("tempdir");
    let (url, control) = on_postgres(&dir.path().join("control"));
    let (_app, orders, frontend) = one_reported_request(&control, dir.path()).await;

    let failed = |m: &str| sample(m, "warden_usage_reports_total{outcome=\"failed\"}");
    let failed_before = failed(&orders.metrics().await).unwrap_or(0.0);
    // Writes to the usage table wait for this transaction.
    let (locked_tx, locked) = std::sync::mpsc::channel();
    let (release, release_rx) = std::sync::mpsc::channel::<()>();
    let holder = std::thread::spawn(move || {
        let mut client = ::postgres::Client::connect(&url, ::postgres::NoTls).expect("connect");
        let mut tx = client.transaction().expect("begin");
        tx.batch_execute("LOCK TABLE usage_daily IN EXCLUSIVE MODE")
            .expect("lock");
        locked_tx.send(()).expect("locked");
        let _ = release_rx.recv_timeout(Duration::from_secs(60));
        tx.commit().expect("commit");
    });
    tokio::task::spawn_blocking(move || locked.recv())
        .await
        .expect("join")
        .expect("the lock is held");
    for _ in 0..3 {
        assert_eq!(status(&frontend, "GET", "/b/1").await, 200);
    }
    // The report of those three waits on the lock; the sidecar gives up.
    eventually(
        Duration::from_secs(30),
        "a usage report without an answer",
        || async {
            failed(&orders.metrics().await)
                .is_some_and(|n| n > failed_before)
                .then_some(())
        },
    )
    .await;
    release.send(()).expect("release");
    tokio::task::spawn_blocking(move || holder.join())
        .await
        .expect("join")
        .expect("lock holder");
    // Stored once the lock went, then sent again and known.
    eventually(
        Duration::from_secs(30),
        "the report sent again, known",
        || async {
            let m = get(control.metrics, "/metrics", &[]).await.ok()?;
            sample(&m.body, "warden_control_usage_duplicate_reports_total ")
                .is_some_and(|n| n >= 1.0)
                .then_some(())
        },
    )
    .await;
    let rows = usage_rows(&control).await;
    let counts: BTreeMap<&str, u64> = rows.iter().map(|r| (r.route.as_str(), r.count)).collect();
    assert_eq!(
        counts,
        BTreeMap::from([("/a", 1), ("/b/{id}", 3)]),
        "{rows:?}"
    );
}

/// A report the control plane fails every time it is sent (here the
/// database refuses one of its rows: 503) is dropped after ten answered
/// failures and counted as refused, so that it does not hold back the
/// reports after it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_report_failed_every_time_is_dropped_and_holds_back_nothing() {
    let dir = tempfile::tempdir().expect("tempdir");
    let (url, control) = on_postgres(&dir.path().join("control"));
    let (_app, orders, frontend) = one_reported_request(&control, dir.path()).await;
    tokio::task::spawn_blocking(move || {
        let mut client = ::postgres::Client::connect(&url, ::postgres::NoTls).expect("connect");
        client
            .batch_execute("ALTER TABLE usage_daily ADD CONSTRAINT no_b CHECK (route <> '/b/{id}')")
            .expect("constraint");
    })
    .await
    .expect("join");
    assert_eq!(status(&frontend, "GET", "/b/1").await, 200);
    let refused = |m: &str| sample(m, "warden_usage_reports_total{outcome=\"refused\"}");
    eventually(Duration::from_secs(40), "the report dropped", || async {
        refused(&orders.metrics().await)
            .is_some_and(|n| n >= 1.0)
            .then_some(())
    })
    .await;
    let m = orders.metrics().await;
    let failed = sample(&m, "warden_usage_reports_total{outcome=\"failed\"}");
    assert!(failed.is_some_and(|n| n >= 10.0), "{m}");
    // The next report is not held back by it.
    for _ in 0..2 {
        assert_eq!(status(&frontend, "GET", "/c").await, 200);
    }
    let rows = usage_total(&control, 3).await;
    let counts: BTreeMap<&str, u64> = rows.iter().map(|r| (r.route.as_str(), r.count)).collect();
    assert_eq!(counts, BTreeMap::from([("/a", 1), ("/c", 2)]), "{rows:?}");
}

/// A usage report is only for the reporter's own decisions, bounded and
/// well formed; each refusal is audited and stores nothing.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_usage_reports_are_refused_audited_and_store_nothing() {
    let dir = tempfile::tempdir().expect("tempdir");
    let control = Control::start(&dir.path().join("control"), any_port(), &Db::Sqlite, &[]);
    let anon = control.client(false);
    let frontend = SpiffeId::parse(FRONTEND).expect("id");
    let (csr, key) = csr_pem(&frontend);
    let joined = join(&anon, &control.token(FRONTEND), csr)
        .await
        .expect("join");
    let store = control.bundle_store();
    store
        .install(
            Svid::from_pem(joined.chain_pem.as_bytes(), key.as_bytes()).expect("svid"),
            None,
        )
        .expect("install");
    let mtls =
        ControlClient::new(control.api, control.server_id(), Arc::new(store)).expect("client");

    // Nothing recorded yet: nothing to propose, nothing written.
    let out_dir = dir.path().join("proposal");
    let out = control.cli(&[
        "policy",
        "propose",
        "--since",
        "1h",
        "--out",
        path_str(&out_dir),
    ]);
    assert!(!out.status.success());
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("nothing to propose, nothing written"),
        "{out:?}"
    );
    assert!(!out_dir.exists());

    let now = warden_control::store::unix_now();
    let entry = |caller: &str| UsageRecord {
        caller: caller.into(),
        action: "GET".into(),
        route: "/orders/{id}".into(),
        decision: "allow".into(),
        policies: vec!["p".into()],
        count: 1,
        first_seen: now,
        last_seen: now,
    };
    let report = |callee: &str, entries: Vec<UsageRecord>| UsageReport {
        callee: callee.into(),
        service: "frontend".into(),
        entries,
        sources: Vec::new(),
        overflow: 0,
    };
    let post = |r: UsageReport| {
        let mtls = mtls.clone();
        async move { mtls.post::<_, api::UsageAccepted>(api::USAGE, &r).await }
    };
    // Someone else's decisions.
    assert_eq!(
        refused_code(post(report(ORDERS, vec![entry(INTRUDER)])).await),
        (403, "usage_not_own".into())
    );
    // No client certificate.
    assert_eq!(
        refused_code(
            anon.post::<_, api::UsageAccepted>(api::USAGE, &report(FRONTEND, vec![]))
                .await
        ),
        (401, "mtls_required".into())
    );
    // Too many entries; too many bytes.
    let many = vec![entry(INTRUDER); api::MAX_USAGE_ENTRIES + 1];
    assert_eq!(
        refused_code(post(report(FRONTEND, many)).await),
        (413, "body_too_large".into())
    );
    let mut huge = entry(INTRUDER);
    // Just past the limit: the server reads (and drops) up to 4 MiB of an
    // oversized body before it answers, so the 413 arrives rather than a reset.
    huge.route = format!("/{}", "a".repeat(api::MAX_USAGE_BODY + 2048));
    assert_eq!(
        refused_code(post(report(FRONTEND, vec![huge])).await),
        (413, "body_too_large".into())
    );
    // Malformed fields.
    let mut bad = Vec::new();
    let mut e = entry(INTRUDER);
    e.decision = "maybe".into();
    bad.push(e);
    let mut e = entry("spiffe://");
    e.caller = "not a caller".into();
    bad.push(e);
    let mut e = entry(INTRUDER);
    e.route = "/x\u{1b}[2J".into();
    bad.push(e);
    let mut e = entry(INTRUDER);
    e.last_seen = now + 3600;
    bad.push(e);
    let mut e = entry(INTRUDER);
    e.count = 0;
    bad.push(e);
    for e in bad {
        assert_eq!(
            refused_code(post(report(FRONTEND, vec![e.clone()])).await),
            (400, "bad_usage".into()),
            "{e:?}"
        );
    }
    let unknown_field: Result<api::UsageAccepted, ControlError> = mtls
        .call(
            http::Method::POST,
            api::USAGE,
            Some(br#"{"callee":"x","service":"s","entries":[],"extra":1}"#.to_vec()),
            Duration::from_secs(10),
        )
        .await;
    assert_eq!(refused_code(unknown_field).0, 400);
    // A report number not of the form `<32 hex digits>/<number from 1>`.
    for mark in ["", "1", &format!("{}/0", "a".repeat(32)), &"a".repeat(32)] {
        let numbered: Result<api::UsageAccepted, ControlError> = mtls
            .post_with_header(
                api::USAGE,
                &report(FRONTEND, vec![entry(INTRUDER)]),
                api::USAGE_REPORT_HEADER,
                mark.to_owned(),
            )
            .await;
        assert_eq!(
            refused_code(numbered),
            (400, "bad_usage".into()),
            "{mark:?}"
        );
    }
    assert!(
        usage_rows(&control).await.is_empty(),
        "a refusal stored something"
    );
    let audited: Vec<BTreeMap<String, serde_json::Value>> = control
        .audit_lines()
        .into_iter()
        .filter(|a| a["event"] == "usage")
        .filter_map(|a| serde_json::from_value(a).ok())
        .collect();
    assert!(
        audited
            .iter()
            .any(|a| a["reason"] == "usage_not_own" && a["spiffe_id"] == FRONTEND),
        "{audited:?}"
    );

    // Its own, well formed: stored.
    let accepted = post(report(FRONTEND, vec![entry(INTRUDER)]))
        .await
        .expect("a report of its own");
    assert_eq!(accepted.entries, 1);
    assert_eq!(usage_rows(&control).await.len(), 1);

    // A report cannot widen a proposal: its "allow" of the intruder is
    // not one the current set gives, so nothing is proposed from it.
    let policies = dir.path().join("policies");
    write_dir(
        &policies,
        &[(
            "mesh.cedar",
            "permit (principal == Workload::\"spiffe://example.org/ns/shop/sa/orders\", action, resource);",
        )],
    );
    control.cli_ok(&["policy", "push", "--yes", path_str(&policies)]);
    let out = control.cli(&["policy", "propose", "--since", "1h"]);
    assert!(
        !out.status.success()
            && String::from_utf8_lossy(&out.stderr).contains("nothing to propose"),
        "{out:?}"
    );

    // An action the schema does not have; a revoked SVID.
    let mut e = entry(INTRUDER);
    e.action = "BREW".into();
    assert_eq!(
        refused_code(post(report(FRONTEND, vec![e])).await),
        (400, "bad_usage".into())
    );
    control.cli_ok(&["identities", "revoke", FRONTEND, "--reason", "test"]);
    assert_eq!(
        refused_code(post(report(FRONTEND, vec![entry(INTRUDER)])).await),
        (403, "svid_revoked".into())
    );
    assert_eq!(usage_rows(&control).await.len(), 1, "nothing more stored");
}
