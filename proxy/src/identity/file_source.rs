//! SVIDs from PEM files on disk, as cert-manager, spiffe-helper or
//! `warden svid issue` write them.
//!
//! Rotation tools replace the files one at a time, so for a moment the key on
//! disk may not match the certificate. The watcher swaps only when the set of
//! files is consistent (key matches certificate, chain validates against the
//! bundle, SVID valid now) and otherwise keeps the last good SVID.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use tokio::sync::watch;

use super::bundle::{BundleError, TrustBundle, TrustBundleSet};
use super::rotation::{RotationPolicy, SvidSource, SvidUpdate};
use super::spiffe_id::TrustDomain;
use super::store::{Svid, SvidLoadError, SvidStore};
use super::svid::SvidError;
use crate::watcher::Watcher;

#[derive(Debug, thiserror::Error)]
pub enum FileSourceError {
    #[error("cannot read {path}: {source}")]
    Read {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("{path}: {source}")]
    Svid {
        path: PathBuf,
        source: SvidLoadError,
    },
    #[error("{path}: {source}")]
    Bundle { path: PathBuf, source: BundleError },
    #[error("{path} does not validate the SVID: {source}")]
    Chain { path: PathBuf, source: SvidError },
}

/// The files making up a workload's identity.
#[derive(Debug, Clone)]
pub struct FileSource {
    cert: PathBuf,
    key: PathBuf,
    bundle: PathBuf,
    federated: Vec<(TrustDomain, PathBuf)>,
    /// When whatever writes the files should have renewed the SVID.
    rotation: RotationPolicy,
}

/// The raw bytes of every file, read in one pass, to detect changes.
type Snapshot = Vec<Vec<u8>>;

impl FileSource {
    /// `cert`: the SVID chain, leaf first; `key`: its private key; `bundle`:
    /// the roots of the SVID's own trust domain (PEM or SPIFFE JSON).
    pub fn new(
        cert: impl Into<PathBuf>,
        key: impl Into<PathBuf>,
        bundle: impl Into<PathBuf>,
    ) -> Self {
        FileSource {
            cert: cert.into(),
            key: key.into(),
            bundle: bundle.into(),
            federated: Vec::new(),
            rotation: RotationPolicy::default(),
        }
    }

    /// Also trust `trust_domain`'s bundle from `path` (federation).
    pub fn with_federated(mut self, trust_domain: TrustDomain, path: impl Into<PathBuf>) -> Self {
        self.federated.push((trust_domain, path.into()));
        self
    }

    /// The rotation schedule the files are expected to follow: an SVID
    /// halfway from its latest renewal point to its expiry and not replaced
    /// is reported (logged, and `overdue` in the watch status) while it
    /// still works.
    pub fn with_rotation(mut self, rotation: RotationPolicy) -> Self {
        self.rotation = rotation;
        self
    }

    fn paths(&self) -> impl Iterator<Item = &Path> {
        [&self.cert, &self.key, &self.bundle]
            .into_iter()
            .chain(self.federated.iter().map(|(_, p)| p))
            .map(PathBuf::as_path)
    }

    fn read(&self) -> Result<Snapshot, FileSourceError> {
        self.paths()
            .map(|path| {
                std::fs::read(path).map_err(|source| FileSourceError::Read {
                    path: path.to_owned(),
                    source,
                })
            })
            .collect()
    }

    fn parse(&self, snapshot: &Snapshot) -> Result<SvidUpdate, FileSourceError> {
        let svid = Svid::from_pem(&snapshot[0], &snapshot[1]).map_err(|source| {
            // A mismatch is about the pair; name the key, the file that
            // usually changed first.
            let path = if source == SvidLoadError::KeyMismatch
                || matches!(source, SvidLoadError::Key(_))
            {
                self.key.clone()
            } else {
                self.cert.clone()
            };
            FileSourceError::Svid { path, source }
        })?;
        let bundle_err = |path: &Path| {
            let path = path.to_owned();
            move |source| FileSourceError::Bundle { path, source }
        };
        let own = TrustBundle::from_bytes(svid.spiffe_id().trust_domain(), &snapshot[2])
            .map_err(bundle_err(&self.bundle))?;
        let mut bundles = TrustBundleSet::new().with(own);
        for ((td, path), bytes) in self.federated.iter().zip(&snapshot[3..]) {
            bundles.insert(TrustBundle::from_bytes(td.clone(), bytes).map_err(bundle_err(path))?);
        }
        svid.validate_against(&bundles)
            .map_err(|source| FileSourceError::Chain {
                path: self.bundle.clone(),
                source,
            })?;
        Ok(SvidUpdate {
            svid,
            bundles: Some(bundles),
        })
    }

    /// Reads and checks the files once.
    pub fn load(&self) -> Result<SvidUpdate, FileSourceError> {
        self.parse(&self.read()?)
    }

    /// Polls the files every `interval` and swaps the store's SVID and bundles
    /// when they change to a consistent set. Polling (rather than inotify)
    /// also sees Kubernetes' symlink swaps of mounted secrets. A rejected set
    /// is retried on every poll (it may only be not valid *yet*), but logged
    /// once. An SVID that expires without replacement is dropped from the
    /// store. Runs until the returned watcher is stopped or dropped.
    pub fn watch(self, store: Arc<SvidStore>, interval: Duration) -> FileWatcher {
        let (status_tx, status) = watch::channel(WatchStatus::default());
        let task = tokio::spawn(async move {
            let mut ticker = tokio::time::interval(interval);
            ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            let mut installed: Option<Snapshot> = None;
            let mut logged_failure: Option<Snapshot> = None;
            let mut overdue: Option<String> = None;
            loop {
                ticker.tick().await;
                let now = SystemTime::now();
                let late = store.current().filter(|svid| {
                    let overdue_at = self
                        .rotation
                        .overdue_at(svid.not_before(), svid.not_after());
                    now >= overdue_at && svid.is_valid_at(now)
                });
                match late {
                    Some(svid) if overdue.as_deref() != Some(svid.serial()) => {
                        tracing::warn!(
                            serial = svid.serial(),
                            "SVID from files is well past its renewal point ([rotation]) and was not replaced; is whatever writes the files renewing it?"
                        );
                        overdue = Some(svid.serial().to_owned());
                    }
                    Some(_) => {}
                    None => overdue = None,
                }
                if let Some(svid) = store.current()
                    && !svid.is_valid_at(SystemTime::now())
                    && store.clear_if_current(&svid)
                {
                    tracing::error!(
                        serial = svid.serial(),
                        "SVID from files expired and was not replaced; handshakes will fail"
                    );
                    installed = None;
                }
                let outcome = match self.read() {
                    Err(e) => Err(e.to_string()),
                    Ok(snapshot) if installed.as_ref() == Some(&snapshot) => Ok(()),
                    Ok(snapshot) => match self
                        .parse(&snapshot)
                        .map(|u| store.install(u.svid, u.bundles))
                    {
                        Ok(Ok(())) => {
                            if let Some(svid) = store.current() {
                                tracing::info!(spiffe_id = %svid.spiffe_id(), serial = svid.serial(), "SVID loaded from files");
                            }
                            installed = Some(snapshot);
                            logged_failure = None;
                            Ok(())
                        }
                        Ok(Err(e)) => Err(e.to_string()),
                        Err(e) => {
                            let e = e.to_string();
                            if logged_failure.as_ref() != Some(&snapshot) {
                                tracing::warn!(error = %e, "SVID files not consistent (yet); keeping the current SVID");
                                logged_failure = Some(snapshot);
                            }
                            Err(e)
                        }
                    },
                };
                status_tx.send_modify(|s| {
                    s.polls += 1;
                    s.last_error = outcome.err();
                    s.overdue = overdue.is_some();
                });
            }
        });
        FileWatcher::new(task, status)
    }
}

/// What the file watcher saw last.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct WatchStatus {
    /// Polls completed.
    pub polls: u64,
    /// Why the files on disk are not in use, if they are not.
    pub last_error: Option<String>,
    /// The SVID in use is halfway from its latest renewal point to its
    /// expiry ([`RotationPolicy::overdue_at`]) and the files were not
    /// replaced.
    pub overdue: bool,
}

/// A running SVID file watcher; stops when dropped.
pub type FileWatcher = Watcher<WatchStatus>;

impl SvidSource for FileSource {
    type Error = FileSourceError;

    async fn fetch(&self) -> Result<SvidUpdate, FileSourceError> {
        self.load()
    }
}
