//! Differential test: the scope index must never change a decision. For
//! thousands of generated policy sets and requests, Warden's indexed decision
//! equals plain Cedar over the whole set: same verdict, same deciding
//! policies, same errors.

use std::net::IpAddr;
use std::sync::Arc;
use std::time::SystemTime;

use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use warden_proxy::authz::policy_set::DEFAULT_SCHEMA;
use warden_proxy::authz::{
    HttpRequestFacts, Mode, Peer, PolicyEngine, PolicySchema, PolicySnapshot, PolicySource,
    ServiceInfo, TlsVersion, UnauthenticatedKind,
};
use warden_proxy::identity::SpiffeId;

const SETS: usize = 1000;
const REQUESTS_PER_SET: usize = 8;

const TDS: [&str; 2] = ["example.org", "partner.example"];
const NAMESPACES: [&str; 3] = ["shop", "billing", "sandbox"];
const ACCOUNTS: [&str; 3] = ["a", "b", "c"];
const ACTIONS: [&str; 9] = [
    "GET", "HEAD", "OPTIONS", "POST", "PUT", "PATCH", "DELETE", "TRACE", "OTHER",
];
const METHODS: [&str; 10] = [
    "GET", "HEAD", "OPTIONS", "POST", "PUT", "PATCH", "DELETE", "TRACE", "PROPFIND", "get",
];
const PATHS: [&str; 5] = ["/", "/x", "/api/v1", "/admin", "/api"];
const ADDRESSES: [IpAddr; 5] = [
    IpAddr::V4(std::net::Ipv4Addr::LOCALHOST),
    IpAddr::V4(std::net::Ipv4Addr::new(10, 1, 2, 3)),
    IpAddr::V6(std::net::Ipv6Addr::LOCALHOST),
    IpAddr::V6(std::net::Ipv6Addr::new(0, 0, 0, 0, 0, 0xffff, 0x7f00, 1)),
    IpAddr::V6(std::net::Ipv6Addr::new(0x2001, 0xdb8, 0, 0, 0, 0, 0, 1)),
];

fn pick<'a, T>(rng: &mut StdRng, items: &'a [T]) -> &'a T {
    &items[rng.random_range(0..items.len())]
}

fn workload_id(rng: &mut StdRng) -> String {
    let td = pick(rng, &TDS);
    if rng.random_bool(0.15) {
        format!("spiffe://{td}/legacy/{}", pick(rng, &ACCOUNTS))
    } else {
        format!(
            "spiffe://{td}/ns/{}/sa/{}",
            pick(rng, &NAMESPACES),
            pick(rng, &ACCOUNTS)
        )
    }
}

fn principal_scope(rng: &mut StdRng) -> String {
    let td = *pick(rng, &TDS);
    let ns = *pick(rng, &NAMESPACES);
    match rng.random_range(0..8) {
        0 | 1 => "principal".into(),
        2 => format!("principal == Workload::\"{}\"", workload_id(rng)),
        3 => format!("principal in TrustDomain::\"{td}\""),
        4 => format!("principal in Namespace::\"spiffe://{td}/ns/{ns}\""),
        5 => format!(
            "principal in ServiceAccount::\"spiffe://{td}/ns/{ns}/sa/{}\"",
            pick(rng, &ACCOUNTS)
        ),
        6 => format!("principal is Workload in Namespace::\"spiffe://{td}/ns/{ns}\""),
        _ => {
            if rng.random_bool(0.5) {
                "principal is Workload".into()
            } else {
                "principal is Unauthenticated".into()
            }
        }
    }
}

fn action_scope(rng: &mut StdRng) -> String {
    match rng.random_range(0..5) {
        0 => "action".into(),
        1 => format!("action == Action::\"{}\"", pick(rng, &ACTIONS)),
        2 => "action in Action::\"read\"".into(),
        3 => "action in Action::\"write\"".into(),
        _ => format!(
            "action in [Action::\"{}\", Action::\"{}\"]",
            pick(rng, &ACTIONS),
            pick(rng, &ACTIONS)
        ),
    }
}

fn resource_scope(rng: &mut StdRng) -> String {
    match rng.random_range(0..5) {
        0 | 1 => "resource".into(),
        2 => format!(
            "resource == Service::\"{}\"",
            pick(rng, &["orders", "billing"])
        ),
        _ => "resource is Service".into(),
    }
}

/// Conditions Warden decides without Cedar (string attributes of the
/// request, the caller and the service compared or matched with `like`,
/// `has`, under `&&`, `||`, `!`, `unless`): sets made only of these take that
/// path, and must still agree with Cedar.
fn simple_condition(rng: &mut StdRng) -> String {
    match rng.random_range(0..14) {
        9 => " when { resource has namespace && principal has namespace && principal.namespace == resource.namespace }".into(),
        10 => format!(" when {{ principal has namespace && principal.namespace == \"{}\" }}", pick(rng, &NAMESPACES)),
        11 => " when { principal has service_account && principal.service_account like \"sa*\" && resource.name == \"orders\" }".into(),
        12 => " unless { principal has trust_domain && principal.trust_domain != \"example.org\" }".into(),
        13 => " when { !(resource has namespace) || resource.namespace like \"n*\" }".into(),
        0 => String::new(),
        1 => format!(" when {{ context.path == \"{}\" }}", pick(rng, &PATHS)),
        2 => " when { context.path like \"/api*\" }".into(),
        3 => " when { context.path like \"*/*s*\" && context has method }".into(),
        4 => " unless { context.method != \"GET\" || context.path like \"/admin*\" }".into(),
        5 => " when { !(context.host == \"svc\") || context.path like \"/\" }".into(),
        6 => " when { context.path like \"*\" } unless { context.method == \"DELETE\" }".into(),
        7 => format!(" when {{ context.path like \"{}*\" }}", pick(rng, &PATHS)),
        _ => " when { \"POST\" == context.method }".into(),
    }
}

fn condition(rng: &mut StdRng) -> String {
    if SIMPLE_ONLY.with(|s| s.get()) {
        return simple_condition(rng);
    }
    match rng.random_range(0..13) {
        9 => " when { context has method && context.method == \"GET\" }".into(),
        10 => " when { context has host && context.host == \"svc\" }".into(),
        11 => " when { context.now > datetime(\"2026-01-01T00:00:00Z\") && context.source_ip.isLoopback() }".into(),
        12 => " when { context == context && context.tls.version == \"TLSv1_3\" }".into(),
        0 | 1 => String::new(),
        2 => format!(" when {{ context has path && context.path == \"{}\" }}", pick(rng, &PATHS)),
        3 => " when { context has path && context.path like \"/api*\" }".into(),
        4 => format!(" when {{ principal has namespace && principal.namespace == \"{}\" }}", pick(rng, &NAMESPACES)),
        5 => " when { context.source_ip.isInRange(ip(\"127.0.0.0/8\")) }".into(),
        // Errors at run time (overflow) for authenticated peers.
        6 => " when { context.tls.authenticated && 9223372036854775807 + 1 > 0 }".into(),
        7 => " unless { context has headers && context.headers has \"x-request-id\" }".into(),
        _ => " when { resource has namespace && principal has namespace && principal.namespace == resource.namespace }".into(),
    }
}

thread_local! {
    static SIMPLE_ONLY: std::cell::Cell<bool> = const { std::cell::Cell::new(false) };
}

fn policy_set(rng: &mut StdRng) -> Vec<PolicySource> {
    let files = rng.random_range(1..=3);
    (0..files)
        .map(|f| {
            let count = rng.random_range(0..=12);
            let text: String = (0..count)
                .map(|i| {
                    let effect = if rng.random_bool(0.7) {
                        "permit"
                    } else {
                        "forbid"
                    };
                    let id = if rng.random_bool(0.5) {
                        format!("@id(\"p{f}-{i}\")\n")
                    } else {
                        String::new()
                    };
                    format!(
                        "{id}{effect} ({}, {}, {}){};\n",
                        principal_scope(rng),
                        action_scope(rng),
                        resource_scope(rng),
                        condition(rng)
                    )
                })
                .collect();
            PolicySource {
                name: format!("f{f}.cedar"),
                text,
            }
        })
        .collect()
}

fn peer(rng: &mut StdRng) -> Peer {
    if rng.random_bool(0.1) {
        if rng.random_bool(0.5) {
            Peer::Unauthenticated(UnauthenticatedKind::Plaintext)
        } else {
            Peer::Unauthenticated(UnauthenticatedKind::TlsWithoutCertificate)
        }
    } else {
        Peer::Workload(SpiffeId::parse(&workload_id(rng)).expect("generated id is valid"))
    }
}

fn requests_per_set() -> usize {
    std::env::var("WARDEN_DIFF_REQUESTS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(REQUESTS_PER_SET)
}

#[test]
fn indexed_decisions_equal_plain_cedar_over_the_whole_set() {
    let mut rng = StdRng::seed_from_u64(0x0005_eed4);
    let (mut compared, mut loaded, mut refused) = (0, 0, 0);
    let (mut allows, mut denies, mut with_errors) = (0, 0, 0);
    let schema = PolicySchema::parse("schema", DEFAULT_SCHEMA).expect("built-in schema");
    let mut without_cedar = 0;
    for set in 0..SETS {
        // Every third set uses only conditions Warden decides without Cedar.
        SIMPLE_ONLY.with(|s| s.set(set % 3 == 0));
        let sources = policy_set(&mut rng);
        let snapshot = match PolicySnapshot::build(&schema, sources.clone()) {
            Ok(s) => s,
            Err(_) => {
                // Some generated sets are rightly refused (impossible policies).
                refused += 1;
                continue;
            }
        };
        loaded += 1;
        let service = ServiceInfo {
            name: (*pick(&mut rng, &["orders", "billing"])).to_owned(),
            trust_domain: "example.org".into(),
            namespace: rng
                .random_bool(0.7)
                .then(|| (*pick(&mut rng, &NAMESPACES)).to_owned()),
        };
        let engine = Arc::new(PolicyEngine::new(service, Mode::Enforce));
        engine.install(snapshot);
        let before = engine.decisions_without_cedar();
        for _ in 0..requests_per_set() {
            let authorizer = engine.for_peer(peer(&mut rng));
            let with_id: &[(&str, &str)] = &[("x-request-id", "r-1")];
            let twice: &[(&str, &str)] = &[("x-request-id", "r-1"), ("x-request-id", "r-2")];
            let facts = HttpRequestFacts {
                method: pick::<&str>(&mut rng, &METHODS),
                path: pick::<&str>(&mut rng, &PATHS),
                host: "svc",
                port: 80,
                source_ip: *pick(&mut rng, &ADDRESSES),
                headers: match rng.random_range(0..4) {
                    0 | 1 => with_id,
                    2 => twice,
                    _ => &[],
                },
                tls_version: TlsVersion::Tls13,
                now: SystemTime::now(),
            };
            let indexed = authorizer.authorize_http(&facts);
            let plain = authorizer.authorize_http_unindexed(&facts);
            assert_eq!(
                indexed,
                plain,
                "policy set:\n{}\nrequest: {facts:?}",
                sources.iter().map(|s| s.text.as_str()).collect::<String>()
            );
            compared += 1;
            if indexed.decision == "allow" {
                allows += 1
            } else {
                denies += 1
            }
            if !indexed.errors.is_empty() {
                with_errors += 1
            }
        }
        without_cedar += engine.decisions_without_cedar() - before;
    }
    eprintln!(
        "sets loaded {loaded}, refused {refused}; decisions compared {compared}: {allows} allow, {denies} deny, {with_errors} with errors, {without_cedar} decided without Cedar"
    );
    assert!(
        without_cedar >= compared / 5,
        "only {without_cedar} of {compared} decisions took the path without Cedar"
    );
    // The generator must exercise every outcome, or the comparison proves little.
    assert!(
        loaded >= SETS / 2,
        "only {loaded} of {SETS} generated sets loaded"
    );
    assert!(
        allows >= compared / 10 && denies >= compared / 10,
        "allows {allows}, denies {denies}"
    );
    assert!(
        with_errors >= compared / 50,
        "only {with_errors} decisions with errors"
    );
}
