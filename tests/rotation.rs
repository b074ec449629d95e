//! Hot rotation from files under load: while a client keeps opening new mTLS
//! connections, the server's SVID files are replaced every second, one file
//! at a time (key first, or certificate first). No connection fails, and
//! later handshakes present the new serial.

mod support;

use std::sync::Arc;
use std::time::Duration;

use support::*;
use warden_proxy::identity::{ExpectedIdentity, FileSource, SpiffeId, SvidStore};
use warden_proxy::tls::{ClientAuth, TlsVersions, client_config, server_config};

const SERVER_ID: &str = "spiffe://example.org/ns/prod/sa/orders";
const CLIENT_ID: &str = "spiffe://example.org/ns/prod/sa/frontend";
const ROTATIONS: usize = 8;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rotating_files_one_at_a_time_drops_no_connection() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let root = tmp.path().to_owned();
    let ca = root.join("ca");
    let server_dir = root.join("server");
    ca_init(&ca, "example.org");
    svid_issue(&ca, SERVER_ID, &server_dir);
    svid_issue(&ca, CLIENT_ID, &root.join("client"));

    let source = FileSource::new(
        server_dir.join("svid.pem"),
        server_dir.join("svid.key"),
        server_dir.join("bundle.pem"),
    );
    let store = Arc::new(SvidStore::new());
    let first = source.load().expect("initial files");
    let first_serial = first.svid.serial().to_owned();
    store.install(first.svid, first.bundles).expect("install");
    let watcher = source.watch(store.clone(), Duration::from_millis(100));
    let server = server_config(
        store.clone(),
        ClientAuth::Required,
        ExpectedIdentity::AnyTrusted,
        TlsVersions::default(),
        &[],
    )
    .expect("server config");
    let (addr, mut accepted, _server) = spawn_identity_server(server).await;
    let expected = ExpectedIdentity::exactly(SpiffeId::parse(SERVER_ID).expect("id"));
    let client = client_config(
        store_from_dir(&root.join("client"), "example.org"),
        expected,
        TlsVersions::default(),
        &[],
    )
    .expect("client config");

    // Rotate every second, alternating which file is replaced first, with a
    // 300 ms window in which key and certificate do not match: the pauses
    // are the rotation under test, not waits.
    let rotator = {
        let (ca, server_dir, root) = (ca.clone(), server_dir.clone(), root.clone());
        tokio::task::spawn_blocking(move || {
            let mut serials = Vec::new();
            for i in 0..ROTATIONS {
                std::thread::sleep(Duration::from_millis(700));
                let staging = svid_issue(&ca, SERVER_ID, &root.join(format!("staging-{i}")));
                serials.push(load_svid(&staging).serial().to_owned());
                let order = if i % 2 == 0 {
                    ["svid.key", "svid.pem"]
                } else {
                    ["svid.pem", "svid.key"]
                };
                std::fs::rename(staging.join(order[0]), server_dir.join(order[0]))
                    .expect("replace first file");
                std::thread::sleep(Duration::from_millis(300));
                std::fs::rename(staging.join(order[1]), server_dir.join(order[1]))
                    .expect("replace second file");
            }
            serials
        })
    };

    let mut seen = Vec::new();
    let mut failures = Vec::new();
    let deadline = tokio::time::Instant::now() + Duration::from_secs(60);
    while !rotator.is_finished() && tokio::time::Instant::now() < deadline {
        match connect(client.clone(), addr).await {
            Ok(c) => {
                assert_eq!(c.seen_as, CLIENT_ID);
                seen.push(c.server.serial);
            }
            Err(e) => failures.push(e),
        }
    }
    let issued = rotator.await.expect("rotator");
    let last = issued.last().expect("rotated").clone();

    // After the last swap, new handshakes present the newest certificate.
    eventually(
        format_args!("the last rotated SVID ({last}) presented"),
        Duration::from_secs(5),
        async || match connect(client.clone(), addr).await {
            Ok(c) if c.server.serial == last => Ok(()),
            Ok(c) => Err(format!("serial {}", c.server.serial)),
            Err(e) => {
                failures.push(e.clone());
                Err(e)
            }
        },
    )
    .await;
    watcher.stop();

    assert!(
        failures.is_empty(),
        "{} connection(s) failed during rotation: {failures:?}",
        failures.len()
    );
    let mut server_errors = Vec::new();
    while let Ok(a) = accepted.try_recv() {
        if let Err(e) = a.peer {
            server_errors.push(e);
        }
    }
    assert!(
        server_errors.is_empty(),
        "server-side handshake failures: {server_errors:?}"
    );
    assert!(
        seen.len() > 2 * ROTATIONS,
        "too few connections to prove anything: {}",
        seen.len()
    );

    // Every serial presented is one we issued, in issue order: the server
    // never went back to an older SVID and never presented a half-swapped pair.
    let order: Vec<String> = std::iter::once(first_serial).chain(issued).collect();
    let positions: Vec<usize> = seen
        .iter()
        .map(|s| {
            order
                .iter()
                .position(|o| o == s)
                .unwrap_or_else(|| panic!("unknown serial {s}"))
        })
        .collect();
    assert!(
        positions.windows(2).all(|w| w[0] <= w[1]),
        "serials went backwards: {positions:?}"
    );
    let distinct = positions
        .iter()
        .collect::<std::collections::BTreeSet<_>>()
        .len();
    assert!(
        distinct >= ROTATIONS / 2,
        "only {distinct} distinct serials seen across {ROTATIONS} rotations"
    );
}
