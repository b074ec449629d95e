//! Cedar authorization with the shipped schema and policies: examples,
//! semantics (default deny, forbid wins, errors deny, audit mode), bad
//! input, and hot reload.

use std::net::IpAddr;
use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use warden_proxy::authz::{
    Decision, HttpRequestFacts, Mode, Peer, PolicyEngine, PolicyError, PolicySnapshot,
    PolicyWatcher, ServiceInfo, TcpConnectionFacts, UnauthenticatedKind,
};
use warden_proxy::identity::SpiffeId;

const POLICIES: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/policies");

fn workload(id: &str) -> Peer {
    Peer::Workload(SpiffeId::parse(id).expect("valid id"))
}

fn orders() -> ServiceInfo {
    ServiceInfo::from_identity(
        "orders",
        &SpiffeId::parse("spiffe://example.org/ns/shop/sa/orders").expect("id"),
    )
}

/// A policy dir holding the shipped schema and the named shipped files.
fn dir_with(files: &[&str]) -> tempfile::TempDir {
    let dir = tempfile::tempdir().expect("tempdir");
    std::fs::copy(
        Path::new(POLICIES).join("schema.cedarschema"),
        dir.path().join("schema.cedarschema"),
    )
    .expect("schema");
    for f in files {
        let name = Path::new(f).file_name().expect("name");
        std::fs::copy(Path::new(POLICIES).join(f), dir.path().join(name)).expect("copy policy");
    }
    dir
}

fn engine_for(dir: &Path, mode: Mode) -> Arc<PolicyEngine> {
    let engine = Arc::new(PolicyEngine::new(orders(), mode));
    engine.install(PolicySnapshot::load_dir(dir).expect("valid policies"));
    engine
}

struct Req<'a> {
    method: &'a str,
    path: &'a str,
    headers: &'a [(&'a str, &'a str)],
    now: SystemTime,
}

impl Default for Req<'_> {
    fn default() -> Self {
        Req {
            method: "GET",
            path: "/",
            headers: &[],
            now: SystemTime::now(),
        }
    }
}

fn decide(engine: &Arc<PolicyEngine>, peer: Peer, req: Req<'_>) -> Decision {
    let authorizer = engine.for_peer(peer);
    authorizer.authorize_http(&HttpRequestFacts {
        method: req.method,
        path: req.path,
        host: "orders.shop",
        source_ip: IpAddr::from([127, 0, 0, 1]),
        headers: req.headers,
        tls_version: "TLSv1_3",
        now: req.now,
    })
}

fn at(rfc3339: &str) -> SystemTime {
    let t = time::OffsetDateTime::parse(rfc3339, &time::format_description::well_known::Rfc3339)
        .expect("time");
    SystemTime::UNIX_EPOCH + Duration::from_secs(t.unix_timestamp() as u64)
}

#[test]
fn shipped_policies_validate_together() {
    let dir = dir_with(&[
        "default.cedar",
        "examples/deny-namespace.cedar",
        "examples/orders-post.cedar",
        "examples/break-glass.cedar",
        "examples/federated-read.cedar",
    ]);
    let snapshot = PolicySnapshot::load_dir(dir.path()).expect("the shipped policies validate");
    assert_eq!(snapshot.len(), 6);
    assert!(snapshot.version().starts_with("sha256:"));
    assert_eq!(
        snapshot.origin("deny-sandbox").map(|o| o.file.as_str()),
        Some("deny-namespace.cedar")
    );
    assert!(
        snapshot
            .declared_headers()
            .contains(&"x-break-glass-ticket".to_owned())
    );
}

#[test]
fn default_policies() {
    let dir = dir_with(&["default.cedar"]);
    let engine = engine_for(dir.path(), Mode::Enforce);
    let same_ns = decide(
        &engine,
        workload("spiffe://example.org/ns/shop/sa/frontend"),
        Req::default(),
    );
    assert!(same_ns.allowed, "{same_ns:?}");
    assert_eq!(same_ns.policies, ["same-namespace"]);
    let other_ns = decide(
        &engine,
        workload("spiffe://example.org/ns/billing/sa/api"),
        Req::default(),
    );
    assert!(!other_ns.allowed);
    assert!(other_ns.policies.is_empty(), "default deny names no policy");
    let other_td = decide(
        &engine,
        workload("spiffe://other.org/ns/shop/sa/frontend"),
        Req::default(),
    );
    assert!(
        !other_td.allowed,
        "same namespace name in another trust domain is not the same namespace"
    );
    let anon = Peer::Unauthenticated(UnauthenticatedKind::Plaintext);
    assert!(
        decide(
            &engine,
            anon.clone(),
            Req {
                path: "/healthz",
                ..Req::default()
            }
        )
        .allowed
    );
    assert!(
        !decide(
            &engine,
            anon.clone(),
            Req {
                path: "/orders",
                ..Req::default()
            }
        )
        .allowed
    );
    assert!(
        !decide(
            &engine,
            anon,
            Req {
                method: "POST",
                path: "/healthz",
                ..Req::default()
            }
        )
        .allowed
    );
}

#[test]
fn example_deny_namespace_beats_permits() {
    let dir = dir_with(&["default.cedar", "examples/deny-namespace.cedar"]);
    let engine = engine_for(dir.path(), Mode::Enforce);
    let sandbox = decide(
        &engine,
        workload("spiffe://example.org/ns/sandbox/sa/x"),
        Req {
            path: "/healthz",
            ..Req::default()
        },
    );
    assert!(!sandbox.allowed, "forbid wins over the healthz permit");
    assert_eq!(sandbox.policies, ["deny-sandbox"]);
    assert!(
        decide(
            &engine,
            workload("spiffe://example.org/ns/other/sa/x"),
            Req {
                path: "/healthz",
                ..Req::default()
            }
        )
        .allowed
    );
}

#[test]
fn example_orders_post() {
    let dir = dir_with(&["examples/orders-post.cedar"]);
    let engine = engine_for(dir.path(), Mode::Enforce);
    let checkout = "spiffe://example.org/ns/shop/sa/checkout";
    for (method, path, allowed) in [
        ("POST", "/orders", true),
        ("POST", "/orders/42/items", true),
        ("POST", "/ordersX", false),
        ("PUT", "/orders", false),
        ("GET", "/orders", false),
    ] {
        let d = decide(
            &engine,
            workload(checkout),
            Req {
                method,
                path,
                ..Req::default()
            },
        );
        assert_eq!(d.allowed, allowed, "{method} {path}: {d:?}");
    }
    assert!(
        !decide(
            &engine,
            workload("spiffe://example.org/ns/shop/sa/frontend"),
            Req {
                method: "POST",
                path: "/orders",
                ..Req::default()
            }
        )
        .allowed
    );
}

#[test]
fn example_break_glass_is_time_boxed() {
    let dir = dir_with(&["examples/break-glass.cedar"]);
    let engine = engine_for(dir.path(), Mode::Enforce);
    let oncall = "spiffe://example.org/ns/ops/sa/oncall";
    let ticket: &[(&str, &str)] = &[("x-break-glass-ticket", "INC-4242")];
    let inside = at("2026-11-30T12:00:00Z");
    assert!(
        decide(
            &engine,
            workload(oncall),
            Req {
                method: "DELETE",
                path: "/orders/1",
                headers: ticket,
                now: inside
            }
        )
        .allowed
    );
    assert!(
        !decide(
            &engine,
            workload(oncall),
            Req {
                method: "DELETE",
                headers: ticket,
                now: at("2026-12-01T00:00:00Z"),
                ..Req::default()
            }
        )
        .allowed,
        "expired"
    );
    assert!(
        !decide(
            &engine,
            workload(oncall),
            Req {
                method: "DELETE",
                headers: ticket,
                now: at("2026-11-29T23:59:59Z"),
                ..Req::default()
            }
        )
        .allowed,
        "not yet"
    );
    assert!(
        !decide(
            &engine,
            workload(oncall),
            Req {
                method: "DELETE",
                headers: &[("x-break-glass-ticket", "INC-1")],
                now: inside,
                ..Req::default()
            }
        )
        .allowed,
        "wrong ticket"
    );
    assert!(
        !decide(
            &engine,
            workload(oncall),
            Req {
                method: "DELETE",
                now: inside,
                ..Req::default()
            }
        )
        .allowed,
        "no ticket"
    );
}

#[test]
fn example_federated_read_only() {
    let dir = dir_with(&["examples/federated-read.cedar"]);
    let engine = engine_for(dir.path(), Mode::Enforce);
    let partner = "spiffe://partner.example/reports";
    for (method, allowed) in [
        ("GET", true),
        ("HEAD", true),
        ("OPTIONS", true),
        ("POST", false),
        ("DELETE", false),
        ("PROPFIND", false),
    ] {
        assert_eq!(
            decide(
                &engine,
                workload(partner),
                Req {
                    method,
                    ..Req::default()
                }
            )
            .allowed,
            allowed,
            "{method}"
        );
    }
    assert!(
        !decide(
            &engine,
            workload("spiffe://example.org/ns/x/sa/y"),
            Req::default()
        )
        .allowed
    );
    let tcp = engine
        .for_peer(workload(partner))
        .authorize_tcp(&TcpConnectionFacts {
            source_ip: IpAddr::from([127, 0, 0, 1]),
            tls_version: "TLSv1_3",
            now: SystemTime::now(),
        });
    assert!(!tcp.allowed, "read access does not include opaque TCP");
}

fn write(dir: &Path, name: &str, text: &str) {
    std::fs::write(dir.join(name), text).expect("write policy");
}

fn load_err(dir: &Path) -> String {
    match PolicySnapshot::load_dir(dir) {
        Ok(s) => panic!("expected a refusal, loaded {} policies", s.len()),
        Err(e) => e.to_string(),
    }
}

#[test]
fn an_erroring_forbid_still_denies() {
    let dir = dir_with(&[]);
    // The forbid overflows at run time for shop workloads; the validator
    // cannot see that. Cedar would skip it and let allow-all through.
    write(
        dir.path(),
        "p.cedar",
        r#"
@id("allow-all")
permit (principal, action, resource);

@id("forbid-that-errors")
forbid (principal is Workload, action, resource)
when { principal has namespace && principal.namespace == "shop" && 9223372036854775807 + 1 > 0 };
"#,
    );
    let engine = engine_for(dir.path(), Mode::Enforce);
    let d = decide(
        &engine,
        workload("spiffe://example.org/ns/shop/sa/a"),
        Req::default(),
    );
    assert!(!d.allowed, "{d:?}");
    assert_eq!(d.decision, "deny");
    assert_eq!(d.errors.len(), 1, "{d:?}");
    assert!(d.errors[0].contains("forbid-that-errors"), "{d:?}");
    // Where the forbid does not error (condition false before the overflow), allow-all applies.
    let other = decide(
        &engine,
        workload("spiffe://example.org/ns/web/sa/a"),
        Req::default(),
    );
    assert!(other.allowed && other.errors.is_empty(), "{other:?}");
}

#[test]
fn audit_mode_records_the_deny_and_lets_it_pass() {
    let dir = dir_with(&["default.cedar"]);
    let engine = engine_for(dir.path(), Mode::Audit);
    let d = decide(
        &engine,
        workload("spiffe://example.org/ns/billing/sa/api"),
        Req::default(),
    );
    assert!(d.allowed);
    assert_eq!(d.decision, "deny");
    assert_eq!(d.mode, Mode::Audit);
    let json: serde_json::Value = serde_json::from_str(&d.audit_json()).expect("json");
    assert_eq!(json["decision"], "deny");
    assert_eq!(json["mode"], "audit");
    assert_eq!(
        json["principal"],
        "Workload::\"spiffe://example.org/ns/billing/sa/api\""
    );
    assert_eq!(json["policy_version"], engine.version().expect("version"));
}

#[test]
fn audit_mode_without_any_policy_set_still_denies() {
    let engine = Arc::new(PolicyEngine::new(orders(), Mode::Audit));
    let d = decide(
        &engine,
        workload("spiffe://example.org/ns/shop/sa/a"),
        Req::default(),
    );
    assert!(!d.allowed, "{d:?}");
}

#[test]
fn no_policy_set_and_empty_sets_deny_everything() {
    let engine = Arc::new(PolicyEngine::new(orders(), Mode::Enforce));
    let d = decide(
        &engine,
        workload("spiffe://example.org/ns/shop/sa/a"),
        Req::default(),
    );
    assert!(!d.allowed);
    assert!(d.errors[0].contains("no valid policy set"), "{d:?}");

    let empty = tempfile::tempdir().expect("tempdir");
    let snapshot =
        PolicySnapshot::load_dir(empty.path()).expect("an empty dir loads (built-in schema)");
    assert!(snapshot.is_empty());
    engine.install(snapshot);
    assert!(
        !decide(
            &engine,
            workload("spiffe://example.org/ns/shop/sa/a"),
            Req {
                path: "/healthz",
                ..Req::default()
            }
        )
        .allowed
    );
}

#[test]
fn bad_policy_sets_are_refused_with_file_and_line() {
    let cases: &[(&str, &str)] = &[
        (
            "permit (principal, action, resource)\nwhen { context.path == };",
            "bad.cedar:2",
        ),
        (
            "\n\npermit (principal, action, resource) when { principal.nickname == \"x\" };",
            "bad.cedar:3",
        ),
        (
            "permit (principal == Robot::\"r2d2\", action, resource);",
            "Robot",
        ),
        (
            "permit (principal, action == Action::\"GET\", resource) when { context.headers[\"x-undeclared\"] == \"1\" };",
            "x-undeclared",
        ),
        (
            "permit (principal, action, resource) when { context has headers && context.headers has \"x-undeclared\" && context.headers[\"x-undeclared\"] == \"1\" };",
            "can never apply",
        ),
        (
            "permit (principal, action == Action::\"FETCH\", resource);",
            "FETCH",
        ),
        (
            "permit (principal == ?principal, action, resource);",
            "templates",
        ),
    ];
    for (text, expect) in cases {
        let dir = dir_with(&[]);
        write(dir.path(), "bad.cedar", text);
        let err = load_err(dir.path());
        assert!(err.contains(expect), "{text}\n=> {err}");
        assert!(err.contains("bad.cedar"), "{err}");
    }
}

#[test]
fn duplicate_ids_are_refused() {
    let dir = dir_with(&[]);
    write(
        dir.path(),
        "a.cedar",
        "@id(\"same\")\npermit (principal, action, resource);\n",
    );
    write(
        dir.path(),
        "b.cedar",
        "\n@id(\"same\")\nforbid (principal, action, resource);\n",
    );
    let err = load_err(dir.path());
    assert!(
        err.contains("b.cedar:2: policy \"same\": duplicate policy id, first used at a.cedar:1"),
        "{err}"
    );
}

#[test]
fn oversized_half_written_and_non_utf8_files_are_refused() {
    let dir = dir_with(&["default.cedar"]);
    let big = "// padding\n".repeat(50 * 1024 * 1024 / 11);
    write(dir.path(), "huge.cedar", &big);
    match PolicySnapshot::load_dir(dir.path()) {
        Err(PolicyError::TooLarge { size, .. }) => assert!(size > 4 * 1024 * 1024),
        other => panic!("expected TooLarge, got {other:?}"),
    }
    std::fs::remove_file(dir.path().join("huge.cedar")).expect("rm");
    let full = std::fs::read_to_string(Path::new(POLICIES).join("examples/orders-post.cedar"))
        .expect("read");
    write(dir.path(), "half.cedar", &full[..full.len() / 2]);
    assert!(load_err(dir.path()).contains("half.cedar"));
    std::fs::write(dir.path().join("half.cedar"), [0xff, 0xfe, 0x00]).expect("write");
    assert!(load_err(dir.path()).contains("not UTF-8"));
}

#[tokio::test]
async fn hot_reload_swaps_good_sets_and_keeps_the_last_good_one() {
    let dir = dir_with(&[]);
    write(
        dir.path(),
        "p.cedar",
        "@id(\"allow-get\")\npermit (principal, action == Action::\"GET\", resource);\n",
    );
    let engine = Arc::new(PolicyEngine::new(orders(), Mode::Enforce));
    let watcher = PolicyWatcher::start(
        dir.path().to_owned(),
        engine.clone(),
        Duration::from_millis(20),
    );
    let mut status = watcher.status();
    let peer = workload("spiffe://example.org/ns/web/sa/a");
    let authorizer = engine.for_peer(peer);
    let get = || {
        authorizer.authorize_http(&HttpRequestFacts {
            method: "GET",
            path: "/",
            host: "orders",
            source_ip: IpAddr::from([127, 0, 0, 1]),
            headers: &[],
            tls_version: "TLSv1_3",
            now: SystemTime::now(),
        })
    };
    tokio::time::timeout(
        Duration::from_secs(10),
        status.wait_for(|s| s.version.is_some()),
    )
    .await
    .expect("first load")
    .expect("alive");
    let first = get();
    assert!(first.allowed);

    // A broken edit is refused; the last good set stays.
    write(
        dir.path(),
        "p.cedar",
        "permit (principal, action, resource) when {",
    );
    tokio::time::timeout(Duration::from_secs(10), status.wait_for(|s| s.failures > 0))
        .await
        .expect("refusal")
        .expect("alive");
    let kept = get();
    assert!(kept.allowed);
    assert_eq!(kept.policy_version, first.policy_version);

    // The policy flips to a forbid: the same connection's next request is denied.
    write(
        dir.path(),
        "p.cedar",
        "@id(\"no-get\")\nforbid (principal, action == Action::\"GET\", resource);\n",
    );
    tokio::time::timeout(Duration::from_secs(10), status.wait_for(|s| s.reloads >= 2))
        .await
        .expect("reload")
        .expect("alive");
    let flipped = get();
    assert!(!flipped.allowed, "{flipped:?}");
    assert_eq!(flipped.policies, ["no-get"]);
    assert_ne!(flipped.policy_version, first.policy_version);
    assert_eq!(status.borrow().last_error, None);
    watcher.stop();
}

#[test]
fn pathological_policies_are_refused_without_crashing() {
    let deep = format!(
        "permit (principal, action, resource) when {{ {}true{} }};",
        "(".repeat(5000),
        ")".repeat(5000)
    );
    let chain = format!(
        "permit (principal, action, resource) when {{ {} }};",
        vec!["1 == 1"; 20_000].join(" && ")
    );
    let negations = format!(
        "permit (principal, action, resource) when {{ {}true }};",
        "!".repeat(50_000)
    );
    for text in [deep, chain, negations] {
        let dir = dir_with(&[]);
        write(dir.path(), "deep.cedar", &text);
        let err = load_err(dir.path());
        assert!(
            err.contains("deep.cedar:1")
                && (err.contains("nested deeper") || err.contains("operators")),
            "{err}"
        );
    }
}

#[test]
fn tcp_connections_and_addresses() {
    let dir = dir_with(&[]);
    write(
        dir.path(),
        "tcp.cedar",
        r#"
@id("loopback-tcp")
permit (principal is Workload, action == Action::"connect", resource)
when { context.source_ip.isLoopback() && context.tls.authenticated };
@id("loopback-http")
permit (principal, action == Action::"GET", resource) when { context.source_ip.isLoopback() };
"#,
    );
    let engine = engine_for(dir.path(), Mode::Enforce);
    let peer = engine.for_peer(workload("spiffe://example.org/ns/db/sa/client"));
    let tcp = |ip: IpAddr| {
        peer.authorize_tcp(&TcpConnectionFacts {
            source_ip: ip,
            tls_version: "TLSv1_3",
            now: SystemTime::now(),
        })
    };
    let allowed = tcp(IpAddr::from([127, 0, 0, 1]));
    assert!(allowed.allowed && allowed.errors.is_empty(), "{allowed:?}");
    assert_eq!(allowed.policies, ["loopback-tcp"]);
    let denied = tcp(IpAddr::from([10, 0, 0, 1]));
    assert!(!denied.allowed && denied.errors.is_empty(), "{denied:?}");
    // IPv4-mapped IPv6 (a dual-stack listener) is the IPv4 address.
    let mapped: IpAddr = "::ffff:127.0.0.1".parse().expect("ip");
    assert!(tcp(mapped).allowed);
    assert!(tcp("::1".parse().expect("ip")).allowed);
    // HTTP methods are case-sensitive: `get` is OTHER, not GET.
    let http = |method: &str| {
        peer.authorize_http(&HttpRequestFacts {
            method,
            path: "/",
            host: "db",
            source_ip: mapped,
            headers: &[],
            tls_version: "TLSv1_3",
            now: SystemTime::now(),
        })
    };
    assert!(http("GET").allowed);
    let lower = http("get");
    assert!(!lower.allowed && lower.action == "OTHER", "{lower:?}");
}

#[test]
fn a_declared_header_sent_twice_is_denied() {
    let dir = dir_with(&["examples/break-glass.cedar"]);
    let engine = engine_for(dir.path(), Mode::Enforce);
    let twice: &[(&str, &str)] = &[
        ("x-break-glass-ticket", "INC-4242"),
        ("X-Break-Glass-Ticket", "INC-1"),
    ];
    let d = decide(
        &engine,
        workload("spiffe://example.org/ns/ops/sa/oncall"),
        Req {
            headers: twice,
            now: at("2026-11-30T12:00:00Z"),
            ..Req::default()
        },
    );
    assert!(!d.allowed);
    assert!(
        d.errors.iter().any(|e| e.contains("more than once")),
        "{d:?}"
    );
    // Undeclared headers may repeat freely.
    let undeclared: &[(&str, &str)] = &[
        ("accept", "a"),
        ("accept", "b"),
        ("x-break-glass-ticket", "INC-4242"),
    ];
    assert!(
        decide(
            &engine,
            workload("spiffe://example.org/ns/ops/sa/oncall"),
            Req {
                headers: undeclared,
                now: at("2026-11-30T12:00:00Z"),
                ..Req::default()
            }
        )
        .allowed
    );
}
