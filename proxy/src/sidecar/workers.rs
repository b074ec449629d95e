//! `--workers N`: the traffic listeners served by N threads, each a
//! single-threaded runtime with sockets of its own (`SO_REUSEPORT`), so a
//! connection lives on one thread from accept to close: no work stealing,
//! no wake-up that crosses threads on the request path. The main thread is
//! worker 0 and also runs everything else (admin, policy, identity, the
//! control plane's watch); workers 1.. run only connections.
//!
//! What the workers share is in [`Shared`] (identity, policy, metrics,
//! limits, each listener's connection table); what they keep to
//! themselves is per connection or per pool (the app's and the peers'
//! connection pools).

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::mpsc;

use tokio::runtime::Runtime;
use tokio::sync::oneshot;

use super::SidecarError;
use super::listeners::{Bound, Replicas};
use super::shared::Shared;

/// What a worker is started with: the sidecar's state, the admin address
/// (transparent listeners never send to it), and where to say whether its
/// listeners are served.
type Start = (
    Arc<Shared>,
    SocketAddr,
    oneshot::Sender<Result<(), SidecarError>>,
);

/// A worker thread, its listeners bound, waiting for the sidecar's state.
pub(super) struct Worker {
    index: usize,
    start: mpsc::Sender<Start>,
}

impl Worker {
    /// Worker `index` (1..): a thread with its runtime and its own socket
    /// on each of `replicas`' addresses, made and registered on that
    /// thread (so the runtime is only ever dropped there, and its thread is
    /// the one woken for them). Nothing is served until [`Worker::serve`];
    /// dropped before that, the thread ends and closes its sockets.
    pub async fn bind(replicas: Replicas, index: usize) -> Result<Self, SidecarError> {
        let (bound, bound_rx) = oneshot::channel();
        let (start, started) = mpsc::channel();
        // Detached: the thread ends by itself after the drain.
        std::thread::Builder::new()
            .name(format!("warden-worker-{index}"))
            .spawn(move || {
                let runtime = match tokio::runtime::Builder::new_current_thread()
                    .enable_all()
                    .build()
                {
                    Ok(runtime) => runtime,
                    Err(e) => {
                        let _ = bound.send(Err(SidecarError::Worker(index, e)));
                        return;
                    }
                };
                let listeners = {
                    let _context = runtime.enter();
                    replicas.bind(index)
                };
                match listeners {
                    Ok(listeners) => {
                        if bound.send(Ok(())).is_ok() {
                            run(&runtime, listeners, &started);
                        }
                    }
                    Err(e) => {
                        let _ = bound.send(Err(e));
                    }
                }
            })
            .map_err(|e| SidecarError::Worker(index, e))?;
        bound_rx.await.map_err(|_| ended(index))??;
        Ok(Worker { index, start })
    }

    /// Starts serving the worker's listeners; returns once they are
    /// served, or why they could not be.
    pub async fn serve(&self, shared: &Arc<Shared>, admin: SocketAddr) -> Result<(), SidecarError> {
        let (done, served) = oneshot::channel();
        self.start
            .send((shared.clone(), admin, done))
            .map_err(|_| ended(self.index))?;
        served.await.map_err(|_| ended(self.index))?
    }
}

fn ended(index: usize) -> SidecarError {
    SidecarError::Worker(
        index,
        std::io::Error::other("the worker thread ended before serving"),
    )
}

/// The worker thread: waits for the sidecar's state (or for the sidecar to
/// give up starting), serves its listeners until the drain, then gives its
/// connections the drain deadline to finish. The runtime, and with it any
/// connection left, is dropped when this returns.
fn run(runtime: &Runtime, listeners: Bound, started: &mpsc::Receiver<Start>) {
    let Ok((shared, admin, done)) = started.recv() else {
        return;
    };
    runtime.block_on(async move {
        let served = listeners.serve(&shared, admin);
        let failed = served.is_err();
        let _ = done.send(served);
        if failed {
            return;
        }
        let mut shutdown = shared.lifecycle.shutdown.clone();
        // Err: the sidecar is gone without a drain (it failed to start, or
        // was dropped): nothing waits for these connections.
        if shutdown.wait_for(|draining| *draining).await.is_err() {
            return;
        }
        // Every worker's connections are in the one tracker: this waits
        // for all of them, bounded as the main thread's drain is.
        let deadline = shared.config.limits.drain_timeout;
        let _ = tokio::time::timeout(deadline, shared.lifecycle.tracker.wait()).await;
    });
}
