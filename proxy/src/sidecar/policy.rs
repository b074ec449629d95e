//! The policy side of a starting sidecar: the engine, once the first SVID
//! names the service; its policies from the built-in set, a directory
//! (hot-reloaded) or the control plane's bundles; and the rotation count.

use std::sync::Arc;

use tokio::sync::watch;

use super::shared::{Shared, shutting_down};
use super::{DEFAULT_POLICIES, SidecarError};
use crate::authz::{
    PolicyEngine, PolicySnapshot, PolicySource, PolicyWatcher, ReloadStatus, ServiceInfo,
};

pub(super) fn builtin_policies() -> Result<PolicySnapshot, SidecarError> {
    PolicySnapshot::from_sources(
        "schema.cedarschema",
        crate::authz::policy_set::DEFAULT_SCHEMA,
        vec![PolicySource {
            name: "default.cedar".into(),
            text: DEFAULT_POLICIES.into(),
        }],
    )
    .map_err(|e| SidecarError::Policy(e.to_string()))
}

/// Counts every change of the SVID or bundles after the first load.
pub(super) async fn count_rotations(shared: Arc<Shared>) {
    let mut generation = shared.store.subscribe();
    let mut loaded = shared.store.current().is_some();
    while generation.changed().await.is_ok() {
        if loaded {
            shared.metrics.rotation();
        }
        loaded = loaded || shared.store.current().is_some();
    }
}

/// Waits for the first SVID (the service's trust domain and namespace come
/// from it), then builds the policy engine and loads its policies.
pub(super) async fn start_policy(shared: Arc<Shared>, builtin: Option<PolicySnapshot>) {
    let mut generation = shared.store.subscribe();
    let svid = loop {
        if let Some(svid) = shared.store.current() {
            break svid;
        }
        if generation.changed().await.is_err() {
            return;
        }
    };
    let service = ServiceInfo::from_identity(&shared.config.service.name, svid.spiffe_id());
    let engine = Arc::new(PolicyEngine::new(service, shared.config.authz.mode));
    let mut watcher: Option<PolicyWatcher> = None;
    match (builtin, &shared.config.authz.policies) {
        (Some(snapshot), _) => {
            let status = ReloadStatus {
                version: Some(snapshot.version().to_owned()),
                reloads: 1,
                ..ReloadStatus::default()
            };
            engine.install(snapshot);
            let _ = shared.policy.status.set(watch::channel(status).1);
        }
        (None, Some(dir)) => {
            let w = PolicyWatcher::start(
                dir.clone(),
                engine.clone(),
                shared.config.authz.reload_interval,
            );
            let _ = shared.policy.status.set(w.status());
            watcher = Some(w);
        }
        (None, None) => match shared.policy.control_updates.clone() {
            Some(updates) => {
                let _ = shared.policy.engine.set(engine.clone());
                return install_control_policies(&shared, &engine, updates).await;
            }
            None => return,
        },
    }
    let _ = shared.policy.engine.set(engine);
    // The watcher runs until the sidecar drains.
    let mut shutdown = shared.lifecycle.shutdown.clone();
    shutting_down(&mut shutdown).await;
    drop(watcher);
}

/// Installs each policy bundle the control plane's watch delivers; a bundle
/// that does not load is refused and the last good one stays.
async fn install_control_policies(
    shared: &Arc<Shared>,
    engine: &Arc<PolicyEngine>,
    mut updates: watch::Receiver<Option<crate::control::api::PolicyUpdate>>,
) {
    let (status_tx, status_rx) = watch::channel(ReloadStatus::default());
    let _ = shared.policy.status.set(status_rx);
    let mut shutdown = shared.lifecycle.shutdown.clone();
    loop {
        let update = updates.borrow_and_update().clone();
        if let Some(update) = update {
            let loaded = crate::authz::PolicyFiles::from_named(&update.files)
                .and_then(|files| PolicySnapshot::from_files(files).map_err(|e| e.to_string()));
            match loaded {
                Ok(snapshot) => {
                    let version = snapshot.version().to_owned();
                    engine.install(snapshot);
                    tracing::info!(control_version = update.version, %version, "policy bundle from the control plane installed");
                    status_tx.send_modify(|s| {
                        s.version = Some(version);
                        s.reloads += 1;
                        s.last_error = None;
                    });
                }
                Err(e) => {
                    tracing::error!(control_version = update.version, error = %e, "policy bundle from the control plane refused; keeping the last good set");
                    status_tx.send_modify(|s| {
                        s.failures += 1;
                        s.last_error =
                            Some(format!("control plane version {}: {e}", update.version));
                    });
                }
            }
        }
        tokio::select! {
            changed = updates.changed() => if changed.is_err() { return },
            _ = shutting_down(&mut shutdown) => return,
        }
    }
}
