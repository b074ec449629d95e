//! Hot reload of a policy directory: on file change (polled) and on SIGHUP.
//! The new set is built off the request path and swapped in atomically; a
//! set that fails validation is refused and the last good one stays.
//!
//! A change is built only once the directory has read the same on two
//! consecutive polls, so a deploy that rewrites several files is not caught
//! half-way. For changes that must land all at once, swap the whole
//! directory (a symlink flip, as Kubernetes does for mounted ConfigMaps).

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use tokio::sync::watch;

use super::engine::PolicyEngine;
use super::policy_set::{PolicyFiles, PolicySnapshot, read_policy_dir};
use crate::watcher::Watcher;

/// What the policy watcher has done so far.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ReloadStatus {
    /// Version of the active set, if a valid one was ever loaded.
    pub version: Option<String>,
    /// Successful loads.
    pub reloads: u64,
    /// Refused loads.
    pub failures: u64,
    /// Why the files on disk are not the active set, if they are not.
    pub last_error: Option<String>,
}

/// A running policy watcher; stops when dropped.
pub type PolicyWatcher = Watcher<ReloadStatus>;

impl Watcher<ReloadStatus> {
    /// Loads `dir` into `engine` now and whenever its files change (checked
    /// every `interval`) or the process receives SIGHUP.
    pub fn start(dir: PathBuf, engine: Arc<PolicyEngine>, interval: Duration) -> Self {
        let (tx, status) = watch::channel(ReloadStatus::default());
        let task = tokio::spawn(async move {
            let mut hangup =
                tokio::signal::unix::signal(tokio::signal::unix::SignalKind::hangup()).ok();
            let mut ticker = tokio::time::interval(interval);
            ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            // The previous poll's read, and the files last built (or refused).
            let mut previous: Option<PolicyFiles> = None;
            let mut built: Option<PolicyFiles> = None;
            loop {
                let forced = tokio::select! {
                    _ = ticker.tick() => false,
                    Some(()) = async {
                        match hangup.as_mut() {
                            Some(h) => h.recv().await,
                            None => std::future::pending().await,
                        }
                    } => true,
                };
                let read_dir = dir.clone();
                let files =
                    match tokio::task::spawn_blocking(move || read_policy_dir(&read_dir)).await {
                        Ok(Ok(files)) => files,
                        Ok(Err(e)) => {
                            refuse(&tx, &engine, e.to_string());
                            previous = None;
                            continue;
                        }
                        Err(e) => {
                            tracing::error!(error = %e, "policy reader task failed");
                            continue;
                        }
                    };
                // Editors and deploy tools write files one at a time: build
                // only from files that sat still for a whole poll interval
                // (unless forced, or nothing is loaded yet), and build from
                // exactly the bytes compared.
                let stable = previous.as_ref() == Some(&files);
                previous = Some(files.clone());
                let first = engine.version().is_none() && built.is_none();
                if (!forced && built.as_ref() == Some(&files)) || !(stable || forced || first) {
                    continue;
                }
                built = Some(files.clone());
                let loaded =
                    tokio::task::spawn_blocking(move || PolicySnapshot::from_files(files)).await;
                match loaded {
                    Ok(Ok(snapshot)) => {
                        let version = snapshot.version().to_owned();
                        let changed = engine.version().as_deref() != Some(version.as_str());
                        if changed {
                            tracing::info!(%version, policies = snapshot.len(), forced, "policy set loaded");
                            engine.install(snapshot);
                        }
                        tx.send_modify(|s| {
                            s.version = Some(version);
                            s.reloads += u64::from(changed);
                            s.last_error = None;
                        });
                    }
                    Ok(Err(e)) => refuse(&tx, &engine, e.to_string()),
                    Err(e) => tracing::error!(error = %e, "policy loader task failed"),
                }
            }
        });
        Watcher::new(task, status)
    }
}

fn refuse(tx: &watch::Sender<ReloadStatus>, engine: &PolicyEngine, error: String) {
    if tx.borrow().last_error.as_deref() != Some(error.as_str()) {
        tracing::error!(%error, active = ?engine.version(), "policy set refused; keeping the last good one");
    }
    tx.send_modify(|s| {
        s.failures += 1;
        s.last_error = Some(error);
    });
}
