//! The control plane as the SVID source: its bundle for the first contact,
//! an SVID saved by an earlier run if still valid, then the rotation (join,
//! renewals, on the `[rotation]` schedule) and the watch (revocations,
//! bundles and policies).

use std::sync::Arc;

use tokio::sync::watch;

use super::SidecarError;
use super::config::{ControlSource, JoinToken};
use arc_swap::ArcSwap;

use super::discovery::Endpoints;
use crate::control::api::{EndpointList, EndpointRegistration, PolicyUpdate};
use crate::control::{
    ApplyRegistry, ControlClient, Discovery, StateDir, WatchState, WatchTargets, revoked_set,
    run_watch,
};
use crate::identity::{RotationPolicy, SvidStore, TrustBundle, TrustBundleSet, run_rotation};

/// The policy bundles (when the sidecar takes them from the control
/// plane), what the watch has applied, and the client (the Workload API
/// asks it for JWT-SVIDs).
pub(super) type ControlChannels = (
    Option<watch::Receiver<Option<PolicyUpdate>>>,
    watch::Receiver<WatchState>,
    ControlClient,
);

/// Where the control plane's discovery registry goes: merged under the
/// configuration's own endpoints into the transparent listener's table.
pub(super) struct Registry {
    pub fixed: Endpoints,
    pub table: Arc<ArcSwap<Endpoints>>,
}

pub(super) fn start(
    config: &ControlSource,
    rotation: &RotationPolicy,
    store: &Arc<SvidStore>,
    registry: Option<Registry>,
    shutdown: &watch::Receiver<bool>,
) -> Result<ControlChannels, SidecarError> {
    let err = |key: &'static str, message: String| SidecarError::Control { key, message };
    let trust_domain = config.server_id.trust_domain();
    let (pem, origin) = config.bundle.read().map_err(|e| err("control.bundle", e))?;
    let bundle = TrustBundle::from_bytes(trust_domain.clone(), &pem)
        .map_err(|e| err("control.bundle", format!("{origin}: {e}")))?;
    store.set_bundles(TrustBundleSet::new().with(bundle));
    let state = config.state_dir.clone().map(StateDir);
    if let Some(list) = state.as_ref().and_then(StateDir::load_revoked) {
        store.set_revoked(revoked_set(&list));
    }
    if let Some(saved) = state.as_ref().and_then(StateDir::load) {
        match store.install(saved, None) {
            Ok(()) => tracing::info!("using the SVID saved by an earlier run"),
            Err(e) => tracing::warn!(error = %e, "the saved SVID does not validate; joining anew"),
        }
    }
    let token = match &config.join {
        Some(JoinToken::Inline(t)) => Some(t.trim().to_owned()),
        Some(JoinToken::ServiceAccount(_)) | None => None,
        Some(JoinToken::File(path)) => Some(
            std::fs::read_to_string(path)
                .map_err(|e| {
                    err(
                        "control.token_file",
                        format!("cannot read {}: {e}", path.display()),
                    )
                })?
                .trim()
                .to_owned(),
        ),
    };
    let service_account = match &config.join {
        Some(JoinToken::ServiceAccount(path)) => Some(path.clone()),
        _ => None,
    };
    let client = ControlClient::new(
        config.address.clone(),
        config.server_id.clone(),
        store.clone(),
    )
    .map_err(|e| err("control.address", e.to_string()))?;
    let instance = config.instance.clone().unwrap_or_else(|| {
        // The kernel takes any bytes as a host name; the inventory does not.
        let host = std::fs::read_to_string("/proc/sys/kernel/hostname").unwrap_or_default();
        crate::control::api::sanitize_instance(&format!("{}/{}", host.trim(), std::process::id()))
    });
    let source = crate::control::ControlSource::new(
        client.clone(),
        store.clone(),
        trust_domain.clone(),
        token,
        instance.clone(),
        config.svid_ttl,
        state.clone(),
    )
    .with_service_account_token(service_account);
    let mut stop = shutdown.clone();
    tokio::spawn(run_rotation(
        store.clone(),
        source,
        rotation.clone(),
        async move {
            let _ = stop.wait_for(|s| *s).await;
        },
    ));
    let (policy_tx, policy_rx) = if config.policies {
        let (tx, rx) = watch::channel(None);
        (Some(tx), Some(rx))
    } else {
        (None, None)
    };
    let (state_tx, state_rx) = watch::channel(WatchState::default());
    let register = (!config.endpoint_addresses.is_empty()).then(|| EndpointRegistration {
        addresses: config
            .endpoint_addresses
            .iter()
            .map(|a| a.to_canonical())
            .collect(),
        ports: config.endpoint_ports.clone(),
    });
    let apply = registry.map(|Registry { fixed, table }| {
        Box::new(move |list: &EndpointList| {
            table.store(Arc::new(Endpoints::merged(&fixed, &list.endpoints)));
        }) as ApplyRegistry
    });
    tokio::spawn(run_watch(
        WatchTargets {
            client: client.clone(),
            store: store.clone(),
            trust_domain,
            policies: policy_tx,
            state: state_tx,
            state_dir: state,
            backoff: rotation.backoff(),
            discovery: Discovery { register, apply },
        },
        shutdown.clone(),
    ));
    Ok((policy_rx, state_rx, client))
}
