//! The store's rules on SQLite: single-use tokens, refusals that change
//! nothing, revocation and the statuses it reports.

use super::*;

fn record(serial: &str, id: &str, issued: i64, ttl: i64) -> SvidRecord {
    SvidRecord {
        serial: serial.into(),
        spiffe_id: id.into(),
        key_sha256: "k".into(),
        issued_at: issued,
        expires_at: issued + ttl,
        kind: SvidKind::Join,
        instance: "i".into(),
        revoked: false,
        sidecar_version: None,
    }
}

#[test]
fn tokens_are_single_use_and_refusals_change_nothing() {
    let dir = tempfile::tempdir().expect("tempdir");
    let store = Store::open(&Database::Sqlite(dir.path().join("db")), false).expect("open");
    let id = "spiffe://td/a";
    store
        .create_token("h", "t1", id, &serde_json::Map::new(), 100, 200)
        .expect("token");
    let refused = store
        .redeem_token("h", 150, |_| -> Result<Signed<()>, StoreError> {
            Err(StoreError::refused(
                crate::reason::Reason::Csr(crate::reason::CsrReason::Malformed),
                "no",
            ))
        })
        .expect_err("signer refused");
    assert_eq!(refused.code(), "csr_malformed");
    // The refusal did not burn the token.
    store
        .redeem_token("h", 150, |bound| {
            assert_eq!(bound, id);
            Ok(Signed {
                record: record("s1", id, 150, 60),
                value: (),
            })
        })
        .expect("redeem");
    let again = store
        .redeem_token("h", 151, |_| -> Result<Signed<()>, StoreError> {
            unreachable!("a used token never reaches the signer")
        })
        .expect_err("reuse");
    assert_eq!(again.code(), "token_reused");
    store
        .create_token("h2", "t2", id, &serde_json::Map::new(), 100, 120)
        .expect("token");
    let expired = store
        .redeem_token("h2", 150, |_| -> Result<Signed<()>, StoreError> {
            unreachable!()
        })
        .expect_err("expired");
    assert_eq!(expired.code(), "token_expired");
    let identities = store.identities(160).expect("list");
    assert_eq!(identities.len(), 1);
    assert_eq!(identities[0].status, "active");
    assert_eq!(identities[0].svids_issued, 1);
    assert_eq!(store.identities(211).expect("list")[0].status, "expired");
    assert_eq!(
        store.identities(211 + 181).expect("list")[0].status,
        "stale"
    );
}

#[test]
fn revocation_blocks_renewal_and_is_listed() {
    let dir = tempfile::tempdir().expect("tempdir");
    let store = Store::open(&Database::Sqlite(dir.path().join("db")), false).expect("open");
    let id = "spiffe://td/a";
    store
        .create_token("h", "t1", id, &serde_json::Map::new(), 100, 200)
        .expect("token");
    store
        .redeem_token("h", 150, |_| {
            Ok(Signed {
                record: record("s1", id, 150, 60),
                value: (),
            })
        })
        .expect("redeem");
    store
        .renew(id, "s1", |_| {
            Ok(Signed {
                record: record("s2", id, 170, 60),
                value: (),
            })
        })
        .expect("renew");
    assert_eq!(
        store
            .renew(
                "spiffe://td/b",
                "s2",
                |_| -> Result<Signed<()>, StoreError> { unreachable!() }
            )
            .expect_err("other id")
            .code(),
        "identity_mismatch"
    );
    store
        .revoke("S2", "key leaked", 180)
        .expect("revoke serial");
    assert_eq!(
        store
            .renew(id, "s2", |_| -> Result<Signed<()>, StoreError> {
                unreachable!()
            })
            .expect_err("revoked serial")
            .code(),
        "svid_revoked"
    );
    let r = store.revocations(181).expect("revocations");
    assert_eq!(r.serials, ["s2"]);
    assert!(r.spiffe_ids.is_empty());
    // Expired serials drop off the list.
    assert!(store.revocations(300).expect("r").serials.is_empty());
    store.revoke(id, "decommissioned", 190).expect("revoke id");
    assert_eq!(
        store
            .renew(id, "s1", |_| -> Result<Signed<()>, StoreError> {
                unreachable!()
            })
            .expect_err("revoked id")
            .code(),
        "svid_revoked"
    );
    assert_eq!(
        store
            .create_token("h3", "t3", id, &serde_json::Map::new(), 200, 300)
            .expect_err("no token for revoked")
            .code(),
        "identity_revoked"
    );
    assert_eq!(store.revocations(200).expect("r").spiffe_ids, [id]);
    assert_eq!(store.identities(200).expect("l")[0].status, "revoked");
    assert_eq!(
        store.revoke(id, "again", 201).expect_err("twice").code(),
        "already_revoked"
    );
}

fn usage_report(
    callee: &str,
    caller: &str,
    range: &str,
    at: i64,
) -> warden_proxy::control::api::UsageReport {
    use warden_proxy::control::api::{SourceRecord, UsageRecord, UsageReport};
    UsageReport {
        callee: callee.into(),
        service: "orders".into(),
        entries: vec![UsageRecord {
            caller: caller.into(),
            action: "GET".into(),
            route: "/orders/{id}".into(),
            decision: "allow".into(),
            policies: vec!["p".into()],
            count: 2,
            first_seen: at,
            last_seen: at + 1,
        }],
        sources: vec![SourceRecord {
            caller: caller.into(),
            range: range.into(),
            count: 2,
            first_seen: at,
            last_seen: at + 1,
        }],
        overflow: 0,
    }
}

const ORDERS: &str = "spiffe://td/orders";
const FRONTEND: &str = "spiffe://td/frontend";
const DAY: i64 = 20_000 * 86_400;

/// A store in `dir` holding SVID `s1` of ORDERS, joined just before DAY;
/// `rows` usage rows a day for each callee.
fn store_with_svid(dir: &std::path::Path, rows: i64) -> Store {
    let store = Store::open(&Database::Sqlite(dir.join("db")), false)
        .expect("open")
        .with_usage_row_cap(rows);
    let no_labels = serde_json::Map::new();
    store
        .create_token("h", "t1", ORDERS, &no_labels, DAY - 10, DAY + 10)
        .expect("token");
    store
        .redeem_token("h", DAY - 5, |_| {
            Ok(Signed {
                record: record("s1", ORDERS, DAY - 5, 3 * 86_400),
                value: (),
            })
        })
        .expect("redeem");
    store
}

#[test]
fn usage_sums_per_day_and_edges_are_new_once() {
    let dir = tempfile::tempdir().expect("tempdir");
    let store = store_with_svid(dir.path(), 2);
    let (orders, frontend, day) = (ORDERS, FRONTEND, DAY);
    // Only with an SVID of the callee's, not revoked.
    let refused = store
        .record_usage(
            &usage_report(orders, frontend, "10.0.0.0/24", day),
            None,
            "nope",
            day,
        )
        .expect_err("unknown SVID");
    assert_eq!(refused.code(), "unknown_svid");
    let refused = store
        .record_usage(
            &usage_report(frontend, frontend, "10.0.0.0/24", day),
            None,
            "s1",
            day,
        )
        .expect_err("another identity's SVID");
    assert_eq!(refused.code(), "usage_not_own");
    // A new caller: one new edge (its first range is part of it).
    let new = store
        .record_usage(
            &usage_report(orders, frontend, "10.0.0.0/24", day),
            None,
            "s1",
            day,
        )
        .expect("record")
        .new;
    assert_eq!(new.len(), 1, "{new:?}");
    assert_eq!(new[0].edge.kind, "call");
    // Again, same range: nothing new; counts add up within the day.
    let new = store
        .record_usage(
            &usage_report(orders, frontend, "10.0.0.0/24", day + 100),
            None,
            "s1",
            day + 100,
        )
        .expect("record")
        .new;
    assert!(new.is_empty(), "{new:?}");
    let rows = store.usage_since(day, None).expect("rows");
    assert_eq!(rows.len(), 1);
    assert_eq!(
        (rows[0].count, rows[0].first_seen, rows[0].last_seen),
        (4, day, day + 101)
    );
    // A known caller from a range not seen for it: a new edge.
    let new = store
        .record_usage(
            &usage_report(orders, frontend, "10.9.0.0/24", day + 200),
            None,
            "s1",
            day + 200,
        )
        .expect("record")
        .new;
    assert_eq!(new.len(), 1, "{new:?}");
    assert_eq!(
        (new[0].edge.kind.as_str(), new[0].edge.value.as_str()),
        ("source", "10.9.0.0/24")
    );
    // Two rows a day for this callee (the cap set above): a third route is
    // not stored, while known rows still count.
    let mut third = usage_report(orders, frontend, "10.0.0.0/24", day + 300);
    third.entries[0].route = "/b".into();
    assert_eq!(
        store
            .record_usage(&third, None, "s1", day + 300)
            .expect("b")
            .dropped,
        0
    );
    third.entries[0].route = "/c".into();
    let recorded = store
        .record_usage(&third, None, "s1", day + 300)
        .expect("c");
    assert_eq!(recorded.dropped, 2);
    let known = store
        .record_usage(
            &usage_report(orders, frontend, "10.0.0.0/24", day + 301),
            None,
            "s1",
            day + 301,
        )
        .expect("known");
    assert_eq!(known.dropped, 0);
    let rows = store.usage_since(day, None).expect("rows");
    assert_eq!(rows.len(), 2, "{rows:?}");
    assert_eq!(rows.iter().map(|r| r.count).sum::<u64>(), 10);
    let audited = store.audit_tail(10).expect("audit");
    assert_eq!(audited.iter().filter(|e| e.event == "new_edge").count(), 2);
    // The next day is its own row; the window and the retention cut on days.
    store
        .record_usage(
            &usage_report(orders, frontend, "10.0.0.0/24", day + 86_400),
            None,
            "s1",
            day + 86_400,
        )
        .expect("record");
    let orders_route = |since: i64| {
        store
            .usage_since(since, None)
            .expect("rows")
            .iter()
            .filter(|r| r.route == "/orders/{id}")
            .map(|r| r.count)
            .sum::<u64>()
    };
    assert_eq!(orders_route(day), 10);
    assert_eq!(orders_route(day + 86_400), 2);
    assert!(store.prune_usage(day + 86_400).expect("prune") >= 1);
    assert_eq!(orders_route(0), 2);
    assert_eq!(store.usage_since(0, None).expect("rows").len(), 1);
    let listed = store.identities(day).expect("identities");
    assert_eq!(listed.len(), 1, "usage creates no identity");
    store.revoke("s1", "test", day).expect("revoke");
    let refused = store
        .record_usage(
            &usage_report(orders, frontend, "10.0.0.0/24", day + 86_400),
            None,
            "s1",
            day,
        )
        .expect_err("a revoked SVID");
    assert_eq!(refused.code(), "svid_revoked");
}

/// A numbered report is stored once: sent again (its answer lost), or
/// with a lower number from the same sidecar process, it adds nothing; the
/// next number, or another process's, adds. Past the cap of processes per
/// callee the least recently updated is forgotten; the numbers go on the
/// day boundary of the usage they guard.
#[test]
fn numbered_usage_reports_are_stored_once() {
    use warden_proxy::control::api::ReportMark;
    let dir = tempfile::tempdir().expect("tempdir");
    let store = store_with_svid(dir.path(), MAX_ROWS_PER_CALLEE_DAY).with_reporter_cap(2);
    let (orders, frontend, day) = (ORDERS, FRONTEND, DAY);
    let report = usage_report(orders, frontend, "10.0.0.0/24", day);
    let mark = |instance: &str, seq: u64| ReportMark {
        instance: instance.repeat(32),
        seq,
    };
    let total = || {
        store
            .usage_since(day, None)
            .expect("rows")
            .iter()
            .map(|r| r.count)
            .sum::<u64>()
    };
    // Whether the report was known; stored at `at`.
    let known = |m: &ReportMark, at: i64| {
        store
            .record_usage(&report, Some(m), "s1", at)
            .expect("record")
            .duplicate
    };
    assert!(!known(&mark("a", 1), day));
    assert_eq!(total(), 2);
    assert!(known(&mark("a", 1), day), "the same report again");
    assert_eq!(total(), 2);
    assert!(!known(&mark("a", 2), day + 1));
    assert!(known(&mark("a", 1), day + 1), "an earlier one");
    assert_eq!(total(), 4);
    assert!(!known(&mark("b", 1), day + 2), "another process");
    assert_eq!(total(), 6);
    // A third process, past the cap of two: "a" (least recently updated)
    // is forgotten, "b" is not.
    assert!(!known(&mark("c", 1), day + 3));
    assert!(known(&mark("b", 1), day + 3));
    assert!(!known(&mark("a", 2), day + 4), "forgotten past the cap");
    assert_eq!(total(), 10);
    // Unnumbered (a sidecar older than the numbers): always added.
    store
        .record_usage(&report, None, "s1", day)
        .expect("unnumbered");
    assert_eq!(total(), 12);
    // Pruning within the usage's day keeps both the usage and the numbers.
    store.prune_usage(day + 100).expect("prune");
    assert_eq!(total(), 12);
    assert!(known(&mark("a", 2), day + 5), "kept with its usage");
    // The next day's cut takes both.
    assert!(store.prune_usage(day + 86_400).expect("prune") >= 3);
    assert_eq!(total(), 0);
    assert!(!known(&mark("a", 2), day + 86_400), "pruned with its usage");
}
