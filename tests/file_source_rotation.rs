//! The file source follows `[rotation]` too: an SVID from files halfway
//! from its latest renewal point to its expiry and not replaced is
//! reported overdue while it still works.

mod support;

use std::sync::Arc;
use std::time::Duration;

use support::*;
use warden_proxy::identity::{FileSource, FileWatcher, RotationPolicy, SvidStore};

const ID: &str = "spiffe://example.org/api";

/// Watches freshly issued files (valid for `ttl`, backdated by a quarter of
/// it) under `rotation`.
fn watch(rotation: RotationPolicy, ttl: &str) -> (tempfile::TempDir, FileWatcher, Arc<SvidStore>) {
    let tmp = tempfile::tempdir().expect("tempdir");
    ca_init(&tmp.path().join("ca"), "example.org");
    let dir = tmp.path().join("svid");
    warden_ok(&[
        "svid",
        "issue",
        "--ca-dir",
        path_str(&tmp.path().join("ca")),
        "--spiffe-id",
        ID,
        "--ttl",
        ttl,
        "--out",
        path_str(&dir),
    ]);
    let source = FileSource::new(
        dir.join("svid.pem"),
        dir.join("svid.key"),
        dir.join("bundle.pem"),
    )
    .with_rotation(rotation);
    let store = Arc::new(SvidStore::new());
    let watcher = source.watch(store.clone(), Duration::from_millis(20));
    (tmp, watcher, store)
}

/// Whether the watcher says overdue once it has polled `polls` times.
async fn overdue_after(watcher: &FileWatcher, polls: u64) -> bool {
    let mut status = watcher.status();
    tokio::time::timeout(
        Duration::from_secs(10),
        status.wait_for(|s| s.polls >= polls && s.last_error.is_none()),
    )
    .await
    .expect("the watcher polls")
    .expect("watcher alive")
    .overdue
}

#[tokio::test]
async fn an_svid_past_its_renewal_point_is_reported_overdue_and_kept() {
    // Renewal due at birth: overdue at half the lifetime, about 1.9 s after
    // the 5 s SVID is issued (its lifetime is 6.25 s from 1.25 s ago).
    let at_birth = RotationPolicy {
        refresh_fraction: 0.0,
        jitter_fraction: 0.0,
        ..RotationPolicy::default()
    };
    let (_tmp, watcher, store) = watch(at_birth, "5s");
    let mut status = watcher.status();
    tokio::time::timeout(Duration::from_secs(10), status.wait_for(|s| s.overdue))
        .await
        .expect("reported overdue before it expires")
        .expect("watcher alive");
    let svid = store.current().expect("the overdue SVID is still in use");
    assert!(svid.is_valid_at(std::time::SystemTime::now()));
}

#[tokio::test]
async fn an_svid_before_its_overdue_point_is_not_reported() {
    // The default schedule renews by 60% of the lifetime, so a 5 s SVID
    // is overdue only at 80%: about 3.75 s after it is issued.
    let (_tmp, watcher, store) = watch(RotationPolicy::default(), "5s");
    assert!(
        !overdue_after(&watcher, 3).await,
        "not yet at 80% of its lifetime"
    );
    assert!(store.current().is_some());
    let (_tmp, watcher, _store) = watch(RotationPolicy::default(), "1h");
    assert!(
        !overdue_after(&watcher, 3).await,
        "an hour-long SVID seconds old"
    );
}
