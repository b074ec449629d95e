//! Cedar authorization with the shipped schema and policies: examples,
//! semantics (default deny, forbid wins, errors deny, audit mode) and
//! request facts. Bad policy input: `authz_bad_input.rs`; hot reload:
//! `authz_reload.rs`.
mod support;

use std::net::IpAddr;
use std::sync::Arc;
use std::time::SystemTime;

use support::policies::*;
use warden_proxy::authz::{
    HttpRequestFacts, Mode, Peer, PolicyEngine, PolicySnapshot, TcpConnectionFacts, TlsVersion,
    UnauthenticatedKind,
};

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
    let wrong_ticket: &[(&str, &str)] = &[("x-break-glass-ticket", "INC-1")];
    let inside = "2026-11-30T12:00:00Z";
    for (what, path, headers, now, allowed) in [
        ("inside the window", "/orders/1", ticket, inside, true),
        ("expired", "/", ticket, "2026-12-01T00:00:00Z", false),
        ("not yet", "/", ticket, "2026-11-29T23:59:59Z", false),
        ("wrong ticket", "/", wrong_ticket, inside, false),
        ("no ticket", "/", &[][..], inside, false),
    ] {
        let d = decide(
            &engine,
            workload(oncall),
            Req {
                method: "DELETE",
                path,
                headers,
                now: at(now),
            },
        );
        assert_eq!(d.allowed, allowed, "{what}: {d:?}");
        assert!(d.errors.is_empty(), "{what}: {d:?}");
    }
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
            port: 5432,
            source_ip: IpAddr::from([127, 0, 0, 1]),
            tls_version: TlsVersion::Tls13,
            now: SystemTime::now(),
        });
    assert!(!tcp.allowed, "read access does not include opaque TCP");
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
            port: 5432,
            source_ip: ip,
            tls_version: TlsVersion::Tls13,
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
            port: 80,
            source_ip: mapped,
            headers: &[],
            tls_version: TlsVersion::Tls13,
            now: SystemTime::now(),
        })
    };
    assert!(http("GET").allowed);
    let lower = http("get");
    assert!(!lower.allowed && lower.action == "OTHER", "{lower:?}");
}

#[test]
fn a_connect_policy_can_name_the_port() {
    let dir = dir_with(&[]);
    write(
        dir.path(),
        "tcp.cedar",
        r#"
@id("postgres-only")
permit (principal is Workload, action == Action::"connect", resource)
when { context.port == 5432 };
"#,
    );
    let engine = engine_for(dir.path(), Mode::Enforce);
    let peer = engine.for_peer(workload("spiffe://example.org/ns/db/sa/client"));
    let tcp = |port: u16| {
        peer.authorize_tcp(&TcpConnectionFacts {
            port,
            source_ip: IpAddr::from([10, 0, 0, 1]),
            tls_version: TlsVersion::Tls13,
            now: SystemTime::now(),
        })
    };
    let postgres = tcp(5432);
    assert!(
        postgres.allowed && postgres.errors.is_empty(),
        "{postgres:?}"
    );
    let redis = tcp(6379);
    assert!(!redis.allowed && redis.errors.is_empty(), "{redis:?}");
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
