//! The file source follows `[rotation]` too: an SVID from files that is
//! past its latest renewal point and was not replaced is reported overdue
//! while it still works.

mod support;

use std::sync::Arc;
use std::time::Duration;

use support::*;
use warden_proxy::identity::{FileSource, FileWatcher, RotationPolicy, SvidStore};

const ID: &str = "spiffe://example.org/api";

/// Watches freshly issued files under `rotation` until `polls` polls have
/// completed; returns the watcher's last status.
async fn watch_for(rotation: RotationPolicy, polls: u64) -> (FileWatcher, bool) {
    let tmp = tempfile::tempdir().expect("tempdir");
    ca_init(&tmp.path().join("ca"), "example.org");
    let dir = svid_issue(&tmp.path().join("ca"), ID, &tmp.path().join("svid"));
    let source = FileSource::new(
        dir.join("svid.pem"),
        dir.join("svid.key"),
        dir.join("bundle.pem"),
    )
    .with_rotation(rotation);
    let store = Arc::new(SvidStore::new());
    let watcher = source.watch(store.clone(), Duration::from_millis(20));
    let mut status = watcher.status();
    tokio::time::timeout(
        Duration::from_secs(10),
        status.wait_for(|s| s.polls >= polls && s.last_error.is_none()),
    )
    .await
    .expect("the watcher polls")
    .expect("watcher alive");
    assert!(store.current().is_some(), "the SVID is loaded and in use");
    let overdue = status.borrow().overdue;
    (watcher, overdue)
}

#[tokio::test]
async fn an_svid_past_its_renewal_point_is_reported_overdue_and_kept() {
    // Renew at the start of the lifetime: the SVID is overdue at once.
    let at_birth = RotationPolicy {
        refresh_fraction: 0.0,
        jitter_fraction: 0.0,
        ..RotationPolicy::default()
    };
    let (_watcher, overdue) = watch_for(at_birth, 3).await;
    assert!(overdue, "past its renewal point and not replaced");
}

#[tokio::test]
async fn an_svid_before_its_renewal_point_is_not_overdue() {
    let (_watcher, overdue) = watch_for(RotationPolicy::default(), 3).await;
    assert!(!overdue, "an hour-long SVID seconds old is not due");
}
