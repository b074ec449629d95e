//! The file source: errors name the file, inconsistent sets are refused
//! while the last good SVID stays, federated bundles load from PEM or JSON.

mod support;

use std::sync::Arc;
use std::time::Duration;

use support::*;
use warden_proxy::identity::{FileSource, FileSourceError, SvidLoadError, SvidStore, TrustDomain};

const ID: &str = "spiffe://example.org/api";

fn setup() -> (tempfile::TempDir, FileSource) {
    let tmp = tempfile::tempdir().expect("tempdir");
    ca_init(&tmp.path().join("ca"), "example.org");
    let dir = svid_issue(&tmp.path().join("ca"), ID, &tmp.path().join("svid"));
    let source = FileSource::new(
        dir.join("svid.pem"),
        dir.join("svid.key"),
        dir.join("bundle.pem"),
    );
    (tmp, source)
}

#[test]
fn load_errors_name_the_file_and_the_problem() {
    let (tmp, source) = setup();
    let dir = tmp.path().join("svid");
    assert!(source.load().is_ok());

    // Key from another SVID: mismatch, blamed on the key file.
    let other = svid_issue(&tmp.path().join("ca"), ID, &tmp.path().join("other"));
    std::fs::copy(other.join("svid.key"), dir.join("svid.key")).expect("copy");
    match source.load() {
        Err(FileSourceError::Svid {
            path,
            source: SvidLoadError::KeyMismatch,
        }) => assert_eq!(path, dir.join("svid.key")),
        other => panic!("expected a key mismatch, got {other:?}"),
    }
    std::fs::copy(other.join("svid.pem"), dir.join("svid.pem")).expect("copy");
    assert!(source.load().is_ok(), "consistent again");

    // Garbage certificate.
    std::fs::write(
        dir.join("svid.pem"),
        "-----BEGIN CERTIFICATE-----\nAAAA\n-----END CERTIFICATE-----\n",
    )
    .expect("write");
    let err = source.load().expect_err("garbage");
    assert!(
        err.to_string()
            .starts_with(&dir.join("svid.pem").display().to_string()),
        "{err}"
    );

    // A bundle from another CA does not validate the SVID.
    std::fs::copy(other.join("svid.pem"), dir.join("svid.pem")).expect("copy");
    ca_init(&tmp.path().join("ca2"), "example.org");
    std::fs::copy(
        tmp.path().join("ca2").join("bundle.pem"),
        dir.join("bundle.pem"),
    )
    .expect("copy");
    match source.load() {
        Err(FileSourceError::Chain { path, .. }) => assert_eq!(path, dir.join("bundle.pem")),
        other => panic!("expected a chain error, got {other:?}"),
    }

    // A missing file.
    std::fs::remove_file(dir.join("svid.key")).expect("rm");
    let err = source.load().expect_err("missing");
    assert!(err.to_string().contains("svid.key"), "{err}");
}

#[tokio::test]
async fn watcher_keeps_the_last_good_svid_until_the_files_agree() {
    let (tmp, source) = setup();
    let dir = tmp.path().join("svid");
    let store = Arc::new(SvidStore::new());
    let mut changes = store.subscribe();
    let watcher = source
        .clone()
        .watch(store.clone(), Duration::from_millis(20));
    tokio::time::timeout(Duration::from_secs(10), changes.changed())
        .await
        .expect("first load")
        .expect("store alive");
    let first = store.current().expect("loaded").serial().to_owned();

    let status = watcher.status();
    let saw = |needle: &'static str| {
        let status = status.clone();
        async move || match status.borrow().last_error.clone() {
            Some(e) if e.contains(needle) => Ok(()),
            other => Err(format!("last error {other:?}")),
        }
    };

    // Half a rotation: only the key changes. The watcher has seen the
    // mismatch, and the store keeps the old SVID.
    let next = svid_issue(&tmp.path().join("ca"), ID, &tmp.path().join("next"));
    std::fs::copy(next.join("svid.key"), dir.join("svid.key")).expect("copy");
    eventually(
        "watcher sees the mismatch",
        Duration::from_secs(10),
        saw("does not match"),
    )
    .await;
    assert_eq!(store.current().expect("kept").serial(), first);

    // Garbage written over the certificate: still the old SVID.
    std::fs::write(dir.join("svid.pem"), "garbage").expect("write");
    eventually(
        "watcher sees the garbage",
        Duration::from_secs(10),
        saw("no certificate found"),
    )
    .await;
    assert_eq!(store.current().expect("kept").serial(), first);

    // The matching certificate arrives: swapped.
    std::fs::copy(next.join("svid.pem"), dir.join("svid.pem")).expect("copy");
    let new_serial = load_svid(&next).serial().to_owned();
    eventually(
        "new SVID installed",
        Duration::from_secs(10),
        async || match store.current() {
            Some(s) if s.serial() == new_serial => Ok(()),
            other => Err(format!("serial {:?}", other.map(|s| s.serial().to_owned()))),
        },
    )
    .await;
    assert_eq!(status.borrow().last_error, None);
    watcher.stop();
}

#[test]
fn federated_bundles_load_from_pem_and_spiffe_json() {
    let (tmp, source) = setup();
    ca_init(&tmp.path().join("other-ca"), "other.org");
    let other = load_bundle(&tmp.path().join("other-ca"), "other.org");
    let json = tmp.path().join("other.json");
    std::fs::write(&json, other.to_spiffe_json()).expect("write");
    let td: TrustDomain = "other.org".parse().expect("td");
    let update = source
        .clone()
        .with_federated(td.clone(), &json)
        .load()
        .expect("federated JSON");
    let bundles = update.bundles.expect("bundles");
    assert_eq!(bundles.len(), 2);
    assert_eq!(
        bundles.get("other.org").expect("other").roots(),
        other.roots()
    );

    std::fs::write(&json, "{\"keys\": [}").expect("write");
    let err = source
        .with_federated(td, &json)
        .load()
        .expect_err("bad JSON");
    assert!(err.to_string().contains("other.json"), "{err}");
}
