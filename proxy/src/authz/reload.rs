//! Hot reload of a policy directory: on file change (polled) and on SIGHUP.
//! The new set is built off the request path and swapped in atomically; a
//! set that fails validation is refused and the last good one stays.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use tokio::sync::watch;

use super::engine::PolicyEngine;
use super::policy_set::PolicySnapshot;

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
#[derive(Debug)]
pub struct PolicyWatcher {
    task: tokio::task::JoinHandle<()>,
    status: watch::Receiver<ReloadStatus>,
}

impl PolicyWatcher {
    /// Loads `dir` into `engine` now and whenever its files change (checked
    /// every `interval`) or the process receives SIGHUP.
    pub fn start(dir: PathBuf, engine: Arc<PolicyEngine>, interval: Duration) -> Self {
        let (tx, status) = watch::channel(ReloadStatus::default());
        let task = tokio::spawn(async move {
            let mut hangup =
                tokio::signal::unix::signal(tokio::signal::unix::SignalKind::hangup()).ok();
            let mut ticker = tokio::time::interval(interval);
            ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            let mut last_seen: Option<Vec<(PathBuf, Vec<u8>)>> = None;
            loop {
                let forced = tokio::select! {
                    _ = ticker.tick() => false,
                    Some(()) = async { match hangup.as_mut() { Some(h) => h.recv().await, None => std::future::pending().await } } => true,
                };
                let contents = read_contents(&dir);
                if !forced && last_seen.as_ref() == Some(&contents) {
                    continue;
                }
                last_seen = Some(contents);
                let load_dir = dir.clone();
                let loaded =
                    tokio::task::spawn_blocking(move || PolicySnapshot::load_dir(&load_dir)).await;
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
                    Ok(Err(e)) => {
                        tracing::error!(error = %e, active = ?engine.version(), "policy set refused; keeping the last good one");
                        tx.send_modify(|s| {
                            s.failures += 1;
                            s.last_error = Some(e.to_string());
                        });
                    }
                    Err(e) => tracing::error!(error = %e, "policy loader task failed"),
                }
            }
        });
        PolicyWatcher { task, status }
    }

    pub fn status(&self) -> watch::Receiver<ReloadStatus> {
        self.status.clone()
    }

    pub fn stop(self) {}
}

impl Drop for PolicyWatcher {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// Names and bytes of the files that make up a policy directory (a cheap
/// change detector; unreadable files count as empty).
fn read_contents(dir: &Path) -> Vec<(PathBuf, Vec<u8>)> {
    let mut files: Vec<(PathBuf, Vec<u8>)> = std::fs::read_dir(dir)
        .into_iter()
        .flatten()
        .flatten()
        .map(|e| e.path())
        .filter(|p| {
            p.extension()
                .is_some_and(|e| e == "cedar" || e == "cedarschema")
        })
        .map(|p| {
            let bytes = std::fs::read(&p).unwrap_or_default();
            (p, bytes)
        })
        .collect();
    files.sort();
    files
}
