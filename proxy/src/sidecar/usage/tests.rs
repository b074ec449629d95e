use super::*;
use crate::authz::{Mode, Outcome};

const LOCAL: IpAddr = IpAddr::V4(std::net::Ipv4Addr::LOCALHOST);

fn decision(principal: &str, outcome: Outcome, policies: &[&str]) -> Decision {
    Decision {
        allowed: outcome == Outcome::Allow,
        decision: outcome,
        mode: Mode::Enforce,
        principal: principal.into(),
        action: "Action::\"GET\"".into(),
        resource: "Service::\"orders\"".into(),
        policies: policies.iter().map(|p| (*p).to_owned()).collect(),
        errors: Vec::new(),
        policy_version: "v1".into(),
    }
}

#[test]
fn ids_collapse_into_templates() {
    for (path, want) in [
        ("/orders/42", "/orders/{id}"),
        ("/orders/42/items/7?x=1", "/orders/{id}/items/{id}"),
        (
            "/users/123e4567-e89b-12d3-a456-426614174000/profile",
            "/users/{id}/profile",
        ),
        ("/blobs/deadbeef00112233aabb", "/blobs/{id}"),
        ("/orders", "/orders"),
        ("/health", "/health"),
        ("/", "/"),
        ("", "/"),
        ("/v2/orders", "/v2/orders"),
        ("/cafebabecafebabe", "/cafebabecafebabe"),
        ("/a/{id}/b", "/a/…"),
        ("/a/x…/b", "/a/…"),
        (
            "/------------------------------------",
            "/------------------------------------",
        ),
        (
            "/123e4567e-89b-12d3-a456-426614174000",
            "/123e4567e-89b-12d3-a456-426614174000",
        ),
    ] {
        assert_eq!(route_template(path), want, "{path}");
    }
    let deep = "/a".repeat(40);
    assert_eq!(route_template(&deep).matches('/').count(), MAX_SEGMENTS + 1);
    let long = format!("/{}", "é".repeat(400));
    assert!(route_template(&long).len() <= MAX_ROUTE + '…'.len_utf8());
}

#[test]
fn decisions_aggregate_with_counts_and_times() {
    let usage = Usage::default();
    let frontend = "Workload::\"spiffe://example.org/ns/shop/sa/frontend\"";
    let allow = decision(frontend, Outcome::Allow, &["p2", "p1"]);
    assert!(usage.record(&allow, "/orders/1", LOCAL, 100));
    assert!(usage.record(&allow, "/orders/2", LOCAL, 105));
    assert!(usage.record(
        &decision(frontend, Outcome::Deny, &[]),
        "/admin",
        LOCAL,
        110
    ));
    let snapshot = usage.snapshot();
    assert_eq!(snapshot.entries.len(), 2, "{snapshot:?}");
    let orders = &snapshot.entries[1];
    assert_eq!(orders.route, "/orders/{id}");
    assert_eq!(orders.policies, ["p1", "p2"]);
    assert_eq!(
        orders.counts,
        Counts {
            count: 2,
            first_seen: 100,
            last_seen: 105
        }
    );
    assert_eq!(snapshot.entries[0].decision, "deny");
    assert!(snapshot.entries[0].policies.is_empty());
}

#[test]
fn the_entries_of_all_callers_together_are_capped() {
    let usage = Usage::default();
    for c in 0..(MAX_ENTRIES / MAX_ROUTES_PER_CALLER) {
        let d = decision(&format!("c{c}"), Outcome::Allow, &[]);
        for r in 0..MAX_ROUTES_PER_CALLER {
            assert!(usage.record(&d, &format!("/r{r}x"), LOCAL, 1));
        }
    }
    assert_eq!(usage.overflow_total(), 0);
    assert!(!usage.record(&decision("late", Outcome::Allow, &[]), "/a", LOCAL, 2));
    assert_eq!(usage.overflow_total(), 1);
    // A key already held still counts.
    assert!(usage.record(&decision("c0", Outcome::Allow, &[]), "/r0x", LOCAL, 3));
    assert_eq!(usage.snapshot().entries.len(), MAX_ENTRIES);
}

#[test]
fn a_flood_of_unique_paths_or_callers_stays_bounded() {
    let usage = Usage::default();
    let caller = "Workload::\"spiffe://example.org/ns/x/sa/flood\"";
    let d = decision(caller, Outcome::Allow, &["p"]);
    for i in 0..(MAX_ROUTES_PER_CALLER + 500) {
        usage.record(&d, &format!("/r{i}/x"), LOCAL, 1);
    }
    let snapshot = usage.snapshot();
    assert_eq!(snapshot.entries.len(), MAX_ROUTES_PER_CALLER);
    assert_eq!(snapshot.overflow, vec![(caller.to_owned(), 500)]);
    // Known keys still count once full.
    usage.record(&d, "/r0/x", LOCAL, 2);
    assert_eq!(usage.overflow_total(), 500);
    for i in 0..(MAX_CALLERS + 10) {
        usage.record(
            &decision(&format!("c{i}"), Outcome::Allow, &[]),
            "/",
            LOCAL,
            3,
        );
    }
    assert_eq!(usage.snapshot().overflow_callers, 11);
    assert_eq!(usage.overflow_total(), 511);
}

#[test]
fn reports_drain_what_is_pending_and_a_failed_send_gives_it_back() {
    let usage = Usage::default();
    let frontend = "Workload::\"spiffe://example.org/ns/shop/sa/frontend\"";
    let allow = decision(frontend, Outcome::Allow, &["p1"]);
    usage.record(&allow, "/orders/1", LOCAL, 100);
    usage.record(&allow, "/orders/2", "10.1.2.3".parse().expect("ip"), 101);
    usage.record(
        &decision("Unauthenticated::\"plaintext\"", Outcome::Deny, &[]),
        "/x",
        LOCAL,
        102,
    );
    let report = usage.take_report("spiffe://example.org/orders", "orders", 1024, 200);
    let report = report.expect("pending");
    assert_eq!(report.entries.len(), 2, "{report:?}");
    assert_eq!(
        report.entries[0].caller,
        "spiffe://example.org/ns/shop/sa/frontend"
    );
    assert_eq!(report.entries[0].action, "GET");
    assert_eq!(report.entries[0].count, 2);
    assert_eq!(report.entries[1].caller, "unauthenticated:plaintext");
    let mut ranges: Vec<&str> = report.sources.iter().map(|s| s.range.as_str()).collect();
    ranges.sort();
    assert_eq!(ranges, ["10.1.2.0/24", "127.0.0.0/24", "127.0.0.0/24"]);
    assert!(usage.take_report("x", "y", 1024, 200).is_none(), "drained");
    // Not sent: back, and merged with what came since.
    usage.restore(report);
    usage.record(&allow, "/orders/3", LOCAL, 103);
    let again = usage.take_report("x", "y", 1024, 200).expect("restored");
    let orders = &again.entries[0];
    assert_eq!(
        (orders.count, orders.first_seen, orders.last_seen),
        (3, 100, 103)
    );
    // The cumulative view is not drained by reports.
    assert_eq!(usage.snapshot().entries[1].counts.count, 3);
    assert_eq!(
        source_range("::ffff:10.9.8.7".parse().expect("ip")),
        "10.9.8.0/24"
    );
    assert_eq!(
        source_range("2001:db8:1:2:3::4".parse().expect("ip")),
        "2001:db8:1:2::/64"
    );
    // What the control plane would refuse is counted, not sent.
    usage.record(
        &decision(frontend, Outcome::Allow, &["a,b"]),
        "/x",
        LOCAL,
        104,
    );
    let odd = usage.take_report("x", "y", 1024, 200).expect("pending");
    assert!(odd.entries.is_empty(), "{odd:?}");
    assert_eq!(odd.overflow, 1);
}

#[test]
fn a_report_holds_at_most_max_entries_and_the_rest_waits() {
    let usage = Usage::default();
    for c in 0..4 {
        let d = decision(
            &format!("Workload::\"spiffe://t/c{c}\""),
            Outcome::Allow,
            &[],
        );
        for r in 0..10 {
            usage.record(&d, &format!("/r{r}x"), LOCAL, 1);
        }
    }
    // A caller's routes may be split; its sources go with its last part.
    let first = usage.take_report("x", "y", 25, 200).expect("first");
    assert_eq!((first.entries.len(), first.sources.len()), (25, 2));
    assert_eq!(usage.pending_entries(), 15);
    let second = usage.take_report("x", "y", 25, 200).expect("second");
    assert_eq!((second.entries.len(), second.sources.len()), (15, 2));
    assert!(usage.take_report("x", "y", 25, 200).is_none());
    // One entry a report still moves a caller with many routes along.
    for r in 0..3 {
        usage.record(
            &decision("Workload::\"spiffe://t/one\"", Outcome::Allow, &[]),
            &format!("/r{r}x"),
            LOCAL,
            1,
        );
    }
    for left in [2, 1, 0] {
        let one = usage.take_report("x", "y", 1, 200).expect("one");
        assert_eq!(one.entries.len(), 1);
        assert_eq!(usage.pending_entries(), left);
    }
}
