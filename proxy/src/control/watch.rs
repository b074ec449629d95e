//! The watch: long-polls the control plane for revocations, trust-bundle
//! changes, policy bundles and the discovery registry, and applies them;
//! and registers this workload's endpoints after every new SVID.

use std::sync::Arc;
use std::time::Duration;

use http::Method;
use tokio::sync::watch;

use crate::identity::{
    Backoff, JwtBundle, JwtBundleSet, Revoked, SpiffeBundle, SvidStore, TrustBundle, TrustBundleSet,
};

use super::{ControlClient, ControlError, StateDir, api, digest_hex};

/// What the watch has applied, for `/identity` and metrics.
#[derive(Debug, Clone, Default)]
pub struct WatchState {
    pub revocation_seq: i64,
    pub revoked: usize,
    pub policy_version: Option<i64>,
    pub connected: bool,
    pub last_error: Option<String>,
    /// The discovery registry's mark, once received.
    pub endpoints_mark: Option<String>,
    /// Entries in the registry last received.
    pub endpoints: usize,
    /// Why this workload's endpoints are not registered, if they are not.
    pub registration_error: Option<String>,
    /// The federated bundles' mark, once received.
    pub federation_mark: Option<String>,
    /// The federated trust domains whose bundles are held.
    pub federated: Vec<String>,
}

/// Discovery through the control plane.
pub struct Discovery {
    /// What this workload registers after each new SVID; None: nothing.
    pub register: Option<api::EndpointRegistration>,
    /// Takes the registry each time it changes; None: not watched.
    pub apply: Option<ApplyRegistry>,
}

/// What the watch does with each new discovery registry.
pub type ApplyRegistry = Box<dyn Fn(&api::EndpointList) + Send + Sync>;

/// Turns a revocation list into what the store refuses.
pub fn revoked_set(list: &api::RevocationList) -> Revoked {
    Revoked {
        spiffe_ids: list.spiffe_ids.iter().cloned().collect(),
        serials: list.serials.iter().cloned().collect(),
    }
}

/// Where the watch connects and what it feeds.
pub struct WatchTargets {
    pub client: ControlClient,
    pub store: Arc<SvidStore>,
    pub trust_domain: crate::identity::TrustDomain,
    /// Policy bundles go here when the sidecar takes them from the control plane.
    pub policies: Option<watch::Sender<Option<api::PolicyUpdate>>>,
    pub state: watch::Sender<WatchState>,
    /// Keeps the revocation list across restarts.
    pub state_dir: Option<StateDir>,
    /// How retries back off while the control plane is unreachable
    /// (`[rotation]`, as the SVID renewals).
    pub backoff: Backoff,
    pub discovery: Discovery,
}

/// Shortest pause between two watch calls, so that a control plane that
/// answers at once (or a sidecar that cannot apply an answer) never turns
/// the watch into a busy loop.
const MIN_WATCH_INTERVAL: Duration = Duration::from_millis(100);

/// Long-polls the control plane for revocations, bundle changes and (when
/// `policies` is given) policy bundles, and applies them. Runs until
/// `shutdown` flips; backs off (`backoff`, jittered) while the control plane
/// is unreachable, keeping everything it last applied.
pub async fn run_watch(targets: WatchTargets, mut shutdown: watch::Receiver<bool>) {
    let WatchTargets {
        client,
        store,
        trust_domain,
        policies,
        state,
        state_dir,
        backoff,
        discovery,
    } = targets;
    let mut failures: u32 = 0;
    // The federated bundles last received.
    let mut federated: Vec<SpiffeBundle> = Vec::new();
    let mut generation = store.subscribe();
    // The SVID generation whose endpoints are registered (or refused).
    let mut registered: Option<u64> = None;
    loop {
        if *shutdown.borrow() {
            return;
        }
        // mTLS needs an SVID: wait for the first one.
        if store.current().is_none() {
            tokio::select! {
                _ = generation.changed() => continue,
                _ = shutdown.changed() => return,
            }
        }
        if let Some(registration) = &discovery.register {
            let svid = *generation.borrow();
            if registered != Some(svid) {
                match register(&client, registration).await {
                    Ok(()) => {
                        registered = Some(svid);
                        state.send_modify(|s| s.registration_error = None);
                    }
                    // Refused for what it says (an address another identity
                    // holds, one no peer can dial): said once, tried again
                    // with the next SVID.
                    Err(e @ ControlError::Refused { .. }) if final_refusal(&e) => {
                        registered = Some(svid);
                        tracing::error!(error = %e, "this workload's endpoints were not registered; peers cannot discover it");
                        state.send_modify(|s| s.registration_error = Some(e.to_string()));
                    }
                    // Anything else (unreachable, 5xx, a replica that does
                    // not know the endpoint yet): tried again each round.
                    Err(e) => {
                        tracing::warn!(error = %e, "endpoint registration failed; retrying");
                        state.send_modify(|s| s.registration_error = Some(e.to_string()));
                    }
                }
            }
        }
        let current = state.borrow().clone();
        let bundle_digest = store
            .bundles()
            .get(trust_domain.name())
            .map(|b| digest_hex(b.to_pem().as_bytes()))
            .unwrap_or_default();
        let policy = match (&policies, current.policy_version) {
            (Some(_), Some(v)) => v.to_string(),
            (Some(_), None) => "none".to_owned(),
            // Not watching policies: say we have whatever is current.
            (None, _) => "any".to_owned(),
        };
        // The first call after (re)connecting answers at once, so the
        // sidecar catches up before it starts waiting.
        let wait_ms = if current.connected { 20_000 } else { 0 };
        let mut path = format!(
            "{}?revocations={}&bundle={}&policy={}&wait_ms={wait_ms}",
            api::WATCH,
            current.revocation_seq,
            bundle_digest,
            policy
        );
        if discovery.apply.is_some() {
            let mark = current.endpoints_mark.as_deref().unwrap_or("none");
            path.push_str(&format!("&endpoints={mark}"));
        }
        let mark = current.federation_mark.as_deref().unwrap_or("none");
        path.push_str(&format!("&federation={mark}"));
        // A new SVID ends the long poll when there are endpoints to
        // register with it: the entries of the old one die with it.
        let new_svid = async {
            if discovery.register.is_some() {
                let _ = generation.changed().await;
            } else {
                std::future::pending::<()>().await;
            }
        };
        let result: Result<api::WatchResponse, _> = tokio::select! {
            r = client.call(Method::GET, &path, None, Duration::from_secs(30)) => r,
            () = new_svid => continue,
            _ = shutdown.changed() => return,
        };
        match result {
            Ok(update) => {
                failures = 0;
                let mut next = current;
                if let Some(list) = &update.federation {
                    federated = federated_bundles(list, &federated, &trust_domain);
                    next.federation_mark = Some(list.mark.clone());
                    next.federated = federated
                        .iter()
                        .map(|b| b.x509.trust_domain().name().to_owned())
                        .collect();
                }
                apply(&store, &trust_domain, &update, &federated);
                if update.revocations.seq != next.revocation_seq
                    && let Some(dir) = &state_dir
                    && let Err(e) = dir.save_revoked(&update.revocations)
                {
                    tracing::warn!(error = %e, "cannot save the revocation list");
                }
                next.revocation_seq = update.revocations.seq;
                next.revoked =
                    update.revocations.spiffe_ids.len() + update.revocations.serials.len();
                next.connected = true;
                next.last_error = None;
                if let (Some(tx), Some(p)) = (&policies, update.policy) {
                    next.policy_version = Some(p.version);
                    let _ = tx.send(Some(p));
                }
                match (&discovery.apply, update.endpoints) {
                    (Some(apply), Some(list)) => {
                        apply(&list);
                        next.endpoints = list.endpoints.len();
                        next.endpoints_mark = Some(list.mark);
                    }
                    // Asked with `none`, answered without it: a control
                    // plane from before discovery. Not waited for; asked
                    // again (an empty mark) in case it is upgraded.
                    (Some(_), None) if next.endpoints_mark.is_none() => {
                        tracing::warn!(
                            "the control plane sends no discovery registry (older than 0.3): only [[outbound.endpoints]] are known"
                        );
                        next.endpoints_mark = Some(String::new());
                    }
                    _ => {}
                }
                let _ = state.send(next);
                tokio::select! {
                    _ = tokio::time::sleep(MIN_WATCH_INTERVAL) => {}
                    _ = shutdown.changed() => return,
                }
            }
            Err(e) => {
                failures = failures.saturating_add(1);
                if failures == 1 || failures.is_power_of_two() {
                    tracing::warn!(error = %e, failures, "control plane watch failed; keeping the last revocations, bundle and policies");
                }
                state.send_modify(|s| {
                    s.connected = false;
                    s.last_error = Some(e.to_string());
                });
                let delay = backoff.next_delay(failures);
                tokio::select! {
                    _ = tokio::time::sleep(delay) => {}
                    _ = shutdown.changed() => return,
                }
            }
        }
    }
}

/// A refusal that trying again with the same SVID cannot change.
fn final_refusal(e: &ControlError) -> bool {
    matches!(e, ControlError::Refused { code, .. }
        if matches!(code.as_str(), "endpoint_conflict" | "bad_endpoint" | "endpoint_not_source"))
}

/// `PUT /v1/endpoints` with the current SVID.
async fn register(
    client: &ControlClient,
    registration: &api::EndpointRegistration,
) -> Result<(), ControlError> {
    let body = serde_json::to_vec(registration).map_err(|e| ControlError::Local(e.to_string()))?;
    let list: api::EndpointList = client
        .call(
            Method::PUT,
            api::ENDPOINTS,
            Some(body),
            Duration::from_secs(10),
        )
        .await?;
    tracing::info!(
        addresses = ?registration.addresses,
        ports = ?registration.ports,
        entries = list.endpoints.len(),
        "endpoints registered for discovery"
    );
    Ok(())
}

/// The federated bundles of `list`, each checked; one that does not parse
/// keeps what `held` had for its trust domain. Our own trust domain is
/// never taken from a federation.
fn federated_bundles(
    list: &api::FederationList,
    held: &[SpiffeBundle],
    own: &crate::identity::TrustDomain,
) -> Vec<SpiffeBundle> {
    let mut out = Vec::new();
    for entry in &list.bundles {
        let parsed = crate::identity::TrustDomain::new(&entry.trust_domain)
            .map_err(|e| e.to_string())
            .and_then(|td| {
                if td == *own {
                    return Err("a federated bundle for our own trust domain".to_owned());
                }
                SpiffeBundle::parse(td, entry.bundle.as_bytes()).map_err(|e| e.to_string())
            });
        match parsed {
            Ok(bundle) => out.push(bundle),
            Err(e) => {
                tracing::warn!(trust_domain = %entry.trust_domain, error = %e, "the control plane sent an unusable federated bundle; keeping the one held");
                out.extend(
                    held.iter()
                        .find(|b| b.x509.trust_domain().name() == entry.trust_domain)
                        .cloned(),
                );
            }
        }
    }
    out
}

/// Applies an answer: the revocations, and the bundle sets (ours from the
/// answer, or the one held if it is unusable; then the federated ones).
fn apply(
    store: &SvidStore,
    trust_domain: &crate::identity::TrustDomain,
    update: &api::WatchResponse,
    federated: &[SpiffeBundle],
) {
    store.set_revoked(revoked_set(&update.revocations));
    let held = store.bundles();
    let own = match TrustBundle::from_pem(trust_domain.clone(), update.bundle.bundle_pem.as_bytes())
    {
        Ok(bundle) => Some(bundle),
        Err(e) => {
            tracing::warn!(error = %e, "the control plane sent an unusable trust bundle; keeping the current one");
            held.get(trust_domain.name()).map(|b| (**b).clone())
        }
    };
    let mut bundles = TrustBundleSet::new();
    if let Some(own) = own {
        bundles.insert(own);
    }
    for f in federated {
        bundles.insert(f.x509.clone());
    }
    if *held != bundles {
        tracing::info!(
            trust_domains = ?bundles.trust_domains().map(|t| t.name()).collect::<Vec<_>>(),
            "trust bundles changed; installing them"
        );
        store.set_bundles(bundles);
    }
    let held_jwt = store.jwt_bundles();
    let own_jwt = match &update.bundle.jwt_bundle {
        Some(jwks) => match JwtBundle::from_jwks(trust_domain.clone(), jwks.as_bytes()) {
            Ok(bundle) => Some(bundle),
            Err(e) => {
                tracing::warn!(error = %e, "the control plane sent an unusable JWT bundle; keeping the current one");
                held_jwt.get(trust_domain.name()).map(|b| (**b).clone())
            }
        },
        None => None,
    };
    let mut jwt = JwtBundleSet::default();
    if let Some(own) = own_jwt {
        jwt.insert(own);
    }
    for f in federated {
        jwt.insert(f.jwt.clone());
    }
    store.set_jwt_bundles(jwt);
}
