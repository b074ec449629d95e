//! The rotation scheduler against a real CA, in deterministic (paused) time:
//! refresh at about half-life, exponential backoff on failure, and the
//! current SVID kept while renewals fail.

mod support;

use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use support::eventually_every;
use tokio::time::Instant;
use warden_control::ca::{CertificateAuthority, InitOptions, SignRequest};
use warden_proxy::identity::{
    RotationPolicy, SpiffeId, Svid, SvidSource, SvidStore, SvidUpdate, TrustBundleSet,
    new_key_and_csr, run_rotation, run_rotation_with_clock,
};

#[derive(Debug, thiserror::Error)]
#[error("control plane unreachable (test)")]
struct Unreachable;

/// Signs a fresh key with a real CA on every fetch, unless told to fail.
struct CaSource {
    ca: CertificateAuthority,
    id: SpiffeId,
    fail_next: AtomicU32,
    fetches: Mutex<Vec<(Instant, bool)>>,
}

#[derive(Clone)]
struct Shared(Arc<CaSource>);

impl SvidSource for Shared {
    type Error = Unreachable;

    async fn fetch(&self) -> Result<SvidUpdate, Unreachable> {
        let s = &self.0;
        let failing = s
            .fail_next
            .fetch_update(Ordering::SeqCst, Ordering::SeqCst, |n| n.checked_sub(1))
            .is_ok();
        s.fetches
            .lock()
            .expect("lock")
            .push((Instant::now(), !failing));
        if failing {
            return Err(Unreachable);
        }
        let kc = new_key_and_csr(&s.id).expect("csr");
        let issued =
            s.ca.sign_csr(&kc.csr_der, &SignRequest::default())
                .expect("signed");
        let svid =
            Svid::from_pem(issued.chain_pem().as_bytes(), kc.key_pem.as_bytes()).expect("svid");
        Ok(SvidUpdate {
            svid,
            bundles: Some(TrustBundleSet::new().with(s.ca.bundle().clone())),
        })
    }
}

fn source(dir: &std::path::Path, fail_first: u32) -> Shared {
    let ca = CertificateAuthority::init(dir, &InitOptions::new("example.org".parse().expect("td")))
        .expect("CA");
    Shared(Arc::new(CaSource {
        ca,
        id: SpiffeId::parse("spiffe://example.org/api").expect("id"),
        fail_next: AtomicU32::new(fail_first),
        fetches: Mutex::new(Vec::new()),
    }))
}

/// Starts the scheduler on an empty store; send on the sender to stop it.
fn start(
    src: &Shared,
) -> (
    Arc<SvidStore>,
    tokio::sync::oneshot::Sender<()>,
    tokio::task::JoinHandle<()>,
) {
    let store = Arc::new(SvidStore::new());
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let task = tokio::spawn(run_rotation(
        store.clone(),
        src.clone(),
        RotationPolicy::default(),
        async {
            let _ = stopped.await;
        },
    ));
    (store, stop, task)
}

/// Steps the paused clock a second at a time until `n` fetches happened.
async fn wait_for_fetches(src: &Shared, n: usize) {
    eventually_every(
        format_args!("{n} fetches"),
        Duration::from_secs(10_000),
        Duration::from_secs(1),
        async || match src.0.fetches.lock().expect("lock").len() {
            done if done >= n => Ok(()),
            done => Err(format!("{done} fetches")),
        },
    )
    .await
}

#[tokio::test(start_paused = true)]
async fn refreshes_at_about_half_life() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let src = source(tmp.path(), 0);
    let (store, stop, task) = start(&src);
    wait_for_fetches(&src, 4).await;
    let _ = stop.send(());
    task.await.expect("rotation task");

    let fetches = src.0.fetches.lock().expect("lock").clone();
    assert!(store.current().is_some());
    // Lifetime 3630 s (1 h + 30 s backdating), 30 s of it already gone when
    // the delay is computed: refresh at 50% ± 10% of it is 1422..2148 s later.
    for pair in fetches.windows(2) {
        let gap = pair[1].0 - pair[0].0;
        assert!(
            gap >= Duration::from_secs(1420) && gap <= Duration::from_secs(2150),
            "refresh after {gap:?}, expected about 30 min"
        );
    }
}

#[tokio::test(start_paused = true)]
async fn backs_off_exponentially_and_keeps_the_current_svid() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let src = source(tmp.path(), 0);
    let (store, stop, task) = start(&src);
    wait_for_fetches(&src, 1).await;
    let first = store.current().expect("first SVID").serial().to_owned();
    // The control plane goes away for the next 9 attempts.
    src.0.fail_next.store(9, Ordering::SeqCst);
    wait_for_fetches(&src, 6).await;
    assert_eq!(
        store.current().expect("kept while renewals fail").serial(),
        first
    );
    wait_for_fetches(&src, 11).await;
    let _ = stop.send(());
    task.await.expect("rotation task");

    let fetches = src.0.fetches.lock().expect("lock").clone();
    let gaps: Vec<f64> = fetches
        .windows(2)
        .map(|p| (p[1].0 - p[0].0).as_secs_f64())
        .collect();
    // gap[0] is the half-life refresh that failed; then retries 1, 2, 4 ... capped at 60 s,
    // each shortened by at most 10% jitter.
    let expected = [1.0, 2.0, 4.0, 8.0, 16.0, 32.0, 60.0, 60.0, 60.0];
    for (gap, want) in gaps[1..].iter().zip(expected) {
        assert!(
            *gap <= want + 0.01 && *gap >= want * 0.9 - 0.01,
            "retry gaps {gaps:?}, expected about {expected:?}"
        );
    }
    assert!(fetches[10].1, "the 11th fetch succeeds");
    // While renewal failed, the first SVID stayed in place; then it was replaced.
    assert_ne!(store.current().expect("SVID").serial(), first);
}

#[tokio::test(start_paused = true)]
async fn an_svid_that_cannot_be_renewed_is_dropped_at_expiry() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let src = source(tmp.path(), 0);
    let store = Arc::new(SvidStore::new());
    // Wall-clock time that follows tokio's paused clock.
    let (wall_start, tokio_start) = (std::time::SystemTime::now(), Instant::now());
    let clock = move || wall_start + (Instant::now() - tokio_start);
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let task = tokio::spawn(run_rotation_with_clock(
        store.clone(),
        src.clone(),
        RotationPolicy::default(),
        async {
            let _ = stopped.await;
        },
        clock,
    ));
    wait_for_fetches(&src, 1).await;
    let svid = store.current().expect("first SVID");
    // From now on the control plane is unreachable.
    src.0.fail_next.store(u32::MAX, Ordering::SeqCst);
    let expiry = svid.not_after();
    // A minute of paused time per look.
    let dropped_at = eventually_every(
        "the SVID dropped",
        Duration::from_secs(200 * 60),
        Duration::from_secs(60),
        async || match store.current() {
            Some(current) => {
                assert_eq!(current.serial(), svid.serial(), "no other SVID can appear");
                Err(format!("{} still current", current.serial()))
            }
            None => Ok(clock()),
        },
    )
    .await;
    let _ = stop.send(());
    task.await.expect("rotation task");
    assert!(dropped_at >= expiry, "dropped before it expired");
    assert!(
        dropped_at.duration_since(expiry).unwrap_or_default() <= Duration::from_secs(120),
        "dropped long after expiry"
    );
    assert!(
        src.0.fetches.lock().expect("lock").len() > 10,
        "kept retrying while it could"
    );
}
