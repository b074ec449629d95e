//! A background watcher task that publishes its status, shared by the SVID
//! file watcher and the policy watcher. It stops when dropped.

use tokio::sync::watch;

/// A running watcher; `S` is what it reports.
#[derive(Debug)]
pub struct Watcher<S> {
    task: tokio::task::JoinHandle<()>,
    status: watch::Receiver<S>,
}

impl<S> Watcher<S> {
    pub(crate) fn new(task: tokio::task::JoinHandle<()>, status: watch::Receiver<S>) -> Self {
        Watcher { task, status }
    }

    /// Follows the watcher's status (for readiness and tests).
    pub fn status(&self) -> watch::Receiver<S> {
        self.status.clone()
    }

    /// Stops the watcher (as dropping it does).
    pub fn stop(self) {}
}

impl<S> Drop for Watcher<S> {
    fn drop(&mut self) {
        self.task.abort();
    }
}
