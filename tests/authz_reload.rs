//! Policy hot reload in the library: a watched directory's good sets are
//! swapped in for live authorizers, a broken edit is refused and the last
//! good set kept.
mod support;

use std::net::IpAddr;
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use support::policies::*;
use warden_proxy::authz::{HttpRequestFacts, Mode, PolicyEngine, PolicyWatcher, TlsVersion};

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
            port: 80,
            source_ip: IpAddr::from([127, 0, 0, 1]),
            headers: &[],
            tls_version: TlsVersion::Tls13,
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
