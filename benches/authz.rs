//! Authorization decision latency at 10, 100, 1,000 and 10,000 policies over
//! 1,000 workload identities: Warden's indexed decision (per-connection
//! slice) against plain Cedar over the whole set, in the same run. Both
//! include building the request and its context.
//!
//! The `usage` group: one decision alone against the same decision and its
//! recording for `/usage` (what every request pays for usage reports).
//!
//! Run: `cargo bench --bench authz` (`-- usage` for that group only)

use std::hint::black_box;
use std::net::IpAddr;
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use criterion::{BenchmarkId, Criterion, criterion_group, criterion_main};
use warden_proxy::authz::policy_set::DEFAULT_SCHEMA;
use warden_proxy::authz::{
    HttpRequestFacts, Mode, Peer, PolicyEngine, PolicySnapshot, PolicySource, ServiceInfo,
    TlsVersion,
};
use warden_proxy::identity::SpiffeId;
use warden_proxy::sidecar::usage::Usage;

const IDENTITIES: usize = 1000;

fn identity(i: usize) -> String {
    format!("spiffe://example.org/ns/ns{}/sa/sa{i}", i % 50)
}

/// `n` policies: per-identity permits on paths, a few namespace forbids and
/// a couple of unconstrained policies, as a large mesh would have. With
/// `conditions` false the permits are pure RBAC (scope only: who may call
/// which method on which service), the shape of most mesh policies.
#[derive(Clone, Copy, PartialEq)]
enum Shape {
    /// `context.path like ...`: decided without Cedar.
    Path,
    /// Scope only.
    Rbac,
    /// A group membership test in the condition as well (`principal in
    /// Namespace::...`): only Cedar evaluates it.
    Entity,
}

fn policies(n: usize, shape: Shape) -> String {
    let mut text = String::from(
        "@id(\"healthz\")\npermit (principal, action == Action::\"GET\", resource) when { context.path == \"/healthz\" };\n",
    );
    for i in 1..n {
        let policy = if i % 100 == 0 {
            format!(
                "forbid (principal in Namespace::\"spiffe://example.org/ns/ns{}\", action in Action::\"write\", resource);\n",
                i % 50
            )
        } else {
            let action = ["GET", "POST", "PUT"][i % 3];
            let condition = match shape {
                Shape::Path => format!(" when {{ context.path like \"/api/{}/*\" }}", i % 7),
                Shape::Rbac => String::new(),
                Shape::Entity => format!(
                    " when {{ principal in Namespace::\"spiffe://example.org/ns/ns{}\" && context.path like \"/api/{}/*\" }}",
                    i % 50,
                    i % 7
                ),
            };
            format!(
                "permit (principal == Workload::\"{}\", action == Action::\"{action}\", resource == Service::\"orders\"){condition};\n",
                identity(i % IDENTITIES),
            )
        };
        text.push_str(&policy);
    }
    text
}

/// The engine of service `orders` with `n` policies of `shape`.
fn engine(n: usize, shape: Shape) -> Arc<PolicyEngine> {
    let snapshot = PolicySnapshot::from_sources(
        "schema",
        DEFAULT_SCHEMA,
        vec![PolicySource {
            name: "bench.cedar".into(),
            text: policies(n, shape),
        }],
    )
    .expect("bench policies validate");
    let engine = Arc::new(PolicyEngine::new(
        ServiceInfo {
            name: "orders".into(),
            trust_domain: "example.org".into(),
            namespace: Some("ns1".into()),
        },
        Mode::Enforce,
    ));
    engine.install(snapshot);
    engine
}

fn bench_decisions(c: &mut Criterion) {
    bench_shape(c, "authz_decision", Shape::Path);
    bench_shape(c, "authz_decision_rbac", Shape::Rbac);
    bench_shape(c, "authz_decision_entity", Shape::Entity);
}

fn bench_shape(c: &mut Criterion, group: &str, shape: Shape) {
    let mut g = c.benchmark_group(group);
    for n in [10, 100, 1_000, 10_000] {
        let engine = engine(n, shape);
        // Identity 3 holds a GET permit on /api/3/*.
        let peer = Peer::Workload(SpiffeId::parse(&identity(3)).expect("id"));
        let authorizer = engine.for_peer(peer);
        let headers: &[(&str, &str)] = &[("x-request-id", "abc"), ("accept", "*/*")];
        let facts = HttpRequestFacts {
            method: "GET",
            path: "/api/3/items",
            host: "orders.ns3",
            port: 80,
            source_ip: IpAddr::from([127, 0, 0, 1]),
            headers,
            tls_version: TlsVersion::Tls13,
            now: SystemTime::now(),
        };
        let first = authorizer.authorize_http(&facts);
        assert!(first.allowed, "bench request must be allowed: {first:?}");
        assert_eq!(first, authorizer.authorize_http_unindexed(&facts));
        g.bench_with_input(BenchmarkId::new("indexed", n), &facts, |b, f| {
            b.iter(|| authorizer.authorize_http(black_box(f)))
        });
        g.bench_with_input(BenchmarkId::new("plain_cedar", n), &facts, |b, f| {
            b.iter(|| authorizer.authorize_http_unindexed(black_box(f)))
        });
    }
    g.finish();
}

/// What recording a decision for `/usage` and the control plane's usage
/// reports adds to it: one request's decision (100 policies) alone, and
/// with `Usage::record` of the decision (steady state: the caller's route
/// key is held; the path's ids collapse into the template), in one run.
fn bench_usage(c: &mut Criterion) {
    let mut g = c.benchmark_group("usage");
    let engine = engine(100, Shape::Path);
    let authorizer = engine.for_peer(Peer::Workload(SpiffeId::parse(&identity(3)).expect("id")));
    let facts = HttpRequestFacts {
        method: "GET",
        path: "/api/3/items/12345",
        host: "orders.ns3",
        port: 80,
        source_ip: IpAddr::from([10, 1, 2, 3]),
        headers: &[],
        tls_version: TlsVersion::Tls13,
        now: SystemTime::now(),
    };
    let usage = Usage::default();
    g.bench_function("decision", |b| {
        b.iter(|| authorizer.authorize_http(black_box(&facts)))
    });
    g.bench_function("decision_and_record", |b| {
        b.iter(|| {
            let d = authorizer.authorize_http(black_box(&facts));
            usage.record(&d, facts.path, facts.source_ip, 1_800_000_000)
        })
    });
    g.finish();
}

criterion_group! {
    name = benches;
    config = Criterion::default().measurement_time(Duration::from_secs(3)).warm_up_time(Duration::from_secs(1));
    targets = bench_decisions, bench_usage
}
criterion_main!(benches);
