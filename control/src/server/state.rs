//! What every request handler shares: the CAs, the store, the change
//! marks the watch compares, and the counters behind `/metrics`.

use super::*;

/// Counters for `/metrics`.
#[derive(Default)]
pub(super) struct Counters {
    pub(super) issued: BTreeMap<SvidKind, u64>,
    /// By (event, reason code): ordered as the metric lines are.
    pub(super) refused: BTreeMap<(&'static str, &'static str), u64>,
    pub(super) revocations: u64,
    pub(super) policy_pushes: u64,
    pub(super) jwt_svids: u64,
    /// Federated bundle refreshes by (trust domain, outcome).
    pub(super) federation: BTreeMap<(String, &'static str), u64>,
    pub(super) handshake_failures: u64,
    /// Usage reports stored.
    pub(super) usage_reports: u64,
    /// Edges seen for the first time.
    pub(super) new_edges: u64,
    /// Reported requests not stored (the callee's rows for the day full).
    pub(super) usage_dropped: u64,
    /// Usage reports sent again after being stored (their answer lost):
    /// not added again.
    pub(super) usage_duplicates: u64,
}

pub(super) struct State {
    /// The signing CA and the bundle now (changing during a CA rotation).
    pub(super) cas: Arc<ArcSwap<Authorities>>,
    pub(super) ca_dir: PathBuf,
    pub(super) data_dir: PathBuf,
    pub(super) db: Arc<Store>,
    pub(super) admin_hash: [u8; 32],
    pub(super) server_id: SpiffeId,
    /// The control plane's own SVID, re-issued when the signing CA changes.
    pub(super) svid_store: Arc<SvidStore>,
    /// What the watch compares, refreshed from the database and the CA
    /// directory (every 250 ms, and at once after a change made here), so
    /// that replicas sharing them see each other's changes.
    pub(super) changes: watch::Sender<Changes>,
    pub(super) counters: Mutex<Counters>,
    pub(super) audit_limiter: Mutex<limiter::AuditLimiter>,
    /// "Now" for every expiry, revocation and status decision. (The audit
    /// limiter's windows are monotonic intervals, not times: `Instant`.)
    pub(super) clock: Arc<dyn Clock>,
    /// Which addresses a sidecar may register.
    pub(super) endpoint_addresses: EndpointAddresses,
    /// Kubernetes service-account attestation, when configured.
    pub(super) k8s: Option<crate::attest::K8sAttestor>,
    /// The `spiffe_refresh_hint` of the bundle we serve.
    pub(super) bundle_refresh_hint: Duration,
    pub(super) usage_retention: Duration,
    /// The federation links, and how each fares.
    pub(super) federation: Vec<super::federation::Federation>,
    pub(super) federation_status: Mutex<BTreeMap<String, super::federation::LinkStatus>>,
}

/// The marks a sidecar's watch compares with what it has.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub(super) struct Changes {
    pub(super) revocation_seq: i64,
    pub(super) policy_head: Option<i64>,
    pub(super) bundle_digest: String,
    pub(super) endpoints_mark: String,
    pub(super) federation_mark: String,
}

impl State {
    /// [`State::clock`] in Unix seconds.
    pub(super) fn now(&self) -> i64 {
        self.clock.unix_now()
    }

    pub(super) fn bundle(&self) -> api::BundleResponse {
        let cas = self.cas.load();
        api::BundleResponse {
            trust_domain: cas.bundle.trust_domain().to_string(),
            bundle_pem: cas.bundle_pem.clone(),
            digest: cas.bundle_digest.clone(),
            version: api::VERSION.to_owned(),
            jwt_bundle: Some(cas.jwt_bundle.to_jwks().to_owned()),
        }
    }

    /// Whether a refusal from `source` gets its own audit row (see
    /// [`limiter`]).
    pub(super) fn audit_admitted(&self, source: std::net::IpAddr) -> bool {
        self.audit_limiter
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .admit(source, std::time::Instant::now())
    }

    /// Writes the summary rows of refusals that were not audited one by one.
    pub(super) async fn flush_suppressed_audits(&self) {
        let due = self
            .audit_limiter
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .take_due(std::time::Instant::now());
        for (source, count) in due {
            let event = AuditEvent::refused(
                "refusals_suppressed",
                Reason::RateLimited,
                format!(
                    "{count} more refusals from {source} within {}s were counted in the metrics, not audited one by one",
                    limiter::WINDOW.as_secs()
                ),
                &source.to_string(),
            );
            let db = self.db.clone();
            let _ = tokio::task::spawn_blocking(move || db.audit(&event)).await;
        }
    }
}

/// `<data-dir>/bundle.pem`: the bundle now, for sidecars to bootstrap with.
pub(super) fn write_bundle_file(data_dir: &Path, cas: &Authorities) -> Result<(), ServeError> {
    files::write_replace(
        &data_dir.join(BUNDLE_FILE),
        cas.bundle_pem.as_bytes(),
        PUBLIC_MODE,
    )
    .map_err(setup)
}

impl State {
    pub(super) fn count(&self, f: impl FnOnce(&mut Counters)) {
        f(&mut self
            .counters
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner));
    }
}
